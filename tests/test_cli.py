"""``python -m durably`` as a subprocess, on stores made by a real workload
(tests/ops_workload.py: runs COMPLETED, FAILED, SUSPENDED, CANCELLED and stale)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from durably import (
    DurableWorkflowRuntime,
    RetryPolicy,
    RunStatus,
    SqliteStepStorage,
    StepStatus,
)
from durably.testing import FakeClock
from ops_workload import START, build

NOW = "2026-12-01T10:15:00+00:00"


def cli(db: Path | str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """Run the command line; return (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "durably", "--db", str(db), "--now", NOW, *args],
        capture_output=True, text=True, input=stdin, timeout=120,
        env={**os.environ, "COLUMNS": "100"})
    return done.returncode, done.stdout, done.stderr


def cli_json(db: Path | str, *args: str) -> Any:
    code, out, err = cli(db, *args, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops") / "ops.db"
    build(path)
    return path


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the workload's store, for a test that changes it."""
    copy = tmp_path / "ops.db"
    shutil.copy(built, copy)
    return copy


def statuses(db: Path) -> dict[str, str]:
    return {run["run_id"]: run["status"] for run in cli_json(db, "runs")}


# ------------------------------------------------------------------ reading


def test_runs_lists_every_run_with_its_state(built: Path) -> None:
    code, out, err = cli(built, "runs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["RUN", "ID", "WORKFLOW", "STATUS"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == ["order-1", "order-2", "order-3", "order-4", "order-5"]
    assert "COMPLETED" in rows["order-1"] and "FAILED" in rows["order-2"]
    assert "event approved" in rows["order-3"] and "CANCELLED" in rows["order-4"]
    assert "worker-b" in rows["order-5"] and "expired" in rows["order-5"]
    assert all("ago" in row for row in rows.values())
    assert max(len(line) for line in lines) <= 100


def test_runs_filters_and_prints_stable_json(built: Path) -> None:
    runs = cli_json(built, "runs")
    assert runs == cli_json(built, "runs")  # the same store prints the same JSON
    assert [r["status"] for r in runs] == [
        "completed", "failed", "suspended", "cancelled", "running"]
    assert [r["steps_completed"] for r in runs] == [6, 1, 3, 3, 0]
    assert runs[2]["waiting_for"] == "approved" and runs[0]["created_at"] == START
    assert [r["run_id"] for r in cli_json(built, "runs", "--stale")] == ["order-5"]
    assert [r["run_id"] for r in cli_json(built, "runs", "--status", "failed")] == ["order-2"]
    assert [r["run_id"] for r in cli_json(built, "runs", "--limit", "2")] == [
        "order-4", "order-5"]  # the latest two, in creation order
    assert [r["run_id"] for r in cli_json(built, "runs", "--since", "2026-12-01T09:05:00")] \
        == ["order-4", "order-5"]
    assert cli_json(built, "runs", "--workflow", "Other.flow") == []
    code, out, _ = cli(built, "runs", "--limit", "1")
    assert code == 0 and "4 earlier runs not shown" in out


def test_show_prints_the_run_its_steps_inbox_and_published_values(built: Path) -> None:
    code, out, err = cli(built, "show", "order-2")
    assert code == 0, err
    assert "FAILED" in out and "CardDeclined: card ending 20 was declined" in out
    assert "Traceback (most recent call last)" in out  # the error with its traceback
    assert "Order.reserve" in out and "Order.charge" in out
    code, out, _ = cli(built, "show", "order-3")
    assert "event approved" in out and 'status = "waiting for approval"' in out
    shown = cli_json(built, "show", "order-1")
    assert shown["run"]["status"] == "completed" and shown["run"]["fence"] == 1
    assert [s["kind"] for s in shown["steps"]] == [
        "step", "step", "publish", "wait", "publish", "step"]
    assert all(s["step_id"] == "order-1/" + s["local_id"] for s in shown["steps"])
    (event,) = shown["events"]
    assert event["key"] == "webhook-1" and event["consumed_by"] == shown["steps"][3]["step_id"]
    assert json.loads(shown["published"]["status"]) == "approved"


def test_steps_lists_only_steps_outside_runs_and_step_shows_any(built: Path) -> None:
    steps = cli_json(built, "steps")
    assert [s["action"] for s in steps] == ["Report.collect", "Report.mail"]
    assert {s["workflow_id"] for s in steps} == {"nightly-report"}
    assert cli_json(built, "steps", "--status", "failed") == []
    one = cli_json(built, "step", steps[0]["step_id"])
    assert one["result"] == "42"
    failed = cli_json(built, "step", "order-2/last-failure")
    assert failed["action"] == "Order.charge" and failed["status"] == "failed"
    code, out, _ = cli(built, "step", "order-1/Order.ship")
    assert code == 0 and '"parcel-1"' in out


@pytest.mark.parametrize("args", [("show", "nope"), ("step", "nope"),
                                  ("cancel", "nope"), ("send-event", "nope", "x", "1"),
                                  ("fork", "order-2", "--from", "Order.refund")])
def test_unknown_runs_and_steps_exit_1(built: Path, args: tuple[str, ...]) -> None:
    code, out, err = cli(built, *args)
    assert (code, out) == (1, "")
    assert "nope" in err or "Order.refund" in err


def test_a_missing_or_foreign_database_is_never_created_or_changed(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for args in (("runs",), ("cancel", "x"), ("send-event", "x", "y", "1")):
        code, _, err = cli(missing, *args)
        assert code == 1 and "no database" in err
    assert not missing.exists()
    foreign = tmp_path / "app.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    before = foreign.read_bytes()
    for args in (("runs",), ("show", "x"), ("cancel", "x")):
        code, _, err = cli(foreign, *args)
        assert code == 1 and "not a durably database" in err, err
    assert foreign.read_bytes() == before


def test_runs_reads_while_another_process_holds_a_write_transaction(built: Path,
                                                                     tmp_path: Path) -> None:
    copy = tmp_path / "busy.db"
    shutil.copy(built, copy)
    writer = sqlite3.connect(copy, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE durably_runs SET updated_at = updated_at + 1")
    try:
        assert len(cli_json(copy, "runs")) == 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# ------------------------------------------------------------------ writing


def test_cancel_and_resume_one_run_with_wrong_states_exiting_3(store: Path) -> None:
    assert cli(store, "cancel", "order-3")[0] == 0
    assert statuses(store)["order-3"] == "cancelled"
    code, _, err = cli(store, "cancel", "order-1")
    assert code == 3 and "COMPLETED" in err
    assert cli(store, "resume", "order-2")[0] == 0
    assert statuses(store)["order-2"] == "pending"
    code, _, err = cli(store, "resume", "order-1")
    assert code == 3 and "only FAILED or CANCELLED" in err
    code, _, err = cli(store, "resume")
    assert code == 2 and "give a run id" in err
    # A cancel bumps the fence: the stale owner of order-5 can no longer write.
    before = cli_json(store, "show", "order-5")["run"]["fence"]
    assert cli(store, "cancel", "order-5")[0] == 0
    assert cli_json(store, "show", "order-5")["run"]["fence"] == before + 1


def test_send_event_delivers_once_and_refuses_bad_json_and_finished_runs(store: Path) -> None:
    code, out, err = cli(store, "send-event", "order-3", "approved", '{"by": "bob"}',
                         "--key", "ops-1")
    assert code == 0 and "sent approved" in out, err
    code, out, _ = cli(store, "send-event", "order-3", "approved", '{"by": "bob"}',
                       "--key", "ops-1")
    assert code == 0 and "not sent" in out
    assert len(cli_json(store, "show", "order-3")["events"]) == 1
    run = cli_json(store, "show", "order-3")["run"]
    assert run["wake_at"] <= run["updated_at"]  # due at once
    code, _, err = cli(store, "send-event", "order-3", "approved", "{by: bob}")
    assert code == 2 and "not JSON" in err
    code, _, err = cli(store, "send-event", "order-1", "approved", "1")
    assert code == 3 and "order-1" in err
    assert len(cli_json(store, "show", "order-3")["events"]) == 1


def test_fork_prints_the_new_run_and_leaves_the_source(store: Path) -> None:
    source = cli_json(store, "show", "order-2")
    code, out, err = cli(store, "fork", "order-2", "--from", "last-failure")
    assert code == 0, err
    new_id = out.strip()
    fork = cli_json(store, "show", new_id)
    assert fork["run"]["forked_from"] == "order-2" and fork["run"]["status"] == "pending"
    assert [s["local_id"] for s in fork["steps"]] == [source["steps"][0]["local_id"]]
    assert cli_json(store, "show", "order-2") == source
    shown = cli_json(store, "fork", "order-1", "--from", "Order.ship", "--new-id", "order-1b")
    assert shown == {"run_id": "order-1b", "forked_from": "order-1"}
    assert cli(store, "fork", "order-1", "--from", "Order.ship", "--new-id", "order-1b")[0] \
        == 3


def test_delete_needs_a_run_or_a_selection_and_dry_runs_change_nothing(store: Path) -> None:
    code, _, err = cli(store, "delete")
    assert code == 2 and "give a run id" in err
    code, out, _ = cli(store, "delete", "--status", "completed", "--older-than", "30m",
                       "--dry-run")
    assert code == 0 and "would delete 1 run:" in out and "order-1" in out
    assert len(cli_json(store, "runs")) == 5
    assert cli_json(store, "delete", "--status", "completed", "--older-than", "30d") == {
        "dry_run": False, "deleted": [], "skipped": []}
    assert cli(store, "delete", "order-4")[0] == 0
    assert cli(store, "show", "order-4")[0] == 1
    assert cli(store, "delete", "order-4")[0] == 1
    assert cli_json(store, "delete", "--workflow", "Order.process")["deleted"] == [
        "order-1", "order-2", "order-3", "order-5"]
    assert cli_json(store, "runs") == [] and len(cli_json(store, "steps")) == 2
    code, _, err = cli(store, "delete", "--older-than", "soon")
    assert code == 2 and "duration" in err


def test_resuming_a_selection_of_failed_runs_makes_them_complete_under_a_worker(
        tmp_path: Path) -> None:
    db = tmp_path / "pay.db"
    clock = FakeClock(start=time.time())  # the command line writes on the real clock
    fixed = {"done": False}

    def make() -> DurableWorkflowRuntime:
        runtime = DurableWorkflowRuntime(storage=SqliteStepStorage(db), clock=clock,
                                         retry_policy=RetryPolicy(max_attempts=1))

        @runtime.step("Pay.charge")
        def charge(n: int) -> int:
            if not fixed["done"]:
                raise ConnectionError("the provider is down")
            return n

        @runtime.workflow("Pay.run")
        def pay(n: int) -> int:
            return charge(n) * 2

        return runtime

    runtime = make()
    submitter = DurableWorkflowRuntime(storage=SqliteStepStorage(db), clock=clock)
    for n in range(30):
        submitter.start("Pay.run", n, run_id=f"p{n}")
    submitter.close()
    assert runtime.run_due() == 30
    runtime.close()
    assert set(statuses(db).values()) == {"failed"}
    code, out, _ = cli(db, "resume", "--status", "failed", "--dry-run")
    assert code == 0 and "would resume 30 runs" in out
    assert set(statuses(db).values()) == {"failed"}
    done = cli_json(db, "resume", "--status", "failed", "--workflow", "Pay.run")
    assert len(done["resumed"]) == 30 and done["skipped"] == []
    fixed["done"] = True
    clock.advance(time.time() - clock.now() + 1)  # past the resumed runs' wake time
    worker = make()
    assert worker.run_due() == 30
    assert [worker.get_run(f"p{n}").result(timeout=5) for n in range(30)] == [
        2 * n for n in range(30)]
    worker.close()


# ------------------------------------------------------------------ export and import


def test_export_then_import_reproduces_every_run_exactly(built: Path, tmp_path: Path) -> None:
    code, exported, err = cli(built, "export")
    assert code == 0, err
    lines = [json.loads(line) for line in exported.splitlines()]
    assert lines[0]["format"] == "durably-export" and lines[0]["version"] == 1
    assert lines[-1] == {"type": "end", "runs": 5, "steps": 18, "events": 1}
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported)
    target = tmp_path / "copy.db"
    code, out, err = cli(target, "import", str(dump))
    assert code == 0 and "imported 5 runs, 18 steps and 1 event" in out, err
    for run_id in (f"order-{n}" for n in range(1, 6)):
        assert cli_json(target, "show", run_id) == cli_json(built, "show", run_id)
    assert cli_json(target, "steps") == cli_json(built, "steps")
    assert cli_json(target, "runs") == cli_json(built, "runs")
    assert cli(target, "export")[1] == exported
    code, _, err = cli(target, "import", str(dump))  # the runs are there already
    assert code == 3 and "nothing was imported" in err


def test_a_selective_export_decodes_or_redacts(built: Path, tmp_path: Path) -> None:
    code, out, _ = cli(built, "export", "order-1", "--decode")
    records = [json.loads(line) for line in out.splitlines()]
    run = records[1]
    assert run["run_id"] == "order-1" and run["input_decoded"] == {
        "id": 1, "total": 10, "card": "ok"}
    assert {r["type"] for r in records[1:-1]} == {"run", "step", "event"}
    assert all(r.get("workflow_id", "order-1") == "order-1" for r in records[1:-1])
    code, out, _ = cli(built, "export", "--status", "completed", "--redact")
    redacted = [json.loads(line) for line in out.splitlines()]
    assert redacted[0]["redacted"] is True
    assert all(r.get("input") is None and r.get("result") is None and r.get("payload") is None
               for r in redacted[1:-1])
    dump = tmp_path / "redacted.jsonl"
    dump.write_text(out)
    code, _, err = cli(tmp_path / "new.db", "import", str(dump))
    assert code == 2 and "redacted" in err and not (tmp_path / "new.db").exists()


@pytest.mark.parametrize("damage", ["other format", "newer version", "truncated",
                                    "bad field", "not json", "counts"])
def test_a_bad_export_is_refused_before_anything_is_written(
        built: Path, tmp_path: Path, damage: str) -> None:
    lines = cli(built, "export")[1].splitlines()
    head = json.loads(lines[0])
    if damage == "other format":
        lines[0] = json.dumps({**head, "format": "dbos-export"})
    elif damage == "newer version":
        lines[0] = json.dumps({**head, "version": 2})
    elif damage == "truncated":
        lines = lines[: len(lines) // 2]
    elif damage == "bad field":
        step = json.loads(lines[2])
        lines[2] = json.dumps({**step, "attempts": "two"})
    elif damage == "not json":
        lines[3] = lines[3][:20]
    else:
        lines[-1] = json.dumps({"type": "end", "runs": 4, "steps": 18, "events": 1})
    dump = tmp_path / "bad.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    target = tmp_path / "target.db"
    code, _, err = cli(target, "import", str(dump))
    assert code == 2, err
    assert not target.exists()


def test_long_exports_and_deletes_show_progress_on_stderr(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    storage = SqliteStepStorage(db)
    submitter = DurableWorkflowRuntime(storage=storage, clock=FakeClock(start=START))
    for n in range(250):
        submitter.start("Bulk.job", n, run_id=f"b{n:03d}")
    submitter.close()
    code, out, err = cli(db, "export", "-o", str(tmp_path / "all.jsonl"))
    assert code == 0 and out == "" and "exported 250/250" in err
    code, out, err = cli(db, "delete", "--workflow", "Bulk.job")
    assert code == 0 and "deleted 250 runs" in out and "deleted 250/250" in err
    assert cli_json(db, "runs") == []


def test_imported_steps_outside_runs_keep_their_records(built: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    dump.write_text(cli(built, "export")[1])
    target = tmp_path / "copy.db"
    assert cli(target, "import", str(dump))[0] == 0
    storage = SqliteStepStorage.open_readonly(target)
    original = SqliteStepStorage.open_readonly(built)
    try:
        assert storage.list() == original.list()
        assert [r.status for r in storage.list_runs()] == [
            RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.SUSPENDED,
            RunStatus.CANCELLED, RunStatus.RUNNING]
        assert {s.status for s in storage.list(workflow_id="nightly-report")} == {
            StepStatus.COMPLETED}
    finally:
        storage.close()
        original.close()
