"""The ``$``-style call builder: ``runtime.proxy().Inventory(product).check(qty)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Proxy"]

ProxyCall = Callable[[tuple[str, ...], Any, tuple[Any, ...], str], Any]


class Proxy:
    """The ``$``-style call builder returned by ``runtime.proxy(mode)``.

    ``proxy.Domain(context).method(*args)`` runs the action ``"Domain.method"`` as
    ``handler(context, *args)`` in the proxy's mode; in ``"do"`` mode the step id is hashed
    from the workflow id, the path, the context and the arguments, exactly as
    ``do("Domain.method", context)`` would hash it with those arguments. In the asyncio
    runtime the call returns an awaitable.
    """

    __slots__ = ("_call", "_mode")

    def __init__(self, call: ProxyCall, mode: str) -> None:
        self._call = call
        self._mode = mode

    def __getattr__(self, domain: str) -> Callable[..., _BoundDomain]:
        if domain.startswith("__"):
            raise AttributeError(domain)

        def bind(context: Any = None) -> _BoundDomain:
            return _BoundDomain(self._call, self._mode, domain, context)

        return bind


class _BoundDomain:
    __slots__ = ("_call", "_context", "_domain", "_mode")

    def __init__(self, call: ProxyCall, mode: str, domain: str, context: Any) -> None:
        self._call = call
        self._mode = mode
        self._domain = domain
        self._context = context

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)

        def call(*args: Any) -> Any:
            return self._call((self._domain, method), self._context, args, self._mode)

        return call
