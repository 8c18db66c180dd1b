"""Approval: ask for a decision, wait for it with a timeout, and escalate when nobody answers.

    python examples/approval.py --timeout 30      # start a request on approval.db and wait
    replaygen --store approval.db signal expense-7 decision '{"approved": true, "by": "ann"}'

The Wait's deadline is journaled, so the timeout survives restarts; a decision
sent before the workflow reaches its Wait is kept, not lost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Do, Interpreter, RunNotFound, Wait, WaitTimeout


def say(line: str) -> None:
    # Steps run on the engine's threads while main() prints too: one write a line.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def notify(who: str, request: dict[str, Any]) -> str:
    say(f"asked {who} to approve {request['what']} ({request['amount']})")
    return who


def apply(request: dict[str, Any], decision: dict[str, Any]) -> str:
    verdict = "approved" if decision.get("approved") else "rejected"
    say(f"{request['what']}: {verdict} by {decision.get('by', '?')}")
    return verdict


def approval(
    request: dict[str, Any], timeout: float = 3 * 86400
) -> Generator[Any, Any, dict[str, Any]]:
    yield Do("ask manager", notify, request["manager"], request)
    escalated = False
    try:
        decision = yield Wait("decision", timeout=timeout)
    except WaitTimeout:
        # Nobody answered in time: the same signal name, now awaited from the director.
        escalated = True
        yield Do("escalate", notify, request["director"], request)
        decision = yield Wait("decision")
    verdict = yield Do("apply", apply, request, decision)
    return {"verdict": verdict, "by": decision.get("by"), "escalated": escalated}


workflows = [approval]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="approval.db")
    p.add_argument("--id", default="expense-7", help="the run id")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before escalating")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    request = {"what": "conference trip", "amount": "1200 EUR", "manager": "ann",
               "director": "bob"}
    with Interpreter(SQLiteStore(args.db), workflows) as interp:
        interp.recover()
        try:
            interp.status(args.id)
        except RunNotFound:
            interp.start(approval, request, args.timeout, run_id=args.id)
        say(f"waiting for a decision; in another shell:\n  replaygen --store {args.db} signal "
            f"{args.id} decision '{{\"approved\": true, \"by\": \"ann\"}}'")
        try:
            say(f"done: {interp.result(args.id)}")
        except KeyboardInterrupt:
            say(f"\ninterrupted; run {args.id} is parked, run again to resume")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
