"""The retry policy and the pure functions that answer "retry or stop?" and "how long to wait?".

Nothing here sleeps, reads a clock or touches storage: the runtime passes in the attempt count,
the error and the times, and gets a :class:`RetryDecision` back. That keeps every rule testable
with plain values.

Delay before retry ``k`` (``k = 1`` after the first failure)::

    d = min(max_delay, initial_delay * backoff ** (k - 1))
    delay = d * (1 - jitter * u)        # u in [0, 1), seeded by (workflow id, step id, k)

so a delay is never above ``max_delay`` and never negative, and the same step gets the same
schedule in every process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import (
    ConfigurationError,
    HandlerNotFoundError,
    NonRetryableError,
    RetryAfterError,
    SerializationError,
    describe,
)

__all__ = [
    "MAX_SECONDS", "RETRY_AT_ONCE", "RetryDecision", "RetryPolicy", "backoff_delay",
    "decide_retry", "jitter_fraction", "requested_delay",
]

MAX_SECONDS = float(threading.TIMEOUT_MAX)
"""The longest delay or timeout a policy may ask for: what ``time.sleep`` and a thread's
``join`` accept on this platform (about 292 years on 64-bit Linux)."""

# Programming errors: another attempt cannot fix them. (ConfigurationError reaches here when a
# sync handler returns a coroutine by mistake.)
_NEVER_RETRIED: tuple[type[BaseException], ...] = (
    NonRetryableError, HandlerNotFoundError, SerializationError, ConfigurationError,
)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, field: str, rule: str, value: object) -> None:
    if not ok:
        raise ConfigurationError(f"RetryPolicy.{field} {rule}, got {value!r}", field=field)


def _exception_types(policy: RetryPolicy, name: str, allow_none: bool) -> None:
    """Normalise ``non_retryable`` / ``retry_on``: one class, or a tuple, list or set of them."""
    value = getattr(policy, name)
    if value is None and allow_none:
        return
    if isinstance(value, type):
        value = (value,)
    elif isinstance(value, (list, set, frozenset)):
        value = tuple(value)
    _require(isinstance(value, tuple) and all(
        isinstance(kind, type) and issubclass(kind, BaseException) for kind in value),
        name, "must be an exception class or a tuple of them", getattr(policy, name))
    object.__setattr__(policy, name, value)


def _seconds(policy: RetryPolicy, name: str) -> None:
    """Accept a ``timedelta`` for a duration: store it as float seconds."""
    value = getattr(policy, name)
    if isinstance(value, dt.timedelta):
        object.__setattr__(policy, name, value.total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a durable step is retried.

    Args:
        max_attempts: total attempts, the first included; at least 1.
        initial_delay: seconds (or a ``timedelta``) before the first retry; at least 0.
        backoff: multiplier per retry; at least 1 (1 gives a constant delay).
        max_delay: cap on one delay, jitter included; at least 0.
        jitter: fraction (0 to 1) of each delay that is randomised downwards.
        timeout: per-attempt limit in seconds (real time), or ``None``.
        max_elapsed: no retry is scheduled that would start later than this many seconds
            after the first attempt of the budget; ``None`` for no limit.
        non_retryable: exception types (or one type) that fail the step at once.
        retry_if: a plain function of the error; returning False fails the step at once.
        retry_on: when set, only errors of these types (or this type) are retried.

    Every duration accepts a ``datetime.timedelta`` and is stored as float seconds, and may
    be at most :data:`MAX_SECONDS` (what the platform can wait for).

    Raises:
        ConfigurationError: a field is out of range; the message names the field and the rule.
    """

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.25
    timeout: float | None = None
    max_elapsed: float | None = None
    non_retryable: tuple[type[BaseException], ...] = ()
    retry_if: Callable[[BaseException], bool] | None = None
    retry_on: tuple[type[BaseException], ...] | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.max_attempts, int) and not isinstance(self.max_attempts, bool)
                 and self.max_attempts >= 1, "max_attempts", "must be an int >= 1",
                 self.max_attempts)
        for name in ("initial_delay", "max_delay", "timeout", "max_elapsed"):
            _seconds(self, name)
        for name, low in (("initial_delay", 0.0), ("backoff", 1.0), ("max_delay", 0.0)):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value) and value >= low, name,
                     f"must be a finite number >= {low:g}", value)
        for name in ("initial_delay", "max_delay"):
            _require(getattr(self, name) <= MAX_SECONDS, name,
                     f"must be at most {MAX_SECONDS:g} s (the longest wait the platform"
                     " supports)", getattr(self, name))
        _require(_is_number(self.jitter) and 0 <= self.jitter <= 1, "jitter",
                 "must be a number from 0 to 1", self.jitter)
        for name in ("timeout", "max_elapsed"):
            value = getattr(self, name)
            _require(value is None or (_is_number(value) and math.isfinite(value) and value > 0),
                     name, "must be None or a finite number > 0", value)
        _require(self.timeout is None or self.timeout <= MAX_SECONDS, "timeout",
                 f"must be at most {MAX_SECONDS:g} s (the longest wait the platform supports)",
                 self.timeout)
        _exception_types(self, "non_retryable", allow_none=False)
        _exception_types(self, "retry_on", allow_none=True)
        _require(self.retry_if is None or callable(self.retry_if), "retry_if",
                 "must be None or a callable taking the error", self.retry_if)
        _require(not (inspect.iscoroutinefunction(self.retry_if) or inspect.iscoroutinefunction(
            getattr(self.retry_if, "__call__", None))), "retry_if",  # noqa: B004 - the method
                 "must be a plain function: it is called between attempts, and a coroutine it"
                 " returned would count as true", self.retry_if)

    def delays(self) -> list[float]:
        """Return the delay before each retry, without jitter (``max_attempts - 1`` values)."""
        return [backoff_delay(self, k, 0.0) for k in range(1, self.max_attempts)]


class RetryDecision:
    """The answer to "retry or stop?" after a failed attempt (immutable by convention).

    A slotted class rather than a frozen dataclass: one is made per failed attempt, and a
    frozen dataclass's ``__init__`` costs several times more.

    Attributes:
        retry: whether another attempt is scheduled.
        delay: seconds to wait before it (0 when ``retry`` is False).
        reason: why the step stops, in words (empty when it retries).
    """

    __slots__ = ("delay", "reason", "retry")

    def __init__(self, retry: bool, delay: float = 0.0, reason: str = "") -> None:
        self.retry = retry
        self.delay = delay
        self.reason = reason

    def __repr__(self) -> str:
        return f"RetryDecision(retry={self.retry}, delay={self.delay}, reason={self.reason!r})"


RETRY_AT_ONCE = RetryDecision(True)
"""The decision of every retry without a wait (the common case of a zero initial delay):
``decide_retry`` returns this very object, so a caller may test for it with ``is``."""


def jitter_fraction(workflow_id: str, step_id: str, retry_number: int) -> float:
    """Return ``u`` in [0, 1) for one retry: the same in every process and every run."""
    seed = f"{workflow_id}\x00{step_id}\x00{retry_number}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(seed).digest()[:8], "big") / 2.0**64


def backoff_delay(policy: RetryPolicy, retry_number: int, u: float) -> float:
    """Return the delay before retry ``retry_number`` (1-based) given the jitter draw ``u``."""
    if policy.initial_delay == 0:
        return 0.0  # zero times any factor, even one too large for a float
    try:
        raw = policy.initial_delay * policy.backoff ** (retry_number - 1)
    except OverflowError:
        raw = math.inf
    return min(policy.max_delay, raw) * (1.0 - policy.jitter * u)


def requested_delay(policy: RetryPolicy, requested: object) -> float:
    """The wait a ``RetryAfterError(requested)`` gets: the number, capped at ``max_delay``; a
    negative, NaN or non-numeric request counts as zero, and one too large for a float as the
    cap."""
    if not _is_number(requested):
        return 0.0
    try:
        delay = float(requested)  # type: ignore[arg-type]
    except OverflowError:  # an int past the float range: the cap
        return policy.max_delay
    if delay != delay:  # NaN
        return 0.0
    return min(policy.max_delay, max(0.0, delay))


def _retryable(policy: RetryPolicy, error: BaseException) -> tuple[bool, str]:
    if isinstance(error, _NEVER_RETRIED):
        return False, f"{type(error).__name__} is never retried"
    if policy.non_retryable and isinstance(error, policy.non_retryable):
        return False, f"{type(error).__name__} is listed in non_retryable"
    if isinstance(error, RetryAfterError):  # the handler's explicit request
        return True, ""
    if policy.retry_on is not None and not isinstance(error, policy.retry_on):
        names = ", ".join(kind.__name__ for kind in policy.retry_on)
        return False, f"{type(error).__name__} is not in retry_on ({names})"
    if policy.retry_if is not None:
        try:
            wanted = policy.retry_if(error)
        except Exception as problem:  # a broken predicate must not leave the step RUNNING
            return False, f"retry_if raised {describe(problem)}"
        if not wanted:
            return False, "retry_if returned False"
    return True, ""


def decide_retry(
    policy: RetryPolicy,
    *,
    attempts: int,
    error: BaseException,
    now: float,
    budget_started_at: float,
    workflow_id: str,
    step_id: str,
) -> RetryDecision:
    """Decide whether a step whose attempt number ``attempts`` just failed gets another one.

    Args:
        policy: the policy in force.
        attempts: attempts used so far in this budget, the failed one included.
        error: what the attempt raised.
        now: the current time.
        budget_started_at: when the first attempt of the budget started.
        workflow_id: seeds the jitter, with ``step_id`` and the retry number.
        step_id: the failing step.
    """
    retryable, reason = _retryable(policy, error)
    if not retryable:
        return RetryDecision(False, reason=reason)
    if attempts >= policy.max_attempts:
        return RetryDecision(False, reason=f"max_attempts={policy.max_attempts}")
    if isinstance(error, RetryAfterError):
        delay = requested_delay(policy, error.delay)
    elif policy.jitter == 0 or policy.initial_delay == 0 or policy.max_delay == 0:
        delay = backoff_delay(policy, attempts, 0.0)  # nothing to randomise: skip the hash
    else:
        delay = backoff_delay(policy, attempts, jitter_fraction(workflow_id, step_id, attempts))
    if policy.max_elapsed is not None and now + delay - budget_started_at > policy.max_elapsed:
        return RetryDecision(
            False, reason=f"the next attempt would start past max_elapsed={policy.max_elapsed} s"
        )
    return RETRY_AT_ONCE if delay == 0 else RetryDecision(True, delay=delay)
