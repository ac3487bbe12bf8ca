"""Text for people: durations and ages in words, times, previews of stored values, and
tables that fit the terminal. (Machines get ``--json``: see ``_export``.)

Durations typed by people (``--older-than 30d``, ``--since 2h``) are a number with ``s``,
``m``, ``h`` or ``d``; ``--since`` also takes an ISO time.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Sequence

from ._errors import ConfigurationError

__all__ = ["age", "clip", "duration", "parse_duration", "parse_since", "preview", "table",
           "utc"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, option: str) -> float:
    """Seconds from ``30d``, ``12h``, ``15m``, ``45s`` (or a plain number of seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if match is not None:
        return float(match.group(1)) * _UNITS[match.group(2)]
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(
            f"{option} takes a duration such as 45s, 15m, 12h or 30d, got {text!r}",
            field=option)
    return seconds


def parse_since(text: str, now: float, option: str) -> float:
    """The moment ``--since`` means: ``now`` minus a duration, or an ISO time (UTC when it
    has no offset)."""
    if _DURATION.fullmatch(text.strip()):
        return now - parse_duration(text, option)
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"{option} takes a duration (45s, 15m, 12h, 30d) or an ISO time"
            f" (2026-12-01T09:30:00+00:00), got {text!r}", field=option) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def duration(seconds: float) -> str:
    """``250 ms``, ``12 s``, ``3 min``, ``5 h``, ``2 d`` (rounded to what a person reads)."""
    seconds = abs(seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.0f} h" if seconds >= 36000 else f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def age(moment: float, now: float) -> str:
    """``3 min ago``, ``in 2 h``, or ``just now``."""
    delta = now - moment
    if abs(delta) < 1:
        return "just now"
    return f"{duration(delta)} ago" if delta > 0 else f"in {duration(delta)}"


def utc(moment: float) -> str:
    """``2026-12-01 09:30:00 UTC``."""
    try:
        stamp = dt.datetime.fromtimestamp(moment, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return repr(moment)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    flat = " ".join(text.split()) if "\n" in text or "\t" in text else text
    if width <= 0:
        return ""
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def preview(encoded: str | None, width: int) -> str:
    """A one-line preview of an encoded value: its JSON, compact (or the stored text as it
    is, for another codec), cut to ``width``."""
    if encoded is None:
        return "-"
    try:
        text = json.dumps(json.loads(encoded), ensure_ascii=False, separators=(", ", ": "))
    except ValueError:
        text = f"<{len(encoded)} characters, not JSON>"
    return clip(text, width)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int,
          shrink: Sequence[int] = ()) -> str:
    """Rows aligned under ``headers``; when wider than ``width``, the columns ``shrink``
    (indexes) are cut, the widest first, down to 8 characters each."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(headers[i])] + [len(row[i]) for row in cells])
              for i in range(len(headers))]
    total = sum(widths) + 2 * (len(widths) - 1)
    while total > width:
        candidates = [i for i in shrink if widths[i] > 8]
        if not candidates:
            break
        widest = max(candidates, key=lambda i: widths[i])
        cut = min(total - width, widths[widest] - 8)
        widths[widest] -= cut
        total -= cut
    lines = []
    for row in [list(headers), *cells]:
        parts = [clip(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)
