"""One retry layer for every judge API call, and an adaptive concurrency limit.

The SDKs' own retries are switched off (``max_retries=0``) so that this layer
alone decides: it retries 408, 409, 429, 5xx (529 included), timeouts and
connection errors with jittered exponential backoff, and waits as long as a
``retry-after-ms`` or ``Retry-After`` header requests. A 429 also halves the
number of requests in flight, which then grows back by one per window of
successes (additive increase, multiplicative decrease).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections import Counter
from typing import AsyncIterator, Awaitable, Callable, TypeVar

import anthropic
import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from study.judge.config import ConcurrencySettings, RetrySettings

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUS_CODES = frozenset({408, 409, 429})
CONNECTION_ERRORS = (openai.APIConnectionError, anthropic.APIConnectionError, asyncio.TimeoutError)
TIMEOUT_ERRORS = (openai.APITimeoutError, anthropic.APITimeoutError, asyncio.TimeoutError)
STATUS_ERRORS = (openai.APIStatusError, anthropic.APIStatusError)


def status_code_of(error: BaseException) -> int | None:
    return getattr(error, "status_code", None) if isinstance(error, STATUS_ERRORS) else None


def request_id_of(error: BaseException) -> str | None:
    """Return the provider's request id (x-request-id or request-id header), if any."""
    return getattr(error, "request_id", None)


def is_retryable(error: BaseException) -> bool:
    if isinstance(error, CONNECTION_ERRORS):
        return True
    status = status_code_of(error)
    return status is not None and (status in RETRY_STATUS_CODES or status >= 500)


def failure_kind(error: BaseException) -> str:
    """Name the failure for logs and counters: an HTTP status, timeout or connection."""
    if isinstance(error, TIMEOUT_ERRORS):
        return "timeout"
    if isinstance(error, CONNECTION_ERRORS):
        return "connection"
    status = status_code_of(error)
    return str(status) if status is not None else type(error).__name__


def retry_after_seconds(error: BaseException) -> float | None:
    """Return the wait in seconds that a response requests in retry-after-ms or Retry-After."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if name == "retry-after" else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        return max(0.0, seconds)
    return None


class AdaptiveLimiter:
    """A concurrency limit that halves on a 429 and grows back additively.

    Only the first 429 among requests started under the same limit shrinks
    it, so one burst of rate-limit replies counts as one congestion signal.
    """

    def __init__(self, settings: ConcurrencySettings):
        self.settings = settings
        self.limit = float(settings.initial)
        self.in_flight = 0
        self.max_in_flight_seen = 0
        self.decreases = 0
        self._epoch = 0
        self._condition = asyncio.Condition()

    @property
    def current(self) -> int:
        return max(self.settings.min, int(self.limit))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[dict]:
        """Hold one request slot; set ``outcome`` in the yielded dict to 'ok' or 'rate_limited'."""
        async with self._condition:
            while self.in_flight >= self.current:
                await self._condition.wait()
            self.in_flight += 1
            self.max_in_flight_seen = max(self.max_in_flight_seen, self.in_flight)
            handle = {"epoch": self._epoch, "outcome": "other"}
        try:
            yield handle
        finally:
            async with self._condition:
                self.in_flight -= 1
                self._adjust(handle)
                self._condition.notify_all()

    def _adjust(self, handle: dict) -> None:
        settings = self.settings
        if handle["outcome"] == "rate_limited":
            if handle["epoch"] == self._epoch:
                before = self.current
                self.limit = max(float(settings.min), self.limit * settings.decrease_factor)
                self._epoch += 1
                self.decreases += 1
                log.info("rate limited: concurrency %d -> %d", before, self.current)
        elif handle["outcome"] == "ok":
            self.limit = min(float(settings.max), self.limit + settings.increase / max(self.limit, 1.0))


class Retrier:
    """Runs API calls under the retry policy and the adaptive limiter, counting retries."""

    def __init__(self, retry: RetrySettings, concurrency: ConcurrencySettings):
        self.settings = retry
        self.limiter = AdaptiveLimiter(concurrency)
        self.retries: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        requested = retry_after_seconds(error) if error else None
        if requested is not None:
            return requested
        ceiling = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (state.attempt_number - 1))
        # Full jitter spreads clients that failed together.
        return random.uniform(0.0, ceiling)

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.settings.max_attempts:
            return True
        error = state.outcome.exception() if state.outcome else None
        requested = retry_after_seconds(error) if error else None
        return requested is not None and requested > self.settings.retry_after_max_s

    async def call(self, request: Callable[[], Awaitable[T]], label: str) -> T:
        """Send ``request`` until it succeeds, a non-retryable error occurs or retries run out.

        ``label`` names the judgment in the logs. The last error is re-raised
        after it is logged with the provider's request id.
        """

        def log_retry(state: RetryCallState) -> None:
            error = state.outcome.exception()
            kind = failure_kind(error)
            self.retries[kind] += 1
            log.warning(
                "%s: attempt %d failed (%s, request id %s); retrying in %.2f s",
                label, state.attempt_number, kind, request_id_of(error) or "none",
                state.upcoming_sleep,
            )

        retrying = AsyncRetrying(
            stop=self._stop,
            wait=self._wait,
            retry=retry_if_exception(is_retryable),
            before_sleep=log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    async with self.limiter.slot() as slot:
                        try:
                            result = await request()
                        except BaseException as error:
                            if status_code_of(error) == 429:
                                slot["outcome"] = "rate_limited"
                            raise
                        slot["outcome"] = "ok"
        except Exception as error:
            kind = failure_kind(error)
            self.failures[kind] += 1
            log.error(
                "%s: failed after %d attempt(s) (%s, request id %s): %s",
                label, retrying.statistics.get("attempt_number", 1), kind,
                request_id_of(error) or "none", _short(error),
            )
            raise
        return result


def _short(error: BaseException) -> str:
    text = str(error).replace("\n", " ")
    return text[:200]
