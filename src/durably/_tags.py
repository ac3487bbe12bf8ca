"""The tagged form of values: what the JSON codec stores and what step ids hash.

Wire format (pinned by golden tests; changing it breaks every stored result):

* JSON types go through as they are (``str``, ``int``, finite ``float``, ``bool``, ``None``,
  ``list``, ``dict`` with ``str`` keys).
* Everything else that round-trips becomes a tagged object
  ``{"__durably__": "<type>", "v": <payload>}``: ``datetime``/``date``/``time`` (ISO text),
  ``timedelta`` (``[days, seconds, microseconds]``), ``Decimal``/``UUID`` (text), ``bytes``
  (base64), ``tuple``/``set``/``frozenset`` (a list), NaN and infinities (``"nan"``, ``"inf"``,
  ``"-inf"``), a ``str`` holding surrogate code points (base64 of its UTF-32, since JSON would
  pair two of them into one character), and a ``dict`` with any non-``str`` key (or such a
  key, or a ``"__durably__"`` key) as a list of ``[key, value]`` pairs.
* Types registered with ``JsonCodec(types=...)`` are tagged by their registered name: a
  dataclass by its fields, an ``Enum`` by its value, any other type by the payload of its own
  pair of functions. A registered type wins over the lossy base-type encoding below.
* Subclasses of the base types (IntEnum, StrEnum, namedtuple, OrderedDict, bytearray) encode as
  their base type; this is lossy by design, and so is a zone-aware datetime, which comes back
  with a fixed UTC offset.

The canonical form (for step ids) is the same tagged tree with three differences: tuples are
plain lists (a tuple and a list of the same items name the same step), set elements and
non-``str``-keyed dict pairs are sorted by their own canonical text (so nothing depends on
``PYTHONHASHSEED``), and NaN/Infinity are refused (they would make ids unstable).

Limits, checked when a value is encoded or hashed so that whatever is stored can always be read
back: containers nest at most :data:`MAX_NESTING` deep, and an integer must fit the
interpreter's limit on integer digits (``sys.get_int_max_str_digits``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from json import encoder as _json_encoder
from typing import Any

from ._errors import ConfigurationError, SerializationError

__all__ = [
    "MAX_NESTING", "TAG", "TypeRegistry", "canonical_json", "dump_canonical", "dump_storage",
    "encode_canonical", "is_plain", "make_untag", "on_fresh_stack", "text_round_trips",
    "to_tagged", "type_name",
]

TAG = "__durably__"
MAX_NESTING = 100
"""How deep containers may nest in a stored or hashed value (a documented limit)."""

_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
# Integers this long or longer may exceed the interpreter's digit limit; only they are checked.
_LONG_INT_BITS = 4000


class _Unencodable(Exception):
    """Raised inside the walk; collects the path while it unwinds (cheap on the happy path)."""

    def __init__(self, reason: str, type_name: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type_name = type_name
        self.segments: list[str] = []


def type_name(value: object) -> str:
    """The qualified name of ``value``'s type, as error messages show it."""
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _key_segment(key: object) -> str:
    if isinstance(key, str):
        return "[" + json.dumps(key, ensure_ascii=False) + "]"
    return f"[{key!r}]"


def on_fresh_stack(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a new thread, whose stack starts empty, and return what it returns.

    Encoding and decoding recurse once per nesting level, so whether a deep value can be read
    would otherwise depend on how deep the caller's own stack happens to be. Values deeper
    than :data:`MAX_NESTING` are refused when written; any value within it is read on a fresh
    stack when the caller's stack is too deep.
    """
    import threading

    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, work()))
        except BaseException as error:  # handed to the caller below
            box.append((False, error))

    worker = threading.Thread(target=run, name="durably-fresh-stack")
    worker.start()
    worker.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value


# ---------------------------------------------------------------- registered types


Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class TypeRegistry:
    """The user's own types, as ``JsonCodec(types=...)`` was given them.

    ``types`` is a list of classes or ``(class, encode, decode)`` triples (each named
    ``module:qualname``), or a mapping from a name to either (recommended: a class can then
    move without making old records unreadable). Dataclasses are encoded field by field and
    rebuilt with the class, Enums by value; a triple's ``encode`` returns something encodable
    and its ``decode`` rebuilds the value from that.

    Raises:
        ConfigurationError: an entry is not a class or a triple, a name is taken twice or is
            one of the built-in tags.
    """

    def __init__(self, types: Iterable[Any] | Mapping[str, Any]) -> None:
        self.encoders: dict[type, tuple[str, Encoder]] = {}
        self.decoders: dict[str, Decoder] = {}
        entries: Iterable[tuple[str | None, Any]]
        if isinstance(types, Mapping):
            entries = types.items()
        else:
            entries = ((None, entry) for entry in types)
        for name, entry in entries:
            self._add(name, entry)

    def _add(self, name: str | None, entry: Any) -> None:
        if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[0], type) \
                and callable(entry[1]) and callable(entry[2]):
            kind, encode, decode = entry
        elif isinstance(entry, type) and dataclasses.is_dataclass(entry):
            kind, encode, decode = entry, _dataclass_fields, _dataclass_builder(entry)
        elif isinstance(entry, type) and issubclass(entry, enum.Enum):
            kind, encode, decode = entry, _enum_value, entry
        else:
            raise ConfigurationError(
                f"JsonCodec(types=...): {entry!r} is not a dataclass, an Enum, or a"
                " (type, encode, decode) triple", field="types")
        if name is None:
            name = f"{kind.__module__}:{kind.__qualname__}"
        if not isinstance(name, str) or not name or name in _DECODERS:
            raise ConfigurationError(
                f"JsonCodec(types=...): {name!r} cannot name a type (empty, not a str, or a"
                " built-in tag)", field="types")
        if name in self.decoders or kind in self.encoders:
            raise ConfigurationError(f"JsonCodec(types=...): {name!r} is registered twice",
                                     field="types")
        self.encoders[kind] = (name, encode)
        self.decoders[name] = decode


def _dataclass_fields(value: Any) -> dict[str, Any]:
    return {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}


def _dataclass_builder(kind: type) -> Decoder:
    names = [field.name for field in dataclasses.fields(kind) if field.init]

    def build(payload: Any) -> Any:
        return kind(**{name: payload[name] for name in names})

    return build


def _enum_value(value: enum.Enum) -> Any:
    return value.value


# ---------------------------------------------------------------- JSON text


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
encode_canonical = _encode_canonical
"""Canonical text of a plain tree, raw: raises ``ValueError``/``RecursionError`` where the C
encoder refuses (callers fall back to :func:`to_tagged` to say where)."""


def _dump(encode: Callable[[Any], str], tree: Any, root: str, canonical: bool,
          types: TypeRegistry | None) -> str:
    try:
        return encode(tree)
    except (ValueError, RecursionError):
        # A plain tree the C encoder refuses: an integer past the digit limit, or a tree
        # deeper than the stack. The walk finds it and says where.
        return encode(to_tagged(tree, canonical=canonical, root=root, types=types,
                                force=True))


def dump_canonical(tree: Any, *, root: str = "value", types: TypeRegistry | None = None) -> str:
    """Return the canonical text of a tree that is plain or already tagged."""
    return _dump(_encode_canonical, tree, root, True, types)


def dump_storage(tree: Any, *, root: str = "value", types: TypeRegistry | None = None) -> str:
    """Return the storage text of a tree that is plain or already tagged."""
    return _dump(_encode_storage, tree, root, False, types)


_CANONICAL_SCALARS = frozenset({str, int, bool, type(None)})
_STORAGE_SCALARS = frozenset({int, bool, type(None)})


def text_round_trips(text: str) -> bool:
    """Whether JSON gives ``text`` back exactly: not when it holds a surrogate code point.

    A lone surrogate is legal in a Python str, and JSON writes it as ``\\udXXX``; but a high
    and a low one side by side come back as the single character they would pair into. Such
    strings are stored tagged (``"str"``). ``isascii()`` is a flag lookup, so the common case
    costs nothing.
    """
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_plain(value: Any, canonical: bool, depth: int = 0) -> bool:
    """Whether ``value`` is made only of JSON types that JSON text already represents exactly.

    True values skip the tagging walk: their JSON text is their encoded (or canonical) form.
    ``canonical`` admits tuples, which the canonical form writes as lists, and any string
    (hashing sees the code points; storage must also read them back, see
    :func:`text_round_trips`). A tree deeper than :data:`MAX_NESTING` is not plain (the walk
    refuses it). (Scalars are tested inline in the loops: this runs on every step id and every
    result.)
    """
    scalars = _CANONICAL_SCALARS if canonical else _STORAGE_SCALARS
    kind = type(value)
    if kind in scalars:
        return True
    if kind is str:
        return text_round_trips(value)
    if kind is float:
        finite: bool = value - value == 0.0  # False for NaN and ±Infinity
        return finite
    if depth >= MAX_NESTING:
        return False
    if kind is dict:
        if TAG in value:
            return False
        for key, item in value.items():
            if type(key) is not str or not (canonical or text_round_trips(key)):
                return False
            if type(item) not in scalars and not is_plain(item, canonical, depth + 1):
                return False
        return True
    if kind is list or (canonical and kind is tuple):
        for item in value:
            if type(item) not in scalars and not is_plain(item, canonical, depth + 1):
                return False
        return True
    return False


def to_tagged(value: Any, *, canonical: bool = False, root: str = "value",
              types: TypeRegistry | None = None, force: bool = False) -> Any:
    """Return ``value`` as a tree of JSON types, typed values tagged (see the module docs).

    Args:
        value: what to convert.
        canonical: build the hashing form (tuples as lists, sorted sets, NaN refused).
        root: the name the error path starts with, e.g. ``"args"`` gives ``args[0]["id"]``.
        types: the registered types to tag by name.
        force: walk even a plain value (to find what the JSON encoder refused in it).

    Raises:
        SerializationError: a value has no representation, nests too deeply, or is an integer
            too long to write; names its type and path.
    """
    try:
        if not force and is_plain(value, canonical):
            return value
    except RecursionError:
        pass  # recursive or very deep: the walk below says which, and where
    active: set[int] = set()
    encoders = types.encoders if types is not None else {}

    def enter(container: object, depth: int) -> int:
        marker = id(container)
        if marker in active:
            raise _Unencodable("recursive reference: a container includes itself",
                               type_name(container))
        if depth >= MAX_NESTING:
            raise _Unencodable(f"value nests deeper than {MAX_NESTING} levels (the limit)",
                               type_name(container))
        active.add(marker)
        return marker

    def walk_items(items: Any, depth: int) -> list[Any]:
        out = []
        for index, item in enumerate(items):
            try:
                out.append(walk(item, depth))
            except _Unencodable as error:
                error.segments.append(f"[{index}]")
                raise
        return out

    def walk_text(text: str) -> Any:
        if canonical or text_round_trips(text):
            return text
        data = text.encode("utf-32-le", "surrogatepass")
        return {TAG: "str", "v": base64.b64encode(data).decode("ascii")}

    def walk_dict(mapping: dict[Any, Any], depth: int) -> Any:
        marker = enter(mapping, depth)
        depth += 1
        try:
            if TAG not in mapping and all(
                    isinstance(key, str) and (canonical or text_round_trips(key))
                    for key in mapping):
                out: dict[str, Any] = {}
                for key, item in mapping.items():
                    try:
                        out[key] = walk(item, depth)
                    except _Unencodable as error:
                        error.segments.append(_key_segment(key))
                        raise
                return out
            pairs = []
            for key, item in mapping.items():
                try:
                    tagged_key = walk(key, depth)
                except _Unencodable as error:
                    error.segments.append(f"<key {key!r}>")
                    raise
                try:
                    pairs.append([tagged_key, walk(item, depth)])
                except _Unencodable as error:
                    error.segments.append(_key_segment(key))
                    raise
            if canonical:
                pairs.sort(key=lambda pair: _encode_canonical(pair[0]))
            return {TAG: "dict", "v": pairs}
        finally:
            active.discard(marker)

    def walk_sequence(items: Any, tag: str | None, depth: int) -> Any:
        marker = enter(items, depth)
        try:
            out = walk_items(items, depth + 1)
        finally:
            active.discard(marker)
        if tag is None:
            return out
        if canonical and tag in ("set", "frozenset"):
            out.sort(key=_encode_canonical)
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

    def walk_int(number: int) -> int:
        if number.bit_length() >= _LONG_INT_BITS:
            try:
                int.__repr__(number)
            except ValueError:
                raise _Unencodable(
                    f"an integer of {number.bit_length()} bits has more digits than the"
                    f" interpreter writes (sys.get_int_max_str_digits() ="
                    f" {sys.get_int_max_str_digits()})" if hasattr(sys, "get_int_max_str_digits")
                    else "integer too long to write", "int") from None
        return number

    def walk(item: Any, depth: int) -> Any:
        kind = type(item)
        # Exact JSON types first: the common case costs a few identity checks.
        if kind is bool or item is None:
            return item
        if kind is str:
            return walk_text(item)
        if kind is int:
            return walk_int(item)
        if kind is float:
            return walk_float(item)
        if kind is dict:
            return walk_dict(item, depth)
        if kind is list:
            return walk_sequence(item, None, depth)
        if kind is tuple:
            return walk_sequence(item, None if canonical else "tuple", depth)
        return walk_other(item, depth)

    def walk_registered(item: Any, name: str, encode: Encoder, depth: int) -> Any:
        marker = enter(item, depth)
        try:
            try:
                payload = encode(item)
            except Exception as error:
                raise _Unencodable(f"the encoder registered as {name!r} raised"
                                   f" {type(error).__name__}: {error}", type_name(item)) from None
            return {TAG: name, "v": walk(payload, depth + 1)}
        finally:
            active.discard(marker)

    def walk_other(item: Any, depth: int) -> Any:
        registered = encoders.get(type(item))
        if registered is not None:
            return walk_registered(item, registered[0], registered[1], depth)
        # Typed values, then subclasses of the base types (encoded as their base: lossy).
        if isinstance(item, dt.datetime):
            return {TAG: "datetime", "v": item.isoformat()}
        if isinstance(item, dt.date):
            return {TAG: "date", "v": item.isoformat()}
        if isinstance(item, dt.time):
            return {TAG: "time", "v": item.isoformat()}
        if isinstance(item, dt.timedelta):
            return {TAG: "timedelta", "v": [item.days, item.seconds, item.microseconds]}
        # No Decimal or UUID can exist before its module is imported, and durably imports
        # neither (decimal alone costs ~5 % of `import sqlite3, json`; sqlite3 brings datetime).
        decimal = sys.modules.get("decimal")
        if decimal is not None and isinstance(item, decimal.Decimal):
            return {TAG: "decimal", "v": str(item)}
        uuid_module = sys.modules.get("uuid")
        if uuid_module is not None and isinstance(item, uuid_module.UUID):
            return {TAG: "uuid", "v": str(item)}
        if isinstance(item, (bytes, bytearray, memoryview)):
            return {TAG: "bytes", "v": base64.b64encode(bytes(item)).decode("ascii")}
        if isinstance(item, (set, frozenset)):
            tag = "frozenset" if isinstance(item, frozenset) else "set"
            return walk_sequence(item, tag, depth)
        if isinstance(item, bool):
            return bool(item)
        if isinstance(item, int):
            return walk_int(int.__index__(item))
        if isinstance(item, float):
            return walk_float(float.__float__(item))
        if isinstance(item, str):
            return walk_text(str.__str__(item))
        if isinstance(item, dict):
            return walk_dict(item, depth)
        if isinstance(item, list):
            return walk_sequence(item, None, depth)
        if isinstance(item, tuple):
            return walk_sequence(item, None if canonical else "tuple", depth)
        raise _Unencodable(f"cannot encode a value of type {type_name(item)}",
                           type_name(item))

    def walk_all() -> Any:
        try:
            return walk(value, 0)
        except _Unencodable as error:
            path = root + "".join(reversed(error.segments))
            raise SerializationError(error.reason, type_name=error.type_name,
                                     path=path) from None

    try:
        return walk_all()
    except RecursionError:
        # The caller's own stack was deep: a value within MAX_NESTING still fits a new one.
        active.clear()
        try:
            return on_fresh_stack(walk_all)
        except RecursionError:
            raise SerializationError("value is nested too deeply to encode",
                                     type_name=type_name(value), path=root) from None


def canonical_json(value: Any, *, root: str = "value", types: TypeRegistry | None = None) -> str:
    """Return the canonical JSON text of ``value``: the input to step-id hashing.

    Raises:
        SerializationError: the value (or NaN/Infinity inside it) cannot be hashed.
    """
    # to_tagged hands plain JSON back as it is (no walk), so this is one C-level encoding for
    # the common case, and a proper error, path included, for everything else.
    return dump_canonical(to_tagged(value, canonical=True, root=root, types=types), root=root,
                          types=types)


# ---------------------------------------------------------------- reading tagged text


def _decode_timedelta(payload: Any) -> dt.timedelta:
    days, seconds, microseconds = payload
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


# Stored data that holds these types pays for their module's import, on first decode.


def _decode_decimal(payload: Any) -> Any:
    import decimal

    return decimal.Decimal(payload)


def _decode_bytes(payload: Any) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"invalid base64 in a bytes value: {error}") from None


def _decode_text(payload: Any) -> str:
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"invalid base64 in a str value: {error}") from None
    return data.decode("utf-32-le", "surrogatepass")


def _decode_uuid(payload: Any) -> Any:
    import uuid

    return uuid.UUID(payload)


_DECODERS: dict[str, Decoder] = {
    "float": lambda payload: _SPECIAL_FLOATS[payload],
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": _decode_timedelta,
    "decimal": _decode_decimal,
    "uuid": _decode_uuid,
    "bytes": _decode_bytes,
    "str": _decode_text,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "dict": lambda payload: {key: item for key, item in payload},
}


def make_untag(types: TypeRegistry | None) -> Callable[[dict[str, Any]], Any]:
    """Return the ``object_hook`` that turns tagged objects back into values.

    Nothing is ever imported or looked up by a name found in the text: a tag is either built
    in or registered, and any other one is refused with ``ValueError`` naming it.
    """
    decoders = _DECODERS if types is None else {**_DECODERS, **types.decoders}

    def untag(obj: dict[str, Any]) -> Any:
        if TAG not in obj:
            return obj
        tag = obj[TAG]
        decoder = decoders.get(tag) if isinstance(tag, str) else None
        if decoder is None or len(obj) != 2 or "v" not in obj:
            raise ValueError(f"unknown tagged value {tag!r}"
                             + ("" if tag in decoders else
                                " (a type this codec has not registered: JsonCodec(types=...))"))
        try:
            return decoder(obj["v"])
        # ArithmeticError: decimal's InvalidOperation (a bad number) is one.
        except (KeyError, TypeError, ValueError, ArithmeticError) as error:
            raise ValueError(f"invalid {tag} value {obj['v']!r}: {error}") from None

    return untag
