"""Checked by mypy (`mypy --strict tests/typecheck`, run by .ci/run), never executed.

Each line marked ``# type: ignore[...]`` must be an error: with ``warn_unused_ignores`` (part
of ``--strict``) mypy fails if one of them is accepted, so this file proves that wrong option
names and wrong argument types are caught, and ``assert_type`` proves what calls return.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from durably import AsyncDurableWorkflowRuntime, DurableWorkflowRuntime, RetryPolicy
from durably.testing import create_test_runtime

runtime = DurableWorkflowRuntime()


def charge(amount: float) -> dict[str, float]:
    return {"charged": amount}


async def fetch(url: str) -> bytes:
    return url.encode()


# do() with a callable gives the callable's return type; by name it gives Any.
assert_type(runtime.do(charge, 12.5), dict[str, float])
assert_type(runtime.do("Payment.charge", 12.5), Any)
assert_type(runtime.try_(charge, 1.0), dict[str, float])
runtime.do(charge, "twelve")  # type: ignore[arg-type]
runtime.do(charge, 1.0, retries=3)  # type: ignore[call-overload]
runtime.do(charge, 1.0, retry=3)  # type: ignore[call-overload]

# Constructors spell out their options: a misspelt one is an error.
DurableWorkflowRuntime(retry_polcy=RetryPolicy())  # type: ignore[call-arg]
DurableWorkflowRuntime(workflow_id=42)  # type: ignore[arg-type]
AsyncDurableWorkflowRuntime(codecs=None)  # type: ignore[call-arg]
RetryPolicy(max_attempt=3)  # type: ignore[call-arg]
create_test_runtime(anything=1)  # test helpers take overrides as keywords: not checked


@runtime.step("Payment.pay")
def pay(card: str, amount: float, *, currency: str = "EUR") -> str:
    return f"{card} {amount} {currency}"


assert_type(pay("4242", 12.5), str)
assert_type(pay("4242", 12.5, currency="USD"), str)
assert_type(pay.try_("4242", 1.0), str)
pay("4242")  # type: ignore[call-arg]
pay("4242", "twelve")  # type: ignore[arg-type]


@runtime.step
def ship(address: str) -> int:
    return len(address)


assert_type(ship("1 Main St"), int)


async def asynchronous() -> None:
    aio = AsyncDurableWorkflowRuntime()
    assert_type(await aio.do(fetch, "https://example.com"), bytes)
    assert_type(await aio.do(charge, 1.0), dict[str, float])
    await aio.do(fetch, 42)  # type: ignore[arg-type]

    @aio.step("Net.get")
    async def get(url: str) -> bytes:
        return url.encode()

    @aio.step()
    def plain(n: int) -> int:
        return n

    assert_type(await get("u"), bytes)
    assert_type(await plain(1), int)
    await get(3)  # type: ignore[arg-type]
