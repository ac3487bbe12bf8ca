"""Records as JSON objects, and the export format (JSON Lines) that moves a store.

One object per line::

    {"format": "durably-export", "version": 1, "schema_version": 2, "codec": "json", ...}
    {"type": "run", "run_id": "order-42", "workflow": "Order.process", ...}
    {"type": "step", "step_id": "order-42/s1_...", "workflow_id": "order-42", ...}
    {"type": "event", "run_id": "order-42", "name": "approved", ...}
    ...
    {"type": "end", "runs": 1, "steps": 3, "events": 1}

The header comes first; each run is followed by its steps (in call order) and its events (in
the order they were sent); the steps outside runs come after the runs; the ``end`` line counts
what came before it, so a truncated file is refused before anything is imported. The fields of
a record are its stored columns, with values still encoded, so an import reproduces the store
exactly (events get new sequence numbers, in the same order; their ``seq`` is not exported).

The same functions give the ``--json`` output of the command line: stored values only, never
ages or times left, so one store always prints the same JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigurationError
from ._records import (
    ErrorInfo,
    EventRecord,
    RunRecord,
    RunStatus,
    StepRecord,
    StepStatus,
    step_of_run,
)

__all__ = ["FORMAT", "VERSION", "Export", "ExportError", "header", "read_export",
           "record_dict", "record_from_dict", "value_fields"]

FORMAT = "durably-export"
VERSION = 1

# The encoded values of each kind of record: what --decode reads and --redact blanks.
_VALUES = {"run": ("input", "result"), "step": ("result",), "event": ("payload",)}
_KINDS: dict[str, type[Any]] = {"run": RunRecord, "step": StepRecord, "event": EventRecord}
_SKIPPED = {"event": {"seq"}}  # store-assigned: not part of an event's exported value
_ENUMS: dict[str, type[enum.Enum]] = {"RunStatus": RunStatus, "StepStatus": StepStatus}


class ExportError(ConfigurationError):
    """An export file that cannot be imported (another format, a newer version, a
    truncated or broken file); nothing was imported."""


def _kind_of(record: Any) -> str:
    for kind, cls in _KINDS.items():
        if type(record) is cls:
            return kind
    raise TypeError(f"not a record: {record!r}")


def record_dict(record: RunRecord | StepRecord | EventRecord) -> dict[str, Any]:
    """The record's stored fields as a JSON-ready dict (statuses as their values, errors as
    dicts; an event without its store-assigned ``seq``)."""
    skipped = _SKIPPED.get(_kind_of(record), set())
    out: dict[str, Any] = {}
    for spec in dataclasses.fields(record):
        if spec.name in skipped:
            continue
        value = getattr(record, spec.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, ErrorInfo):
            value = value.to_dict()
        out[spec.name] = value
    return out


def _check(value: Any, annotation: str, where: str) -> Any:
    """``value`` as the field annotated ``annotation`` holds it, or ValueError."""
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} must not be null")
    if base == "str" and isinstance(value, str):
        return value
    if base == "int" and type(value) is int:
        return value
    if base == "float" and type(value) in (int, float) and math.isfinite(value):
        return float(value)
    if base in _ENUMS and isinstance(value, str):
        try:
            return _ENUMS[base](value)
        except ValueError:
            raise ValueError(f"{where} is not a status: {value!r}") from None
    if base == "ErrorInfo" and isinstance(value, dict):
        try:
            return ErrorInfo.from_dict(value)
        except (KeyError, TypeError):
            raise ValueError(f"{where} is not an error (type, module, message)") from None
    raise ValueError(f"{where} must be {base}{' or null' if optional else ''},"
                     f" got {value!r}"[:200])


def record_from_dict(kind: str, data: dict[str, Any], where: str) -> Any:
    """Build the record of ``kind`` (``run``, ``step``, ``event``) from an exported object,
    checking every field. Extra fields (``type``, ``*_decoded``) are ignored.

    Raises:
        ValueError: a field is missing or of the wrong type (the message says which).
    """
    cls = _KINDS[kind]
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name in _SKIPPED.get(kind, ()):
            values[spec.name] = 0
            continue
        if spec.name not in data:
            raise ValueError(f"{where}: the {kind} has no field {spec.name!r}")
        values[spec.name] = _check(data[spec.name], str(spec.type), f"{where}: {spec.name}")
    return cls(**values)


def value_fields(kind: str) -> tuple[str, ...]:
    """The fields of a record kind that hold encoded values."""
    return _VALUES[kind]


def header(*, schema_version: int, codec: str, decoded: bool, redacted: bool) -> dict[str, Any]:
    """The first line of an export."""
    return {"format": FORMAT, "version": VERSION, "schema_version": schema_version,
            "codec": codec, "decoded": decoded, "redacted": redacted}


@dataclass
class Export:
    """What an export file holds, checked whole.

    Attributes:
        header: its first line.
        runs: each run with its steps and events, in file order.
        steps: the steps outside runs.
    """

    header: dict[str, Any]
    runs: list[tuple[RunRecord, list[StepRecord], list[EventRecord]]] = field(
        default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """How many runs, steps and events it holds."""
        return {"runs": len(self.runs),
                "steps": len(self.steps) + sum(len(s) for _, s, _ in self.runs),
                "events": sum(len(e) for _, _, e in self.runs)}


def _parse(line: str, number: int) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as error:
        raise ExportError(f"line {number} is not JSON ({error})", field="file") from None
    if not isinstance(data, dict):
        raise ExportError(f"line {number} is not a JSON object", field="file")
    return data


def read_export(lines: Iterable[str]) -> Export:
    """Read and check a whole export; nothing is written anywhere.

    Raises:
        ExportError: another format, a newer version, a redacted export, a broken line, a
            step or event that belongs to no run before it, or no ``end`` line (truncated)
            or counts that do not match it.
    """
    numbered: Iterator[tuple[int, str]] = (
        (number, line) for number, line in enumerate(lines, 1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise ExportError("the file is empty: not a durably export", field="file")
    head = _parse(first[1], first[0])
    if head.get("format") != FORMAT:
        raise ExportError(f"not a durably export (its first line has format"
                          f" {head.get('format')!r}, not {FORMAT!r})", field="file")
    version = head.get("version")
    if type(version) is not int or version < 1:
        raise ExportError(f"the export's version {version!r} is not valid", field="file")
    if version > VERSION:
        raise ExportError(f"the export has version {version}, newer than the {VERSION} this"
                          " durably reads: import it with a newer durably", field="file")
    if head.get("redacted"):
        raise ExportError("a redacted export has lost its inputs, results and payloads: it"
                          " cannot be imported", field="file")
    export = Export(header=head)
    current: tuple[RunRecord, list[StepRecord], list[EventRecord]] | None = None
    end: dict[str, Any] | None = None
    for number, line in numbered:
        data = _parse(line, number)
        kind, where = data.get("type"), f"line {number}"
        if end is not None:
            raise ExportError(f"{where} comes after the end line", field="file")
        try:
            if kind == "end":
                end = data
            elif kind == "run":
                current = (record_from_dict("run", data, where), [], [])
                export.runs.append(current)
            elif kind == "step":
                step = record_from_dict("step", data, where)
                if current is not None and step_of_run(step, current[0].run_id):
                    current[1].append(step)
                else:
                    current = None  # the steps outside runs come after every run
                    export.steps.append(step)
            elif kind == "event":
                event = record_from_dict("event", data, where)
                if current is None or event.run_id != current[0].run_id:
                    raise ExportError(f"{where}: an event of run {event.run_id!r} that does not"
                                      " follow its run", field="file")
                current[2].append(event)
            else:
                raise ExportError(f"{where} has an unknown type {kind!r}", field="file")
        except ValueError as error:
            raise ExportError(str(error), field="file") from None
    if end is None:
        raise ExportError("the export has no end line: it is truncated (nothing was"
                          " imported)", field="file")
    counts = export.counts
    if any(end.get(name) != counts[name] for name in counts):
        raise ExportError(f"the end line counts {dict((k, end.get(k)) for k in counts)} but"
                          f" the file holds {counts}: it is damaged", field="file")
    return export
