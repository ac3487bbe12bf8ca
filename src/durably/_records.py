"""Plain values that the other layers pass around: statuses, records, errors, pipelines.

Everything here is immutable, so a record handed out by a storage backend can never be changed
behind the backend's back. This module imports only :mod:`durably._errors`'s layer (nothing).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TERMINAL", "ErrorInfo", "EventRecord", "Pipeline", "RunRecord", "RunStatus", "StepContext",
    "StepEvent", "StepRecord", "StepStatus", "new_context", "new_record", "step_kind",
    "step_of_run",
]


_new_object = object.__new__
"""Makes an instance without its ``__init__``: the fast constructors below fill its dict."""


class StepStatus(str, enum.Enum):
    """Where a durable step stands. The value is what storage backends persist."""

    RUNNING = "running"
    """An attempt started and has not ended (or its process died)."""
    RETRYING = "retrying"
    """An attempt failed; the next one is scheduled at ``next_attempt_at``."""
    COMPLETED = "completed"
    """The step succeeded; its record is final and its result is replayed."""
    FAILED = "failed"
    """Attempts were used up or the error was not retryable; the next call starts afresh."""


@dataclass(frozen=True)
class ErrorInfo:
    """What is kept of an exception in a record: enough to read, nothing to execute.

    Attributes:
        type: the exception's class name, e.g. ``"ConnectionError"``.
        module: the module that defines the class, e.g. ``"builtins"``.
        message: ``str(exception)``.
        traceback: the formatted traceback text (empty when there was none).
    """

    type: str
    module: str
    message: str
    traceback: str = ""

    @classmethod
    def from_exception(cls, error: BaseException, *, with_traceback: bool = True) -> ErrorInfo:
        """Describe ``error``; with its formatted traceback unless ``with_traceback`` is False.

        Formatting a traceback reads source files and costs far more than a retry's
        bookkeeping, so the runtime keeps it for FAILED records (what people debug) and leaves
        it out of RETRYING ones (the ``on_step_error`` hook still gets the live exception).
        """
        kind = type(error)
        text = ""
        if with_traceback:
            import traceback  # only failures that are kept pay for the import

            try:
                text = "".join(traceback.format_exception(kind, error, error.__traceback__))
            except Exception as broken:  # a hostile exception must not stop its recording
                text = f"<the traceback could not be formatted: {type(broken).__name__}>"
        try:
            message = str(error)
        except Exception as broken:  # a __str__ that raises
            message = f"<str() of the error raised {type(broken).__name__}>"
        # Filled the way new_record fills a StepRecord: one is made per failed attempt.
        info: ErrorInfo = _new_object(cls)
        info.__dict__.update(type=kind.__qualname__, module=kind.__module__, message=message,
                             traceback=text)
        return info

    def to_dict(self) -> dict[str, str]:
        """Return the fields as a plain ``dict`` (what SQLite stores as JSON)."""
        return {"type": self.type, "module": self.module, "message": self.message,
                "traceback": self.traceback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorInfo:
        """Build from :meth:`to_dict` output. Raises ``KeyError``/``TypeError`` on bad data."""
        values = (data["type"], data["module"], data["message"], data.get("traceback", ""))
        if not all(isinstance(value, str) for value in values):
            raise TypeError("error fields must be strings")
        return cls(*values)


@dataclass(frozen=True)
class StepRecord:
    """The stored state of one durable step.

    Attributes:
        step_id: the step's id (opaque to storage).
        workflow_id: the workflow the step belongs to.
        action: the action name the step runs.
        status: where the step stands.
        result: the **encoded** result (a codec string) once COMPLETED, else ``None``.
        error: the latest failure, cleared on success.
        attempts: attempts used by the current budget, interrupted ones included.
        created_at: when the record was first written (seconds since the epoch).
        started_at: when the latest attempt started.
        updated_at: when the record was last written.
        completed_at: when the step completed (only when COMPLETED).
        next_attempt_at: when the next attempt is due (only when RETRYING).
        budget_started_at: when the first attempt of the current budget started
            (``max_elapsed`` is measured from it).
    """

    step_id: str
    workflow_id: str
    action: str
    status: StepStatus
    result: str | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    created_at: float = 0.0
    started_at: float | None = None
    updated_at: float = 0.0
    completed_at: float | None = None
    next_attempt_at: float | None = None
    budget_started_at: float | None = None



def new_record(
    *, step_id: str, workflow_id: str, action: str, status: StepStatus,
    result: str | None = None, error: ErrorInfo | None = None, attempts: int = 0,
    created_at: float = 0.0, started_at: float | None = None, updated_at: float = 0.0,
    completed_at: float | None = None, next_attempt_at: float | None = None,
    budget_started_at: float | None = None,
) -> StepRecord:
    """Build a :class:`StepRecord` from keywords, at half the cost of its ``__init__``.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; the
    runtime builds two records per step (and a storage backend one per row it reads), so they
    are built here by filling the instance dict in one call. The result is an ordinary,
    frozen, equal-comparing StepRecord; the fields and defaults are the dataclass's own.
    """
    record: StepRecord = _new_object(StepRecord)
    record.__dict__.update(
        step_id=step_id, workflow_id=workflow_id, action=action, status=status, result=result,
        error=error, attempts=attempts, created_at=created_at, started_at=started_at,
        updated_at=updated_at, completed_at=completed_at, next_attempt_at=next_attempt_at,
        budget_started_at=budget_started_at,
    )
    return record


@dataclass(frozen=True)
class Pipeline:
    """A call to run: the action's path, the context (first handler argument) and its hash.

    ``Pipeline(path=("Inventory", "check"), context=product)`` runs the ``"Inventory.check"``
    handler as ``handler(product, *args)``.

    Attributes:
        path: the action name split on ``.``, e.g. ``("Inventory", "check")``.
        context: the value handed to the handler as its first argument.
        context_hash: the call's hash (the step id before any ``#n`` suffix), filled in by the
            runtime when it hashes the call; ``None`` for ``send``.
    """

    path: tuple[str, ...]
    context: Any = None
    context_hash: str | None = field(default=None, compare=False)

    @property
    def action(self) -> str:
        """The action name: the path joined with ``.``."""
        return ".".join(self.path)


@dataclass(frozen=True)
class StepContext:
    """What a running handler can learn about its step, through ``current_step()``.

    Attributes:
        workflow_id: the workflow the step belongs to.
        step_id: the step's id.
        action: the action name.
        attempt: the 1-based attempt number, interrupted attempts included.
        max_attempts: the attempt budget of the policy in force.
        mode: ``"do"``, ``"try"`` or ``"send"``.
    """

    workflow_id: str
    step_id: str
    action: str
    attempt: int
    max_attempts: int
    mode: str

    @property
    def idempotency_key(self) -> str:
        """A key that stays the same across retries, crashes and processes for this step.

        Hand it to payment APIs and other services that de-duplicate requests. It is distinct
        across workflows even when two of them use the same explicit ``step_id``. (Computed on
        demand: most handlers never ask.)
        """
        text = json.dumps([self.workflow_id, self.step_id], separators=(",", ":"),
                          ensure_ascii=False)
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return "idem_" + digest[:32]


def new_context(*, workflow_id: str, step_id: str, action: str, attempt: int,
                max_attempts: int, mode: str) -> StepContext:
    """Build a :class:`StepContext` (one per attempt) the fast way :func:`new_record` does."""
    context: StepContext = _new_object(StepContext)
    context.__dict__.update(workflow_id=workflow_id, step_id=step_id, action=action,
                            attempt=attempt, max_attempts=max_attempts, mode=mode)
    return context


@dataclass(frozen=True)
class StepEvent:
    """What a hook is told about one attempt of a step (see ``StepHooks``).

    One frozen object rather than positional arguments, so that a field added later changes
    no hook's signature.

    Attributes:
        step_id: the step's id.
        workflow_id: the workflow (or, inside a run, the run id) the step belongs to.
        action: the action name.
        mode: ``"do"``, ``"try"`` or ``"send"``.
        attempt: the 1-based attempt number, interrupted attempts included.
        pipeline: the call, as a :class:`Pipeline`.
        result: the step's value (``on_step_complete`` only).
        error: the exception the attempt raised (``on_step_error`` only).
    """

    step_id: str
    workflow_id: str
    action: str
    mode: str
    attempt: int
    pipeline: Pipeline
    result: Any = None
    error: BaseException | None = None


# ---------------------------------------------------------------- workflow runs


class RunStatus(str, enum.Enum):
    """Where a workflow run stands. The value is what storage backends persist.

    ::

        PENDING ---claim---> RUNNING ---body returns---> COMPLETED
          ^  ^                | | |
          |  |                | | +---body raises, or recoveries run out---> FAILED
          |  +---release------+ +---long wait---> SUSPENDED ---due, claimed---> RUNNING
          +------resume------- FAILED, CANCELLED <---cancel() or deadline--- (any but final)
    """

    PENDING = "pending"
    """Created, released or resumed: due at ``wake_at``, for any worker to claim."""
    RUNNING = "running"
    """Leased by an owner (``owner``, ``lease_until``, ``fence``)."""
    SUSPENDED = "suspended"
    """Waiting (a long sleep or an event): due at ``wake_at``, lease released."""
    COMPLETED = "completed"
    """The body returned; ``result`` holds its encoded value. Final."""
    FAILED = "failed"
    """The body raised (or recoveries ran out); ``error`` says why. ``resume()`` retries it."""
    CANCELLED = "cancelled"
    """Cancelled, or past its deadline. ``resume()`` continues it."""


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
"""The statuses in which a run executes no more (until ``resume()``)."""


@dataclass(frozen=True)
class RunRecord:
    """The stored state of one workflow run.

    Attributes:
        run_id: the run's id (its idempotency key).
        workflow: the registered workflow name.
        status: where the run stands.
        input: the encoded input (a codec string).
        input_hash: sha256 of the input's canonical JSON (compared by ``start``).
        result: the encoded result once COMPLETED.
        error: why it FAILED (or was cancelled by its deadline), else ``None``.
        code_version: the ``code_version`` of the runtime that started it.
        owner: the executor id holding the lease, while RUNNING.
        lease_until: when that lease ends (seconds since the epoch).
        fence: the fencing token: incremented by every claim and cancel.
        recovery_count: takeovers of an expired lease since the last ``resume()``.
        max_recoveries: how many takeovers are allowed before it FAILS.
        parent_run_id: the run that started this one as a child, if any.
        forked_from: the run this one was forked from, if any.
        deadline: when it is cancelled if not finished (from ``timeout=``), else ``None``.
        wake_at: when a PENDING or SUSPENDED run is due.
        waiting_for: what a SUSPENDED run waits for (an event name), else ``None``.
        created_at: when it was created.
        updated_at: when it last changed.
        completed_at: when it reached a terminal status.
    """

    run_id: str
    workflow: str
    status: RunStatus
    input: str
    input_hash: str
    result: str | None = None
    error: ErrorInfo | None = None
    code_version: str | None = None
    owner: str | None = None
    lease_until: float | None = None
    fence: int = 0
    recovery_count: int = 0
    max_recoveries: int = 10
    parent_run_id: str | None = None
    forked_from: str | None = None
    deadline: float | None = None
    wake_at: float | None = None
    waiting_for: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    completed_at: float | None = None


@dataclass(frozen=True)
class EventRecord:
    """One event in a run's inbox.

    Attributes:
        seq: the store's sequence number (FIFO order).
        run_id: the run it was sent to.
        name: the event name a wait asks for.
        key: the sender's idempotency key (a repeated key stores nothing), or ``None``.
        payload: the encoded data.
        sent_at: when it was sent (it wins a wait whose deadline is at or after this).
        consumed_by: the wait step that consumed it, or ``None``.
        consumed_at: when it was consumed.
    """

    seq: int
    run_id: str
    name: str
    key: str | None
    payload: str
    sent_at: float
    consumed_by: str | None = None
    consumed_at: float | None = None


_KINDS = {"durably.sleep": "sleep", "durably.wait": "wait", "durably.publish": "publish",
          "durably.start": "start", "durably.send": "send"}


def step_of_run(step: StepRecord, run_id: str) -> bool:
    """Whether ``step`` is one of run ``run_id``'s steps: they carry the run id as their
    workflow id, and their ids are ``run_id + "/" + local id`` (a step outside runs with an
    explicit key ``workflow/key`` does not count, unless it also names the run as its
    workflow)."""
    return step.workflow_id == run_id and step.step_id.startswith(run_id + "/")


def step_kind(action: str) -> str:
    """The kind of a step from its action: ``"step"``, or the built-in kinds durably records
    under ``durably.<kind>:<name>`` (``sleep``, ``wait``, ``publish``, ``start``, ``send``)."""
    if action.startswith("durably."):
        return _KINDS.get(action.split(":", 1)[0], "step")
    return "step"
