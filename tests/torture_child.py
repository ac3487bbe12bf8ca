"""The crash-everywhere harness's child side (not collected by pytest).

Started once per test as ``python torture_child.py``; it imports durably, then serves requests
read from stdin, one JSON object per line::

    {"db": ..., "log": ..., "out": ..., "kill_point": N or null, "kill_after": seconds or null}

For each request it forks a worker that runs the workflow below on SQLite. The worker counts
*points* (before and after every storage write, on entering and leaving every handler, before
every retry wait, inside a send delivery) and SIGKILLs itself at point ``kill_point``;
``kill_after`` makes this process SIGKILL the worker after that many seconds instead. The reply
is one JSON line: ``{"status": "killed" | "exit", "code": int, "points": int}``.

The worker appends to the log, one line per event, before the event's effect:
``enter <action> <attempt>``, ``exit <action> <attempt> <result-json>``,
``failing <action>`` (before a FAILED record is written). On success it writes the workflow's
results to ``out`` and exits 0; if a step gives up it exits 3.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import (
    DurableWorkflowRuntime,
    NonRetryableError,
    RetryAfterError,
    RetryPolicy,
    SqliteStepStorage,
    StepRecord,
    StepStatus,
    WorkflowStepError,
    current_step,
)

MAX_ATTEMPTS = 5
STEPS = ["Order.validate", "Inventory.reserve", "Payment.charge", "Fraud.score",
         "Fraud.manual_review", "Shipping.ship", "Customer.notify"]


class Points:
    """Counts kill points; SIGKILLs this process at the chosen one."""

    def __init__(self, kill_at: int | None) -> None:
        self.kill_at = kill_at
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def run_worker(request: dict[str, Any]) -> int:
    points = Points(request.get("kill_point"))
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def log(line: str) -> None:
        os.write(log_fd, (line + "\n").encode())  # one write(2): whole lines survive a kill

    class InstrumentedStorage(SqliteStepStorage):
        def set(self, record: StepRecord) -> StepRecord:
            if record.status is StepStatus.FAILED:
                log(f"failing {record.action}")
            points()
            stored = super().set(record)
            points()
            return stored

    class PointClock:
        def now(self) -> float:
            return time.time()

        def sleep(self, seconds: float) -> None:
            points()
            time.sleep(seconds)

    runtime = DurableWorkflowRuntime(
        storage=InstrumentedStorage(request["db"]),
        retry_policy=RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_delay=0.004, backoff=1.5,
                                 jitter=0.5),
        workflow_id="order-7",
        clock=PointClock(),
    )

    def step(name: str, behaviour: Any = None) -> None:
        def handler(order: dict[str, Any]) -> Any:
            context = current_step()
            assert context is not None
            log(f"enter {name} {context.attempt}")
            points()
            if behaviour is not None:
                behaviour(context.attempt)
            result = {"step": name, "nonce": uuid.uuid4().hex, "order": order["id"]}
            log(f"exit {name} {context.attempt} {json.dumps(result, sort_keys=True)}")
            points()
            return result

        runtime.register(name, handler)

    def flaky(attempt: int) -> None:
        if attempt <= 2:
            raise ConnectionError(f"inventory service down (attempt {attempt})")

    def rate_limited(attempt: int) -> None:
        if attempt == 1:
            raise RetryAfterError(0.003)

    def declined(attempt: int) -> None:
        raise NonRetryableError("score above threshold")

    for name, behaviour in [("Order.validate", None), ("Inventory.reserve", flaky),
                            ("Payment.charge", rate_limited), ("Fraud.score", declined),
                            ("Fraud.manual_review", None), ("Shipping.ship", None),
                            ("Customer.notify", None)]:
        step(name, behaviour)
    runtime.on("Order.*", lambda order: points())

    order = {"id": 7, "items": ["a", "b"], "total": 30}
    results: dict[str, Any] = {}
    try:
        for name in ["Order.validate", "Inventory.reserve", "Payment.charge"]:
            results[name] = runtime.do(name, order)
        try:
            results["Fraud.score"] = runtime.do("Fraud.score", order)
        except WorkflowStepError:
            results["Fraud.manual_review"] = runtime.do("Fraud.manual_review", order)
        runtime.send("Order.paid", order)
        for name in ["Shipping.ship", "Customer.notify"]:
            results[name] = runtime.do(name, order)
    except WorkflowStepError:
        runtime.close()
        return 3
    runtime.close()
    Path(request["out"]).write_text(json.dumps({"results": results, "points": points.count}))
    return 0


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the worker
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            code = 1
            try:
                code = run_worker(request)
            finally:
                os._exit(code)
        killed_by_us = False
        finished, status = 0, 0
        if request.get("kill_after") is not None:
            deadline = time.monotonic() + request["kill_after"]
            while not finished and time.monotonic() < deadline:
                finished, status = os.waitpid(pid, os.WNOHANG)
                if not finished:
                    time.sleep(0.0005)
            if not finished:
                os.kill(pid, signal.SIGKILL)
                killed_by_us = True
        if not finished:
            _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            reply = {"status": "killed", "code": -os.WTERMSIG(status), "by": "timer"
                     if killed_by_us else "point"}
        else:
            reply = {"status": "exit", "code": os.WEXITSTATUS(status)}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve()
