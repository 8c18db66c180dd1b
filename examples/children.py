"""An order run as child workflows: payment and shipping, under a deadline, with a refund.

    python examples/children.py                      # shipping is too slow: refunded
    python examples/children.py --pickup 0.5         # delivered in time
    python examples/children.py --card declined      # the payment child fails

The order starts a ``payment`` child, then a ``shipping`` child, and must end within
``--deadline`` seconds. When the deadline passes, ``DeadlineExceeded`` is raised in the order
where it waits (and in its children, which inherit the deadline); the order refunds the
payment, a compensation that runs unhindered. Each child is a run of its own: ``replaygen
--store children.db runs --parent order-1`` lists them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Child, ChildFailed, Deadline, DeadlineExceeded, Do, Interpreter, Sleep


class CardDeclined(Exception):
    pass


def charge(order: dict[str, Any]) -> str:
    if order["card"] != "good":
        raise CardDeclined(f"card {order['card']!r} declined")
    print(f"charged order {order['id']}", flush=True)
    return f"txn-{order['id']}"


def label(order: dict[str, Any]) -> str:
    print(f"printed a shipping label for order {order['id']}", flush=True)
    return f"parcel-{order['id']}"


def refund(txn: str) -> str:
    print(f"refunded {txn}", flush=True)
    return f"refund-{txn}"


def payment(order: dict[str, Any]) -> Generator[Any, Any, str]:
    """A child: charge the card."""
    return (yield Do("charge", charge, order))


def shipping(order: dict[str, Any]) -> Generator[Any, Any, str]:
    """A child: print a label, then wait for the carrier's pickup (a durable sleep)."""
    parcel = yield Do("label", label, order)
    yield Sleep(order["pickup"])
    return parcel


def fulfil(order: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    """The parent: pay, then ship, all within the deadline; refund when it passes."""
    yield Deadline(order["deadline"])
    try:
        txn = yield Child(payment, order)
    except ChildFailed as failure:
        return {"status": "not paid", "reason": failure.error_message}
    try:
        parcel = yield Child(shipping, order)
    except DeadlineExceeded:
        refunded = yield Do("refund", refund, txn)  # after the deadline: runs unhindered
        return {"status": "too slow: refunded", "refund": refunded}
    return {"status": "shipped", "txn": txn, "parcel": parcel}


workflows = [payment, shipping, fulfil]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="children.db")
    p.add_argument("--order", type=int, default=1)
    p.add_argument("--card", default="good")
    p.add_argument("--pickup", type=float, default=5.0, help="seconds until the carrier comes")
    p.add_argument("--deadline", type=float, default=2.0, help="seconds the order may take")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    order = {"id": args.order, "card": args.card, "pickup": args.pickup,
             "deadline": args.deadline}
    with Interpreter(SQLiteStore(args.db), workflows) as interp:
        interp.recover()
        run_id = interp.start(fulfil, order, run_id=f"order-{args.order}")
        print(f"order {run_id}: {interp.result(run_id)}", flush=True)
        for child in interp.status(run_id).children:
            print(f"  child {child}: {interp.status(child).state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
