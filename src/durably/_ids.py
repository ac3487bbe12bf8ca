"""Step identity: a step id is a pure function of what the call means.

    step_id = "s1_" + sha256(canonical_json([workflow_id, parent, action, context, args]))[:32]
              + ("" if n == 0 else f"#{n}")

``n`` counts earlier calls with the same hash in the same scope (see :class:`CallCounter`), so a
workflow that makes the same call twice gets two steps, and a re-run recreates the same two ids.
The ``s1_`` prefix versions the scheme; golden tests pin it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from typing import Any

from ._codec import dump_canonical, is_plain, to_tagged

__all__ = ["SCHEME_PREFIX", "CallCounter", "call_hash"]

SCHEME_PREFIX = "s1_"


def call_hash(
    workflow_id: str, parent: str | None, action: str, context: Any, args: Sequence[Any]
) -> str:
    """Return the hash of one call (the step id before any ``#n`` suffix).

    Raises:
        SerializationError: ``context`` or ``args`` cannot be hashed; the error's path starts
            with ``context`` or ``args``.
    """
    text = None
    try:
        if is_plain(context, True) and (not args or is_plain(args, True)):
            # Plain JSON data is its own canonical form: one C-level encoding, no walk (this
            # runs on every durable call, replays included: to_tagged's own check costs more).
            text = dump_canonical([workflow_id, parent, action, context, args])
    except RecursionError:
        pass  # a recursive value: the walk below names it and its path
    if text is None:
        text = dump_canonical([
            workflow_id,
            parent,
            action,
            to_tagged(context, canonical=True, root="context"),
            to_tagged(list(args), canonical=True, root="args"),
        ])
    # surrogatepass: a lone surrogate in a str is legal Python; it must hash, not crash.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return SCHEME_PREFIX + digest[:32]


class CallCounter:
    """Counts calls per hash within one scope, to number identical calls ``#1``, ``#2``...

    Thread-safe without a lock: ``dict.setdefault`` and ``next()`` on an ``itertools.count``
    are each a single C call, so two threads never receive the same number for one hash.
    """

    def __init__(self) -> None:
        self._seen: dict[str, itertools.count[int]] = {}

    def next_id(self, base: str) -> str:
        """Return the id for the next call with hash ``base`` in this scope."""
        counter = self._seen.get(base)
        if counter is None:
            counter = self._seen.setdefault(base, itertools.count())
        n = next(counter)
        return base if n == 0 else f"{base}#{n}"
