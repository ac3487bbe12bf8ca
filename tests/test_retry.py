"""RetryPolicy validation, the delay schedule and the retry decision."""

from __future__ import annotations

import random
from typing import Any

import pytest

from durably import (
    ConfigurationError,
    HandlerNotFoundError,
    NonRetryableError,
    RetryAfterError,
    RetryPolicy,
    SerializationError,
)
from durably._retry import backoff_delay, decide_retry, jitter_fraction


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0), ("max_attempts", 1.5), ("max_attempts", True),
        ("initial_delay", -1), ("initial_delay", float("inf")), ("initial_delay", "1"),
        ("backoff", 0.5), ("backoff", float("nan")),
        ("max_delay", -0.1),
        ("jitter", 1.5), ("jitter", -0.1),
        ("timeout", 0), ("timeout", -1), ("max_elapsed", 0), ("max_elapsed", float("inf")),
        ("non_retryable", (ValueError, "nope")), ("non_retryable", "ValueError"),
        ("retry_if", 42),
    ],
)
def test_invalid_fields_raise_configuration_error_naming_the_field(field: str, value: Any) -> None:
    """Each rule is checked when the policy is built; the error names field and value."""
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**{field: value})
    assert caught.value.field == field
    assert f"RetryPolicy.{field}" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_non_retryable_accepts_a_list() -> None:
    """A list of exception types is stored as a tuple (the policy stays hashable)."""
    policy = RetryPolicy(non_retryable=[KeyError])  # type: ignore[arg-type]
    assert policy.non_retryable == (KeyError,)
    hash(policy)


def test_delays_follow_the_formula() -> None:
    """delays() is min(max_delay, initial * backoff ** (k - 1)) without jitter."""
    policy = RetryPolicy(max_attempts=6, initial_delay=1, backoff=2, max_delay=10)
    assert policy.delays() == [1, 2, 4, 8, 10]
    assert RetryPolicy(max_attempts=1).delays() == []


def _random_policy(rng: random.Random) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=rng.randint(1, 40),
        initial_delay=rng.choice([0, rng.uniform(0, 5), rng.uniform(0, 1000)]),
        backoff=rng.choice([1.0, rng.uniform(1, 4), rng.uniform(1, 1e6)]),
        max_delay=rng.choice([0, rng.uniform(0, 60), 1e9]),
        jitter=rng.choice([0, 1, rng.random()]),
    )


@pytest.mark.parametrize("seed", range(60))
def test_random_policies_keep_delays_in_bounds(seed: int) -> None:
    """Jittered delays are never negative, never above max_delay, and reproducible."""
    rng = random.Random(seed)
    policy = _random_policy(rng)
    for k in range(1, policy.max_attempts + 1):
        u = jitter_fraction("wf", f"s{seed}", k)
        delay = backoff_delay(policy, k, u)
        assert 0 <= delay <= policy.max_delay
        assert delay == backoff_delay(policy, k, jitter_fraction("wf", f"s{seed}", k))
    assert all(0 <= d <= policy.max_delay for d in policy.delays())


@pytest.mark.parametrize("seed", range(20))
def test_constant_backoff_gives_constant_delays(seed: int) -> None:
    """backoff == 1 means every delay (before jitter) is the same."""
    rng = random.Random(seed)
    policy = RetryPolicy(max_attempts=rng.randint(2, 20), initial_delay=rng.uniform(0, 9),
                         backoff=1.0, max_delay=10)
    assert len(set(policy.delays())) == 1


def test_huge_exponents_are_capped_not_overflowing() -> None:
    """A backoff that overflows a float still gives max_delay."""
    policy = RetryPolicy(max_attempts=5000, backoff=1e6, max_delay=7, jitter=0)
    assert backoff_delay(policy, 4000, 0.0) == 7


def test_jitter_is_seeded_by_workflow_step_and_retry() -> None:
    """The draw is stable for the same inputs and differs when any of them changes."""
    base = jitter_fraction("wf", "s", 1)
    assert 0 <= base < 1 and base == jitter_fraction("wf", "s", 1)
    assert len({base, jitter_fraction("wf2", "s", 1), jitter_fraction("wf", "t", 1),
                jitter_fraction("wf", "s", 2)}) == 4


def _decide(policy: RetryPolicy, error: BaseException, attempts: int = 1, now: float = 0.0,
            budget_started_at: float = 0.0) -> Any:
    return decide_retry(policy, attempts=attempts, error=error, now=now,
                        budget_started_at=budget_started_at, workflow_id="wf", step_id="s")


def test_ordinary_errors_retry_until_attempts_are_used() -> None:
    """A retryable error retries while attempts remain, with the jittered schedule."""
    policy = RetryPolicy(max_attempts=3, initial_delay=2, jitter=0)
    assert _decide(policy, ValueError(), attempts=1).delay == 2
    assert _decide(policy, ValueError(), attempts=2).delay == 4
    final = _decide(policy, ValueError(), attempts=3)
    assert not final.retry and "max_attempts=3" in final.reason


@pytest.mark.parametrize(
    ("policy", "error"),
    [
        (RetryPolicy(), NonRetryableError("no")),
        (RetryPolicy(), HandlerNotFoundError("A.b")),
        (RetryPolicy(), SerializationError("bad")),
        (RetryPolicy(non_retryable=(KeyError,)), KeyError("k")),
        (RetryPolicy(retry_if=lambda e: not isinstance(e, OSError)), OSError("disk")),
        (RetryPolicy(retry_if=lambda e: 1 / 0 > 0), ValueError("x")),
    ],
)
def test_never_retried_errors_stop_at_once(policy: RetryPolicy, error: BaseException) -> None:
    """Non-retryable errors end the step on the first attempt and say why."""
    decision = _decide(policy, error)
    assert not decision.retry and decision.reason


def test_retry_after_overrides_backoff_and_retry_if() -> None:
    """RetryAfterError's delay is used as is (no jitter), capped, negative becomes zero."""
    policy = RetryPolicy(max_delay=10, retry_if=lambda e: False)
    assert _decide(policy, RetryAfterError(3.5)).delay == 3.5
    assert _decide(policy, RetryAfterError(99)).delay == 10
    assert _decide(policy, RetryAfterError(-5)).delay == 0
    assert not _decide(RetryPolicy(max_attempts=1), RetryAfterError(1)).retry


def test_max_elapsed_stops_a_retry_that_would_start_too_late() -> None:
    """No retry is scheduled when now + delay - budget start passes max_elapsed."""
    policy = RetryPolicy(max_attempts=10, initial_delay=5, backoff=1, jitter=0, max_elapsed=12)
    assert _decide(policy, ValueError(), now=7, budget_started_at=0).retry
    late = _decide(policy, ValueError(), now=7.5, budget_started_at=0)
    assert not late.retry and "max_elapsed" in late.reason
