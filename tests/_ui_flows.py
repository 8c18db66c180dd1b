"""Workflows and a small data set for the web view's tests, its browser test and its
screenshots: one run in each state, a retried step, a Version marker, a blocked run, and a
run whose id and arguments hold markup and control characters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from replaygen import Do, Interpreter, Retry, Sleep, Version, Wait
from replaygen.store import Store

HOSTILE_ID = '<script>window.__pwned=1</script>"\'><img src=x onerror="window.__pwned=2">\x1b[31m\u202eevil'
HOSTILE_ARGS = {"html": "<script>window.__pwned=3</script>", "img": "<img src=x onerror=window.__pwned=4>",
                "ctl": "bell\x07 escape\x1b[2J newline\nrtl\u202e!"}
_tries: dict[str, int] = {}


def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"txn": f"txn-{order['id']}", "amount": order["amount"], "currency": "EUR"}


def reserve(order: dict[str, Any]) -> str:
    """Fails its first try for each order (a flaky inventory service)."""
    _tries[order["id"]] = _tries.get(order["id"], 0) + 1
    if _tries[order["id"]] == 1:
        raise ConnectionError(f"inventory service timed out for order {order['id']}")
    return f"shelf-{order['id']}"


def receipt(txn: dict[str, Any], shipped: Any) -> str:
    return f"receipt for {txn['txn']} via {shipped}"


def checkout(order: dict[str, Any]) -> Any:
    txn = yield Do("charge", charge, order)
    yield Do("reserve", reserve, order, retry=Retry(3, backoff=0.001, jitter=0.0))
    if (yield Version("receipt-format", 1, 2)) == 2:
        yield Do("audit", lambda: "audited")
    shipped = yield Wait("shipped")
    text = yield Do("receipt", receipt, txn, shipped)
    return {"txn": txn["txn"], "receipt": text}


def refund(order: dict[str, Any]) -> Any:
    yield Do("lookup", lambda: {"order": order["id"]})
    yield Do("divide", lambda: 1 / 0)


def nap(hours: float) -> Any:
    yield Do("prepare", lambda: "ready")
    yield Sleep(hours * 3600)


def approval(request: str) -> Any:
    decision = yield Wait("decision", timeout=3600)
    return decision


def legacy(n: int) -> Any:
    yield Do("load", lambda: n)
    yield Wait("go")


def legacy_changed(n: int) -> Any:  # a deploy that renamed the first step
    yield Do("fetch", lambda: n)
    yield Wait("go")


def echo(value: Any) -> Any:
    got = yield Do("echo", lambda: value)
    return got


WORKFLOWS = {"checkout": checkout, "refund": refund, "nap": nap, "approval": approval,
             "legacy": legacy, "echo": echo}


def until(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``predicate`` until it is truthy (the runs' worker runs in background threads)."""
    end = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.005)
    return value


def populate(store: Store) -> dict[str, str]:
    """Runs in every interesting state, made by real workers, then left parked (no worker
    runs afterwards). Returns their ids by what they show."""
    ids = {"waiting": "order-1041", "completed": "order-1040", "failed": "refund-88",
           "sleeping": "nap-7", "timer": "expense-12", "blocked": "legacy-3",
           "hostile": HOSTILE_ID}
    _tries.clear()  # each data set's reserve steps fail their first try
    with Interpreter(store, {**WORKFLOWS}) as worker:
        worker.start("legacy", 3, run_id=ids["blocked"])
        worker.start("checkout", {"id": 1040, "amount": 129.5}, run_id=ids["completed"])
        worker.start("refund", {"id": 88}, run_id=ids["failed"])
        worker.start("nap", 8, run_id=ids["sleeping"])
        worker.start("approval", "new laptop", run_id=ids["timer"])
        worker.start("echo", HOSTILE_ARGS, run_id=ids["hostile"])
        worker.start("checkout", {"id": 1041, "amount": 42.0}, run_id=ids["waiting"])
        for key in ("completed", "waiting"):
            until(lambda k=key: worker.status(ids[k]).state == "waiting")
        worker.deliver(ids["completed"], "shipped", {"carrier": "ups", "tracking": "1Z999"})
        expected = {"completed": "completed", "failed": "failed", "sleeping": "sleeping",
                    "timer": "waiting", "blocked": "waiting", "hostile": "completed"}
        for key, state in expected.items():
            until(lambda k=key, s=state: worker.status(ids[k]).state == s)
    with Interpreter(store, {**WORKFLOWS, "legacy": legacy_changed}) as worker:
        worker.recover()
        until(lambda: worker.status(ids["blocked"]).state == "blocked")
    return ids
