"""The JSON codec, canonical JSON and the opt-in pickle codec."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import math
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from durably import JsonCodec, PickleCodec, SerializationError
from durably._tags import canonical_json

codec = JsonCodec()

ROUND_TRIPS: list[Any] = [
    None, True, False, 0, -7, 2**70, 1.5, "text", "\u00e9\u2713\U0001f600", [], {}, [1, [2, [3]]],
    {"a": {"b": [1, 2]}},
    (1, "two", (3,)),
    {1, 2, 3},
    frozenset({"a", "b"}),
    {1: "int key", (2, 3): "tuple key", None: "none key"},
    {"__durably__": "a user key that looks like our tag"},
    dt.datetime(2026, 11, 25, 8, 30, 15, 123456),
    dt.date(2026, 1, 2),
    dt.time(23, 59, 58, 7),
    dt.timedelta(days=-1, seconds=5, microseconds=6),
    decimal.Decimal("12.3400"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbytes",
    {"nested": [{"when": dt.date(2020, 2, 29), "ids": (uuid.UUID(int=1),)}]},
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=repr)
def test_values_round_trip_with_their_types(value: Any) -> None:
    """decode(encode(v)) == v, and the types inside come back the same."""
    decoded = codec.decode(codec.encode(value))
    assert decoded == value
    assert type(decoded) is type(value)


def test_nan_and_infinities_round_trip_in_results() -> None:
    """NaN and ±Infinity are legal results."""
    nan, inf, ninf = codec.decode(codec.encode([math.nan, math.inf, -math.inf]))
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf


def test_wire_format_is_pinned() -> None:
    """The stored text of typed values never drifts (stored results depend on it)."""
    value = {
        "t": (1, 2), "s": {3}, "d": dt.date(2026, 1, 2), "b": b"hi", "n": math.nan,
        "k": {1: "x"}, "m": decimal.Decimal("1.50"), "td": dt.timedelta(seconds=90),
    }
    assert codec.encode(value) == (
        '{"t":{"__durably__":"tuple","v":[1,2]},"s":{"__durably__":"set","v":[3]},'
        '"d":{"__durably__":"date","v":"2026-01-02"},"b":{"__durably__":"bytes","v":"aGk="},'
        '"n":{"__durably__":"float","v":"nan"},"k":{"__durably__":"dict","v":[[1,"x"]]},'
        '"m":{"__durably__":"decimal","v":"1.50"},'
        '"td":{"__durably__":"timedelta","v":[0,90,0]}}'
    )


class Color(enum.IntEnum):
    RED = 1


class Mood(str, enum.Enum):
    HAPPY = "happy"


def test_subclasses_encode_as_their_base_type() -> None:
    """IntEnum, str enums, namedtuple, OrderedDict and bytearray come back as base types."""
    point = collections.namedtuple("point", "x y")(1, 2)
    value = [Color.RED, Mood.HAPPY, point, collections.OrderedDict(a=1), bytearray(b"x")]
    decoded = codec.decode(codec.encode(value))
    assert decoded == [1, "happy", (1, 2), {"a": 1}, b"x"]
    assert [type(item) for item in decoded] == [int, str, tuple, dict, bytes]


def test_aware_datetime_comes_back_with_a_fixed_offset() -> None:
    """Zone-aware datetimes keep their instant and their UTC offset."""
    tz = dt.timezone(dt.timedelta(hours=2), "CEST")
    moment = dt.datetime(2026, 6, 1, 12, 0, tzinfo=tz)
    decoded = codec.decode(codec.encode(moment))
    assert decoded == moment and decoded.utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (object(), "object", "value"),
        ({"items": [1, 2, object()]}, "object", 'value["items"][2]'),
        ([{"f": lambda: 1}], "function", 'value[0]["f"]'),
        ({"gen": (n for n in range(3))}, "generator", 'value["gen"]'),
        ({(1, object()): 1}, "object", "value<key (1, <object"),
    ],
)
def test_unencodable_values_name_their_type_and_path(value: Any, type_name: str, path: str) -> None:
    """The error says what could not be encoded and where it sits."""
    with pytest.raises(SerializationError) as caught:
        codec.encode(value)
    assert caught.value.type_name == type_name
    assert caught.value.path.startswith(path)
    assert type_name in str(caught.value)


def test_recursive_values_are_refused_clearly() -> None:
    """A list that contains itself is a SerializationError, not a crash."""
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(SerializationError, match="recursive") as caught:
        codec.encode(loop)
    assert caught.value.path == "value[1]"


def test_recursive_values_cannot_be_hashed_either() -> None:
    """canonical_json refuses a recursive value with a SerializationError, not a crash."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="recursive"):
        canonical_json({"data": loop})


def test_values_nested_too_deeply_are_refused_clearly() -> None:
    """Deep nesting is a SerializationError, not a RecursionError."""
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SerializationError, match="nests deeper than 100 levels"):
        codec.encode(deep)


@pytest.mark.parametrize(
    "text",
    ["not json", '{"__durably__":"nope","v":1}', '{"__durably__":"bytes","v":"***"}',
     '{"__durably__":"date","v":"2026-13-45"}', '{"__durably__":"float","v":"huge"}'],
)
def test_malformed_text_raises_value_error(text: str) -> None:
    """decode raises ValueError (which the runtime turns into StorageError)."""
    with pytest.raises(ValueError):
        codec.decode(text)


def test_canonical_json_sorts_keys_and_sets() -> None:
    """Key order and set order never change the canonical text."""
    assert canonical_json({"b": 1, "a": {3, 1, 2}}) == canonical_json({"a": {2, 3, 1}, "b": 1})
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'
    assert canonical_json({2: "x", 1: "y"}) == canonical_json({1: "y", 2: "x"})


def test_canonical_json_treats_tuples_as_lists_and_keeps_number_types_apart() -> None:
    """(1, 2) hashes like [1, 2]; 1, 1.0 and True stay three values."""
    assert canonical_json((1, 2)) == canonical_json([1, 2]) == "[1,2]"
    assert len({canonical_json(1), canonical_json(1.0), canonical_json(True)}) == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [math.nan]}])
def test_canonical_json_refuses_nan_and_infinity(bad: Any) -> None:
    """NaN/Infinity cannot be hashed: ids would be unstable."""
    with pytest.raises(SerializationError, match="NaN and Infinity"):
        canonical_json(bad)


def test_canonical_json_does_not_depend_on_the_hash_seed() -> None:
    """Two interpreters with different PYTHONHASHSEED produce the same canonical text."""
    script = (
        "from durably._tags import canonical_json;"
        "print(canonical_json({'s': {'pear', 'apple', 'fig', 'kiwi', 'plum'},"
        " 'f': frozenset({('a', 1), ('b', 2)}), 'k': {('x',): 1, ('y',): 2}}))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


def test_pickle_codec_round_trips_anything_picklable() -> None:
    """PickleCodec stores values the JSON codec refuses."""
    pickled = PickleCodec()
    value = {"complex": 1 + 2j, "range": range(3)}
    assert pickled.decode(pickled.encode(value)) == value


def test_pickle_codec_refuses_unpicklable_values_clearly() -> None:
    """An unpicklable value is a SerializationError naming its type."""
    with pytest.raises(SerializationError, match="cannot pickle") as caught:
        PickleCodec().encode(lambda: 1)
    assert caught.value.type_name == "function"


def test_pickle_codec_rejects_malformed_text() -> None:
    """Garbage text is a ValueError, not a crash."""
    with pytest.raises(ValueError):
        PickleCodec().decode("%%%")
    with pytest.raises(ValueError):
        PickleCodec().decode("aGVsbG8=")
