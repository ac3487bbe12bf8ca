"""Step identity: a step id is a pure function of what the call means.

    step_id = "s1_" + sha256(canonical_json([workflow_id, parent, action, context, args]))[:32]
              + ("" if n == 0 else f"#{n}")

A ``try_`` call hashes its mode too (``[..., args, "try"]``), so a trial and a durable call of
the same action and data never share an id or an idempotency key. ``n`` counts earlier calls
with the same hash in the same scope (see :class:`CallCounter`), so a workflow that makes the
same call twice gets two steps, and a re-run recreates the same two ids. The ``s1_`` prefix
versions the scheme; golden tests pin it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from typing import Any

from ._tags import TypeRegistry, encode_canonical, is_plain, to_tagged

__all__ = ["SCHEME_PREFIX", "CallCounter", "call_hash", "numbered"]

SCHEME_PREFIX = "s1_"


def call_hash(
    workflow_id: str, parent: str | None, action: str, context: Any, args: Sequence[Any],
    *, mode: str = "do", roots: tuple[str, str] = ("context", "args"),
    types: TypeRegistry | None = None,
) -> str:
    """Return the hash of one call (the step id before any ``#n`` suffix).

    Args:
        workflow_id: the scope hashed into the id.
        parent: the enclosing step's id (or local id inside a run), or ``None``.
        action: the action name.
        context: the handler's first argument.
        args: its other arguments.
        mode: ``"do"`` (the stored form) or another mode, which is hashed in as well.
        roots: what error paths call ``context`` and ``args`` (``do`` calls the first one
            ``data``).
        types: the codec's registered types, so their values can be hashed too.

    Raises:
        SerializationError: ``context`` or ``args`` cannot be hashed; the error's path starts
            with one of ``roots``.
    """
    tail = [] if mode == "do" else [mode]
    text = None
    try:
        if is_plain(context, True) and (not args or is_plain(args, True)):
            # Plain JSON data is its own canonical form: one C-level encoding, no walk (this
            # runs on every durable call, replays included). tests/test_ids.py proves this
            # path equal to canonical_json over thousands of values.
            text = encode_canonical([workflow_id, parent, action, context, args, *tail])
    except (RecursionError, ValueError):
        pass  # recursive, too deep, an integer too long: the walk below says where
    if text is None:
        text = encode_canonical([
            workflow_id,
            parent,
            action,
            to_tagged(context, canonical=True, root=roots[0], types=types, force=True),
            to_tagged(list(args), canonical=True, root=roots[1], types=types, force=True),
            *tail,
        ])
    # surrogatepass: a lone surrogate in a str is legal Python; it must hash, not crash.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return SCHEME_PREFIX + digest[:32]


def numbered(base: str, n: int) -> str:
    """Return the id of the ``n``-th (0-based) call with hash ``base`` in its scope."""
    return base if n == 0 else f"{base}#{n}"


def _key(base: str) -> int | str:
    """What the counter keeps of a call hash: its 128 bits as an int (44 bytes, against 84 for
    the 35-character string), since a long replay keeps one entry per distinct call; any
    other text (an explicit key) as it is."""
    if len(base) == _HASHED and base.startswith(SCHEME_PREFIX):
        try:
            return int(base[_PREFIXED:], 16)
        except ValueError:
            pass
    return base


_PREFIXED = len(SCHEME_PREFIX)
_HASHED = _PREFIXED + 32


class CallCounter:
    """Counts calls per hash within one scope, to number identical calls ``#1``, ``#2``...

    A call that raises gives its number back (:meth:`give_back`), so a program that catches
    the error and calls again continues the same step rather than opening the next one.
    Thread-safe.
    """

    __slots__ = ("_lock", "_next")

    def __init__(self) -> None:
        self._next: dict[int | str, int] = {}
        self._lock = threading.Lock()

    def take(self, base: str) -> int:
        """Return the number of the next call with hash ``base`` in this scope."""
        key = _key(base)
        with self._lock:
            n = self._next.get(key, 0)
            self._next[key] = n + 1
        return n

    def give_back(self, base: str, n: int) -> None:
        """Return number ``n`` of ``base`` if it is the latest one given out.

        Concurrent identical calls keep the numbers they were given: only the latest number
        of a hash can come back (the counter must stand at ``n + 1``; it then stands at
        ``n``, so several failures in a row can each give theirs back).
        """
        key = _key(base)
        with self._lock:
            if self._next.get(key) == n + 1:
                if n == 0:
                    del self._next[key]
                else:
                    self._next[key] = n
