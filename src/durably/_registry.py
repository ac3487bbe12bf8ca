"""Which handler runs for an action, and which subscribers hear an event.

A registry belongs to one runtime and is shared with the runtimes ``for_workflow`` derives from
it, never between unrelated runtimes (a process-global registry leaks handlers between
workflows).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import ConfigurationError, HandlerNotFoundError

__all__ = [
    "Domain",
    "Handler",
    "Registry",
    "callable_name",
    "check_text",
    "compile_pattern",
    "is_async_callable",
    "stable_name",
    "validate_action_name",
]

Handler = Callable[..., Any]
"""What a handler is: any callable; called as ``handler(context, *args)``."""

_SEGMENT = re.compile(r"[^.\s*]+")


@dataclass(frozen=True)
class Domain:
    """A group of actions registered at once as ``"<name>.<method>"``.

    ``runtime.register(Domain("Payment", {"charge": charge, "refund": refund}))`` registers
    ``"Payment.charge"`` and ``"Payment.refund"``.

    Attributes:
        name: the domain, the part before the dot.
        methods: method name to handler.
    """

    name: str
    methods: Mapping[str, Handler] = field(default_factory=dict)


def _main_module_name() -> str | None:
    """The real name of the module run as ``__main__``: its spec's name (``python -m app``),
    else its file's stem (``python app.py``); ``None`` for ``python -c`` or a REPL."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        return str(spec.name)
    file = getattr(main, "__file__", None)
    if isinstance(file, str) and file:
        return os.path.splitext(os.path.basename(file))[0]
    return None


def stable_name(fn: object) -> str | None:
    """Return ``module:qualname`` for a callable whose name survives a restart, else ``None``.

    A module run as a script is named by its real module name, so ``python app.py`` and
    ``import app`` agree. A bound method or a callable instance is named by its class's
    function (``module:Class.method``, ``module:Class.__call__``): two instances are the same
    action. Lambdas, functions defined inside other functions, ``functools.partial`` objects
    and functions of a ``__main__`` without a spec or a file have no stable name.
    """
    if isinstance(fn, functools.partial):
        return None
    target: Any = fn
    if inspect.ismethod(target):
        target = target.__func__
    elif not (inspect.isfunction(target) or inspect.isbuiltin(target)
              or isinstance(target, type)):
        target = getattr(type(target), "__call__", None)  # noqa: B004 - the method itself
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if "<lambda>" in qualname or "<locals>" in qualname:
        return None
    if module == "__main__":
        main_name = _main_module_name()
        if main_name is None:
            return None
        module = main_name
    return f"{module}:{qualname}"


def callable_name(fn: Handler) -> str:
    """Return a callable's name for messages and unstored calls: its stable name, or its
    best-effort ``module:qualname`` when it has none."""
    name = stable_name(fn)
    if name is not None:
        return name
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{qualname}"


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` returns a coroutine (async functions and async ``__call__``)."""
    while hasattr(fn, "func"):  # functools.partial
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - the method, not callability
    )


def check_text(value: object, field: str) -> str:
    """Return ``value`` if it is a non-empty ``str`` that every storage can hold.

    A lone surrogate (``"\\ud800"``) is a legal Python string but not UTF-8 text: SQLite and
    PostgreSQL cannot store it, so it is refused here, before anything is written, the same
    way for every backend.

    Raises:
        ConfigurationError: names ``field`` and the value.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{field} must be a non-empty str, got {value!r}", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ConfigurationError(
            f"{field} {value!r} is not valid text: {error.reason} at position {error.start}"
            " (a lone surrogate cannot be stored)", field=field) from None
    return value


def validate_action_name(name: object) -> str:
    """Return ``name`` if it is a usable action name, else raise ``ConfigurationError``."""
    if not isinstance(name, str) or not all(_SEGMENT.fullmatch(part) for part in name.split(".")):
        raise ConfigurationError(
            f"an action name is dot-separated words without spaces or '*', like"
            f" 'Payment.charge'; got {name!r}",
            field="action",
        )
    if name.split(".", 1)[0] == "durably":
        raise ConfigurationError(
            f"action {name!r}: the domain 'durably' is reserved for the steps durably records"
            " itself (sleeps, waits, published values, child runs)", field="action")
    return check_text(name, "action")


def compile_pattern(pattern: object) -> re.Pattern[str]:
    """Compile an event pattern: ``*`` matches one segment, ``**`` one or more.

    Raises:
        ConfigurationError: the pattern has empty segments or stray wildcards.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ConfigurationError(f"an event pattern must be a non-empty str, got {pattern!r}",
                                 field="pattern")
    parts = []
    for segment in pattern.split("."):
        if segment == "*":
            parts.append(r"[^.]+")
        elif segment == "**":
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif _SEGMENT.fullmatch(segment):
            parts.append(re.escape(segment))
        else:
            raise ConfigurationError(
                f"event pattern {pattern!r}: each segment is a word, '*' or '**',"
                f" got {segment!r}",
                field="pattern",
            )
    return re.compile(r"\.".join(parts))


@dataclass(frozen=True, eq=False)
class _Subscription:
    pattern: str
    matcher: re.Pattern[str]
    handler: Handler


class Registry:
    """Actions and workflows by name, and event subscriptions. Thread-safe."""

    def __init__(self, *, accepts_async: bool) -> None:
        self.accepts_async = accepts_async
        self._actions: dict[str, Handler] = {}
        self._workflows: dict[str, Any] = {}
        self._subscriptions: list[_Subscription] = []
        self._lock = threading.Lock()

    def check_handler(self, handler: object, what: str) -> Handler:
        """Return ``handler`` if this runtime flavour can call it."""
        if not callable(handler):
            raise ConfigurationError(f"{what}: a handler must be callable, got {handler!r}",
                                     field="handler")
        if not self.accepts_async and is_async_callable(handler):
            raise ConfigurationError(
                f"{what}: {callable_name(handler)} is a coroutine function; the sync"
                " DurableWorkflowRuntime cannot await it. Use AsyncDurableWorkflowRuntime, or"
                " make the handler a plain function.",
                field="handler",
            )
        return handler

    def register(self, name: str, handler: Handler) -> None:
        """Register ``handler`` for ``name``; registering a different one twice is an error."""
        validate_action_name(name)
        self.check_handler(handler, f"action {name!r}")
        with self._lock:
            existing = self._actions.get(name)
            if existing is not None and existing is not handler:
                raise ConfigurationError(
                    f"action {name!r} is already registered to {callable_name(existing)}",
                    field="action",
                )
            self._actions[name] = handler

    def lookup(self, name: str) -> Handler:
        """Return the handler for ``name``; raise ``HandlerNotFoundError`` if there is none."""
        handler = self._actions.get(name)
        if handler is None:
            raise HandlerNotFoundError(name)
        return handler

    def register_workflow(self, name: str, spec: Any) -> None:
        """Register a workflow (``spec.function`` under ``name``); registering a different
        function under a taken name is an error."""
        validate_action_name(name)
        with self._lock:
            existing = self._workflows.get(name)
            if existing is not None and existing.function is not spec.function:
                raise ConfigurationError(
                    f"workflow {name!r} is already registered to"
                    f" {callable_name(existing.function)}", field="name")
            self._workflows[name] = spec

    def workflow(self, name: str) -> Any:
        """Return the workflow registered as ``name``, or ``None``."""
        return self._workflows.get(name)

    def workflow_names(self) -> list[str]:
        """Return the names of every registered workflow."""
        with self._lock:
            return list(self._workflows)

    def subscribe(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Subscribe ``handler`` to events matching ``pattern``; return ``unsubscribe()``."""
        subscription = _Subscription(pattern, compile_pattern(pattern),
                                     self.check_handler(handler, f"subscriber of {pattern!r}"))
        with self._lock:
            self._subscriptions.append(subscription)

        def unsubscribe() -> None:
            with self._lock:
                if subscription in self._subscriptions:
                    self._subscriptions.remove(subscription)

        return unsubscribe

    def subscribers(self, event: str) -> list[Handler]:
        """Return the handlers whose pattern matches ``event``, in subscription order."""
        with self._lock:
            subscriptions = list(self._subscriptions)
        return [sub.handler for sub in subscriptions if sub.matcher.fullmatch(event)]
