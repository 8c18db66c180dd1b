"""Checkout: charge the card, wait 24 hours (durably), send the receipt.

    python examples/checkout.py                 # start (or resume) order 42 on checkout.db
    python examples/checkout.py --sleep 10      # a 10 s "day", for the kill-and-resume demo
    python examples/checkout.py --order 43      # another order (order-42 may be finished)

Kill it during the sleep (Ctrl-C, or kill -9) and run it again: the card is
not charged twice, and the sleep ends when it would have anyway, because its
deadline is in the journal. ``replaygen --store checkout.db show order-42``
shows where the run is. ``replaygen worker examples.checkout`` serves it too.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from pathlib import Path
from collections.abc import Generator
from typing import Any

if __package__ in (None, ""):  # run as a script: make `replaygen` and `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Do, Event, Interpreter, RunNotFound, Sleep, current_step


def say(line: str) -> None:
    # Steps and observers run on the engine's threads while main() prints too: one write a line.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def charge_card(order: dict[str, Any]) -> dict[str, Any]:
    # A real payment API deduplicates on this key, so a retry after a crash never charges twice.
    key = current_step().idempotency_key
    say(f"charging {order['amount']} for order {order['id']} (idempotency key {key[:8]})")
    return {"txn": f"txn_{order['id']}", "amount": order["amount"]}


def send_receipt(order: dict[str, Any], txn: dict[str, Any]) -> str:
    say(f"receipt for {txn['txn']} sent to {order['email']}")
    return "sent"


def checkout(
    order: dict[str, Any], day: float = timedelta(hours=24).total_seconds()
) -> Generator[Any, Any, dict[str, Any]]:
    txn = yield Do("charge", charge_card, order)
    yield Sleep(day)  # durable: no thread is held, and a restart does not start it over
    yield Do("receipt", send_receipt, order, txn)
    return txn


workflows = [checkout]


def _progress(event: Event) -> None:
    if event.kind == "run_parked":
        say(f"run {event.run_id} is {event.state}; kill this process now if you like, and run "
            f"it again to resume")
    elif event.kind == "run_started":
        say(f"run {event.run_id} running")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="checkout.db", help="SQLite file (default: checkout.db)")
    p.add_argument("--order", type=int, default=42)
    p.add_argument("--sleep", type=float, default=86400.0, help="seconds between charge and receipt")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    run_id = f"order-{args.order}"
    with Interpreter(SQLiteStore(args.db), workflows, observer=_progress) as interp:
        interp.recover()  # on every boot: resume what the last process left
        try:
            state = interp.status(run_id).state
            say(f"run {run_id} found: {state}")
            if state in ("completed", "failed", "cancelled"):
                say(f"(it finished earlier: --order {args.order + 1} starts a new order)")
        except RunNotFound:
            order = {"id": args.order, "amount": "19.90 EUR", "email": "ada@example.com"}
            interp.start(checkout, order, args.sleep, run_id=run_id)
            say(f"run {run_id} started")
        try:
            say(f"run {run_id} completed: {interp.result(run_id)}")
        except KeyboardInterrupt:
            say(f"\ninterrupted; run {run_id} is parked, run again to resume")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
