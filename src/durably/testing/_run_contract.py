"""The run storage contract suite, exposed publicly as ``durably.testing.RunStorageContract``.

Like :class:`~durably.testing.StorageContract`: each check is a method taking a fresh storage
(one that implements both ``StepStorage`` and ``RunStorage``) and using plain ``assert``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._errors import OwnershipLost, RunClosedError, RunNotFoundError
from .._records import ErrorInfo, EventRecord, RunRecord, RunStatus, StepRecord, StepStatus
from .._storage import batch_writer
from ._suite import ContractSuite

__all__ = ["RunStorageContract"]

T0 = 1000.0


def _run(run_id: str, **fields: Any) -> RunRecord:
    values: dict[str, Any] = {"workflow": "Order.process", "status": RunStatus.PENDING,
                              "input": '{"id":1}', "input_hash": "h1", "max_recoveries": 2,
                              "wake_at": T0, "created_at": T0, "updated_at": T0}
    values.update(fields)
    return RunRecord(run_id=run_id, **values)


def _step(run_id: str, local: str, status: StepStatus = StepStatus.RUNNING,
          **fields: Any) -> StepRecord:
    values: dict[str, Any] = {"action": "A.b", "attempts": 1, "created_at": T0,
                              "started_at": T0, "updated_at": T0, "budget_started_at": T0}
    values.update(fields)
    return StepRecord(step_id=f"{run_id}/{local}", workflow_id=run_id, status=status,
                      **values)


def _raises(kind: type[BaseException], work: Callable[[], Any]) -> BaseException:
    try:
        work()
    except kind as error:
        return error
    raise AssertionError(f"expected {kind.__name__}")


class RunStorageContract(ContractSuite):
    """Checks every rule of :class:`~durably.RunStorage` against an adapter.

    With pytest, subclass it and provide a ``storage`` fixture (as for ``StorageContract``);
    without, ``RunStorageContract.run(make_storage)`` runs every check on fresh storages.
    """

    # ------------------------------------------------------------------ runs

    def test_create_run_inserts_once(self, storage: Any) -> None:
        """The first create inserts; a second of the same id returns the stored run and
        changes nothing."""
        first = _run("r1")
        assert storage.create_run(first) == (first, True)
        stored, created = storage.create_run(_run("r1", input='{"id":2}', input_hash="h2"))
        assert (stored, created) == (first, False)
        assert storage.get_run("r1") == first and storage.get_run("nope") is None

    def test_concurrent_creates_make_one_run(self, storage: Any) -> None:
        """Threads creating one id at once: exactly one creates it."""
        created: list[bool] = []
        start = threading.Barrier(self.threads)

        def create(index: int) -> None:
            start.wait()
            created.append(storage.create_run(_run("race", input=str(index)))[1])

        workers = [threading.Thread(target=create, args=(n,)) for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert created.count(True) == 1

    def test_claim_takes_due_runs_and_bumps_the_fence(self, storage: Any) -> None:
        """A due PENDING run is claimed: RUNNING, owner, lease, fence + 1; a run due later is
        not; a claimed run is not claimed again while its lease lives."""
        storage.create_run(_run("now"))
        storage.create_run(_run("later", wake_at=T0 + 100))
        (claimed,) = storage.claim("w1", T0, 30.0)
        assert claimed.run_id == "now" and claimed.status is RunStatus.RUNNING
        assert (claimed.owner, claimed.lease_until, claimed.fence) == ("w1", T0 + 30, 1)
        assert claimed.recovery_count == 0
        assert storage.claim("w2", T0 + 29, 30.0) == []
        assert [r.run_id for r in storage.claim("w2", T0 + 100, 30.0, run_id="later")] == [
            "later"]

    def test_an_expired_lease_is_taken_over_and_counted(self, storage: Any) -> None:
        """Past its lease a RUNNING run is claimed by another owner, counting a recovery;
        past max_recoveries it becomes FAILED with RecoveryLimitError instead."""
        storage.create_run(_run("r"))
        storage.claim("w1", T0, 10.0)
        (taken,) = storage.claim("w2", T0 + 11, 10.0)
        assert (taken.owner, taken.fence, taken.recovery_count) == ("w2", 2, 1)
        (taken,) = storage.claim("w3", T0 + 22, 10.0)
        assert taken.recovery_count == 2
        (failed,) = storage.claim("w4", T0 + 33, 10.0)
        assert failed.status is RunStatus.FAILED and failed.error is not None
        assert failed.error.type == "RecoveryLimitError" and failed.owner is None
        assert storage.claim("w5", T0 + 99, 10.0) == []

    def test_claim_filters_and_limits(self, storage: Any) -> None:
        """run_id, workflows, code_versions and limit narrow a claim; earliest due first."""
        storage.create_run(_run("a", wake_at=T0 + 2, code_version="v1"))
        storage.create_run(_run("b", wake_at=T0 + 1, workflow="Other.flow"))
        storage.create_run(_run("c", wake_at=T0 + 3, code_version="v2"))
        storage.create_run(_run("d", wake_at=T0))
        assert storage.claim("w", T0 + 9, 5.0, run_id="zz") == []
        assert [r.run_id for r in storage.claim("w", T0 + 9, 5.0, run_id="c")] == ["c"]
        assert [r.run_id for r in storage.claim("w", T0 + 9, 5.0,
                                                workflows=["Order.process"], limit=1)] == ["d"]
        assert [r.run_id for r in storage.claim("w", T0 + 9, 5.0,
                                                code_versions=["v1"])] == ["a"]
        assert [r.run_id for r in storage.claim("w", T0 + 9, 5.0)] == ["b"]

    def test_concurrent_claims_never_share_a_run(self, storage: Any) -> None:
        """Threads claiming at once each get different runs, and all of them are claimed."""
        for n in range(40):
            storage.create_run(_run(f"r{n}"))
        got: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(self.threads)

        def claim(index: int) -> None:
            start.wait()
            while True:
                claimed = storage.claim(f"w{index}", T0, 60.0, limit=3)
                if not claimed:
                    return
                with lock:
                    got.extend(run.run_id for run in claimed)

        workers = [threading.Thread(target=claim, args=(n,)) for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert sorted(got) == sorted(f"r{n}" for n in range(40))

    def test_renew_extends_only_leases_still_held(self, storage: Any) -> None:
        """renew extends a lease held under the same owner and fence, not a taken-over one."""
        storage.create_run(_run("mine"))
        storage.create_run(_run("lost"))
        claimed = {r.run_id: r.fence for r in storage.claim("w1", T0, 10.0)}
        (taken,) = storage.claim("w2", T0 + 11, 10.0, run_id="lost")  # taken over
        assert storage.renew("w1", claimed, T0 + 12, 10.0) == {"mine"}
        assert storage.get_run("mine").lease_until == T0 + 22
        assert storage.get_run("lost").owner == "w2"
        assert storage.renew("w2", {"lost": taken.fence}, T0 + 13, 10.0) == {"lost"}
        assert storage.get_run("lost").lease_until == T0 + 23
        assert storage.renew("w2", {}, T0 + 14, 10.0) == set()

    def test_fenced_step_writes_are_refused_after_a_takeover(self, storage: Any) -> None:
        """record_step writes under the current fence and raises OwnershipLost (writing
        nothing) under a stale one; COMPLETED steps stay final."""
        storage.create_run(_run("r"))
        (mine,) = storage.claim("w1", T0, 10.0)
        assert storage.record_step("r", mine.fence, _step("r", "s1")) == _step("r", "s1")
        done = _step("r", "s1", StepStatus.COMPLETED, result='"x"', completed_at=T0)
        assert storage.record_step("r", mine.fence, done) == done
        assert storage.record_step("r", mine.fence, _step("r", "s1")) == done
        (theirs,) = storage.claim("w2", T0 + 11, 10.0)
        error = _raises(OwnershipLost, lambda: storage.record_step(
            "r", mine.fence, _step("r", "s2")))
        assert error.run_id == "r"  # type: ignore[attr-defined]
        assert storage.get("r/s2") is None
        assert storage.record_step("r", theirs.fence, _step("r", "s2")) == _step("r", "s2")
        assert [s.step_id for s in storage.list(workflow_id="r")] == ["r/s1", "r/s2"]

    def test_finish_is_fenced_and_final(self, storage: Any) -> None:
        """finish records the outcome under the current fence only."""
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w1", T0, 10.0)
        _raises(OwnershipLost, lambda: storage.finish("r", claimed.fence + 5,
                                                      RunStatus.COMPLETED, T0 + 1))
        done = storage.finish("r", claimed.fence, RunStatus.COMPLETED, T0 + 1, result='"ok"')
        assert (done.status, done.result, done.owner, done.completed_at) == (
            RunStatus.COMPLETED, '"ok"', None, T0 + 1)
        _raises(OwnershipLost, lambda: storage.finish("r", claimed.fence, RunStatus.FAILED,
                                                      T0 + 2))
        assert storage.claim("w2", T0 + 99, 10.0) == []

    def test_cancel_bumps_the_fence_and_resume_resets_the_budget(self, storage: Any) -> None:
        """cancel refuses the owner's next write; resume makes it PENDING with recoveries 0;
        terminal runs cannot be cancelled, running ones cannot be resumed."""
        storage.create_run(_run("r"))
        storage.claim("w1", T0, 10.0)
        (claimed,) = storage.claim("w2", T0 + 11, 10.0)
        assert storage.resume("r", T0 + 12) is False
        assert storage.cancel("r", T0 + 12) is True
        cancelled = storage.get_run("r")
        assert cancelled.status is RunStatus.CANCELLED and cancelled.fence == claimed.fence + 1
        _raises(OwnershipLost, lambda: storage.record_step("r", claimed.fence,
                                                           _step("r", "s")))
        assert storage.cancel("r", T0 + 13) is False
        assert storage.resume("r", T0 + 14) is True
        resumed = storage.get_run("r")
        assert (resumed.status, resumed.recovery_count, resumed.wake_at) == (
            RunStatus.PENDING, 0, T0 + 14)
        assert storage.resume("r", T0 + 15) is False and storage.cancel("nope", T0) is False

    def test_release_hands_a_run_back_without_a_recovery(self, storage: Any) -> None:
        """release makes the run PENDING and due; the next claim counts no recovery."""
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w1", T0, 10.0)
        assert storage.release("r", claimed.fence + 1, T0) is False
        assert storage.release("r", claimed.fence, T0 + 1) is True
        (again,) = storage.claim("w2", T0 + 1, 10.0)
        assert again.recovery_count == 0 and again.fence == claimed.fence + 1

    def test_suspend_and_wake(self, storage: Any) -> None:
        """suspend releases the lease until wake_at; the run is due then and not before."""
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w1", T0, 10.0)
        suspended = storage.suspend("r", claimed.fence, T0 + 1, T0 + 3600, None)
        assert (suspended.status, suspended.owner, suspended.wake_at) == (
            RunStatus.SUSPENDED, None, T0 + 3600)
        assert storage.next_wake_at() == T0 + 3600
        assert storage.claim("w2", T0 + 3599, 10.0) == []
        assert [r.run_id for r in storage.claim("w2", T0 + 3600, 10.0)] == ["r"]

    def test_list_runs_filters_and_pages(self, storage: Any) -> None:
        """list_runs in creation order, by status and workflow, with a cursor and a limit."""
        for n in range(5):
            storage.create_run(_run(f"r{n}", workflow="A.a" if n % 2 else "B.b"))
        storage.claim("w", T0, 10.0, run_id="r3")
        assert [r.run_id for r in storage.list_runs()] == ["r0", "r1", "r2", "r3", "r4"]
        assert [r.run_id for r in storage.list_runs(workflow="A.a")] == ["r1", "r3"]
        assert [r.run_id for r in storage.list_runs(status=RunStatus.RUNNING)] == ["r3"]
        assert [r.run_id for r in storage.list_runs(after="r1", limit=2)] == ["r2", "r3"]
        assert [r.run_id for r in storage.list_runs(due=T0)] == ["r0", "r1", "r2", "r4"]
        assert [r.run_id for r in storage.list_runs(due=T0 + 11)] == [
            "r0", "r1", "r2", "r3", "r4"]
        assert [r.run_id for r in storage.list_runs(
            workflow="A.a", status=RunStatus.PENDING, due=T0, limit=None)] == ["r1"]
        assert storage.list_runs(after="no-such-run") == []  # an unknown cursor: nothing

    def test_a_batch_of_fenced_writes_answers_each_write(self, storage: Any) -> None:
        """An adapter that batches writes (the optional ``write_steps``) checks each fenced
        write's fence as ``record_step`` does: a stale one is that write's ``OwnershipLost``
        and writes nothing; the others of the batch are stored."""
        batch = batch_writer(storage)  # what the runtime would use
        if batch is None:
            return  # optional
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w", T0, 10.0)
        results = batch([(_step("r", "a"), "r", claimed.fence),
                         (_step("r", "b"), "r", claimed.fence + 1),
                         (_step("loose", "c"), None, 0)])
        assert results[0] == _step("r", "a") and results[2] == _step("loose", "c")
        assert isinstance(results[1], OwnershipLost)
        assert storage.get("r/a") == _step("r", "a") and storage.get("r/b") is None

    def test_delete_run_takes_its_steps_and_events(self, storage: Any) -> None:
        """delete_run removes the run, its steps and its inbox, and nothing else."""
        storage.create_run(_run("r"))
        storage.create_run(_run("other"))
        (claimed,) = storage.claim("w", T0, 10.0, run_id="r")
        storage.record_step("r", claimed.fence, _step("r", "s"))
        storage.set(_step("other", "s"))
        storage.add_event("r", "approved", None, "1", T0)
        assert storage.delete_run("r") is True and storage.delete_run("r") is False
        assert storage.get_run("r") is None and storage.get("r/s") is None
        assert storage.list_events("r") == [] and storage.get("other/s") is not None

    def test_restart_drops_steps_gives_back_their_events_and_fences_the_owner(
            self, storage: Any) -> None:
        """restart_run deletes the dropped steps only, unconsumes the events they consumed,
        and makes the run PENDING and due with a bumped fence: the old owner is refused."""
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w", T0, 10.0)
        storage.add_event("r", "approved", "k1", "1", T0)
        storage.record_step("r", claimed.fence, _step("r", "a", StepStatus.COMPLETED,
                                                      result="1", completed_at=T0))
        storage.consume_event("r", claimed.fence, "approved", None, _step("r", "wait"))
        storage.record_step("r", claimed.fence, _step("r", "b", StepStatus.FAILED))
        restarted = storage.restart_run("r", T0 + 5, ["r/wait", "r/b"])
        assert (restarted.status, restarted.fence, restarted.owner, restarted.wake_at,
                restarted.recovery_count) == (RunStatus.PENDING, claimed.fence + 1, None,
                                              T0 + 5, 0)
        assert [s.step_id for s in storage.list(workflow_id="r")] == ["r/a"]
        (event,) = storage.list_events("r")
        assert (event.consumed_by, event.consumed_at, event.key) == (None, None, "k1")
        _raises(OwnershipLost, lambda: storage.record_step("r", claimed.fence,
                                                           _step("r", "c")))
        assert storage.get_run("r") == restarted
        assert storage.restart_run("nope", T0, []) is None

    def test_insert_run_stores_a_whole_history_once(self, storage: Any) -> None:
        """insert_run stores the run, its steps in order and its events as given (new
        sequence numbers); a second insert of the id writes nothing."""
        run = _run("copy", status=RunStatus.SUSPENDED, waiting_for="approved", wake_at=None,
                   forked_from="r", fence=3)
        steps = [_step("copy", "b", StepStatus.COMPLETED, result="2"),
                 _step("copy", "a", StepStatus.COMPLETED, result="1")]
        events = [EventRecord(seq=99, run_id="r", name="approved", key="k", payload="1",
                              sent_at=T0, consumed_by="copy/b", consumed_at=T0 + 1),
                  EventRecord(seq=98, run_id="r", name="approved", key=None, payload="2",
                              sent_at=T0 + 2)]
        assert storage.insert_run(run, steps, events) is True
        assert storage.get_run("copy") == run
        assert storage.list(workflow_id="copy") == steps
        stored = storage.list_events("copy")
        assert [(e.run_id, e.key, e.payload, e.sent_at, e.consumed_by, e.consumed_at)
                for e in stored] == [("copy", "k", "1", T0, "copy/b", T0 + 1),
                                     ("copy", None, "2", T0 + 2, None, None)]
        assert stored[0].seq < stored[1].seq
        assert storage.insert_run(_run("copy"), [_step("copy", "z")], []) is False
        assert storage.get_run("copy") == run and len(storage.list(workflow_id="copy")) == 2

    def test_error_info_round_trips(self, storage: Any) -> None:
        """A run's error comes back as the ErrorInfo that was stored."""
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w", T0, 10.0)
        error = ErrorInfo(type="ValueError", module="builtins", message="bad é", traceback="t")
        failed = storage.finish("r", claimed.fence, RunStatus.FAILED, T0 + 1, error=error)
        assert failed.error == error and storage.get_run("r").error == error

    # ------------------------------------------------------------------ events

    def test_events_are_fifo_per_name_and_consumed_once(self, storage: Any) -> None:
        """Each consume takes the oldest unconsumed event of its name and completes the step
        with its payload; a completed step consumes nothing more."""
        storage.create_run(_run("r"))
        for payload in ("1", "2", "3"):
            assert storage.add_event("r", "approved", None, payload, T0) is True
        storage.add_event("r", "other", None, "9", T0)
        (claimed,) = storage.claim("w", T0, 10.0)
        event, step = storage.consume_event("r", claimed.fence, "approved", None,
                                            _step("r", "wait1"))
        assert event is not None and event.payload == "1" and event.consumed_by == "r/wait1"
        assert step.status is StepStatus.COMPLETED and step.result == "1"
        again, same = storage.consume_event("r", claimed.fence, "approved", None,
                                            _step("r", "wait1"))
        assert again is None and same == step
        event, _ = storage.consume_event("r", claimed.fence, "approved", None,
                                         _step("r", "wait2"))
        assert event is not None and event.payload == "2"
        assert [(e.payload, e.consumed_by) for e in storage.list_events("r")] == [
            ("1", "r/wait1"), ("2", "r/wait2"), ("3", None), ("9", None)]

    def test_a_repeated_key_stores_nothing(self, storage: Any) -> None:
        """add_event with a used key of that name returns False and stores nothing."""
        storage.create_run(_run("r"))
        assert storage.add_event("r", "paid", "k1", "1", T0) is True
        assert storage.add_event("r", "paid", "k1", "2", T0) is False
        assert storage.add_event("r", "paid", "k1", "3", T0) is False
        assert storage.add_event("r", "refunded", "k1", "4", T0) is True
        assert [e.payload for e in storage.list_events("r")] == ["1", "4"]

    def test_events_past_the_deadline_are_left(self, storage: Any) -> None:
        """A wait consumes only events sent at or before its deadline."""
        storage.create_run(_run("r"))
        storage.add_event("r", "approved", None, "late", T0 + 61)
        (claimed,) = storage.claim("w", T0, 10.0)
        event, step = storage.consume_event("r", claimed.fence, "approved", T0 + 60,
                                            _step("r", "wait"))
        assert event is None and step.status is StepStatus.RUNNING
        assert storage.list_events("r")[0].consumed_by is None
        storage.add_event("r", "approved", None, "on time", T0 + 60)
        event, _ = storage.consume_event("r", claimed.fence, "approved", T0 + 60,
                                         _step("r", "wait"))
        assert event is not None and event.payload == "on time"

    def test_consuming_is_fenced(self, storage: Any) -> None:
        """A stale owner consumes nothing."""
        storage.create_run(_run("r"))
        storage.add_event("r", "approved", None, "1", T0)
        (claimed,) = storage.claim("w", T0, 10.0)
        storage.cancel("r", T0 + 1)
        _raises(OwnershipLost, lambda: storage.consume_event(
            "r", claimed.fence, "approved", None, _step("r", "wait")))
        assert storage.list_events("r")[0].consumed_by is None
        # A takeover: the run is RUNNING again, under a newer fence.
        storage.create_run(_run("t"))
        storage.add_event("t", "approved", None, "1", T0)
        (first,) = storage.claim("w1", T0, 10.0, run_id="t")
        (second,) = storage.claim("w2", T0 + 11, 10.0, run_id="t")
        assert second.fence > first.fence
        _raises(OwnershipLost, lambda: storage.consume_event(
            "t", first.fence, "approved", None, _step("t", "wait")))
        assert storage.list_events("t")[0].consumed_by is None
        assert storage.get("t/wait") is None

    def test_sending_to_unknown_or_closed_runs_is_refused(self, storage: Any) -> None:
        """add_event raises RunNotFoundError for no run and RunClosedError for a finished one;
        an event for a SUSPENDED run waiting for it makes the run due at once."""
        _raises(RunNotFoundError, lambda: storage.add_event("nope", "x", None, "1", T0))
        storage.create_run(_run("r"))
        (claimed,) = storage.claim("w", T0, 10.0)
        storage.suspend("r", claimed.fence, T0 + 1, None, "approved")
        assert storage.claim("w", T0 + 5, 10.0) == []
        storage.add_event("r", "approved", "delivery-1", "1", T0 + 5)
        (woken,) = storage.claim("w", T0 + 5, 10.0)
        storage.finish("r", woken.fence, RunStatus.COMPLETED, T0 + 6, result="1")
        _raises(RunClosedError, lambda: storage.add_event("r", "x", None, "1", T0 + 7))
        # A repeated key is still answered False, even now: a repeat is harmless.
        assert storage.add_event("r", "approved", "delivery-1", "1", T0 + 8) is False

    def test_an_event_wakes_only_its_waiter_and_never_later(self, storage: Any) -> None:
        """An event of another name leaves a SUSPENDED run asleep; the awaited one makes it due
        at its sent time, or leaves an earlier (already past) wake time as it was."""
        storage.create_run(_run("r"))
        storage.create_run(_run("late"))
        for run_id, wake_at in (("r", None), ("late", T0 + 10)):
            (claimed,) = storage.claim("w", T0, 10.0, run_id=run_id)
            storage.suspend(run_id, claimed.fence, T0 + 1, wake_at, "approved")
        assert storage.next_wake_at() == T0 + 10  # a wait without timeout has no wake time
        storage.add_event("r", "other", None, "1", T0 + 2)
        assert storage.get_run("r").wake_at is None
        storage.add_event("r", "approved", None, "1", T0 + 3)
        storage.add_event("late", "approved", None, "1", T0 + 20)
        assert storage.get_run("r").wake_at == T0 + 3
        assert storage.get_run("late").wake_at == T0 + 10
        assert storage.next_wake_at() == T0 + 3

    def test_suspending_for_an_event_already_sent_is_due_at_once(self, storage: Any) -> None:
        """suspend finds the awaited event in the inbox and makes the run due now."""
        storage.create_run(_run("r"))
        storage.add_event("r", "approved", None, "1", T0)
        (claimed,) = storage.claim("w", T0, 10.0)
        suspended = storage.suspend("r", claimed.fence, T0 + 1, T0 + 500, "approved")
        assert suspended.wake_at == T0 + 1
