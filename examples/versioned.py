"""Versioned change: add a fraud check to a workflow while old runs are still parked in it.

    python examples/versioned.py

Runs started by the old code have already journaled the Wait that now comes
after the new step. Replaying them through the new step would not match their
journal, so ``Version`` branches: old runs get 1 (the old path), new runs get
2. Once no run of version 1 is left, the old branch can be deleted.
Without the ``Version`` call (``fulfil_unversioned``), old runs are blocked
with a NonDeterminismError until fixed code is deployed
(``replaygen resume RUN_ID --app examples.versioned``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Do, Interpreter, Version, Wait

WEEK = 7 * 86400.0


def reserve(order: dict[str, Any]) -> str:
    return f"reservation-{order['id']}"


def check_fraud(order: dict[str, Any]) -> bool:
    return order.get("amount", 0) < 10_000


def ship(order: dict[str, Any]) -> str:
    return f"parcel-{order['id']}"


def fulfil_v1(order: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    """The code as first deployed."""
    yield Do("reserve", reserve, order)
    yield Wait("paid", timeout=WEEK)
    parcel = yield Do("ship", ship, order)
    return {"parcel": parcel, "fraud_checked": False}


def fulfil_unversioned(order: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    """The wrong way to add the check: old runs no longer replay (they are blocked)."""
    yield Do("reserve", reserve, order)
    yield Do("fraud check", check_fraud, order)
    yield Wait("paid", timeout=WEEK)
    parcel = yield Do("ship", ship, order)
    return {"parcel": parcel, "fraud_checked": True}


def fulfil(order: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    """Today's code: a fraud check before waiting for payment, for runs started from now on."""
    yield Do("reserve", reserve, order)
    version = yield Version("fraud-check", 1, 2)
    if version >= 2:
        if not (yield Do("fraud check", check_fraud, order)):
            return {"parcel": None, "fraud_checked": True}
    yield Wait("paid", timeout=WEEK)
    parcel = yield Do("ship", ship, order)
    return {"parcel": parcel, "fraud_checked": version >= 2}


workflows = {"fulfil": fulfil}  # registered by name, so old and new code share runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="versioned.db")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    for suffix in ("", "-wal", "-shm"):  # the demo starts from an empty database
        Path(args.db + suffix).unlink(missing_ok=True)
    store = SQLiteStore(args.db)
    with Interpreter(store, {"fulfil": fulfil_v1}) as old:  # yesterday's deploy
        old.start("fulfil", {"id": 1, "amount": 50}, run_id="order-1")
        while old.status("order-1").state != "waiting":
            time.sleep(0.01)
        print("old code started order-1; it waits for payment (its Wait is journaled)")
    with Interpreter(store, workflows) as new:  # today's deploy
        new.recover()
        new.start("fulfil", {"id": 2, "amount": 70}, run_id="order-2")
        for run_id in ("order-1", "order-2"):
            new.deliver(run_id, "paid", {"amount": 50})
            print(f"{run_id}: {new.result(run_id, timeout=10)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
