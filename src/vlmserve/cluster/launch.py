"""`vlmserve serve --ray`: connect to Ray (or start an instance on this machine), run the
vlmserve application (Serve's HTTP proxy on --host/--port in
front of our ingress), and wait for SIGINT/SIGTERM. On the way out the applications it runs
are deleted (they are derived state: the registry keeps every model, and the next start's
reconciler deploys them again); an instance it started is shut down.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import ray
from ray import serve

from vlmserve.cluster import apps
from vlmserve.cluster.ingress import APP_NAME, Options, application
from vlmserve.registry import RegistryStore

logger = logging.getLogger("vlmserve.cluster")


def run(options: Options) -> None:
    cluster, server = options.cluster, options.server
    # "local": an instance of our own, never someone else's that happens to run here.
    ray.init(address=cluster.address or "local", logging_level=logging.WARNING)
    try:
        serve.start(http_options={"host": server.host, "port": server.port})
        serve.run(application(options), name=APP_NAME, route_prefix="/")
        logger.info(
            "vlmserve on Ray Serve at http://%s:%d (registry %s; %s)",
            server.host,
            server.port,
            options.registry_path,
            f"Ray at {cluster.address}" if cluster.address else "a Ray instance of its own",
        )
        _wait_for_a_signal()
    finally:
        delete_applications(options.registry_path)
        if cluster.address is None:
            serve.shutdown()
        ray.shutdown()


def _wait_for_a_signal() -> None:
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: deleting the applications", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stopping)
    stop.wait()


def delete_applications(registry_path: str) -> None:
    """The vlmserve application and the applications of the models in our registry (another
    vlmserve on the same cluster, with its own registry, keeps its own)."""
    store = RegistryStore(registry_path)
    try:
        registered = {stored.spec.alias for stored in store.models()}
    finally:
        store.close()
    for alias in [APP_NAME, *(set(apps.deployed()) & registered)]:
        try:
            apps.delete(alias)
        except Exception as exc:  # best effort on the way out: say so, keep going
            logger.warning("application %r not deleted: %s", alias, exc)
