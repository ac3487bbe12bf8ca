"""What ``@runtime.step`` returns: a function whose call is a durable step.

``charge(card, 12.5)`` is hashed like the proxy call ``p.Payment(card).charge(12.5)``: the
first positional argument is the context, the other positional arguments follow, then one
dict of the keywords (sorted) only when any are given. So the decorated call and the proxy
call are one step, and a re-run with the same arguments replays it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from ._registry import is_async_callable
from ._retry import RetryPolicy

__all__ = ["AsyncStepFunction", "Planner", "StepFunction", "StepFunctionBase"]

P = ParamSpec("P")
R = TypeVar("R")

_ROOTS = ("context", "args")


class Planner(Protocol):
    """What a step function needs of its runtime (the runtime's own planning methods)."""

    def _plan_do(self, action: object, data: Any, args: tuple[Any, ...],
                 retry: RetryPolicy | None, step_id: str | None, *,
                 handler: Callable[..., Any] | None = ...,
                 roots: tuple[str, str] = ...) -> Any: ...

    def _plan_try(self, action: object, data: Any, args: tuple[Any, ...],
                  step_id: str | None, *, handler: Callable[..., Any] | None = ...,
                  roots: tuple[str, str] = ...) -> Any: ...

    def _durable(self, plan: Any) -> Any: ...

    def _once(self, plan: Any) -> Any: ...


class _BoundCall:
    """One call's arguments, split the way step ids hash them, and the call itself."""

    __slots__ = ("args", "context", "invoke", "rest")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> None:
        self.context = args[0] if args else None
        rest = args[1:]
        if kwargs:
            rest = (*rest, dict(sorted(kwargs.items())))
        self.rest = rest
        # The handler the machine runs ignores the split form and calls the function with the
        # arguments exactly as given (a coroutine function gets an async wrapper, so the
        # asyncio runtime awaits it on the loop rather than in a thread).
        if is_async_callable(fn):
            async def invoke_async(*_: Any) -> Any:
                return await fn(*args, **kwargs)

            self.invoke: Callable[..., Any] = invoke_async
        else:
            def invoke(*_: Any) -> Any:
                return fn(*args, **kwargs)

            self.invoke = invoke


class StepFunctionBase:
    """What both flavours of step function share: the name, the policy, the binding."""

    def __init__(self, runtime: Planner, name: str, fn: Callable[..., Any],
                 retry: RetryPolicy | None) -> None:
        self._runtime = runtime
        self._retry = retry
        self.name = name
        self._signature = inspect.signature(fn)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]  # __wrapped__, __doc__...

    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _BoundCall:
        # Arguments that do not fit raise TypeError here, before anything is written.
        self._signature.bind(*args, **kwargs)
        return _BoundCall(self.__wrapped__, args, kwargs)  # type: ignore[attr-defined]

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self._bind(args, kwargs)
        return self._runtime._durable(self._runtime._plan_do(
            self.name, call.context, call.rest, self._retry, None, handler=call.invoke,
            roots=_ROOTS))

    def _try(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self._bind(args, kwargs)
        return self._runtime._once(self._runtime._plan_try(
            self.name, call.context, call.rest, None, handler=call.invoke, roots=_ROOTS))

    def __repr__(self) -> str:
        return f"<durable step {self.name!r}>"


class StepFunction(StepFunctionBase, Generic[P, R]):
    """A function whose call is a durable step: recorded, retried, replayed.

    Returned by ``DurableWorkflowRuntime.step``. ``f(*args, **kwargs)`` runs the step;
    ``f.try_(...)`` makes one unrecorded attempt; ``f.__wrapped__`` is the plain function;
    ``f.name`` is the action it is registered under.
    """

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self._call(args, kwargs)
        return result

    def try_(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Make one attempt, store nothing, and return the function's value."""
        result: R = self._try(args, kwargs)
        return result


class AsyncStepFunction(StepFunctionBase, Generic[P, R]):
    """The asyncio flavour of :class:`StepFunction`: calling it returns an awaitable."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        result: Coroutine[Any, Any, R] = self._call(args, kwargs)
        return result

    def try_(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        """Make one attempt, store nothing; await it for the function's value."""
        result: Coroutine[Any, Any, R] = self._try(args, kwargs)
        return result
