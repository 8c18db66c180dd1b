"""Saga: book a trip in three steps; when one fails for good, undo the others in reverse.

    python examples/saga.py                 # the card is declined: watch the compensation
    python examples/saga.py --card good     # everything succeeds

With the declined card, the engine logs the failed charge (a ``replaygen WARNING`` line on
stderr: the step failed for good), then the workflow compensates; the last line says so.

Compensation is ordinary workflow code in an ``except StepFailed`` block, so a
crash in the middle of it resumes the compensation where it stopped: replay
raises the journaled failure again, and the workflow takes the same path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Do, Interpreter, Retry, StepFailed


class CardDeclined(Exception):
    pass


def book(what: str, trip: dict[str, Any]) -> str:
    print(f"booked {what} for {trip['who']}", flush=True)
    return f"{what}-{trip['id']}"


def cancel(booking: str) -> None:
    print(f"compensating: cancelled {booking}", flush=True)


def charge(trip: dict[str, Any]) -> str:
    if trip["card"] != "good":
        print(f"charging {trip['who']}: card {trip['card']!r} declined", flush=True)
        raise CardDeclined(f"card {trip['card']!r} declined")
    print(f"charged {trip['who']}", flush=True)
    return f"payment-{trip['id']}"


def trip(trip: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    undo: list[tuple[str, Callable[..., Any], str]] = []
    try:
        flight = yield Do("book flight", book, "flight", trip)
        undo.append(("cancel flight", cancel, flight))
        hotel = yield Do("book hotel", book, "hotel", trip)
        undo.append(("cancel hotel", cancel, hotel))
        # A declined card is final: retry only what may pass (here, connection errors).
        payment = yield Do("charge", charge, trip, retry=Retry(3, never_retry=CardDeclined))
    except StepFailed as failure:
        for name, fn, booking in reversed(undo):
            yield Do(name, fn, booking, retry=Retry(5))  # compensations must not give up easily
        return {"status": "rolled back", "reason": str(failure)}
    return {"status": "booked", "flight": flight, "hotel": hotel, "payment": payment}


workflows = [trip]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="saga.db")
    p.add_argument("--card", default="declined")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    # The engine logs a step that fails for good as a WARNING: say whose line it is.
    logging.basicConfig(format="%(name)s %(levelname)s: %(message)s")
    with Interpreter(SQLiteStore(args.db), workflows) as interp:
        interp.recover()
        outcome = interp.run(trip, {"id": 1, "who": "ada", "card": args.card})
    if outcome["status"] == "booked":
        print(f"booked: {outcome['flight']}, {outcome['hotel']}, paid by {outcome['payment']}")
    else:
        print(f"rolled back: {outcome['reason']}; the saga cancelled what it had booked, "
              f"in reverse")
    return 0


if __name__ == "__main__":
    sys.exit(main())
