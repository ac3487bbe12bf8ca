"""Where a durable call belongs: its :class:`Scope`, and the step whose handler is running.

The running step is held in a context variable, which follows the code that runs a handler
into the threads and tasks it starts (``contextvars.copy_context``, ``asyncio.to_thread``,
tasks), so a durable call made anywhere inside a handler knows its parent step.
"""

from __future__ import annotations

import contextvars

from ._ids import CallCounter
from ._records import StepContext
from ._view import WorkflowView

__all__ = ["ActiveStep", "Scope", "active_step", "current_step", "enter_step", "leave_step"]


class Scope:
    """What top-level durable calls share: the workflow they belong to, their numbering and
    the records known of them.

    Attributes:
        workflow_id: the workflow id, hashed into step ids and kept in their records.
        counter: numbers identical top-level calls.
        view: the workflow's records as far as this scope needs them.
    """

    __slots__ = ("counter", "view", "workflow_id")

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.counter = CallCounter()
        self.view = WorkflowView(workflow_id)


class ActiveStep:
    """What the context variable holds while a handler runs: its step and its children.

    Attributes:
        context: what ``current_step()`` returns.
    """

    __slots__ = ("_children", "context")

    def __init__(self, context: StepContext) -> None:
        self.context = context
        self._children: CallCounter | None = None

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


def enter_step(context: StepContext) -> contextvars.Token[ActiveStep | None]:
    """Mark ``context`` as the running step; return the token that :func:`leave_step` takes."""
    return _active.set(ActiveStep(context))


def leave_step(token: contextvars.Token[ActiveStep | None]) -> None:
    """Undo :func:`enter_step`."""
    _active.reset(token)
