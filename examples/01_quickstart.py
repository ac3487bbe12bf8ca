"""Quickstart: three durable steps on SQLite. The second run replays instead of running.

    python examples/01_quickstart.py              # runs the workflow twice, in a temp database
    python examples/01_quickstart.py --db orders.db   # keep the database: run it again to replay
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from durably import DurableWorkflowRuntime, RetryPolicy, SqliteStepStorage


def run_workflow(db: Path, label: str) -> dict[str, object]:
    """Process order 42 durably; print which steps really ran."""
    ran: list[str] = []
    with DurableWorkflowRuntime(storage=SqliteStepStorage(db), workflow_id="order-42",
                                retry_policy=RetryPolicy(max_attempts=3)) as runtime:

        @runtime.action("Inventory.reserve")
        def reserve(items: list[str]) -> dict[str, object]:
            ran.append("reserve")
            return {"reservation": "R-1", "items": items}

        @runtime.action("Payment.charge")
        def charge(amount: float) -> dict[str, object]:
            ran.append("charge")
            return {"charge_id": "ch_1", "amount": amount}

        @runtime.action("Shipping.ship")
        def ship(address: str) -> str:
            ran.append("ship")
            return f"shipped to {address}"

        reservation = runtime.do("Inventory.reserve", ["book", "pen"])
        payment = runtime.do("Payment.charge", 12.5)
        shipment = runtime.do("Shipping.ship", "1 Main St")

    replayed = [name for name in ("reserve", "charge", "ship") if name not in ran]
    print(f"{label}: ran {ran}, replayed {replayed} from {db.name}")
    return {"reservation": reservation, "payment": payment, "shipment": shipment}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="database file to keep between runs")
    options = parser.parse_args()
    if options.db is not None:
        print(run_workflow(options.db, "this run"))
        return
    with tempfile.TemporaryDirectory() as directory:
        db = Path(directory) / "quickstart.db"
        first = run_workflow(db, "first run ")
        second = run_workflow(db, "second run")
        assert first == second
        print(f"both runs returned {second}")


if __name__ == "__main__":
    main()
