"""Events: fire-and-forget delivery to subscribers with wildcard patterns.

    python examples/04_events.py
"""

from __future__ import annotations

import logging
import threading

from durably import DurableWorkflowRuntime


def _drop_traceback(record: logging.LogRecord) -> bool:
    record.exc_info = None
    return True


def main() -> None:
    # A subscriber's error is also logged on the "durably" logger; show it as one short line.
    logging.basicConfig(format="log: %(levelname)s %(message)s")
    logging.getLogger("durably").addFilter(_drop_traceback)
    lock = threading.Lock()
    received: list[str] = []

    def record(line: str) -> None:
        with lock:
            received.append(line)

    def failing_subscriber(order: dict[str, object]) -> None:
        raise RuntimeError("the mailer is down")

    errors: list[str] = []
    runtime = DurableWorkflowRuntime(
        on_step_error=lambda step_id, error, attempt: errors.append(str(error)))
    runtime.on("Order.created", lambda order: record(f"mailer: order {order['id']} created"))
    runtime.on("Order.*", lambda order: record(f"audit: Order.* saw order {order['id']}"))
    runtime.on("**", lambda order: record("metrics: ** saw an event"))
    unsubscribe = runtime.on("*.created", lambda order: record("*.created saw it"))
    runtime.on("Order.created", failing_subscriber)

    runtime.send("Order.created", {"id": 1})   # returns at once; delivery is in the background
    runtime.flush()                              # wait for every delivery
    unsubscribe()
    runtime.send("Order.paid", {"id": 1})
    runtime.flush()

    for line in sorted(received):
        print(line)
    print(f"subscriber errors reported to on_step_error, never raised: {errors}")
    runtime.close()


if __name__ == "__main__":
    main()
