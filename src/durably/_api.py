"""What both runtime flavours share: options, registration, step ids and plans, the proxy.

The sync runtime (``_runtime.py``) and the asyncio runtime (``_aio.py``) subclass
:class:`RuntimeBase` and only add how commands of the state machine are answered.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from ._codec import Codec, JsonCodec
from ._core import Clock, Handler, Hooks, StepPlan, active_step, logger
from ._errors import ConfigurationError, SerializationError
from ._ids import CallCounter, call_hash
from ._records import Pipeline, StepRecord, StepStatus
from ._registry import Domain, Registry, callable_name, validate_action_name
from ._retry import RetryPolicy
from ._storage import InMemoryStepStorage, StepStorage

__all__ = ["MODES", "Proxy", "RuntimeBase", "fresh_id"]

MODES = ("do", "try", "send")

_Self = TypeVar("_Self", bound="RuntimeBase")
_F = TypeVar("_F", bound=Callable[..., Any])


def _check_step_id(step_id: object) -> str:
    if not isinstance(step_id, str) or not step_id:
        raise ConfigurationError(f"step_id must be a non-empty str, got {step_id!r}",
                                 field="step_id")
    return step_id


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ConfigurationError(f"mode must be one of {MODES}, got {mode!r}", field="mode")
    return str(mode)


def fresh_id(prefix: str) -> str:
    """Return a random id for a call that is never stored (a send delivery)."""
    return f"{prefix}_{os.urandom(16).hex()}"


class RuntimeBase:
    """Options, registration and step planning shared by both runtime flavours."""

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
        clock: Clock | None = None,
        codec: Codec | None = None,
    ) -> None:
        if storage is None:
            storage = InMemoryStepStorage()
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
        if codec is not None and not (callable(getattr(codec, "encode", None))
                                      and callable(getattr(codec, "decode", None))):
            raise ConfigurationError(f"codec must have encode() and decode(), got {codec!r}",
                                     field="codec")
        self._storage: StepStorage = storage
        self._policy = retry_policy
        self._workflow_id = self._check_workflow_id(workflow_id)
        self._hooks = Hooks(on_step_start, on_step_complete, on_step_error)
        self._clock: Clock = clock if clock is not None else self._default_clock()
        self._codec: Codec = codec if codec is not None else JsonCodec()
        self._registry = Registry(accepts_async=self._accepts_async)
        self._counter = CallCounter()
        # The workflow's records, read in one query at the first durable call: replays are
        # answered from memory, and a new step needs no read before its first write. See
        # _note_write for how it stays current, and bounded, afterwards.
        self._known: dict[str, StepRecord] | None = None

    # ------------------------------------------------------------ flavour hooks

    def _default_clock(self) -> Clock:
        raise NotImplementedError

    # ------------------------------------------------------------ options

    @staticmethod
    def _check_workflow_id(workflow_id: object) -> str:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise ConfigurationError(f"workflow_id must be a non-empty str, got {workflow_id!r}",
                                     field="workflow_id")
        return workflow_id

    @property
    def workflow_id(self) -> str:
        """The workflow id that scopes this runtime's step ids."""
        return self._workflow_id

    @property
    def storage(self) -> StepStorage:
        """The storage the step records live in."""
        return self._storage

    @property
    def retry_policy(self) -> RetryPolicy:
        """The default retry policy for ``do``."""
        return self._policy

    def for_workflow(self: _Self, workflow_id: str) -> _Self:
        """Return a runtime bound to ``workflow_id``.

        It shares this runtime's storage, actions, subscriptions, policy, hooks, clock and
        codec; it numbers its own calls from zero.
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._workflow_id = self._check_workflow_id(workflow_id)
        clone._counter = CallCounter()
        clone._known = None
        return clone

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

    def on(self, pattern: str, handler: Handler) -> Callable[[], None]:
        """Subscribe ``handler(data)`` to events matching ``pattern``; return ``unsubscribe``.

        Segments are split on ``.``; ``*`` matches exactly one segment and ``**`` one or more.
        """
        return self._registry.subscribe(pattern, handler)

    def proxy(self, mode: str = "do") -> Proxy:
        """Return the ``$``-style proxy: ``p.Inventory(product).check(qty)``.

        The call runs ``"Inventory.check"`` as ``handler(product, qty)`` in ``mode``.
        """
        return Proxy(self, _check_mode(mode))

    # ------------------------------------------------------------ what is recorded

    def _index_records(self, records: list[StepRecord]) -> dict[str, StepRecord]:
        known = {record.step_id: record for record in records}
        if self._known is None:  # another thread may have loaded it meanwhile: keep theirs
            self._known = known
        return self._known

    def _note_write(self, record: StepRecord) -> None:
        """Keep the picture current with one of this runtime's own writes.

        An unfinished record (RUNNING, RETRYING, FAILED) is kept, so that a later call for the
        same step continues its budget. A COMPLETED one is dropped: the picture must not grow
        with every step a long-lived runtime runs, and none is needed, because COMPLETED is
        final in every storage. A later call for that step (or for one another process
        completed after the read) writes its marker, is handed the completed record back by
        the storage, and returns its result without running the handler.
        """
        known: dict[str, StepRecord] = self._known  # type: ignore[assignment]  # loaded first
        if record.status is StepStatus.COMPLETED:
            known.pop(record.step_id, None)
        else:
            known[record.step_id] = record

    # ------------------------------------------------------------ planning

    def _resolve(self, action: object) -> tuple[str, Handler | None]:
        """Return the action's name, and its handler when it is a callable (else None: the
        name is looked up only if the step runs)."""
        if isinstance(action, str):
            return action, None
        if callable(action):
            handler = self._registry.check_handler(action, "action")
            return callable_name(handler), handler
        raise ConfigurationError(
            f"an action is a registered name or a callable, got {action!r}", field="action")

    def _plan_do(
        self,
        action: object,
        data: Any,
        args: tuple[Any, ...],
        retry: RetryPolicy | None,
        step_id: str | None,
    ) -> StepPlan:
        name, handler = self._resolve(action)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}",
                                     field="retry")
        base = None
        if step_id is None:
            active = active_step()
            parent = None if active is None else active.context.step_id
            base = call_hash(self._workflow_id, parent, name, data, args)
            counter = self._counter if active is None else active.children
            step_id = counter.next_id(base)
        else:
            step_id = _check_step_id(step_id)
        # Positional arguments: this runs on every durable call, replays included.
        return StepPlan(step_id, self._workflow_id, name, data, args, retry or self._policy,
                        "do", handler, self._registry.lookup, base)

    def _plan_try(self, action: object, data: Any, args: tuple[Any, ...],
                  step_id: str | None) -> StepPlan:
        name, handler = self._resolve(action)
        base = None
        if step_id is None:
            # try_ stores nothing, so an id is only for hooks and the idempotency key: hash it
            # when the data allows (stable), else use a fresh one rather than fail the call.
            active = active_step()
            parent = None if active is None else active.context.step_id
            try:
                base = step_id = call_hash(self._workflow_id, parent, name, data, args)
            except SerializationError:
                step_id = fresh_id("try")
        else:
            step_id = _check_step_id(step_id)
        return StepPlan(step_id, self._workflow_id, name, data, args, self._policy, "try",
                        handler=handler, lookup=self._registry.lookup, context_hash=base)

    def _plan_execute(self, step_id: str, pipeline: Pipeline, args: Sequence[Any], mode: str,
                      retry: RetryPolicy | None) -> StepPlan:
        mode = _check_mode(mode)
        if not isinstance(pipeline, Pipeline):
            raise ConfigurationError(f"pipeline must be a Pipeline, got {pipeline!r}",
                                     field="pipeline")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy, got {retry!r}",
                                     field="retry")
        handler = None
        if mode == "send":
            # An unknown action is a programming error: raise it now, not in the background.
            handler = self._registry.lookup(pipeline.action)
        return StepPlan(_check_step_id(step_id), self._workflow_id, pipeline.action,
                        pipeline.context, tuple(args), retry or self._policy, mode,
                        handler=handler, lookup=self._registry.lookup,
                        context_hash=pipeline.context_hash, pipeline=pipeline)

    def _plan_deliveries(self, event: str, data: Any) -> list[StepPlan]:
        if not isinstance(event, str):
            raise ConfigurationError(f"an event name must be a str, got {event!r}",
                                     field="event")
        pipeline = Pipeline(tuple(event.split(".")), data)
        plans = []
        for handler in self._registry.subscribers(event):
            plans.append(StepPlan(fresh_id("send"), self._workflow_id, event, data, (),
                                  self._policy, "send", handler=handler, pipeline=pipeline))
        return plans

    # ------------------------------------------------------------ shared entry points

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

    def _proxy_call(self, path: tuple[str, ...], context: Any, args: tuple[Any, ...],
                    mode: str) -> Any:
        """Run a proxy call; the flavour's own methods make it blocking or awaitable."""
        name = ".".join(path)
        if mode == "do":
            return self._run_durable(self._plan_do(name, context, args, None, None))
        if mode == "try":
            return self._run_once(self._plan_try(name, context, args, None))
        return self.execute_step(fresh_id("send"), Pipeline(path, context), args, "send")

    # What each flavour provides: blocking calls in one, coroutines in the other.

    def _run_durable(self, plan: StepPlan) -> Any:
        raise NotImplementedError

    def _run_once(self, plan: StepPlan) -> Any:
        raise NotImplementedError

    def _dispatch(self, plan: StepPlan) -> None:
        raise NotImplementedError

    def execute_step(self, step_id: str, pipeline: Pipeline, args: Sequence[Any] = (),
                     mode: str = "do", *, retry: RetryPolicy | None = None) -> Any:
        """Run ``pipeline``'s action under ``step_id`` in ``mode`` (see each flavour)."""
        raise NotImplementedError


class Proxy:
    """The ``$``-style call builder returned by ``runtime.proxy(mode)``.

    ``proxy.Domain(context).method(*args)`` runs the action ``"Domain.method"`` as
    ``handler(context, *args)``; the step id is hashed from the workflow id, path, context and
    arguments.
    """

    __slots__ = ("_mode", "_runtime")

    def __init__(self, runtime: RuntimeBase, mode: str) -> None:
        self._runtime = runtime
        self._mode = mode

    def __getattr__(self, domain: str) -> Callable[..., _BoundDomain]:
        if domain.startswith("__"):
            raise AttributeError(domain)

        def bind(context: Any = None) -> _BoundDomain:
            return _BoundDomain(self._runtime, self._mode, domain, context)

        return bind


class _BoundDomain:
    __slots__ = ("_context", "_domain", "_mode", "_runtime")

    def __init__(self, runtime: RuntimeBase, mode: str, domain: str, context: Any) -> None:
        self._runtime = runtime
        self._mode = mode
        self._domain = domain
        self._context = context

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)

        def call(*args: Any) -> Any:
            return self._runtime._proxy_call((self._domain, method), self._context, args,
                                             self._mode)

        return call
