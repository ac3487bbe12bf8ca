"""What both runtime flavours share: options, registration, planning calls, ``send``.

The sync runtime (``_runtime.py``) and the asyncio runtime (``_aio.py``) subclass
:class:`RuntimeBase` and add only how the state machine's commands are answered (blocking
calls, or awaits) and how ``send`` deliveries run in the background. A call is *planned* here
(its action resolved, its step id hashed and numbered, its policy chosen) into a
:class:`~durably._core.StepPlan`, and the flavour drives the machine of ``_core.py`` with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from ._clock import Clock
from ._codec import Codec, JsonCodec, codec_types
from ._context import (
    ActiveStep,
    DeadlinePassed,
    Scope,
    active_scope,
    active_step,
)
from ._core import (
    Hooks,
    StepHooks,
    StepMachine,
    StepPlan,
    durable_step,
    logger,
    single_attempt,
)
from ._errors import ConfigurationError, SerializationError
from ._ids import call_hash, numbered
from ._proxy import Proxy
from ._records import Pipeline
from ._registry import (
    Domain,
    Handler,
    Registry,
    callable_name,
    check_text,
    stable_name,
    validate_action_name,
)
from ._retry import RetryPolicy
from ._runs_api import RunsApi, check_seconds
from ._step import StepFunctionBase
from ._storage import RunStorage, StepStorage, default_storage, history_reader

__all__ = ["MODES", "RuntimeBase", "check_poll", "fresh_id"]

MODES = ("do", "try", "send")

_Self = TypeVar("_Self", bound="RuntimeBase")
_F = TypeVar("_F", bound=Callable[..., Any])


def _scoped_key(scope: Scope, key: object) -> str:
    """The stored id of a caller's own ``step_id=`` key: ``scope + "/" + key``, so the same key
    in two workflows names two steps (a key with ``/`` would make that mapping ambiguous)."""
    key = check_text(key, "step_id")
    if "/" in key:
        raise ConfigurationError(
            f"step_id {key!r} contains '/': a key is stored as '<workflow>/<key>', and a '/'"
            " in it could make two keys of two workflows one", field="step_id")
    return f"{scope.workflow_id}/{key}"


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}", field="mode")
    return str(mode)


def _check_retry(retry: object) -> RetryPolicy | None:
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}", field="retry")
    return retry


def _check_workflow_id(workflow_id: object) -> str:
    return check_text(workflow_id, "workflow_id")


def check_poll(poll: object) -> float:
    """A worker loop's ``poll``: seconds > 0."""
    if not isinstance(poll, (int, float)) or isinstance(poll, bool) or not 0 < poll < 86400:
        raise ConfigurationError(f"poll must be a number of seconds > 0, got {poll!r}",
                                 field="poll")
    return float(poll)


def _default_executor_id() -> str:
    """Host name, process id and a random suffix: unique to this runtime."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class _NoRunStorage:
    """Stands in for a storage that stores steps only: any run operation says what is
    missing (adapters that only store steps keep working for everything else)."""

    def __init__(self, storage: object) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        raise ConfigurationError(
            f"{type(self._storage).__name__} stores steps only; workflow runs need a storage"
            " that implements RunStorage (InMemoryStepStorage, SqliteStepStorage, or an"
            " adapter that passes durably.testing.RunStorageContract)", field="storage")


def fresh_id(prefix: str) -> str:
    """Return a random id for a call that is never stored (a send delivery)."""
    return f"{prefix}_{os.urandom(16).hex()}"


class RuntimeBase(RunsApi):
    """Options, registration and call planning shared by both runtime flavours (workflow
    runs come from :class:`RunsApi`).

    The constructor's parameters are documented on each flavour's class.
    """

    _accepts_async: ClassVar[bool] = False

    def __init__(
        self,
        storage: StepStorage | None = None,
        retry_policy: RetryPolicy | None = None,
        workflow_id: str = "default",
        on_step_start: Callable[[str, Pipeline], Any] | None = None,
        on_step_complete: Callable[[str, Any], Any] | None = None,
        on_step_error: Callable[[str, BaseException, int], Any] | None = None,
        *,
        hooks: StepHooks | None = None,
        clock: Clock | None = None,
        codec: Codec | None = None,
        executor_id: str | None = None,
        lease: float = 60.0,
        max_runs: int = 8,
        code_version: str | None = None,
        shutdown_timeout: float = 10.0,
        suspend_after: float = 30.0,
    ) -> None:
        if storage is None:
            storage = default_storage()
        elif not isinstance(storage, StepStorage):
            raise ConfigurationError(
                f"storage must implement StepStorage (get, set, delete, list, close),"
                f" got {storage!r}", field="storage")
        if retry_policy is None:
            retry_policy = RetryPolicy()
        elif not isinstance(retry_policy, RetryPolicy):
            raise ConfigurationError(f"retry_policy must be a RetryPolicy, got {retry_policy!r}",
                                     field="retry_policy")
        for name, hook in (("on_step_start", on_step_start),
                           ("on_step_complete", on_step_complete),
                           ("on_step_error", on_step_error)):
            if hook is not None and not callable(hook):
                raise ConfigurationError(f"{name} must be callable or None, got {hook!r}",
                                         field=name)
        if hooks is not None and not any(callable(getattr(hooks, name, None)) for name in
                                         ("on_step_start", "on_step_complete", "on_step_error")):
            raise ConfigurationError(
                f"hooks must have on_step_start, on_step_complete or on_step_error, got"
                f" {hooks!r}", field="hooks")
        if codec is not None and not (callable(getattr(codec, "encode", None))
                                      and callable(getattr(codec, "decode", None))):
            raise ConfigurationError(f"codec must have encode() and decode(), got {codec!r}",
                                     field="codec")
        self._storage: StepStorage = storage
        self._history = history_reader(storage)
        self._policy = retry_policy
        self._hooks = Hooks(hooks, on_step_start, on_step_complete, on_step_error)
        self._clock: Clock = clock if clock is not None else self._default_clock()
        self._codec: Codec = codec if codec is not None else JsonCodec()
        self._registry = Registry(accepts_async=self._accepts_async)
        self._scope = Scope(_check_workflow_id(workflow_id))
        self._runs: RunStorage = storage if isinstance(storage, RunStorage) \
            else _NoRunStorage(storage)
        self.executor_id = _default_executor_id() if executor_id is None \
            else check_text(executor_id, "executor_id")
        self.lease = check_seconds(lease, "lease", positive=True)
        if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 1:
            raise ConfigurationError(f"max_runs must be an int >= 1, got {max_runs!r}",
                                     field="max_runs")
        self.max_runs = max_runs
        self.code_version = None if code_version is None \
            else check_text(code_version, "code_version")
        self.shutdown_timeout = check_seconds(shutdown_timeout, "shutdown_timeout",
                                               positive=False)
        self.suspend_after = check_seconds(suspend_after, "suspend_after", positive=False)
        self._family = self._new_family()

    # ------------------------------------------------------------ what each flavour adds

    def _default_clock(self) -> Clock:
        raise NotImplementedError

    def _listen_for_wakeups(self) -> None:
        """Let the storage's wake-up hints (PostgreSQL's LISTEN/NOTIFY: another process
        started a run or sent an event) wake this family's workers at once; polling stays
        the truth. Once per family, from the first worker loop."""
        listen = getattr(self._storage, "listen", None)
        if callable(listen) and not self._family.listening:
            self._family.listening = True
            listen(self._family.notify)

    def _new_family(self) -> Any:
        """Return the state this runtime shares with its siblings: closed flag, pools."""
        raise NotImplementedError

    def _drive(self, machine: StepMachine) -> Any:
        """Answer the machine's commands: return its value (sync) or an awaitable (async)."""
        raise NotImplementedError

    def _dispatch(self, plan: StepPlan) -> None:
        """Run a ``send`` delivery in the background."""
        raise NotImplementedError

    def _finished(self, value: Any) -> Any:
        """Return ``value`` as the flavour returns results: as it is, or as an awaitable."""
        raise NotImplementedError

    # ------------------------------------------------------------ options

    @property
    def workflow_id(self) -> str:
        """The workflow id that scopes this runtime's step ids."""
        return self._scope.workflow_id

    @property
    def storage(self) -> StepStorage:
        """The storage the step records live in."""
        return self._storage

    @property
    def retry_policy(self) -> RetryPolicy:
        """The default retry policy for ``do``."""
        return self._policy

    @property
    def clock(self) -> Clock:
        """The clock this runtime reads time from (and sleeps on)."""
        return self._clock

    @property
    def codec(self) -> Codec:
        """The codec that encodes results and inputs."""
        return self._codec

    @property
    def closed(self) -> bool:
        """Whether this runtime, or a sibling sharing its storage, has been closed."""
        return bool(self._family.closed)

    def for_workflow(self: _Self, workflow_id: str) -> _Self:
        """Return a runtime bound to ``workflow_id``.

        It shares this runtime's storage, actions, subscriptions, policy, hooks, clock, codec
        and background workers; it numbers its own calls from zero and reads its own
        workflow's records. Closing either closes the shared storage, and both report
        ``closed``.
        """
        sibling = object.__new__(type(self))
        sibling._storage = self._storage
        sibling._history = self._history
        sibling._policy = self._policy
        sibling._hooks = self._hooks
        sibling._clock = self._clock
        sibling._codec = self._codec
        sibling._registry = self._registry
        sibling._family = self._family
        sibling._scope = Scope(_check_workflow_id(workflow_id))
        sibling._runs = self._runs
        sibling.executor_id = self.executor_id
        sibling.lease = self.lease
        sibling.max_runs = self.max_runs
        sibling.code_version = self.code_version
        sibling.shutdown_timeout = self.shutdown_timeout
        sibling.suspend_after = self.suspend_after
        return sibling

    # ------------------------------------------------------------ registration

    def register(self, name_or_domain: str | Domain, handler: Handler | None = None) -> None:
        """Register ``handler`` for the action ``name``, or every method of a :class:`Domain`.

        Raises:
            ConfigurationError: a bad name, a handler that is not callable (or, in the sync
                runtime, a coroutine function), or a name already taken by another handler.
        """
        if isinstance(name_or_domain, Domain):
            if handler is not None:
                raise ConfigurationError("register(Domain(...)) takes no handler",
                                         field="handler")
            for method, fn in name_or_domain.methods.items():
                self._registry.register(f"{name_or_domain.name}.{method}", fn)
            return
        if handler is None:
            raise ConfigurationError(
                f"register({name_or_domain!r}) needs a handler: register(name, fn)",
                field="handler")
        self._registry.register(name_or_domain, handler)

    def action(self, name: str) -> Callable[[_F], _F]:
        """Decorator form of :meth:`register`: ``@runtime.action("Inventory.reserve")``."""
        validate_action_name(name)

        def decorate(fn: _F) -> _F:
            self._registry.register(name, fn)
            return fn

        return decorate

    def _step_decorator(self, name: str | Callable[..., Any] | None, retry: RetryPolicy | None,
                        make: Callable[..., StepFunctionBase]) -> Any:
        """The body of each flavour's ``step()``: register the function, wrap it."""
        policy = _check_retry(retry)

        def decorate(fn: Callable[..., Any]) -> StepFunctionBase:
            chosen = step_name if step_name is not None else stable_name(fn)
            if chosen is None:
                raise ConfigurationError(
                    f"@step on {callable_name(fn)}: it has no stable name (a lambda, a local"
                    " function, a partial, or a function of a script without a file); give"
                    " one: @runtime.step('Domain.name')", field="name")
            self.register(chosen, fn)
            return make(self, chosen, fn, policy)

        if callable(name):  # used bare, as @runtime.step
            step_name = None
            return decorate(name)
        step_name = name
        if name is not None:
            validate_action_name(name)
        return decorate

    def on(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Subscribe ``handler(data)`` to events matching ``pattern``; return ``unsubscribe``.

        Segments are split on ``.``; ``*`` matches exactly one segment and ``**`` one or more.
        """
        return self._registry.subscribe(pattern, handler)

    def proxy(self, mode: str = "do") -> Proxy:
        """Return the ``$``-style proxy: ``p.Inventory(product).check(qty)``.

        The call runs ``"Inventory.check"`` as ``handler(product, qty)`` in ``mode``.
        """
        return Proxy(self._proxy_call, _check_mode(mode))

    # ------------------------------------------------------------ planning

    def _resolve(self, action: object, *, stored: bool) -> tuple[str, Handler | None]:
        """Return the action's name, and its handler when it is a callable (else None: the
        name is looked up only if the step runs).

        A callable's name is part of a stored step's identity, so a ``stored`` call refuses a
        callable whose name would not survive a restart (see ``stable_name``).
        """
        if isinstance(action, str):
            return action, None
        if isinstance(action, StepFunctionBase):
            return action.name, None  # registered under its name by @step
        if callable(action):
            handler = self._registry.check_handler(action, "action")
            name = stable_name(handler)
            if name is None:
                if stored:
                    raise ConfigurationError(
                        f"{callable_name(handler)} has no stable name (a lambda, a local"
                        " function, a functools.partial, or a function of a script without"
                        " a file), so a re-run could not find its steps. Register it under a"
                        " name (runtime.register('Domain.name', fn) or @runtime.step(...)),"
                        " or give the call its own step_id=...", field="action")
                name = callable_name(handler)
            return name, handler
        raise ConfigurationError(
            f"an action is a registered name or a callable, got {action!r}", field="action")

    def _current_scope(self) -> Scope:
        """The scope a call made now belongs to: the running run's, else this runtime's.

        Inside a run, a call is also a step boundary: a run past its deadline stops here.
        """
        scope = active_scope()
        if scope is None:
            return self._scope
        run = scope.run
        if run is not None and run.deadline is not None and self._clock.now() > run.deadline:
            raise DeadlinePassed
        return scope

    def _hash_call(self, scope: Scope, name: str, data: Any, args: tuple[Any, ...], mode: str,
                   roots: tuple[str, str]) -> tuple[str, ActiveStep | None]:
        """Hash a call in its scope (under its parent step, when a handler makes it)."""
        active = active_step()
        parent = None if active is None else active.local_id
        try:
            base = call_hash(scope.hash_id, parent, name, data, args, mode=mode,
                             roots=roots, types=codec_types(self._codec))
        except SerializationError as error:
            raise error.named(
                action=name, hint="A step id is hashed from its arguments: register the"
                " type with JsonCodec(types=[...]), or give the call its own step_id=...",
            ) from None
        return base, active

    def _plan_do(self, action: object, data: Any, args: tuple[Any, ...],
                 retry: RetryPolicy | None, step_id: str | None, *,
                 handler: Handler | None = None,
                 roots: tuple[str, str] = ("data", "args")) -> StepPlan:
        name, callable_handler = self._resolve(action, stored=step_id is None)
        scope = self._current_scope()
        base = counter = None
        number = 0
        if step_id is None:
            base, active = self._hash_call(scope, name, data, args, "do", roots)
            counter = scope.counter if active is None else active.children
            number = counter.take(base)
            local_id = numbered(base, number)
            step_id = scope.prefix + local_id
        else:
            step_id = _scoped_key(scope, step_id)
            local_id = step_id[len(scope.workflow_id) + 1:]
        return StepPlan(step_id=step_id, workflow_id=scope.workflow_id, action=name,
                        context=data, args=args, policy=_check_retry(retry) or self._policy,
                        mode="do", view=scope.view, handler=handler or callable_handler,
                        lookup=self._registry.lookup, context_hash=base, counter=counter,
                        number=number, run=scope.run, local_id=local_id)

    def _plan_try(self, action: object, data: Any, args: tuple[Any, ...],
                  step_id: str | None, *, handler: Handler | None = None,
                  roots: tuple[str, str] = ("data", "args")) -> StepPlan:
        name, callable_handler = self._resolve(action, stored=False)
        scope = self._current_scope()
        base = None
        if step_id is None:
            # try_ stores nothing, so an id is only for hooks and the idempotency key: hash it
            # when the data allows (stable), else use a fresh one rather than fail the call.
            try:
                base = self._hash_call(scope, name, data, args, "try", roots)[0]
                step_id = scope.prefix + base
            except SerializationError:
                step_id = fresh_id("try")
        else:
            step_id = _scoped_key(scope, step_id)
        return StepPlan(step_id=step_id, workflow_id=scope.workflow_id, action=name,
                        context=data, args=args, policy=self._policy, mode="try",
                        handler=handler or callable_handler, lookup=self._registry.lookup,
                        context_hash=base, run=scope.run,
                        local_id=step_id[len(scope.prefix):])

    def _plan_execute(self, step_id: str, pipeline: Pipeline, args: Sequence[Any], mode: str,
                      retry: RetryPolicy | None) -> StepPlan:
        mode = _check_mode(mode)
        if not isinstance(pipeline, Pipeline):
            raise ConfigurationError(f"pipeline must be a Pipeline, got {pipeline!r}",
                                     field="pipeline")
        handler = None
        if mode == "send":
            # An unknown action is a programming error: raise it now, not in the background.
            handler = self._registry.lookup(pipeline.action)
        return StepPlan(step_id=check_text(step_id, "step_id"),
                        workflow_id=self._scope.workflow_id,
                        action=pipeline.action, context=pipeline.context, args=tuple(args),
                        policy=_check_retry(retry) or self._policy, mode=mode,
                        view=self._scope.view, handler=handler, lookup=self._registry.lookup,
                        context_hash=pipeline.context_hash, pipeline=pipeline)

    def _plan_deliveries(self, event: str, data: Any) -> list[StepPlan]:
        if not isinstance(event, str):
            raise ConfigurationError(f"an event name must be a str, got {event!r}",
                                     field="event")
        pipeline = Pipeline(tuple(event.split(".")), data)
        return [StepPlan(step_id=fresh_id("send"), workflow_id=self._scope.workflow_id,
                         action=event, context=data, args=(), policy=self._policy,
                         mode="send", handler=handler, pipeline=pipeline)
                for handler in self._registry.subscribers(event)]

    # ------------------------------------------------------------ running plans

    def _durable(self, plan: StepPlan) -> Any:
        """Run a ``do`` plan: its result, or (async) an awaitable of it."""
        return self._drive(durable_step(plan, self._codec, self._hooks, self._clock.now))

    def _once(self, plan: StepPlan) -> Any:
        """Run a ``try`` or ``send`` plan: one attempt, nothing recorded."""
        return self._drive(single_attempt(plan, self._hooks))

    def _execute(self, plan: StepPlan) -> Any:
        """Run a plan of ``execute_step`` in its mode (``send``: in the background)."""
        if plan.mode == "do":
            return self._durable(plan)
        if plan.mode == "try":
            return self._once(plan)
        self._dispatch(plan)
        return self._finished(None)

    def _proxy_call(self, path: tuple[str, ...], context: Any, args: tuple[Any, ...],
                    mode: str) -> Any:
        name = ".".join(path)
        roots = ("context", "args")
        if mode == "do":
            return self._durable(self._plan_do(name, context, args, None, None, roots=roots))
        if mode == "try":
            return self._once(self._plan_try(name, context, args, None, roots=roots))
        return self._execute(self._plan_execute(fresh_id("send"), Pipeline(path, context),
                                                args, "send", None))

    def send(self, event: str, data: Any = None) -> None:
        """Deliver ``data`` to every subscriber of ``event`` in the background.

        Returns ``None`` at once and never raises: a subscriber's error goes to
        ``on_step_error`` and the ``durably`` logger. Nothing is stored; ``data`` need not be
        encodable. The sync runtime delivers on a small thread pool; the asyncio runtime as
        tasks, which needs a running event loop (without one the event is logged and dropped).
        """
        try:
            for plan in self._plan_deliveries(event, data):
                self._dispatch(plan)
        except Exception:
            logger().exception("durably: send(%r) could not be delivered", event)
