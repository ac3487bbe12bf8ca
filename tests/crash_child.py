"""A workflow run in a child process by the crash tests (not collected by pytest).

Usage: python crash_child.py DB LOG BEHAVIOUR
BEHAVIOUR: "normal", "block-in-charge" (hang inside the charge step after logging it) or
"hang-in-retry-wait" (charge fails once; the retry wait hangs instead of sleeping).
Every handler run appends "<step> <attempt> <pid>" to LOG. The result is printed as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from durably import DurableWorkflowRuntime, RetryPolicy, SqliteStepStorage, current_step
from durably.testing import FakeClock

db, log, behaviour = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ready = Path(f"{log}.ready")


def note(name: str) -> None:
    step = current_step()
    assert step is not None
    with log.open("a") as out:
        out.write(f"{name} {step.attempt} {os.getpid()}\n")


class HangingClock:
    """Real time, but a sleep announces itself and never returns (so it can be killed)."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        ready.write_text(f"sleeping {seconds}")
        threading.Event().wait()


clock: Any = HangingClock() if behaviour == "hang-in-retry-wait" else FakeClock(time.time())
runtime = DurableWorkflowRuntime(
    storage=SqliteStepStorage(db),
    retry_policy=RetryPolicy(max_attempts=3, initial_delay=60, max_delay=120, jitter=0),
    workflow_id="order-42",
    clock=clock,
)


@runtime.action("Inventory.reserve")
def reserve(order: dict[str, Any]) -> dict[str, Any]:
    note("reserve")
    return {"reserved": order["items"]}


@runtime.action("Payment.charge")
def charge(order: dict[str, Any]) -> dict[str, Any]:
    note("charge")
    step = current_step()
    assert step is not None
    if behaviour == "block-in-charge":
        ready.write_text("charging")
        threading.Event().wait()
    if behaviour == "hang-in-retry-wait" and step.attempt == 1:
        raise ConnectionError("gateway timeout")
    return {"charged": order["total"], "attempt": step.attempt}


@runtime.action("Shipping.ship")
def ship(order: dict[str, Any]) -> str:
    note("ship")
    return f"shipped {order['id']}"


order = {"id": 42, "items": ["book"], "total": 12.5}
result = [runtime.do("Inventory.reserve", order), runtime.do("Payment.charge", order),
          runtime.do("Shipping.ship", order)]
sleeps = clock.sleeps if isinstance(clock, FakeClock) else []
print(json.dumps({"result": result, "sleeps": sleeps}))
runtime.close()
