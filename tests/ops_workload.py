"""A store made by a real workload, for the command-line tests and docs/operations.md's
transcripts (not collected by pytest).

    python tests/ops_workload.py PATH     # builds PATH and prints the time to pass as --now

Everything runs on a FakeClock from 2026-12-01 09:00 UTC, so the store is the same on every
build: run ids, step ids, times and errors (tracebacks aside: they name files and depend on
the Python version).

It holds runs of ``Order.process`` (reserve, charge, then wait for approval and ship):

* ``order-1`` COMPLETED;
* ``order-2`` FAILED: its card was declined at ``charge``;
* ``order-3`` SUSPENDED, waiting for the event ``approved``, having published its status;
* ``order-4`` CANCELLED while it waited;
* ``order-5`` RUNNING on ``worker-b``, whose lease ran out (the process died): stale;

and two steps outside runs, of the wave-1 workflow ``nightly-report``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import DurableWorkflowRuntime, RetryPolicy, SqliteStepStorage
from durably.testing import FakeClock

START = 1796115600.0  # 2026-12-01 09:00:00 UTC


class CardDeclined(Exception):
    """The payment provider said no."""


def build(path: Path) -> float:
    """Make the store at ``path``; return the moment the transcripts are printed at."""
    clock = FakeClock(start=START)
    # Runs are submitted by a process that does not run them, and executed by run_due() in
    # this thread: no worker threads, so every time in the store is the same on every build.
    submitter = DurableWorkflowRuntime(storage=SqliteStepStorage(path), clock=clock,
                                       workflow_id="nightly-report")
    worker = DurableWorkflowRuntime(storage=SqliteStepStorage(path), clock=clock,
                                    executor_id="worker-a", suspend_after=0,
                                    retry_policy=RetryPolicy(max_attempts=2, initial_delay=1))

    @worker.step("Order.reserve")
    def reserve(order: dict) -> str:
        clock.advance(0.2)
        return f"shelf-{order['id']}"

    @worker.step("Order.charge")
    def charge(order: dict) -> dict:
        clock.advance(0.5)
        if order["card"] == "declined":
            raise CardDeclined(f"card ending {order['id']}0 was declined")
        return {"charged": order["total"]}

    @worker.step("Order.ship")
    def ship(order: dict) -> str:
        clock.advance(1.5)
        return f"parcel-{order['id']}"

    @worker.workflow("Order.process")
    def process(order: dict) -> dict:
        shelf = reserve(order)
        payment = charge(order)
        worker.publish("status", "waiting for approval")
        approval = worker.wait_for_event("approved", timeout=86400)
        worker.publish("status", "approved")
        return {"shelf": shelf, "payment": payment, "by": approval["by"],
                "parcel": ship(order)}

    orders = [{"id": n, "total": 10 * n, "card": "declined" if n == 2 else "ok"}
              for n in range(1, 6)]
    for order in orders[:4]:
        submitter.start("Order.process", order, run_id=f"order-{order['id']}")
        clock.advance(60)
    submitter.send_event("order-1", "approved", {"by": "ann"}, key="webhook-1")
    worker.run_due()
    clock.advance(600)
    submitter.get_run("order-4").cancel()

    # order-5 is claimed by a worker that dies at once: RUNNING, with a lease that runs out.
    submitter.start("Order.process", orders[4], run_id="order-5")
    storage = SqliteStepStorage(path)
    storage.claim("worker-b", clock.now(), 30.0, run_id="order-5")
    storage.close()

    submitter.register("Report.collect", lambda data: 42)
    submitter.register("Report.mail", lambda data: "sent")
    submitter.do("Report.collect", {"day": "2026-11-30"})
    submitter.do("Report.mail", {"to": "ops@example.com"})
    clock.advance(3600)
    worker.close()
    submitter.close()
    return clock.now()


if __name__ == "__main__":
    print(build(Path(sys.argv[1])))
