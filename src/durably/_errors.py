"""The exception tree of durably.

Everything durably raises on purpose derives from :class:`DurableError`::

    Exception
    └── DurableError
        ├── ConfigurationError      (also a ValueError)   bad policy, option or registration
        ├── HandlerNotFoundError    (also a LookupError)  no handler for an action; never retried
        ├── SerializationError      (also a TypeError)    a value the codec cannot encode/hash
        ├── StorageError                                  the store failed, is corrupt or unusable
        ├── WorkflowStepError                             a durable step gave up (attempts used up,
        │                                                 non-retryable error, interrupted)
        ├── NonRetryableError                             raise it (or subclass it) in a handler
        │                                                 to stop retrying at once
        ├── RetryAfterError                               raise it in a handler to ask for a wait
        ├── StepTimeoutError        (also a TimeoutError) an attempt passed its policy's timeout
        ├── StepInterruptedError                          an attempt was cut off (crash, kill) and
        │                                                 may not go on
        ├── RunConflictError                              a run id is taken by another workflow
        │                                                 or another input
        ├── RunNotFoundError        (also a LookupError)  no run has that id
        ├── StepNotFoundError       (also a LookupError)  no step of the run matches a fork's or
        │                                                 restart's from_step
        ├── WorkflowFailedError                           the run's body raised; carries the
        │                                                 recorded ErrorInfo
        ├── RunCancelledError                             the run was cancelled (or passed its
        │                                                 deadline)
        ├── RecoveryLimitError                            the run was taken over more often than
        │                                                 max_recoveries allows
        ├── WaitTimeoutError        (also a TimeoutError) a durable wait reached its deadline
        └── RunClosedError                                the run is finished: nothing can be sent

    BaseException
    └── OwnershipLost                                     another owner took the run over (or it
                                                          was cancelled): this one must stop

``OwnershipLost`` is outside ``DurableError`` on purpose: it unwinds a workflow body like a
crash would, past any ``except Exception`` in user code, so a stale owner stops at once.

This module imports nothing from the package: it is the bottom layer. Every class here shows
as ``durably.<Name>`` in tracebacks and in recorded errors (``ErrorInfo.module``), because that
is where users import it from.

Every error keeps its structured attributes through ``pickle`` (errors cross process
boundaries in multiprocessing pools and in logs): :meth:`DurableError.__reduce__` rebuilds the
instance without calling ``__init__`` and restores its ``__dict__``, so subclasses with their
own constructors stay picklable too.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "DurableError",
    "HandlerNotFoundError",
    "NonRetryableError",
    "OwnershipLost",
    "RecoveryLimitError",
    "RetryAfterError",
    "RunCancelledError",
    "RunClosedError",
    "RunConflictError",
    "RunNotFoundError",
    "SerializationError",
    "StepInterruptedError",
    "StepNotFoundError",
    "StepTimeoutError",
    "StorageError",
    "WaitTimeoutError",
    "WorkflowFailedError",
    "WorkflowStepError",
    "describe",
]


def _rebuild(cls: type[DurableError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class DurableError(Exception):
    """Base class of every error durably raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class ConfigurationError(DurableError, ValueError):
    """An invalid option: a retry policy field, a storage setting, a registration.

    Attributes:
        field: the name of the offending option, or ``None`` when it is not a single field.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class HandlerNotFoundError(DurableError, LookupError):
    """No handler is registered for an action. Raised before anything runs or is recorded.

    Attributes:
        action: the action name that was looked up.
    """

    def __init__(self, action: str, message: str | None = None) -> None:
        super().__init__(message or f"no handler registered for action {action!r}")
        self.action = action


class SerializationError(DurableError, TypeError):
    """A value cannot be encoded by the codec, or cannot be hashed into a step id.

    Attributes:
        type_name: the qualified name of the offending value's type.
        path: where the value sits inside what was encoded, e.g. ``data["items"][2]``.
        step_id: the step the value belongs to, when known.
        action: the action of that step, when known.
        reason: what was wrong, in words.
        hint: how to fix it, when there is something to say.
    """

    def __init__(
        self,
        reason: str,
        *,
        type_name: str = "",
        path: str = "",
        step_id: str | None = None,
        action: str | None = None,
        hint: str = "",
    ) -> None:
        self.reason = reason
        self.type_name = type_name
        self.path = path
        self.step_id = step_id
        self.action = action
        self.hint = hint
        super().__init__(self._describe())

    def _describe(self) -> str:
        text = self.reason
        if self.path:
            text += f" at {self.path}"
        where = [f"action {self.action}" if self.action else "",
                 f"step {self.step_id}" if self.step_id else ""]
        if any(where):
            text += f" ({', '.join(part for part in where if part)})"
        if self.hint:
            text += f". {self.hint}"
        return text

    def named(self, *, path: str | None = None, step_id: str | None = None,
              action: str | None = None, reason: str | None = None,
              hint: str | None = None) -> SerializationError:
        """Return a copy that says more about where the value was (a new error, same type)."""
        return SerializationError(
            self.reason if reason is None else reason, type_name=self.type_name,
            path=self.path if path is None else path,
            step_id=self.step_id if step_id is None else step_id,
            action=self.action if action is None else action,
            hint=self.hint if hint is None else hint)


class StorageError(DurableError):
    """The store failed or holds something it cannot give back.

    Attributes:
        path: the database path (or another description of the store), when known.
        step_id: the step being read or written, when known.
    """

    def __init__(
        self, message: str, *, path: str | None = None, step_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.step_id = step_id


def describe(error: BaseException) -> str:
    """``"Type: message"`` for an exception, ``"Type"`` when it has no message, and never an
    exception of its own (a broken ``__str__`` is reported, not raised)."""
    kind = type(error).__name__
    try:
        text = str(error)
    except Exception as broken:
        text = f"<str() raised {type(broken).__name__}>"
    return f"{kind}: {text}" if text else kind


class WorkflowStepError(DurableError):
    """A durable step gave up: its attempts are used up or its error is not retryable.

    Raised by ``do`` and chained (``raise ... from``) to the last cause.

    Attributes:
        step_id: the step that failed.
        action: the action the step ran.
        workflow_id: the workflow (or run) the step belongs to.
        attempts: how many attempts the budget used, interrupted ones included.
        cause: the last exception (also available as ``__cause__``).
        reason: why no further attempt was made, in words.
    """

    def __init__(
        self,
        step_id: str,
        *,
        attempts: int,
        cause: BaseException | None,
        action: str = "",
        reason: str = "",
        workflow_id: str = "",
    ) -> None:
        what = f"step {step_id}" + (f" ({action})" if action else "")
        if workflow_id:
            what += f" of workflow {workflow_id}"
        why = f"failed after {attempts} attempt{'s' if attempts != 1 else ''}"
        if reason:
            why += f" ({reason})"
        last = f": {describe(cause)}" if cause is not None else ""
        super().__init__(f"{what} {why}{last}")
        self.step_id = step_id
        self.action = action
        self.workflow_id = workflow_id
        self.attempts = attempts
        self.cause = cause
        self.reason = reason


class NonRetryableError(DurableError):
    """Raise this (or a subclass) from a handler to fail the step without further attempts."""


class RetryAfterError(DurableError):
    """Raise this from a handler to ask for a specific wait before the next attempt.

    The wait has no jitter, is capped at the policy's ``max_delay``, and a negative delay counts
    as zero. It is retried whatever the policy's ``retry_if`` says, while attempts remain.

    Attributes:
        delay: the requested wait in seconds.
    """

    def __init__(self, delay: float, message: str | None = None) -> None:
        super().__init__(message or f"retry requested after {delay} s")
        self.delay = delay


class StepTimeoutError(DurableError, TimeoutError):
    """An attempt ran past its policy's ``timeout``. Retryable like any other failure.

    Attributes:
        step_id: the step whose attempt timed out.
        timeout: the limit in seconds.
    """

    def __init__(self, step_id: str, timeout: float) -> None:
        super().__init__(f"attempt of step {step_id} timed out after {timeout} s")
        self.step_id = step_id
        self.timeout = timeout


class StepInterruptedError(DurableError):
    """A step was interrupted (the process died or was stopped) and may not go on: it was the
    budget's last attempt, or the budget's ``max_elapsed`` passed before it resumed.

    Recorded as the step's error, and the cause of the :class:`WorkflowStepError` raised.

    Attributes:
        step_id: the interrupted step.
        attempts: the attempts its budget used.
        reason: why it may not go on, when it is not the last attempt.
    """

    def __init__(self, step_id: str, attempts: int, *, reason: str = "") -> None:
        super().__init__(
            f"step {step_id} was interrupted during attempt {attempts}, "
            + (reason or "its last allowed attempt")
        )
        self.step_id = step_id
        self.attempts = attempts
        self.reason = reason


class RunError(DurableError):
    """Base of the errors about one workflow run; every one carries ``run_id``."""

    def __init__(self, run_id: str, message: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunConflictError(RunError):
    """``start`` found the run id taken by another workflow or another input.

    The stored run is untouched. Attributes: ``run_id``, ``workflow`` (the stored one),
    ``requested`` (the workflow asked for).
    """

    def __init__(self, run_id: str, *, workflow: str, requested: str, reason: str) -> None:
        super().__init__(run_id, f"run {run_id!r} already exists ({reason}); it is left as it"
                                 " is: use another run id, or get_run() it")
        self.workflow = workflow
        self.requested = requested


class RunNotFoundError(RunError, LookupError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, f"no run {run_id!r}")


class StepNotFoundError(RunError, LookupError):
    """No step of the run matches ``from_step`` (of ``fork`` or ``restart``).

    Attributes: ``run_id``, ``step`` (what was asked for).
    """

    def __init__(self, run_id: str, step: str, hint: str = "") -> None:
        super().__init__(run_id, f"run {run_id!r} has no step {step!r}"
                                 + (f": {hint}" if hint else ""))
        self.step = step


class WorkflowFailedError(RunError):
    """The run's body raised: the run is FAILED.

    Attributes:
        error: the recorded :class:`~durably.ErrorInfo` (type, module, message, traceback).
            ``__cause__`` is the original exception when it failed in this process.
    """

    def __init__(self, run_id: str, error: Any) -> None:
        what = f"{error.type}: {error.message}" if error is not None else "no error recorded"
        super().__init__(run_id, f"run {run_id!r} failed: {what}")
        self.error = error


class RunCancelledError(RunError):
    """The run was cancelled, by ``cancel()`` or because it passed its deadline.

    Attributes:
        reason: why, in words.
    """

    def __init__(self, run_id: str, reason: str = "it was cancelled") -> None:
        super().__init__(run_id, f"run {run_id!r} is cancelled: {reason}")
        self.reason = reason


class RecoveryLimitError(RunError):
    """The run was taken over after a crash more often than ``max_recoveries`` allows.

    Recorded as the FAILED run's error: a poison run that kills its process every time must
    not loop forever. ``resume()`` gives it a fresh recovery budget.

    Attributes:
        recoveries: the takeovers counted.
    """

    def __init__(self, run_id: str, recoveries: int) -> None:
        super().__init__(run_id, f"run {run_id!r} was recovered {recoveries} times, its"
                                 " max_recoveries, and still did not finish")
        self.recoveries = recoveries


class WaitTimeoutError(RunError, TimeoutError):
    """A durable wait (``wait_for_event``) reached its recorded deadline without an event.

    Attributes:
        name: the event waited for.
        deadline: the wait's deadline, seconds since the epoch.
    """

    def __init__(self, run_id: str, name: str, deadline: float) -> None:
        super().__init__(run_id, f"run {run_id!r} waited for event {name!r} until its"
                                 f" deadline {deadline}")
        self.name = name
        self.deadline = deadline


class RunClosedError(RunError):
    """The run is COMPLETED, FAILED or CANCELLED: it takes no more events.

    Attributes:
        status: the run's status value.
    """

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(run_id, f"run {run_id!r} is {status}: it takes no more events")
        self.status = status


class OwnershipLost(BaseException):
    """This process no longer owns the run it is executing: stop at once.

    Raised by a fenced write (a step, the outcome, an event consumed) when another owner has
    claimed the run since, or it was cancelled. Nothing was written. It is a ``BaseException``
    so that it unwinds the workflow body like a crash, past ``except Exception``.

    Attributes:
        run_id: the run.
        fence: the fencing token this owner held.
    """

    def __init__(self, run_id: str, fence: int) -> None:
        super().__init__(f"run {run_id!r}: fence {fence} is stale; another owner has it (or it"
                         " was cancelled); nothing was written")
        self.run_id = run_id
        self.fence = fence

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_base, (type(self), self.args, dict(self.__dict__)))


def _rebuild_base(cls: type[BaseException], args: tuple[Any, ...],
                  state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


for _public in (ConfigurationError, DurableError, HandlerNotFoundError, NonRetryableError,
                OwnershipLost, RecoveryLimitError, RetryAfterError, RunCancelledError,
                RunClosedError, RunConflictError, RunNotFoundError, SerializationError,
                StepInterruptedError, StepTimeoutError, StorageError, WaitTimeoutError,
                WorkflowFailedError, WorkflowStepError):
    _public.__module__ = "durably"
