"""vlmserve on Ray Serve (`vlmserve serve --ray`, docs/ray.md): each registered model is its
own Serve application whose replicas run our engine (`replica.py`, `apps.py`); the ingress
reaches them through `RemoteEngine`s (`remote.py`) that the serving layer drives like
in-process engines. The only package that imports `ray` (an import-linter contract), and
only needed with the `ray` extra: `pip install "vlmserve[ray]"`. `settings.py` is plain data
and imports no Ray, so configuration is checked without it."""
