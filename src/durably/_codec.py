"""Turning values into text and back: the JSON codec, canonical JSON for hashing, PickleCodec.

Wire format (pinned by golden tests; changing it breaks every stored result):

* JSON types go through as they are (``str``, ``int``, finite ``float``, ``bool``, ``None``,
  ``list``, ``dict`` with ``str`` keys).
* Everything else that round-trips becomes a tagged object
  ``{"__durably__": "<type>", "v": <payload>}``: ``datetime``/``date``/``time`` (ISO text),
  ``timedelta`` (``[days, seconds, microseconds]``), ``Decimal``/``UUID`` (text), ``bytes``
  (base64), ``tuple``/``set``/``frozenset`` (a list), NaN and infinities (``"nan"``, ``"inf"``,
  ``"-inf"``), and a ``dict`` with any non-``str`` key or a ``"__durably__"`` key (a list of
  ``[key, value]`` pairs).
* Subclasses of those types (IntEnum, StrEnum, namedtuple, OrderedDict, bytearray) encode as
  their base type; this is lossy by design, and so is a zone-aware datetime, which comes back
  with a fixed UTC offset.

The canonical form (for step ids) is the same tagged tree with three differences: tuples are
plain lists (a tuple and a list of the same items name the same step), set elements and
non-``str``-keyed dict pairs are sorted by their own canonical text (so nothing depends on
``PYTHONHASHSEED``), and NaN/Infinity are refused (they would make ids unstable).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
import math
import sys
from collections.abc import Callable
from json import encoder as _json_encoder
from typing import Any, Protocol

from ._errors import SerializationError, StorageError
from ._records import StepRecord

__all__ = [
    "Codec", "JsonCodec", "PickleCodec", "canonical_json", "decode_stored", "dump_canonical",
    "encode_result", "is_plain", "to_tagged",
]

TAG = "__durably__"

_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class Codec(Protocol):
    """How results are turned into text for storage and back.

    ``decode(encode(value))`` must give back an equal value for everything ``encode`` accepts.
    ``encode`` raises :class:`~durably.SerializationError` for a value it cannot represent;
    ``decode`` raises ``ValueError`` for text it cannot read.
    """

    def encode(self, value: Any) -> str:
        """Return ``value`` as text."""
        ...

    def decode(self, text: str) -> Any:
        """Return the value that ``text`` encodes."""
        ...


class _Unencodable(Exception):
    """Raised inside the walk; collects the path while it unwinds (cheap on the happy path)."""

    def __init__(self, reason: str, type_name: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name
        self.segments: list[str] = []


def _type_name(value: object) -> str:
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _key_segment(key: object) -> str:
    if isinstance(key, str):
        return "[" + json.dumps(key, ensure_ascii=False) + "]"
    return f"[{key!r}]"


def _make_encoder(*, sort_keys: bool, ensure_ascii: bool) -> Callable[[Any], str]:
    """Return a reusable compact JSON encoder that refuses NaN and Infinity.

    ``json.dumps`` builds a new encoder object on every call; on a hot path (every step id,
    every result) that costs as much as the encoding itself, so the C encoder is built once.
    Recursion is not checked here: every caller has either walked the value already or falls
    back to the walk, which reports a recursive value properly, on RecursionError.
    """
    c_make_encoder = getattr(_json_encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # an interpreter without the C accelerator
        slow = json.JSONEncoder(sort_keys=sort_keys, ensure_ascii=ensure_ascii,
                                allow_nan=False, separators=(",", ":"))
        return slow.encode

    def refuse(value: Any) -> Any:
        raise TypeError(f"not JSON: {type(value).__name__}")

    quote = (_json_encoder.encode_basestring_ascii if ensure_ascii
             else _json_encoder.encode_basestring)
    encode_chunks = c_make_encoder(None, refuse, quote, None, ":", ",", sort_keys, False, False)

    def encode(value: Any) -> str:
        return "".join(encode_chunks(value, 0))

    return encode


# Canonical text for hashing (sorted keys, UTF-8 as is); storage text (ASCII: a lone surrogate
# in a str is legal Python but not legal UTF-8, and SQLite text must be UTF-8).
_encode_canonical = _make_encoder(sort_keys=True, ensure_ascii=False)
_encode_storage = _make_encoder(sort_keys=False, ensure_ascii=True)
_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _decode_plain(text: str) -> Any:
    # scan_once directly: JSONDecoder.decode spends two regex matches on whitespace that
    # encoded text never has. Anything unusual goes through json.loads for its error message.
    try:
        value, end = _scan_json(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


_SCALARS = frozenset({str, int, bool, type(None)})


def is_plain(value: Any, canonical: bool) -> bool:
    """Whether ``value`` is made only of JSON types that JSON text already represents exactly.

    True values skip the tagging walk: their JSON text is their encoded (or canonical) form.
    ``canonical`` admits tuples, which the canonical form writes as lists. (Scalars are tested
    inline in the loops: this runs on every step id and every result.)
    """
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        finite: bool = value - value == 0.0  # False for NaN and ±Infinity
        return finite
    if kind is dict:
        if TAG in value:
            return False
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not is_plain(item, canonical):
                return False
        return True
    if kind is list or (canonical and kind is tuple):
        for item in value:
            if type(item) not in _SCALARS and not is_plain(item, canonical):
                return False
        return True
    return False


def dump_canonical(tagged: Any) -> str:
    """Return the canonical text of a tree that :func:`to_tagged` already converted."""
    return _encode_canonical(tagged)


def to_tagged(value: Any, *, canonical: bool = False, root: str = "value") -> Any:
    """Return ``value`` as a tree of JSON types, typed values tagged (see the module docs).

    Args:
        value: what to convert.
        canonical: build the hashing form (tuples as lists, sorted sets, NaN refused).
        root: the name the error path starts with, e.g. ``"args"`` gives ``args[0]["id"]``.

    Raises:
        SerializationError: a value has no representation; names its type and path.
    """
    try:
        if is_plain(value, canonical):
            return value
    except RecursionError:
        pass  # recursive or very deep: the walk below says which, and where
    active: set[int] = set()

    def enter(container: object) -> int:
        marker = id(container)
        if marker in active:
            raise _Unencodable("recursive reference: a container includes itself",
                               _type_name(container))
        active.add(marker)
        return marker

    def walk_items(items: Any) -> list[Any]:
        out = []
        for index, item in enumerate(items):
            try:
                out.append(walk(item))
            except _Unencodable as error:
                error.segments.append(f"[{index}]")
                raise
        return out

    def walk_dict(mapping: dict[Any, Any]) -> Any:
        marker = enter(mapping)
        try:
            if TAG not in mapping and all(isinstance(key, str) for key in mapping):
                out: dict[str, Any] = {}
                for key, item in mapping.items():
                    try:
                        out[key] = walk(item)
                    except _Unencodable as error:
                        error.segments.append(_key_segment(key))
                        raise
                return out
            pairs = []
            for key, item in mapping.items():
                try:
                    tagged_key = walk(key)
                except _Unencodable as error:
                    error.segments.append(f"<key {key!r}>")
                    raise
                try:
                    pairs.append([tagged_key, walk(item)])
                except _Unencodable as error:
                    error.segments.append(_key_segment(key))
                    raise
            if canonical:
                pairs.sort(key=lambda pair: dump_canonical(pair[0]))
            return {TAG: "dict", "v": pairs}
        finally:
            active.discard(marker)

    def walk_sequence(items: Any, tag: str | None) -> Any:
        marker = enter(items)
        try:
            out = walk_items(items)
        finally:
            active.discard(marker)
        if tag is None:
            return out
        if canonical and tag in ("set", "frozenset"):
            out.sort(key=dump_canonical)
        return {TAG: tag, "v": out}

    def walk_float(number: float) -> Any:
        if math.isfinite(number):
            return number
        if canonical:
            raise _Unencodable(
                "NaN and Infinity cannot be hashed into a step id (they would make it unstable)",
                "float",
            )
        text = "nan" if math.isnan(number) else ("inf" if number > 0 else "-inf")
        return {TAG: "float", "v": text}

    def walk(item: Any) -> Any:
        kind = type(item)
        # Exact JSON types first: the common case costs a few identity checks.
        if kind is str or kind is int or kind is bool or item is None:
            return item
        if kind is float:
            return walk_float(item)
        if kind is dict:
            return walk_dict(item)
        if kind is list:
            return walk_sequence(item, None)
        if kind is tuple:
            return walk_sequence(item, None if canonical else "tuple")
        return walk_other(item)

    def walk_other(item: Any) -> Any:
        # Typed values, then subclasses of the base types (encoded as their base: lossy).
        if isinstance(item, dt.datetime):
            return {TAG: "datetime", "v": item.isoformat()}
        if isinstance(item, dt.date):
            return {TAG: "date", "v": item.isoformat()}
        if isinstance(item, dt.time):
            return {TAG: "time", "v": item.isoformat()}
        if isinstance(item, dt.timedelta):
            return {TAG: "timedelta", "v": [item.days, item.seconds, item.microseconds]}
        if isinstance(item, decimal.Decimal):
            return {TAG: "decimal", "v": str(item)}
        uuid_module = sys.modules.get("uuid")  # no UUID can exist before uuid is imported
        if uuid_module is not None and isinstance(item, uuid_module.UUID):
            return {TAG: "uuid", "v": str(item)}
        if isinstance(item, (bytes, bytearray, memoryview)):
            return {TAG: "bytes", "v": base64.b64encode(bytes(item)).decode("ascii")}
        if isinstance(item, (set, frozenset)):
            return walk_sequence(item, "frozenset" if isinstance(item, frozenset) else "set")
        if isinstance(item, bool):
            return bool(item)
        if isinstance(item, int):
            return int.__index__(item)
        if isinstance(item, float):
            return walk_float(float.__float__(item))
        if isinstance(item, str):
            return str.__str__(item)
        if isinstance(item, dict):
            return walk_dict(item)
        if isinstance(item, list):
            return walk_sequence(item, None)
        if isinstance(item, tuple):
            return walk_sequence(item, None if canonical else "tuple")
        raise _Unencodable(f"cannot encode a value of type {_type_name(item)}",
                           _type_name(item))

    try:
        return walk(value)
    except _Unencodable as error:
        path = root + "".join(reversed(error.segments))
        raise SerializationError(error.reason, type_name=error.type_name, path=path) from None
    except RecursionError:
        raise SerializationError("value is nested too deeply to encode",
                                 type_name=_type_name(value), path=root) from None


def canonical_json(value: Any, *, root: str = "value") -> str:
    """Return the canonical JSON text of ``value``: the input to step-id hashing.

    Raises:
        SerializationError: the value (or NaN/Infinity inside it) cannot be hashed.
    """
    # to_tagged hands plain JSON back as it is (no walk), so this is one C-level encoding for
    # the common case, and a proper error, path included, for everything else.
    return _encode_canonical(to_tagged(value, canonical=True, root=root))


def _decode_timedelta(payload: Any) -> dt.timedelta:
    days, seconds, microseconds = payload
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _decode_bytes(payload: Any) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"invalid base64 in a bytes value: {error}") from None


def _decode_uuid(payload: Any) -> Any:
    import uuid  # only stored data that holds UUIDs pays for the import

    return uuid.UUID(payload)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "float": lambda payload: _SPECIAL_FLOATS[payload],
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": _decode_timedelta,
    "decimal": decimal.Decimal,
    "uuid": _decode_uuid,
    "bytes": _decode_bytes,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "dict": lambda payload: {key: item for key, item in payload},
}


def _untag(obj: dict[str, Any]) -> Any:
    if TAG not in obj:
        return obj
    tag = obj[TAG]
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None or len(obj) != 2 or "v" not in obj:
        raise ValueError(f"unknown tagged value {tag!r}")
    try:
        return decoder(obj["v"])
    except (KeyError, TypeError, ValueError, decimal.InvalidOperation) as error:
        raise ValueError(f"invalid {tag} value {obj['v']!r}: {error}") from None


class JsonCodec:
    """The default codec: JSON plus tagged round-trips for common Python types.

    Safe for storage that others can write: decoding never executes anything.
    """

    def encode(self, value: Any) -> str:
        """Return ``value`` as JSON text.

        Raises:
            SerializationError: the value (or something inside it) has no representation;
                the error names its type and path.
        """
        return self.encode_checked(value)[0]

    def encode_checked(self, value: Any) -> tuple[str, bool]:
        """Return ``value`` as JSON text, and whether it was plain JSON (decodes to an equal
        value of the same types, so a caller may keep ``value`` instead of decoding)."""
        try:
            if is_plain(value, False):
                return _encode_storage(value), True
        except (ValueError, RecursionError):
            pass  # the walk below reports it properly
        return self._encode_tagged(value), False

    def _encode_tagged(self, value: Any) -> str:
        tagged = to_tagged(value, root="value")
        try:
            return _encode_storage(tagged)
        except ValueError as error:  # e.g. an int longer than the interpreter's digit limit
            raise SerializationError(f"cannot encode value: {error}",
                                     type_name=_type_name(value), path="value") from None

    def decode(self, text: str) -> Any:
        """Return the value ``text`` encodes. Raises ``ValueError`` on malformed text."""
        if TAG in text:
            return json.loads(text, object_hook=_untag)
        return _decode_plain(text)  # no tagged value inside: no hook call per object


def encode_result(codec: Codec, value: Any) -> tuple[str, bool]:
    """Encode a handler's value; also say whether decoding it would give ``value`` back as is.

    True only for the JSON codec and plain JSON values (dict, list, str, int, finite float,
    bool, None), whose decoded copy is equal and of the same types: the runtime then returns
    the handler's own object instead of decoding what it just encoded.
    """
    if type(codec) is JsonCodec:
        return codec.encode_checked(value)
    return codec.encode(value), False


def decode_stored(codec: Codec, record: StepRecord) -> Any:
    """Return the decoded result of a COMPLETED record.

    Raises:
        StorageError: the stored text cannot be decoded; names the step id.
    """
    try:
        return codec.decode(record.result)  # type: ignore[arg-type]
    except Exception as error:
        raise StorageError(
            f"stored result of step {record.step_id} cannot be decoded: {error}",
            step_id=record.step_id,
        ) from error


class PickleCodec:
    """Opt-in codec that stores any picklable value.

    Unsafe for storage that anyone else can write: unpickling runs code chosen by whoever wrote
    the data. Use it only for databases that only your own processes touch.
    """

    def __init__(self, protocol: int = 4) -> None:
        self.protocol = protocol

    def encode(self, value: Any) -> str:
        """Return ``value`` pickled, as base64 text.

        Raises:
            SerializationError: the value cannot be pickled.
        """
        import pickle  # only the opt-in pays for the import

        try:
            data = pickle.dumps(value, protocol=self.protocol)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as error:
            raise SerializationError(f"cannot pickle value: {error}",
                                     type_name=_type_name(value), path="value") from None
        return base64.b64encode(data).decode("ascii")

    def decode(self, text: str) -> Any:
        """Return the unpickled value. Raises ``ValueError`` on malformed text."""
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error as error:
            raise ValueError(f"invalid base64: {error}") from None
        import pickle

        try:
            return pickle.loads(data)
        except Exception as error:
            raise ValueError(f"cannot unpickle: {error}") from error
