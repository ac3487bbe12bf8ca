"""The storage contract suite, exposed publicly as ``durably.testing.StorageContract``.

The storage tests of this package and adapter authors run exactly the same checks. It needs no
test framework: each check is a method taking a fresh storage and using plain ``assert``.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from .._records import ErrorInfo, StepRecord, StepStatus
from .._storage import StepStorage, batch_writer
from ._suite import ContractSuite

__all__ = ["StorageContract"]


def _record(step_id: str, **fields: Any) -> StepRecord:
    values: dict[str, Any] = {
        "workflow_id": "wf", "action": "Test.step", "status": StepStatus.RUNNING,
        "attempts": 1, "created_at": 100.0, "started_at": 100.0, "updated_at": 100.0,
        "budget_started_at": 100.0,
    }
    values.update(fields)
    return StepRecord(step_id=step_id, **values)


def _completed(step_id: str, result: str, **fields: Any) -> StepRecord:
    return _record(step_id, status=StepStatus.COMPLETED, result=result, completed_at=101.0,
                   updated_at=101.0, **fields)


class StorageContract(ContractSuite):
    """Checks every rule of :class:`~durably.StepStorage` against an adapter.

    With pytest, subclass it in a test module and provide a ``storage`` fixture::

        class TestMyStorage(StorageContract):
            @pytest.fixture
            def storage(self, tmp_path):
                store = MyStorage(tmp_path / "steps")
                yield store
                store.close()

    Without pytest, ``StorageContract.run(make_storage)`` runs every check, each on a fresh
    storage from ``make_storage()``, and returns the names of the checks that passed; the first
    failure raises ``AssertionError``.
    """

    def test_round_trip(self, storage: StepStorage) -> None:
        """A record set is the record got back, every field included."""
        error = ErrorInfo(type="ValueError", module="builtins", message="bad \u00e9",
                          traceback="tb")
        record = _record("round-trip", status=StepStatus.RETRYING, error=error, attempts=2,
                         next_attempt_at=105.5, result=None)
        assert storage.set(record) == record
        assert storage.get("round-trip") == record

    def test_completed_round_trip(self, storage: StepStorage) -> None:
        """A completed record keeps its encoded result and completion time."""
        record = _completed("done", '{"total":42,"text":"\u2713"}')
        storage.set(record)
        assert storage.get("done") == record

    def test_missing_id_is_none(self, storage: StepStorage) -> None:
        """``get`` of an id never written returns ``None``."""
        assert storage.get("never-written") is None

    def test_set_replaces_unfinished_records(self, storage: StepStorage) -> None:
        """RUNNING, RETRYING and FAILED records are replaced by the next ``set``."""
        storage.set(_record("step"))
        for status, attempts in ((StepStatus.RETRYING, 1), (StepStatus.FAILED, 1),
                                 (StepStatus.RUNNING, 2)):
            record = _record("step", status=status, attempts=attempts, updated_at=200.0)
            assert storage.set(record) == record
            assert storage.get("step") == record

    def test_set_replaces_every_field(self, storage: StepStorage) -> None:
        """A later ``set`` of an unfinished step replaces all fields, its keys' included."""
        storage.set(_record("moved", workflow_id="a", created_at=1.0, action="A.one"))
        later = _record("moved", workflow_id="b", created_at=2.0, action="B.two", attempts=3,
                        status=StepStatus.RETRYING, next_attempt_at=9.0)
        assert storage.set(later) == later
        assert storage.get("moved") == later
        assert [r.step_id for r in storage.list(workflow_id="a")] == []
        assert [r.step_id for r in storage.list(workflow_id="b")] == ["moved"]

    def test_completed_is_final(self, storage: StepStorage) -> None:
        """A COMPLETED record is never replaced; ``set`` returns the stored one instead."""
        first = _completed("final", '"first"')
        storage.set(first)
        for later in (_completed("final", '"second"'), _record("final"),
                      _record("final", status=StepStatus.FAILED)):
            assert storage.set(later) == first
        assert storage.get("final") == first

    def test_records_are_values(self, storage: StepStorage) -> None:
        """Records cannot be changed in place, and a changed copy changes nothing stored."""
        record = _record("value")
        storage.set(record)
        got = storage.get("value")
        assert got is not None
        try:
            got.attempts = 99  # type: ignore[misc]
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError("records must be immutable")
        copy = dataclasses.replace(got, attempts=99)
        assert copy.attempts == 99
        assert storage.get("value") == record

    def test_delete_returns_whether_it_removed(self, storage: StepStorage) -> None:
        """``delete`` returns True once, then False; the record is gone."""
        storage.set(_record("doomed"))
        assert storage.delete("doomed") is True
        assert storage.get("doomed") is None
        assert storage.delete("doomed") is False

    def test_list_filters_by_workflow_and_status(self, storage: StepStorage) -> None:
        """``list`` keeps the records matching both filters."""
        storage.set(_record("a1", workflow_id="a"))
        storage.set(_completed("a2", "1", workflow_id="a"))
        storage.set(_record("b1", workflow_id="b"))
        assert {r.step_id for r in storage.list()} == {"a1", "a2", "b1"}
        assert {r.step_id for r in storage.list(workflow_id="a")} == {"a1", "a2"}
        assert [r.step_id for r in storage.list(status=StepStatus.COMPLETED)] == ["a2"]
        assert [r.step_id for r in storage.list("a", StepStatus.RUNNING)] == ["a1"]
        assert storage.list(workflow_id="nobody") == []

    def test_list_keeps_first_write_order(self, storage: StepStorage) -> None:
        """``list`` returns records in the order they were first written, whatever their ids
        and timestamps; a later write of a step keeps its place."""
        storage.set(_record("z", created_at=5.0))
        storage.set(_record("b", created_at=1.0))
        storage.set(_record("a", created_at=1.0))
        storage.set(_record("c", created_at=0.5))
        storage.set(_record("z", status=StepStatus.RETRYING, next_attempt_at=9.0))
        storage.set(_completed("b", '"done"'))
        assert [r.step_id for r in storage.list()] == ["z", "b", "a", "c"]
        assert [r.step_id for r in storage.list(workflow_id="wf")] == ["z", "b", "a", "c"]

    def test_history_pages_read_back_the_list(self, storage: StepStorage) -> None:
        """An adapter that pages history (the optional ``history(workflow_id, after, limit)``)
        gives, page after page, exactly ``list(workflow_id)``: in first-write order, of that
        workflow only, with no cursor after the last page."""
        paged = getattr(storage, "history", None)
        if paged is None:
            return  # optional: the runtime reads list() instead
        for n in range(7):
            storage.set(_record(f"s{6 - n}"))
            storage.set(_record(f"other{n}", workflow_id="other"))
        storage.set(_completed("s4", '"done"'))
        pages, cursor = [], None
        while True:
            records, cursor = paged("wf", cursor, 3)
            pages.append([record.step_id for record in records])
            if cursor is None:
                break
        read = [step_id for page in pages for step_id in page]
        assert read == [record.step_id for record in storage.list(workflow_id="wf")]
        assert [len(page) for page in pages][:2] == [3, 3] and len(pages) <= 3
        assert paged("nothing", None, 3) == ([], None)

    def test_a_batch_writes_each_record_as_set_would(self, storage: StepStorage) -> None:
        """An adapter that batches writes (the optional ``write_steps``) stores each record of
        a batch as ``set`` would, in order: a COMPLETED record stays final and is handed back
        in its place; the list and the order of first writes are those of single writes."""
        batch = batch_writer(storage)  # what the runtime would use (see its rule on subclasses)
        if batch is None:
            return  # optional: the runtime writes one record at a time
        storage.set(_completed("done", '"first"'))
        results = batch([(_record("a"), None, 0), (_completed("b", '"2"'), None, 0),
                         (_completed("done", '"second"'), None, 0),
                         (_record("a", attempts=2), None, 0)])
        assert results == [_record("a"), _completed("b", '"2"'), _completed("done", '"first"'),
                           _record("a", attempts=2)]
        assert storage.get("a") == _record("a", attempts=2)
        assert [r.step_id for r in storage.list(workflow_id="wf")] == ["done", "a", "b"]
        assert batch([]) == []

    def test_large_and_unusual_values(self, storage: StepStorage) -> None:
        """Long results and ids with any characters are stored as they are."""
        step_id = "id with spaces/\u00fcnicode#2 '; DROP TABLE x; --"
        record = _completed(step_id, "x" * 1_000_000)
        storage.set(record)
        assert storage.get(step_id) == record

    def test_concurrent_completions_agree(self, storage: StepStorage) -> None:
        """Threads racing to complete the same steps all get back one winner per step."""
        step_ids = [f"race-{n}" for n in range(20)]
        seen: list[dict[str, str | None]] = [{} for _ in range(self.threads)]
        failures: list[BaseException] = []
        start = threading.Barrier(self.threads)

        def race(index: int) -> None:
            try:
                start.wait()
                for step_id in step_ids:
                    stored = storage.set(_completed(step_id, f'"thread {index}"'))
                    seen[index][step_id] = stored.result
            except BaseException as error:  # reported below, in the main thread
                failures.append(error)

        workers = [threading.Thread(target=race, args=(n,)) for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures, failures
        for step_id in step_ids:
            stored = storage.get(step_id)
            assert stored is not None
            assert {answers[step_id] for answers in seen} == {stored.result}

    def test_concurrent_writers_lose_nothing(self, storage: StepStorage) -> None:
        """Threads writing different steps at once all find their records stored."""
        failures: list[BaseException] = []

        def write(index: int) -> None:
            try:
                for n in range(25):
                    storage.set(_record(f"t{index}-{n}", workflow_id=f"w{index}"))
                    storage.set(_completed(f"t{index}-{n}", str(n), workflow_id=f"w{index}"))
            except BaseException as error:
                failures.append(error)

        workers = [threading.Thread(target=write, args=(n,)) for n in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert not failures, failures
        assert len(storage.list(status=StepStatus.COMPLETED)) == 25 * self.threads
        for index in range(self.threads):
            assert len(storage.list(workflow_id=f"w{index}")) == 25
