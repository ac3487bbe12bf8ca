"""The exception tree: inheritance, messages, structured attributes, pickling."""

from __future__ import annotations

import pickle

import pytest

import durably
from durably import (
    ConfigurationError,
    DurableError,
    HandlerNotFoundError,
    NonRetryableError,
    RetryAfterError,
    SerializationError,
    StepInterruptedError,
    StepTimeoutError,
    StorageError,
    WorkflowStepError,
)

EXAMPLES = [
    ConfigurationError("bad", field="max_attempts"),
    HandlerNotFoundError("Payment.charge"),
    SerializationError("cannot encode", type_name="object", path="args[0]", step_id="s1_x"),
    StorageError("broken", path="/tmp/x.db", step_id="s1_y"),
    WorkflowStepError("s1_z", attempts=3, cause=ValueError("boom"), action="A.b"),
    NonRetryableError("declined"),
    RetryAfterError(2.5),
    StepTimeoutError("s1_t", 1.5),
    StepInterruptedError("s1_i", 3),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling_with_their_attributes(error: DurableError) -> None:
    """pickle round-trips keep the type, the message and every structured attribute."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.args == error.args
    for name, value in vars(error).items():
        if isinstance(value, BaseException):
            assert type(getattr(copy, name)) is type(value)
            assert str(getattr(copy, name)) == str(value)
        else:
            assert getattr(copy, name) == value


def test_user_subclass_with_own_constructor_pickles() -> None:
    """A user's NonRetryableError subclass with a custom __init__ still pickles."""

    class Declined(NonRetryableError):
        def __init__(self, code: int) -> None:
            super().__init__(f"declined with code {code}")
            self.code = code

    globals()["Declined"] = Declined  # pickle finds classes by module-level name
    Declined.__qualname__ = "Declined"
    copy = pickle.loads(pickle.dumps(Declined(51)))
    assert copy.code == 51
    assert str(copy) == "declined with code 51"


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (ConfigurationError("x"), (DurableError, ValueError)),
        (HandlerNotFoundError("A.b"), (DurableError, LookupError)),
        (SerializationError("x"), (DurableError, TypeError)),
        (StepTimeoutError("s", 1.0), (DurableError, TimeoutError)),
    ],
)
def test_errors_subclass_the_builtins_callers_expect(
    error: DurableError, bases: tuple[type[BaseException], ...]
) -> None:
    """Errors that mirror a builtin can be caught as that builtin."""
    assert isinstance(error, bases)


def test_messages_name_what_went_wrong() -> None:
    """Messages carry the identifying attributes."""
    assert "Payment.charge" in str(HandlerNotFoundError("Payment.charge"))
    text = str(SerializationError("cannot encode", path='args[0]["a"]', step_id="s1_q"))
    assert 'args[0]["a"]' in text and "s1_q" in text
    failed = WorkflowStepError("s1_z", attempts=3, cause=ValueError("boom"), action="A.b")
    assert "s1_z" in str(failed) and "3 attempts" in str(failed) and "boom" in str(failed)
    assert failed.cause is not None and failed.attempts == 3


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_errors_show_as_durably_names(error: DurableError) -> None:
    """Tracebacks and recorded errors name the class where users import it from."""
    assert type(error).__module__ == "durably"
    assert getattr(durably, type(error).__name__) is type(error)
