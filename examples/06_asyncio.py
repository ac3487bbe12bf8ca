"""asyncio: durable steps inside an async service, concurrent steps with gather, and a
cancelled request that the next run resumes without repeating what completed.

    python examples/06_asyncio.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from durably import AsyncDurableWorkflowRuntime, RetryPolicy, SqliteStepStorage, current_step


def build(db: Path, ran: list[str]) -> AsyncDurableWorkflowRuntime:
    runtime = AsyncDurableWorkflowRuntime(
        storage=SqliteStepStorage(db), workflow_id="order-7",
        # timeout: an attempt still running after 5 s is cancelled and retried.
        retry_policy=RetryPolicy(max_attempts=3, initial_delay=0.01, timeout=5),
    )

    @runtime.action("Quote.fetch")
    async def fetch_quote(carrier: str) -> float:
        step = current_step()
        assert step is not None
        ran.append(f"quote {carrier} (attempt {step.attempt})")
        if carrier == "slowpost" and step.attempt == 1:
            await asyncio.sleep(10)  # slow: the request is cancelled while this waits
        return {"fastship": 9.5, "slowpost": 7.0, "cheapco": 8.25}[carrier]

    @runtime.action("Label.print")
    def print_label(carrier: str) -> str:  # a plain function: runs in a worker thread
        ran.append(f"label {carrier}")
        return f"LABEL-{carrier.upper()}"

    return runtime


async def handle_order(runtime: AsyncDurableWorkflowRuntime) -> str:
    carriers = ["fastship", "slowpost", "cheapco"]
    quotes = await asyncio.gather(*(runtime.do("Quote.fetch", c) for c in carriers))
    best = min(zip(quotes, carriers, strict=True))[1]
    return str(await runtime.do("Label.print", best))


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "orders.db"

        ran: list[str] = []
        runtime = build(db, ran)
        request = asyncio.ensure_future(handle_order(runtime))
        await asyncio.sleep(0.2)  # the client gives up while slowpost is still quoting
        request.cancel()
        try:
            await request
        except asyncio.CancelledError:
            print(f"request cancelled; had run: {sorted(ran)}")
        await runtime.aclose()

        ran = []
        async with build(db, ran) as runtime:
            label = await handle_order(runtime)
        print(f"rerun ran only: {ran}")
        print(f"label: {label}")


if __name__ == "__main__":
    asyncio.run(main())
