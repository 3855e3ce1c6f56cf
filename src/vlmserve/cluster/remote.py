"""`RemoteEngine`: a model's Serve application as the ingress sees it, with `AsyncEngine`'s
request side (`generate(prompt, params, request_id)` yields `RequestOutput`s), so the serving
layer runs unchanged in front of it.

What Serve leaves to us, handled here:
- Waiting for a replica (a scale-up from zero, every replica busy) is bounded by the load
  timeout: then 503 with Retry-After, and the call is cancelled so it never runs late.
- A replica that dies before the answer's first output is retried once (Serve itself retries
  only requests whose replica was known dead before they were sent; its router drops a
  replica that died, so the retry goes to another one or waits for the replacement). One
  that dies after outputs went out raises `EngineLost`: a whole answer runs again (nothing
  was sent, see serving/generation.py), a stream ends with an error event.
- A full queue (`max_queued_requests`) is 503 or 429 as configured, with Retry-After.
- No answer runs past the request timeout (504); a caller that leaves cancels the call, which
  aborts the request in the replica's engine.
- An application that was replaced or recreated (new deployment name) is found again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from ray import serve
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from vlmserve.cluster.replica import Accepted, Refusal, ReplicaFacts
from vlmserve.engine.errors import EngineClosed, EngineDraining, EngineLost
from vlmserve.serving import ServingError
from vlmserve.types import Prompt, RequestOutput, SamplingParams

logger = logging.getLogger("vlmserve.cluster")

RETRY_AFTER_SCALING_S = 5  # a replica is starting: worth a few seconds' wait
RETRY_AFTER_BUSY_S = 1
DRAIN_POLL_S = 0.05


@dataclass(frozen=True)
class RemotePolicy:
    load_timeout: float  # longest a request waits for a replica to take it
    request_timeout: float  # longest a request may run in all
    overload_status: int = 503  # a full queue: 503 or 429
    start_timeout: float = 900.0  # longest `facts()` waits for a replica to start


class _ReplicaLost(Exception):
    """The call's replica died, or its application went away, during the call."""


class RemoteEngine:
    def __init__(self, alias: str, policy: RemotePolicy) -> None:
        self.alias = alias
        self.policy = policy
        self._handle: Any = None  # serve's DeploymentHandle (streaming), found on first use
        self._in_flight = 0
        self._admitting = True
        self._closed = False

    # -- what the registry reads and drives ---------------------------------------------------
    @property
    def alive(self) -> bool:
        """The model's replicas are Serve's to watch (health checks, restarts): from here the
        engine is alive until this client is closed."""
        return not self._closed

    @property
    def num_in_flight(self) -> int:
        return self._in_flight

    @property
    def last_progress(self) -> float:
        """Always now: a replica whose loop stalls fails Serve's health check instead."""
        return time.monotonic()

    async def drain(self, timeout: float) -> bool:
        """Admit nothing new through this client; wait for its calls in flight."""
        self._admitting = False
        deadline = time.monotonic() + timeout
        while self._in_flight and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
        return self._in_flight == 0

    def resume(self) -> None:
        if not self._closed:
            self._admitting = True

    def close(self) -> None:
        """Stop using the application (it keeps running: the registry decides its fate)."""
        self._closed = True
        self._admitting = False

    # -- requests -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Counted in flight while the ingress prepares a request (media): refused once this
        client is closed or draining. The model's queue is bounded by Serve
        (`max_queued_requests`), which refuses when the request is sent."""
        self._refuse_unless_admitting()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1

    async def generate(
        self, prompt: Prompt, params: SamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        self._refuse_unless_admitting()
        deadline = time.monotonic() + self.policy.request_timeout
        self._in_flight += 1
        try:
            for attempt in (1, 2):
                sent = False
                try:
                    async with contextlib.aclosing(
                        self._attempt(prompt, params, request_id, deadline)
                    ) as outputs:
                        async for output in outputs:
                            sent = True
                            yield output
                    return
                except _ReplicaLost as lost:
                    if sent:
                        raise EngineLost(
                            f"the replica serving model {self.alias!r} stopped during the "
                            f"answer ({lost})"
                        ) from None
                    if attempt == 2:
                        raise self._unavailable(
                            f"its replicas stopped twice before answering ({lost})"
                        ) from None
                    logger.warning(
                        "model %r: %s: the replica was lost before answering (%s); retrying",
                        self.alias,
                        request_id,
                        lost,
                    )
        finally:
            self._in_flight -= 1

    async def score(
        self,
        prompt: Prompt,
        continuations: list[list[int]],
        request_id: str,
        top_logprobs: int = 0,
    ) -> RequestOutput:
        """The replica's teacher-forced scores (one call, nothing streamed): a replica lost
        during it costs one retry, as an answer that had sent nothing; past the request
        timeout, 504."""
        self._refuse_unless_admitting()
        self._in_flight += 1
        try:
            async with asyncio.timeout(self.policy.request_timeout):
                for attempt in (1, 2):
                    try:
                        return await self._score_once(
                            prompt, continuations, request_id, top_logprobs
                        )
                    except _ReplicaLost as lost:
                        if attempt == 2:
                            raise self._unavailable(
                                f"its replicas stopped twice before answering ({lost})"
                            ) from None
                        logger.warning("model %r: %s: %s; retrying", self.alias, request_id, lost)
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            self._in_flight -= 1
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _score_once(
        self, prompt: Prompt, continuations: list[list[int]], request_id: str, top_logprobs: int
    ) -> RequestOutput:
        handle = await self._stream_handle()
        scoring = handle.options(stream=False).score
        call = scoring.remote(prompt, continuations, request_id, top_logprobs)
        answered = False
        try:
            answer: RequestOutput | Refusal = await call
            answered = True
        except BackPressureError:
            raise self._overloaded() from None
        except DeploymentUnavailableError as exc:
            self._handle = None
            raise _ReplicaLost(f"its application changed: {exc}") from None
        except RayActorError as exc:
            raise _ReplicaLost(type(exc).__name__) from None
        except RayTaskError as exc:
            logger.error("model %r: %s failed in its replica: %s", self.alias, request_id, exc)
            raise ServingError(500, f"the model's replica failed: {exc.cause!r}") from None
        finally:
            if not answered:
                _cancel(call)
        if isinstance(answer, Refusal):
            raise answer.error()
        return answer

    async def _attempt(
        self, prompt: Prompt, params: SamplingParams, request_id: str, deadline: float
    ) -> AsyncGenerator[RequestOutput, None]:
        handle = await self._stream_handle()
        stream = handle.generate.remote(prompt, params, request_id)
        ended = False
        try:
            wait = min(self.policy.load_timeout, deadline - time.monotonic())
            try:
                async with asyncio.timeout(wait):
                    accepted = await anext(stream)
            except TimeoutError:
                raise self._unavailable(
                    f"no replica took the request within --load-timeout "
                    f"{self.policy.load_timeout:g} s (starting from zero, or all busy)",
                    RETRY_AFTER_SCALING_S,
                ) from None
            assert isinstance(accepted, Accepted), accepted
            while True:
                try:
                    async with asyncio.timeout_at(_loop_time(deadline)):
                        item = await anext(stream)
                except TimeoutError:
                    raise self._timed_out() from None
                except StopAsyncIteration:
                    raise _ReplicaLost("the answer ended without a final output") from None
                if isinstance(item, Refusal):
                    raise item.error()
                yield item
                if item.finished:
                    ended = True
                    return
        except BackPressureError:
            raise self._overloaded() from None
        except DeploymentUnavailableError as exc:
            self._handle = None  # replaced or recreated: look it up again next time
            raise _ReplicaLost(f"its application changed: {exc}") from None
        except RayActorError as exc:
            raise _ReplicaLost(type(exc).__name__) from None
        except RayTaskError as exc:
            logger.error("model %r: %s failed in its replica: %s", self.alias, request_id, exc)
            raise ServingError(500, f"the model's replica failed: {exc.cause!r}") from None
        finally:
            if not ended:  # timed out, failed, or the caller left: stop the call
                _cancel(stream)

    async def facts(self) -> ReplicaFacts:
        """What a replica says about the model; waits for one to start (from zero, a model
        loading for minutes) up to the start timeout."""
        handle = await self._stream_handle()
        call = handle.options(stream=False).facts.remote()
        answered = False
        try:
            async with asyncio.timeout(self.policy.start_timeout):
                facts: ReplicaFacts = await call
            answered = True
            return facts
        except TimeoutError:
            raise self._unavailable(
                f"no replica started within {self.policy.start_timeout:g} s",
                RETRY_AFTER_SCALING_S,
            ) from None
        except BackPressureError:
            raise self._overloaded() from None
        except (DeploymentUnavailableError, RayActorError) as exc:
            self._handle = None
            raise self._unavailable(f"its replica was lost ({type(exc).__name__})") from None
        finally:
            if not answered:  # timed out, failed, or given up by the caller
                _cancel(call)

    async def _stream_handle(self) -> Any:
        if self._handle is None:
            try:
                handle = await asyncio.to_thread(serve.get_app_handle, self.alias)
            except RayServeException as exc:
                raise self._unavailable(f"its application is not deployed ({exc})") from None
            self._handle = handle.options(stream=True)
        return self._handle

    def stats(self) -> None:
        """Engine counters live in the replicas (their own metrics), not here."""
        return None

    def _refuse_unless_admitting(self) -> None:
        if self._closed:
            raise EngineClosed(f"the model {self.alias!r} is not served here any more")
        if not self._admitting:
            raise EngineDraining(f"the model {self.alias!r} admits no new requests; retry")

    def _timed_out(self) -> ServingError:
        return ServingError(
            504,
            f"the request ran past --request-timeout {self.policy.request_timeout:g} s",
            code="request_timeout",
        )

    def _unavailable(self, why: str, retry_after: float = RETRY_AFTER_BUSY_S) -> ServingError:
        return ServingError(
            503,
            f"the model {self.alias!r} is not available now: {why}",
            "model",
            code="model_unavailable",
            headers={"Retry-After": str(max(1, round(retry_after)))},
        )

    def _overloaded(self) -> ServingError:
        return ServingError(
            self.policy.overload_status,
            f"the model {self.alias!r} has a full queue; retry later",
            code="overloaded",
            headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
        )


def _cancel(call: Any) -> None:
    """Cancel a Serve call, best effort: one that already failed (its error is on its way
    up) re-raises that error here, and has nothing left to cancel."""
    with contextlib.suppress(RayServeException, RayError):
        call.cancel()


def _loop_time(deadline: float) -> float:
    """A `time.monotonic()` deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())
