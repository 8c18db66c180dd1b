"""The examples do what their docstrings say, on SQLite in a temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import FakeClock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `examples` is a package at the top of the repository

from examples import approval, checkout, children, fanout, otel, saga, versioned  # noqa: E402

DAY = 86400.0


@pytest.fixture
def db(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "runs.db")
    yield store
    store.close()


@pytest.fixture
def make(db: SQLiteStore) -> Iterator[Callable[..., Interpreter]]:
    made: list[Interpreter] = []

    def build(workflows: Any, **options: Any) -> Interpreter:
        made.append(Interpreter(db, workflows, **options))
        return made[-1]

    yield build
    for interp in made:
        interp.shutdown(5)


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out waiting for the run"
        time.sleep(0.01)


def steps(store: SQLiteStore, run_id: str) -> list[str]:
    return [e.name for e in store.journal(run_id) if e.kind == "do"]


def test_every_example_exposes_its_workflows(make: Callable[..., Interpreter]) -> None:
    for module in (approval, checkout, children, fanout, otel, saga, versioned):
        make(module.workflows)


ORDER = {"id": 1, "amount": "9 EUR", "email": "a@example.com"}


def test_checkout_sleeps_a_day_then_sends_the_receipt(db: SQLiteStore, make: Any) -> None:
    clock = FakeClock()
    interp = make(checkout.workflows, clock=clock)
    run_id = interp.start(checkout.checkout, ORDER, run_id="order-1")
    eventually(lambda: interp.status(run_id).state == "sleeping")
    assert steps(db, run_id) == ["charge"]
    clock.advance(DAY)
    assert interp.result(run_id, timeout=10) == {"txn": "txn_1", "amount": "9 EUR"}
    assert steps(db, run_id) == ["charge", "receipt"]


def test_checkout_killed_mid_sleep_resumes_without_charging_again(tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "examples" / "checkout.py"), "--sleep", "2"]
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    store = SQLiteStore(tmp_path / "checkout.db")
    try:
        eventually(lambda: (r := store.get("order-42")) is not None and r.state == "sleeping")
        deadline = store.journal("order-42")[-1].value
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        assert first.stdout is not None and first.stdout.read().count("charging") == 1
        second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "charging" not in second.stdout
        assert "receipt for txn_42" in second.stdout and "completed" in second.stdout
        assert [e.value for e in store.journal("order-42") if e.kind == "sleep"] == [deadline]
        assert steps(store, "order-42") == ["charge", "receipt"]
    finally:
        first.kill()
        store.close()


REQUEST = {"what": "trip", "amount": "1 EUR", "manager": "ann", "director": "bob"}


def test_approval_in_time_is_not_escalated(make: Callable[..., Interpreter]) -> None:
    interp = make(approval.workflows, clock=FakeClock())
    run_id = interp.start(approval.approval, REQUEST, 3600)
    interp.deliver(run_id, "decision", {"approved": True, "by": "ann"})
    assert interp.result(run_id, timeout=10) == {
        "verdict": "approved", "by": "ann", "escalated": False}


def test_approval_escalates_when_the_wait_times_out(db: SQLiteStore, make: Any) -> None:
    clock = FakeClock()
    interp = make(approval.workflows, clock=clock)
    run_id = interp.start(approval.approval, REQUEST, 3600)
    eventually(lambda: interp.status(run_id).state == "waiting")
    clock.advance(3600)
    eventually(lambda: steps(db, run_id) == ["ask manager", "escalate"])
    interp.deliver(run_id, "decision", {"approved": False, "by": "bob"})
    assert interp.result(run_id, timeout=10) == {
        "verdict": "rejected", "by": "bob", "escalated": True}


def test_saga_compensates_in_reverse_when_the_charge_fails(db: SQLiteStore, make: Any) -> None:
    interp = make(saga.workflows)
    run_id = interp.start(saga.trip, {"id": 1, "who": "ada", "card": "declined"})
    result = interp.result(run_id, timeout=10)
    assert result["status"] == "rolled back" and "CardDeclined" in result["reason"]
    assert steps(db, run_id) == [
        "book flight", "book hotel", "charge", "cancel hotel", "cancel flight"]


def _order(n: int, **changes: Any) -> dict[str, Any]:
    return {"id": n, "card": "good", "pickup": 0.0, "deadline": 60.0, **changes}


def test_children_ships_an_order_in_time(make: Any) -> None:
    interp = make(children.workflows)
    run_id = interp.start(children.fulfil, _order(1), run_id="order-1")
    assert interp.result(run_id, timeout=10) == {"status": "shipped", "txn": "txn-1",
                                                 "parcel": "parcel-1"}
    assert interp.status(run_id).children == ("order-1/1", "order-1/2")


def test_children_refunds_an_order_whose_shipping_passes_the_deadline(
        db: SQLiteStore, make: Any) -> None:
    interp = make(children.workflows)
    run_id = interp.start(children.fulfil, _order(2, pickup=3600.0, deadline=0.3),
                          run_id="order-2")
    assert interp.result(run_id, timeout=10) == {"status": "too slow: refunded",
                                                 "refund": "refund-txn-2"}
    assert interp.status("order-2/2").state == "cancelled"  # it inherited the deadline
    assert steps(db, run_id) == ["refund"]


def test_children_reports_a_declined_payment(make: Any) -> None:
    interp = make(children.workflows)
    result = interp.run(children.fulfil, _order(3, card="declined"))
    assert result["status"] == "not paid" and "CardDeclined" in result["reason"]


def test_saga_books_everything_when_nothing_fails(make: Callable[..., Interpreter]) -> None:
    interp = make(saga.workflows)
    result = interp.run(saga.trip, {"id": 2, "who": "bo", "card": "good"})
    assert result == {"status": "booked", "flight": "flight-2", "hotel": "hotel-2",
                      "payment": "payment-2"}


def test_saga_example_says_what_happened_on_every_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "saga.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "booked flight for ada", "booked hotel for ada", "charging ada: card 'declined' declined",
        "compensating: cancelled hotel-1", "compensating: cancelled flight-1",
        "rolled back: step 'charge' failed: CardDeclined: card 'declined' declined; the saga "
        "cancelled what it had booked, in reverse"]
    # What the engine logs is labelled as its log, not a bare line that reads like a crash.
    assert done.stderr.splitlines() and all(
        line.startswith("replaygen WARNING: run ") for line in done.stderr.splitlines())
    assert "step 'charge' failed" in done.stderr


def test_fanout_runs_every_quote_and_picks_the_cheapest(db: SQLiteStore, make: Any) -> None:
    interp = make(fanout.workflows)
    run_id = interp.start(fanout.best_quote, "widgets", 0.2)
    started = time.monotonic()
    assert interp.result(run_id, timeout=10)["supplier"] == "globex"
    assert time.monotonic() - started < 0.2 * len(fanout.PRICES)  # they overlapped
    journal = sorted((e.position, e.name) for e in db.journal(run_id)  # in order of finishing
                     if e.kind != "group")
    assert journal == [(0, "quote acme"), (1, "quote globex"), (2, "quote initech"), (3, "order")]


def _old_run_waiting(db: SQLiteStore, make: Any) -> None:
    old = make({"fulfil": versioned.fulfil_v1})
    old.start("fulfil", {"id": 1, "amount": 50}, run_id="old")
    eventually(lambda: old.status("old").state == "waiting")
    old.shutdown()


def test_versioned_change_keeps_old_runs_on_the_old_path(db: SQLiteStore, make: Any) -> None:
    _old_run_waiting(db, make)
    new = make(versioned.workflows)
    new.recover()
    new.start("fulfil", {"id": 2, "amount": 70}, run_id="new")
    for run_id in ("old", "new"):
        new.deliver(run_id, "paid")
    assert new.result("old", timeout=10) == {"parcel": "parcel-1", "fraud_checked": False}
    assert new.result("new", timeout=10) == {"parcel": "parcel-2", "fraud_checked": True}
    assert steps(db, "new") == ["reserve", "fraud check", "ship"]


def test_unversioned_change_blocks_old_runs_until_fixed(db: SQLiteStore, make: Any) -> None:
    _old_run_waiting(db, make)
    wrong = make({"fulfil": versioned.fulfil_unversioned})
    wrong.recover()
    eventually(lambda: wrong.status("old").state == "blocked")
    assert "not deterministic at position 1" in (wrong.status("old").error or "")
    wrong.shutdown()
    fixed = make(versioned.workflows)
    fixed.recover()
    fixed.deliver("old", "paid")
    assert fixed.result("old", timeout=10)["fraud_checked"] is False


class _Span:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def add_event(self, *args: Any) -> None:
        pass

    def set_attribute(self, *args: Any) -> None:
        pass

    def set_status(self, *args: Any) -> None:
        pass

    def end(self) -> None:
        self.log.append(f"end {self.name}")


class _Tracer:
    def __init__(self) -> None:
        self.log: list[str] = []

    def start_span(self, name: str, **kwargs: Any) -> _Span:
        self.log.append(f"start {name}")
        return _Span(name, self.log)


def test_otel_observer_makes_a_span_per_run_and_per_step_try(make: Any) -> None:
    tracer = _Tracer()
    interp = make(otel.workflows, observer=otel.SpanObserver(tracer))
    assert interp.run(otel.welcome, "ada") == "ada@example.com"
    eventually(lambda: tracer.log[-1] == "end run welcome")
    assert tracer.log == [
        "start run welcome", "start step lookup", "end step lookup",   # try 1 fails
        "start step lookup", "end step lookup", "start step send mail", "end step send mail",
        "end run welcome"]


def test_otel_example_runs_or_explains_and_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "otel.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "result: ada@example.com" in done.stdout or "pip install" in done.stdout


def test_an_example_is_served_by_the_replaygen_worker(db: SQLiteStore, make: Any) -> None:
    interp = make(approval.workflows)
    run_id = interp.start(approval.approval, REQUEST, 3600, run_id="expense-1")
    eventually(lambda: interp.status(run_id).state == "waiting")
    interp.shutdown()
    env = {**os.environ, "REPLAYGEN_STORE": db.path}
    worker = subprocess.Popen([sys.executable, "-m", "replaygen", "worker", "examples.approval"],
                              cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        subprocess.run([sys.executable, "-m", "replaygen", "signal", run_id, "decision",
                        '{"approved": true, "by": "ann"}'], env=env, check=True, timeout=30)
        eventually(lambda: (r := db.get(run_id)) is not None and r.state == "completed", 20)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
