"""A process that owns, loses or recovers workflow runs, for tests/test_runs_processes.py.

    python run_child.py DB LOG MODE [options as KEY=VALUE ...]

Every step body appends "<step> <pid>" to LOG (one write per line, so lines of several
processes never interleave). Modes:

* ``run``: run the order workflow as run "r1" and print its result as JSON.
* ``recover``: call recover() once and wait for the runs it claimed; print the report.
* ``recover-loop``: call recover() every 0.1 s for ``seconds``; print how many it claimed.
* ``threads``: ``threads`` threads start "r1" at ``at`` (epoch seconds) and wait; print
  the results.
* ``die-before-claim``: start "r1" with a storage that dies after the run is created, before
  it is claimed.
* ``poison``: start or recover the poison workflow, which kills its process every time.
* ``async-run`` / ``async-recover``: ``run`` and ``recover`` with AsyncDurableWorkflowRuntime.

DB is a SQLite file, or ``postgres:SCHEMA`` for a schema on the server of DURABLY_TEST_PG_DSN.

Options: ``lease`` (seconds, default 1), ``kill_after`` (SIGKILL itself after that many
steps), ``block_in`` (the step that prints "ready" and sleeps ``block`` seconds),
``attempts`` (max_attempts of every step, default 3).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from durably import (
    DurableWorkflowRuntime,
    OwnershipLost,
    RetryPolicy,
    SqliteStepStorage,
)

STEPS = ("reserve", "charge", "pack", "ship")


def log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DiesBeforeClaim(SqliteStepStorage):
    """Dies in its first claim: after start() committed the run, before it claimed it."""

    def claim(self, *args: object, **kwargs: object) -> list:  # type: ignore[override]
        die()
        return []


EXECUTOR = f"child-{os.getpid()}"


def open_storage(db: str, storage_class: type[SqliteStepStorage] = SqliteStepStorage) -> object:
    """``DB`` is a SQLite path, or ``postgres:SCHEMA`` on the server of DURABLY_TEST_PG_DSN
    (whose connections carry the executor id as their application_name, for audits)."""
    if db.startswith("postgres:"):
        from durably.postgres import PostgresStorage

        dsn = f"{os.environ['DURABLY_TEST_PG_DSN']} application_name={EXECUTOR}"
        return PostgresStorage(dsn, schema=db.split(":", 1)[1])
    return storage_class(db, busy_timeout=30)


def build(db: str, logfile: str, options: dict[str, str],
          storage_class: type[SqliteStepStorage] = SqliteStepStorage
          ) -> tuple[DurableWorkflowRuntime, object, object]:
    lease = float(options.get("lease", "1"))
    runtime = DurableWorkflowRuntime(
        storage=open_storage(db, storage_class),  # type: ignore[arg-type]
        executor_id=EXECUTOR,
        retry_policy=RetryPolicy(max_attempts=int(options.get("attempts", "3")),
                                 initial_delay=0),
        lease=lease, shutdown_timeout=0.5)
    kill_after = int(options.get("kill_after", "0"))
    block_in = options.get("block_in")
    block = float(options.get("block", "0"))

    def make_step(name: str):
        def step(order_id: int) -> str:
            log(logfile, f"{name} {os.getpid()}")
            if name == block_in:
                print("ready", flush=True)
                time.sleep(block)
            return f"{name} {order_id}"
        return step

    for name in STEPS:
        runtime.register(f"Order.{name}", make_step(name))

    @runtime.workflow("Order.process")
    def process(order: dict) -> dict:
        done = {}
        for count, name in enumerate(STEPS, 1):
            try:
                done[name] = runtime.do(f"Order.{name}", order["id"])
            except OwnershipLost:
                log(logfile, f"lost {os.getpid()}")
                raise
            if count == kill_after:
                die()
        return done

    @runtime.workflow("Poison.flow", max_recoveries=int(options.get("recoveries", "2")))
    def poison(n: int) -> None:
        log(logfile, f"poison {os.getpid()}")
        die()

    return runtime, process, poison


def main_async(db: str, logfile: str, mode: str, options: dict[str, str]) -> None:
    """The same order workflow on AsyncDurableWorkflowRuntime: ``async-run`` (killed after
    ``kill_after`` steps) and ``async-recover``."""
    import asyncio

    from durably import AsyncDurableWorkflowRuntime

    async def run() -> None:
        runtime = AsyncDurableWorkflowRuntime(
            storage=SqliteStepStorage(db), lease=float(options.get("lease", "1")),
            retry_policy=RetryPolicy(max_attempts=3, initial_delay=0), shutdown_timeout=0.5)
        kill_after = int(options.get("kill_after", "0"))
        for name in STEPS:
            async def step(order_id: int, name: str = name) -> str:
                log(logfile, f"{name} {os.getpid()}")
                return f"{name} {order_id}"

            runtime.register(f"Order.{name}", step)

        @runtime.workflow("Order.process")
        async def process(order: dict) -> dict:
            done = {}
            for count, name in enumerate(STEPS, 1):
                done[name] = await runtime.do(f"Order.{name}", order["id"])
                if count == kill_after:
                    die()
            return done

        if mode == "async-run":
            print(json.dumps(await process.run({"id": 7}, run_id="r1")), flush=True)
        else:
            report = await runtime.recover()
            for run_id in report.claimed:
                await (await runtime.get_run(run_id)).result(timeout=60)
            print(json.dumps({"claimed": report.claimed}), flush=True)
        await runtime.aclose()

    asyncio.run(run())


def main() -> None:
    db, logfile, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode.startswith("async-"):
        main_async(db, logfile, mode, dict(arg.split("=", 1) for arg in sys.argv[4:]))
        return
    options = dict(arg.split("=", 1) for arg in sys.argv[4:])
    storage_class = DiesBeforeClaim if mode == "die-before-claim" else SqliteStepStorage
    runtime, process, poison = build(db, logfile, options, storage_class)
    if mode in ("run", "die-before-claim"):
        result = process.run({"id": 7}, run_id="r1")  # type: ignore[attr-defined]
        print(json.dumps(result), flush=True)
    elif mode == "recover":
        report = runtime.recover()
        for run_id in report.claimed:
            runtime.get_run(run_id).result(timeout=60)
        print(json.dumps({"claimed": report.claimed, "failed": report.failed,
                          "skipped": report.skipped_unknown}), flush=True)
    elif mode == "recover-loop":
        claimed: list[str] = []
        until = time.monotonic() + float(options["seconds"])
        while time.monotonic() < until:
            claimed.extend(runtime.recover().claimed)
            time.sleep(0.1)
        print(json.dumps(claimed), flush=True)
    elif mode == "threads":
        results: list[object] = []
        lock = threading.Lock()
        at = float(options["at"])

        def start() -> None:
            time.sleep(max(0.0, at - time.time()))
            result = process.run({"id": 7}, run_id="r1", timeout=60)  # type: ignore[attr-defined]
            with lock:
                results.append(result)

        threads = [threading.Thread(target=start) for _ in range(int(options["threads"]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(json.dumps(results), flush=True)
    elif mode == "poison":
        if options.get("start"):
            poison.start(1, run_id="p1")  # type: ignore[attr-defined]
            time.sleep(5)  # the worker thread kills the process before this ends
        report = runtime.recover()
        print(json.dumps({"claimed": report.claimed, "failed": report.failed}), flush=True)
        time.sleep(5 if report.claimed else 0)
    runtime.close()


if __name__ == "__main__":
    main()
