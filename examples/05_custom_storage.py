"""A custom storage adapter: SQLite with compressed results at rest, checked with the public
contract suite before use.

    python examples/05_custom_storage.py
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
import zlib
from pathlib import Path

from durably import DurableWorkflowRuntime, SqliteStepStorage, StepRecord, StepStatus
from durably.testing import StorageContract

PREFIX = "z1:"


class CompressedSqliteStorage(SqliteStepStorage):
    """Stores results zlib-compressed; everything else is SqliteStepStorage's."""

    def set(self, record: StepRecord) -> StepRecord:
        stored = super().set(self._pack(record))
        return self._unpack(stored)

    def get(self, step_id: str) -> StepRecord | None:
        record = super().get(step_id)
        return None if record is None else self._unpack(record)

    def list(self, workflow_id: str | None = None,
             status: StepStatus | None = None) -> list[StepRecord]:
        return [self._unpack(record) for record in super().list(workflow_id, status)]

    @staticmethod
    def _pack(record: StepRecord) -> StepRecord:
        if record.result is None:
            return record
        packed = base64.b64encode(zlib.compress(record.result.encode())).decode()
        return dataclasses.replace(record, result=PREFIX + packed)

    @staticmethod
    def _unpack(record: StepRecord) -> StepRecord:
        if record.result is None or not record.result.startswith(PREFIX):
            return record
        raw = zlib.decompress(base64.b64decode(record.result[len(PREFIX):])).decode()
        return dataclasses.replace(record, result=raw)


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        counter = iter(range(1000))

        def fresh_storage() -> CompressedSqliteStorage:
            return CompressedSqliteStorage(Path(directory) / f"contract-{next(counter)}.db")

        checks = StorageContract.run(fresh_storage)
        print(f"contract: {len(checks)} checks passed ({', '.join(checks[:3])}, ...)")

        db = Path(directory) / "reports.db"
        runtime = DurableWorkflowRuntime(storage=CompressedSqliteStorage(db))
        runtime.register("Report.build", lambda n: {"rows": ["same row"] * n})
        report = runtime.do("Report.build", 500)
        (record,) = SqliteStepStorage(db).list()  # what is really on disk
        assert record.result is not None
        print(f"result of {len(str(report))} characters stored as {len(record.result)}")
        runtime.close()


if __name__ == "__main__":
    main()
