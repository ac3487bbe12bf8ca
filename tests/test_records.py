"""Records, statuses, error descriptions and pipelines."""

from __future__ import annotations

import dataclasses

import pytest

from durably import ErrorInfo, Pipeline, StepRecord, StepStatus


def test_error_info_describes_an_exception_with_its_traceback() -> None:
    """from_exception keeps type, module, message and the formatted traceback."""
    try:
        raise KeyError("missing")
    except KeyError as error:
        info = ErrorInfo.from_exception(error)
    assert (info.type, info.module, info.message) == ("KeyError", "builtins", "'missing'")
    assert "Traceback" in info.traceback and "raise KeyError" in info.traceback


def test_error_info_round_trips_through_a_dict() -> None:
    """to_dict/from_dict are inverses; bad data is rejected."""
    info = ErrorInfo("E", "m", "msg", "tb")
    assert ErrorInfo.from_dict(info.to_dict()) == info
    with pytest.raises(TypeError):
        ErrorInfo.from_dict({"type": 1, "module": "m", "message": "x"})


def test_records_are_frozen() -> None:
    """A StepRecord cannot be changed in place."""
    record = StepRecord("s", "wf", "A.b", StepStatus.RUNNING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.attempts = 2  # type: ignore[misc]


def test_status_values_are_the_stored_strings() -> None:
    """Statuses persist as lower-case strings."""
    assert [s.value for s in StepStatus] == ["running", "retrying", "completed", "failed"]


def test_pipeline_action_joins_the_path() -> None:
    """Pipeline.action is the dotted name; context_hash does not affect equality."""
    pipeline = Pipeline(path=("Inventory", "check"), context={"sku": 1})
    assert pipeline.action == "Inventory.check"
    assert dataclasses.replace(pipeline, context_hash="s1_x") == pipeline
