"""An approval workflow that waits up to a day for a manager's decision, on a fake clock:
the run suspends (no thread is held while it waits), resumes when the decision arrives, and
a repeated delivery of the decision is stored once.

    python examples/09_approval.py
"""

from __future__ import annotations

import datetime as dt

from durably.testing import FakeClock, create_test_runtime, run_until_idle


def main() -> None:
    clock = FakeClock(start=dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc).timestamp())
    runtime = create_test_runtime(clock=clock)

    def at() -> str:
        return dt.datetime.fromtimestamp(clock.now(), dt.timezone.utc).strftime("%a %H:%M")

    @runtime.step("Expense.reimburse")
    def reimburse(expense: dict, approver: str) -> str:
        return f"paid {expense['amount']} EUR to {expense['who']} (approved by {approver})"

    @runtime.workflow("Expense.approve")
    def approve(expense: dict) -> str:
        runtime.publish("status", "waiting for a manager")
        decision = runtime.wait_for_event("decision", timeout=dt.timedelta(days=1),
                                          default={"approved": False, "by": "nobody"})
        if not decision["approved"]:
            return f"not approved in time ({decision['by']})"
        return reimburse(expense, decision["by"])

    handle = approve.start({"who": "ann", "amount": 120}, run_id="expense-7")
    run_until_idle(runtime, clock, max_time=0)  # until it waits; time does not move
    clock.advance(5 * 3600)  # the morning passes
    record = handle.status()
    print(f"{at()}: expense-7 is {record.status.value}, waiting for {record.waiting_for!r}"
          f" until {dt.datetime.fromtimestamp(record.wake_at or 0, dt.timezone.utc):%a %H:%M}"
          f"; status: {handle.published('status')}")
    first = runtime.send_event("expense-7", "decision", {"approved": True, "by": "bob"},
                               key="form-submission-17")
    again = runtime.send_event("expense-7", "decision", {"approved": True, "by": "bob"},
                               key="form-submission-17")
    print(f"{at()}: decision sent: {first}; sent again (a double click): {again}")
    run_until_idle(runtime, clock)
    print(f"{at()}: {handle.result()}")

    late = approve.start({"who": "cyd", "amount": 80}, run_id="expense-8")
    run_until_idle(runtime, clock)  # nobody answers: a day later the wait times out
    print(f"{at()}: expense-8: {late.result()}")
    runtime.close()


if __name__ == "__main__":
    main()
