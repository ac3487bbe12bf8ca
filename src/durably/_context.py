"""Where a durable call belongs: its :class:`Scope`, the running run and the running step.

Both are held in context variables, which follow the code into the threads and tasks it
starts (``contextvars.copy_context``, ``asyncio.to_thread``, tasks): a durable call made
anywhere inside a workflow body binds to its run, and one made inside a handler knows its
parent step.
"""

from __future__ import annotations

import contextvars
from typing import Protocol

from ._ids import CallCounter
from ._records import StepContext
from ._view import WorkflowView

__all__ = [
    "ActiveStep", "ContextSource", "DeadlinePassed", "RunBinding", "RunUnwind", "Scope",
    "active_scope", "active_step", "current_step", "enter_run", "enter_step", "leave_run",
    "leave_step",
]


class RunBinding:
    """The run a scope belongs to: its id, the fencing token its owner holds, its deadline.

    Every write of the run's steps names ``run_id`` and ``fence``, and storage refuses it if
    another owner has claimed the run since.
    """

    __slots__ = ("deadline", "fence", "run_id", "workflow")

    def __init__(self, run_id: str, fence: int, workflow: str, deadline: float | None) -> None:
        self.run_id = run_id
        self.fence = fence
        self.workflow = workflow
        self.deadline = deadline


class Scope:
    """What top-level durable calls share: the workflow they belong to, their numbering and
    the records known of them.

    Outside a run, the scope is a runtime's workflow id. Inside a run, step ids are
    ``run_id + "/" + local id``, where the local id hashes the workflow *name* in the workflow
    slot (so every run of a workflow hashes alike), and their records carry the run id.

    Attributes:
        workflow_id: kept in the records (``StepRecord.workflow_id``): the workflow id, or the
            run id inside a run.
        hash_id: hashed into step ids: the workflow id, or the workflow name inside a run.
        prefix: put before every step id of the scope (``run_id + "/"`` inside a run).
        run: the run, or ``None`` outside one.
        counter: numbers identical top-level calls.
        view: the workflow's records as far as this scope needs them.
    """

    __slots__ = ("counter", "hash_id", "prefix", "run", "view", "workflow_id")

    def __init__(self, workflow_id: str, *, run: RunBinding | None = None) -> None:
        self.workflow_id = workflow_id
        self.run = run
        self.hash_id = workflow_id if run is None else run.workflow
        self.prefix = "" if run is None else workflow_id + "/"
        self.counter = CallCounter()
        self.view = WorkflowView(workflow_id)


class RunUnwind(BaseException):
    """Internal: unwinds a workflow body on purpose (it is not an error of the body).

    A ``BaseException``, so that ``except Exception`` in user code lets it through.
    """


class DeadlinePassed(RunUnwind):
    """Internal: the run passed its deadline at a step boundary; it is to be cancelled."""


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "durably_run_scope", default=None
)

active_scope = _scope.get
"""Return the scope of the run executing in this thread or task, or ``None``."""


def enter_run(scope: Scope) -> contextvars.Token[Scope | None]:
    """Make ``scope`` the running run's; return the token :func:`leave_run` takes."""
    return _scope.set(scope)


def leave_run(token: contextvars.Token[Scope | None]) -> None:
    """Undo :func:`enter_run`."""
    _scope.reset(token)


class ContextSource(Protocol):
    """What makes the :class:`StepContext` of an attempt (the step's plan)."""

    def attempt_context(self, attempt: int) -> StepContext:
        """The context of attempt ``attempt``."""
        ...


class ActiveStep:
    """What the context variable holds while a handler runs: its step and its children.

    Attributes:
        attempt: the attempt's number.
        local_id: the step's id within its scope (without a run's prefix): what its children
            hash as their parent.
    """

    __slots__ = ("_children", "_context", "_source", "attempt", "local_id")

    def __init__(self, source: ContextSource, attempt: int, local_id: str) -> None:
        self._source = source
        self.attempt = attempt
        self.local_id = local_id
        self._context: StepContext | None = None
        self._children: CallCounter | None = None

    @property
    def context(self) -> StepContext:
        """What ``current_step()`` returns; made on first use, as most handlers never ask."""
        if self._context is None:
            self._context = self._source.attempt_context(self.attempt)
        return self._context

    @property
    def children(self) -> CallCounter:
        """Numbers the durable calls this attempt makes (a new attempt starts a new one).

        Made on first use: most handlers make no durable calls of their own.
        """
        if self._children is None:
            self._children = CallCounter()
        return self._children


_active: contextvars.ContextVar[ActiveStep | None] = contextvars.ContextVar(
    "durably_active_step", default=None
)

active_step = _active.get
"""Return the running :class:`ActiveStep`, or ``None`` outside a handler."""


def current_step() -> StepContext | None:
    """Return the :class:`StepContext` of the handler running in this thread or task.

    Returns ``None`` outside a handler.
    """
    active = _active.get()
    return None if active is None else active.context


def enter_step(source: ContextSource, attempt: int, local_id: str
               ) -> contextvars.Token[ActiveStep | None]:
    """Mark attempt ``attempt`` of ``source``'s step as running; return the token that
    :func:`leave_step` takes."""
    return _active.set(ActiveStep(source, attempt, local_id))


def leave_step(token: contextvars.Token[ActiveStep | None]) -> None:
    """Undo :func:`enter_step`."""
    _active.reset(token)
