"""Turning values into text and back: the JSON codec, PickleCodec, and the runtime's glue.

The JSON codec's wire format and limits are described in :mod:`durably._tags`, which both
this codec and step-id hashing use.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from ._errors import SerializationError, StorageError
from ._records import StepRecord
from ._tags import (
    TAG,
    TypeRegistry,
    dump_storage,
    is_plain,
    make_untag,
    on_fresh_stack,
    to_tagged,
    type_name,
)

__all__ = ["Codec", "JsonCodec", "PickleCodec", "codec_types", "decode_stored", "decode_text",
           "encode_result"]


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


class JsonCodec:
    """The default codec: JSON plus tagged round-trips for common Python types.

    Safe for storage that others can write: decoding never executes anything, and never
    imports or looks up anything by a name found in the text.

    Args:
        types: your own types, so they can be results and arguments: a list of dataclasses,
            Enums or ``(type, encode, decode)`` triples (each tagged ``module:qualname``), or
            a mapping from a stable name to one of those (recommended: moving a class then
            keeps old records readable). A registered type wins over the lossy base-type
            encoding (an ``IntEnum`` comes back as itself).

    Raises:
        ConfigurationError: ``types`` holds something that is not one of those, or a name
            twice.
    """

    def __init__(self, types: Iterable[Any] | Mapping[str, Any] | None = None) -> None:
        self.types: TypeRegistry | None = None if types is None else TypeRegistry(types)
        self._untag = make_untag(self.types)

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
                return dump_storage(value, types=self.types), True
        except RecursionError:
            pass  # the walk below reports it properly
        return dump_storage(to_tagged(value, types=self.types), types=self.types), False

    def decode(self, text: str) -> Any:
        """Return the value ``text`` encodes.

        Raises:
            ValueError: the text is malformed or holds a tag this codec does not know.
        """
        try:
            if TAG in text:
                return json.loads(text, object_hook=self._untag)
            return _decode_plain(text)  # no tagged value inside: no hook call per object
        except RecursionError:
            return on_fresh_stack(lambda: json.loads(text, object_hook=self._untag))


def codec_types(codec: object) -> TypeRegistry | None:
    """The registered types of ``codec`` (a :class:`JsonCodec`'s), used to hash arguments."""
    types = getattr(codec, "types", None)
    return types if isinstance(types, TypeRegistry) else None


def encode_result(codec: Codec, value: Any) -> tuple[str, bool]:
    """Encode a handler's value; also say whether decoding it would give ``value`` back as is.

    True only for the JSON codec and plain JSON values (dict, list, str, int, finite float,
    bool, None), whose decoded copy is equal and of the same types: the runtime then returns
    the handler's own object instead of decoding what it just encoded.
    """
    if type(codec) is JsonCodec:  # exactly: a subclass may encode differently
        return codec.encode_checked(value)
    return codec.encode(value), False


def decode_stored(codec: Codec, record: StepRecord) -> Any:
    """Return the decoded result of a COMPLETED record.

    Raises:
        StorageError: the stored text cannot be decoded (an unknown tag included); names the
            step id.
    """
    try:
        return codec.decode(record.result)  # type: ignore[arg-type]
    except Exception as error:
        raise StorageError(
            f"stored result of step {record.step_id} cannot be decoded: {error}",
            step_id=record.step_id,
        ) from error


def decode_text(codec: Codec, text: str, what: str) -> Any:
    """Return the value ``text`` encodes; ``what`` names it in the error.

    Raises:
        StorageError: the text cannot be decoded.
    """
    try:
        return codec.decode(text)
    except Exception as error:
        raise StorageError(f"{what} cannot be decoded: {error}") from error


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
                                     type_name=type_name(value), path="value") from None
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
