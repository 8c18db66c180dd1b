"""The workflows whose journals are kept in tests/golden/*.db. Never change their shape:
old journals must keep replaying (that is what the golden files check)."""

from __future__ import annotations

from typing import Any

from replaygen import All, Do, Retry, Sleep, Wait

FAILS_UNTIL = {"attempts": 3}


def price(items: list[str]) -> dict[str, Any]:
    return {"total": 10 * len(items), "items": items}


def flaky(n: int) -> str:
    if n < FAILS_UNTIL["attempts"]:
        raise ConnectionError(f"try {n} failed")
    return "ok"


def order(o: dict[str, Any]) -> Any:
    quote = yield Do("price", price, o["items"])
    yield Sleep(3600)
    return {"id": o["id"], "total": quote["total"]}


def approval(ref: str) -> Any:
    note = yield Wait("note")
    decision = yield Wait("decision", timeout=86400)
    return [ref, note["text"], decision]


def fanout(n: int) -> Any:
    return (yield All(*(Do(f"part-{i}", price, [str(i)] * i) for i in range(n))))


def retrying() -> Any:
    tries = 0
    while True:  # each try is its own step so the golden file holds failed entries too
        tries += 1
        try:
            return (yield Do(f"call-{tries}", flaky, tries, retry=Retry(2, backoff=600)))
        except Exception:
            if tries >= 3:
                raise


WORKFLOWS = {"order": order, "approval": approval, "fanout": fanout, "retrying": retrying}
