"""Retries: a flaky action with exponential backoff, and an error that is never retried.

    python examples/03_retries.py
"""

from __future__ import annotations

import time

from durably import (
    DurableWorkflowRuntime,
    NonRetryableError,
    RetryPolicy,
    WorkflowStepError,
    current_step,
)


class CardDeclined(NonRetryableError):
    """A business error: retrying cannot help."""


def main() -> None:
    policy = RetryPolicy(max_attempts=4, initial_delay=0.05, backoff=2, max_delay=1, jitter=0.2)
    print(f"backoff schedule before jitter: {policy.delays()} s")
    runtime = DurableWorkflowRuntime(retry_policy=policy, workflow_id="retries-demo")
    started = time.monotonic()

    @runtime.action("Rates.fetch")
    def fetch(currency: str) -> float:
        step = current_step()
        assert step is not None
        elapsed = time.monotonic() - started
        print(f"  attempt {step.attempt}/{step.max_attempts} at {elapsed:.2f} s")
        if step.attempt < 3:
            raise ConnectionError("upstream unavailable")
        return 1.08

    @runtime.action("Payment.charge")
    def charge(amount: float) -> None:
        print(f"  charging {amount}: declined")
        raise CardDeclined("insufficient funds")

    print("a flaky action succeeds on its third attempt:")
    print(f"  rate = {runtime.do('Rates.fetch', 'EUR')}")

    print("a non-retryable error fails at once:")
    try:
        runtime.do("Payment.charge", 99.0)
    except WorkflowStepError as error:
        print(f"  {type(error).__name__} after {error.attempts} attempt: {error.__cause__!r}")
    runtime.close()


if __name__ == "__main__":
    main()
