"""Step identity: hashing, numbering and golden values."""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
import random
import threading

import pytest

from durably import SerializationError, StepContext
from durably._ids import CallCounter, call_hash, numbered
from durably._tags import canonical_json


def test_golden_ids_are_pinned() -> None:
    """Ids never drift silently: a change here breaks replay of every stored workflow."""
    # The first value is exactly sha256 of the plain JSON the design describes.
    text = json.dumps(["default", None, "Inventory.reserve", {"sku": "A1", "qty": 2}, []],
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "s1_" + hashlib.sha256(text.encode()).hexdigest()[:32] == (
        "s1_2ffeb737dfb8cb4dde79e4fa1aa92ed5"
    )
    assert call_hash("default", None, "Inventory.reserve", {"sku": "A1", "qty": 2}, ()) == (
        "s1_2ffeb737dfb8cb4dde79e4fa1aa92ed5"
    )
    assert call_hash("order-42", "s1_parent", "Payment.charge", [1, 2.5, None], ("x",)) == (
        "s1_54314dc4d2e1e2a378c777fec0032071"
    )
    context = StepContext("order-42", "s1_abc", "A.b", attempt=1, max_attempts=3, mode="do")
    assert context.idempotency_key == "idem_52af52a7599798beb10b1fe4c864b74d"


def test_key_order_and_set_order_do_not_change_ids() -> None:
    """Equal data written differently names the same step."""
    first = call_hash("wf", None, "A.b", {"x": 1, "y": {3, 2, 1}}, ())
    second = call_hash("wf", None, "A.b", {"y": {1, 2, 3}, "x": 1}, ())
    assert first == second


@pytest.mark.parametrize(
    "change",
    [
        {"workflow_id": "other"},
        {"parent": "s1_p"},
        {"action": "A.c"},
        {"context": {"x": 2}},
        {"args": (1,)},
    ],
)
def test_every_part_of_a_call_changes_its_id(change: dict[str, object]) -> None:
    """Workflow, parent, action, context and args all feed the hash."""
    base: dict[str, object] = {"workflow_id": "wf", "parent": None, "action": "A.b",
                               "context": {"x": 1}, "args": ()}
    assert call_hash(**base) != call_hash(**{**base, **change})  # type: ignore[arg-type]


def test_ids_keep_numbers_and_bools_apart() -> None:
    """1, 1.0 and True are three different steps."""
    ids = {call_hash("wf", None, "A.b", value, ()) for value in (1, 1.0, True)}
    assert len(ids) == 3


def test_unhashable_data_names_context_or_args() -> None:
    """The error path says whether the bad value was in the context or the args."""
    with pytest.raises(SerializationError) as caught:
        call_hash("wf", None, "A.b", {"when": math.nan}, ())
    assert caught.value.path == 'context["when"]'
    with pytest.raises(SerializationError) as caught:
        call_hash("wf", None, "A.b", None, (1, object()))
    assert caught.value.path == "args[1]"


def test_lone_surrogates_hash() -> None:
    """Any Python str can be part of an id."""
    assert call_hash("wf", None, "A.b", "\ud800", ()).startswith("s1_")


def test_numbering_counts_identical_calls() -> None:
    """The first call keeps the bare hash; later identical calls get #1, #2..."""
    counter = CallCounter()
    taken = [counter.take("h"), counter.take("h"), counter.take("g"), counter.take("h")]
    assert taken == [0, 1, 0, 2]
    assert [numbered("h", n) for n in (0, 1, 2)] == ["h", "h#1", "h#2"]


def test_a_number_given_back_is_taken_again() -> None:
    """A failed call's number comes back only while it is the latest one, so several
    failures in a row each give theirs back, and a concurrent later call keeps its own."""
    counter = CallCounter()
    first, second = counter.take("h"), counter.take("h")
    counter.give_back("h", second)
    counter.give_back("h", first)
    assert counter.take("h") == 0
    a, b = counter.take("h"), counter.take("h")  # 1 and 2, taken at once
    counter.give_back("h", a)                    # not the latest: kept by nobody, not reused
    assert counter.take("h") == 3
    counter.give_back("h", 3)
    assert counter.take("h") == 3 and b == 2


def test_numbering_is_thread_safe() -> None:
    """Threads never receive the same number for one hash."""
    counter = CallCounter()
    got: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(500):
            value = counter.take("h")
            with lock:
                got.append(value)

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(got) == list(range(2000))


def _reference_hash(workflow_id: str, parent: str | None, action: str, context: object,
                    args: tuple[object, ...]) -> str:
    """Step ids as they are defined: sha256 of canonical_json of the five parts."""
    text = canonical_json([workflow_id, parent, action, context, list(args)])
    return "s1_" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _random_value(rng: random.Random, depth: int = 0) -> object:
    scalars = [
        lambda: rng.randint(-10**12, 10**12), lambda: rng.random() * 1e6 - 5e5,
        lambda: rng.choice([True, False, None]), lambda: rng.choice(["", "a", "é", "\ud800", "🙂"]),
        lambda: "".join(rng.choice("ab\"\\\n\x00é") for _ in range(rng.randint(0, 6))),
        lambda: dt.datetime(2026, 1, 1, 12, rng.randint(0, 59)),
        lambda: decimal.Decimal(rng.randint(0, 999)) / 100, lambda: bytes(rng.randrange(256)
                                                                          for _ in range(3)),
    ]
    if depth >= 3 or rng.random() < 0.4:
        return rng.choice(scalars)()
    kind = rng.randrange(5)
    items = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 0:
        return items
    if kind == 1:
        return tuple(items)
    if kind == 2:
        return {str(rng.randint(0, 50)): item for item in items}
    if kind == 3:
        return {rng.choice([1, 2.5, "k", (1, 2)]): item for item in items}
    return {rng.randint(0, 100) for _ in items} | {"x"}


def test_call_hash_equals_its_definition_over_many_values() -> None:
    """The fast path of call_hash gives exactly sha256(canonical_json(...)), for plain JSON and
    for tagged values alike (2,000 seeded random calls)."""
    rng = random.Random(20261201)
    for _ in range(2000):
        context = _random_value(rng)
        args = tuple(_random_value(rng) for _ in range(rng.randint(0, 3)))
        parent = rng.choice([None, "s1_parent"])
        assert call_hash("wf", parent, "A.b", context, args) == _reference_hash(
            "wf", parent, "A.b", context, args)
