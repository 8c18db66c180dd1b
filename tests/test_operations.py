"""Operating a store for years (SPEC 13): purge and retention, fork from a step, and
per-workflow limits, through Interpreter and Client on memory, SQLite and Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from .conftest import PATIENCE
from .pg import each_store
from replaygen import (
    All, Client, Do, Interpreter, ReplaygenError, Sleep, Store,
    UsageError, Version, Wait, WorkflowFailed, workflow,
)
from replaygen import Any as AnyOf

Make = Callable[..., Interpreter]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: Any, tmp_path: Path) -> Iterator[Store]:
    """This test's store, on each backend (the ``interp`` fixture builds over it)."""
    with each_store(request.param, tmp_path, "ops_") as s:
        yield s


# ---- purge and retention ---------------------------------------------------------------------

ran: list[str] = []


def note(name: str) -> str:
    ran.append(name)
    return name


def short(n: int) -> Any:
    return (yield Do("note", note, f"short {n}"))


def parked(name: str) -> Any:
    yield Do("before", note, f"{name} before")
    return (yield Wait("go"))


def broken() -> Any:
    yield Do("boom", lambda: 1 / 0)


def test_purge_deletes_old_finished_runs_and_leaves_tombstones(interp: Make, store: Store,
                                                               reach: Any) -> None:
    i = interp([short, parked, broken])
    done = [i.start(short, n, run_id=f"s{n}") for n in range(3)]
    for rid in done:
        i.result(rid, timeout=PATIENCE)
    failed = i.start(broken, run_id="b")
    with pytest.raises(WorkflowFailed):
        i.result(failed, timeout=PATIENCE)
    reach(i, i.start(parked, "p", run_id="p"), "waiting")
    assert i.purge(3600) == 0  # nothing finished an hour ago
    assert i.purge(0, states=["failed"]) == 1
    assert i.purge(timedelta(0), limit=2) == 2
    assert i.purge(0) == 1
    assert {r.run_id for r in i.runs()} == {"p"}  # tombstones are not listed
    status = i.status("s0")
    assert status.state == "purged" and "completed" in (status.error or "")
    with pytest.raises(ReplaygenError, match="purged"):
        i.result("s1")
    assert store.journal("s2") == []
    i.deliver("p", "go", "went")  # the waiting run was never touched
    assert i.result("p", timeout=PATIENCE) == "went"


def test_a_purged_id_started_again_starts_nothing_or_conflicts(interp: Make) -> None:
    i = interp([short, parked])
    i.result(i.start(short, 7, run_id="once"), timeout=PATIENCE)
    assert i.purge(0) == 1
    ran.clear()
    assert i.start(short, 7, run_id="once") == "once"  # the same start: idempotent
    assert i.status("once").state == "purged" and ran == []
    with pytest.raises(UsageError, match="purged run of 'short' with other arguments"):
        i.start(short, 8, run_id="once")
    with pytest.raises(UsageError, match="already exists"):
        i.start(parked, "x", run_id="once")
    client = Client(i._store)  # noqa: SLF001
    assert client.start("short", 7, run_id="once") == "once"


def test_purge_refuses_unfinished_states_and_bad_arguments(interp: Make) -> None:
    i = interp([short])
    for states in (["blocked"], ["waiting"], [], ["completed", "running"]):
        with pytest.raises(UsageError, match="never purged"):
            i.purge(0, states=states)
    for bad in (-1, "30d", True, None):
        with pytest.raises(UsageError, match="older_than"):
            i.purge(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="limit"):
        i.purge(0, limit=-1)


def test_purge_beside_busy_workers_never_touches_an_unfinished_run(interp: Make) -> None:
    i = interp([short, parked], concurrency=8)
    c = Client(i._store)  # noqa: SLF001
    stop, purged = threading.Event(), [0]

    def keep_purging() -> None:
        while not stop.is_set():
            purged[0] += c.purge(0)

    purger = threading.Thread(target=keep_purging)
    purger.start()
    try:
        waiting = [i.start(parked, f"w{n}", run_id=f"w{n}") for n in range(20)]
        short_ids = [i.start(short, n) for n in range(40)]
        for rid in short_ids:
            try:
                assert i.result(rid, timeout=PATIENCE) == f"short {short_ids.index(rid)}"
            except ReplaygenError as exc:  # purged between its end and this read
                assert "purged" in str(exc)
        for rid in waiting:
            i.deliver(rid, "go", rid)
        for rid in waiting:
            try:
                assert i.result(rid, timeout=PATIENCE) == rid
            except ReplaygenError as exc:
                assert "purged" in str(exc)
    finally:
        stop.set()
        purger.join()
    purged[0] += c.purge(0)
    assert purged[0] == 60
    assert all(c.status(r).state == "purged" for r in waiting + short_ids)


def test_retention_purges_in_the_background(interp: Make, eventually: Any) -> None:
    i = interp([short], retention=0.05, lease=0.3)  # its watcher looks every 0.1 s
    run = i.start(short, 1)
    assert i.result(run, timeout=PATIENCE) == "short 1"
    eventually(lambda: i.status(run).state == "purged", "the retention to purge the run")


def test_retention_must_be_a_positive_duration(interp: Make) -> None:
    for bad in (0, -5, "30d", True):
        with pytest.raises(UsageError, match="retention"):
            interp([short], retention=bad)


# ---- fork ----------------------------------------------------------------------------------------

fixed = {"charge": False}


def reserve(item: str) -> str:
    ran.append(f"reserve {item}")
    return f"held {item}"


def charge(amount: int) -> str:
    ran.append(f"charge {amount}")
    if not fixed["charge"]:
        raise ValueError("the card service rejected the currency")
    return f"charged {amount}"


def order(item: str, amount: int) -> Any:
    held = yield Do("reserve", reserve, item)
    approved = yield Wait("approve")
    paid = yield Do("charge", charge, amount)
    return [held, approved, paid]


def test_fork_of_a_failed_saga_after_a_fix_does_not_run_the_steps_before(
        interp: Make, reach: Any) -> None:
    fixed["charge"] = False
    ran.clear()
    i = interp([order])
    source = i.start(order, "lamp", 30, run_id="order-1")
    reach(i, source, "waiting")
    i.deliver(source, "approve", "by ann")
    with pytest.raises(WorkflowFailed, match="rejected the currency"):
        i.result(source, timeout=PATIENCE)
    assert ran == ["reserve lamp", "charge 30"]
    fixed["charge"] = True  # the fix is deployed
    fork = i.fork(source, "charge")
    assert i.result(fork, timeout=PATIENCE) == ["held lamp", "by ann", "charged 30"]
    assert ran == ["reserve lamp", "charge 30", "charge 30"]  # nothing before the fork point
    status = i.status(fork)
    assert status.forked_from == source and status.parent is None
    assert i.status(source).state == "failed"  # the source is left as it was
    named = i.fork(source, 2, run_id="order-1-again")  # by position
    assert named == "order-1-again" and i.result(named, timeout=PATIENCE)[2] == "charged 30"


def test_a_client_fork_is_run_by_a_worker(interp: Make, reach: Any) -> None:
    fixed["charge"] = False
    i = interp([order])
    source = i.start(order, "desk", 5)
    reach(i, source, "waiting")
    i.deliver(source, "approve", "ok")
    with pytest.raises(WorkflowFailed):
        i.result(source, timeout=PATIENCE)
    fixed["charge"] = True
    i.recover()  # from now on it takes runs that clients start
    fork = Client(i._store).fork(source, 1)  # noqa: SLF001
    reach(i, fork, "waiting")  # it forked before the Wait: it waits again
    i.deliver(fork, "approve", "second look")
    assert i.result(fork, timeout=PATIENCE) == ["held desk", "second look", "charged 5"]


def both() -> Any:
    pair = yield All(Do("a", note, "a"), Do("b", note, "b"), Do("c", note, "c"))
    first = yield AnyOf(Wait("x"), Sleep(0))
    yield Do("last", lambda: 1 / 0)
    return [pair, first]


def test_fork_refusals_name_their_reason(interp: Make, reach: Any) -> None:
    fixed["charge"] = False
    i = interp([order, both])
    live = i.start(order, "chair", 1)
    reach(i, live, "waiting")
    with pytest.raises(ReplaygenError, match="it is waiting; fork a finished or blocked run"):
        i.fork(live, "charge")
    group = i.start(both)
    with pytest.raises(WorkflowFailed):
        i.result(group, timeout=PATIENCE)
    with pytest.raises(ReplaygenError, match="no step of that name .*its steps: a, b, c, last"):
        i.fork(group, "nope")
    with pytest.raises(ReplaygenError, match="inside the All at positions 0 to 2"):
        i.fork(group, "b")
    with pytest.raises(ReplaygenError, match="inside the Any at positions 3 to 4"):
        i.fork(group, 4)
    with pytest.raises(ReplaygenError, match="positions are 0 to 6"):
        i.fork(group, 9)
    with pytest.raises(UsageError, match="a step name or a position"):
        i.fork(group, 1.5)  # type: ignore[arg-type]
    ran.clear()
    again = i.fork(group, 3)  # the All's results are kept; the Any runs again
    with pytest.raises(WorkflowFailed):
        i.result(again, timeout=PATIENCE)
    assert ran == []
    with pytest.raises(UsageError, match="a run with that id exists"):
        i.fork(group, 0, run_id=live)
    i.purge(0)
    with pytest.raises(ReplaygenError, match="it is purged .its journal is gone"):
        i.fork(group, 0)


def versioned() -> Any:
    v = yield Version("fee", 1, 2)
    first = yield Do("first", note, f"first v{v}")
    second = yield Do("second", lambda: 1 / 0)
    return [first, second]


def test_a_fork_keeps_the_version_markers_before_its_point(interp: Make) -> None:
    i = interp([versioned])
    source = i.start(versioned)
    with pytest.raises(WorkflowFailed):
        i.result(source, timeout=PATIENCE)
    fork = i.fork(source, "second")
    with pytest.raises(WorkflowFailed, match="StepFailed|ZeroDivision"):
        i.result(fork, timeout=PATIENCE)
    kinds = [e.kind for e in i._store.journal(fork)]  # noqa: SLF001
    assert kinds[:2] == ["version", "do"] and kinds.count("version") == 1


# ---- limits --------------------------------------------------------------------------------------

def test_a_limit_holds_the_runs_of_a_workflow_inside_steps_at_once(
        interp: Make, gate: Any, eventually: Any) -> None:
    inside: set[str] = set()
    most, lock, opened = [0], threading.Lock(), gate()

    def busy(tag: str) -> str:
        with lock:
            inside.add(tag)
            most[0] = max(most[0], len(inside))
        opened.wait(PATIENCE)
        with lock:
            inside.discard(tag)
        return tag

    def limited(tag: str) -> Any:
        first = yield Do("one", busy, tag)
        return [first, (yield Do("two", busy, tag))]

    i = interp({"limited": limited}, limits={"limited": 2}, concurrency=16)
    runs = [i.start(limited, f"t{n}") for n in range(6)]
    eventually(lambda: len(inside) == 2, "two runs inside a step")
    states = [i.status(r).state for r in runs]
    assert states.count("pending") == 4  # a run waiting for a slot is pending
    opened.set()
    for n, rid in enumerate(runs):
        assert i.result(rid, timeout=PATIENCE) == [f"t{n}", f"t{n}"]
    assert most[0] == 2


@workflow(name="naps", limit=1)
def naps(tag: str) -> Any:
    yield Do("before", note, tag)
    yield Sleep(60)
    return (yield Do("after", note, tag))


def test_a_sleeping_run_holds_no_slot(interp: Make, clock: Any, reach: Any) -> None:
    i = interp([naps])
    first = i.start(naps, "first")
    reach(i, first, "sleeping")
    second = i.start(naps, "second")
    reach(i, second, "sleeping")  # it got the slot the sleeping run does not hold
    clock.advance(61)
    assert i.result(first, timeout=PATIENCE) == "first"
    assert i.result(second, timeout=PATIENCE) == "second"


def test_a_limited_run_waiting_unowned_is_run_by_a_worker_that_starts_it(
        interp: Make, store: Store) -> None:
    # A limited run waits unowned for a slot: a client's start, or this worker's own whose
    # create was reported failed though it committed (then the retried create finds the id
    # taken). start() of it here, before any recover(), claims it when a slot is free.
    Client(store).start("short", 7, run_id="L")
    i = interp([short], limits={"short": 1})
    assert i.start(short, 7, run_id="L") == "L"
    assert i.result("L", timeout=PATIENCE) == "short 7"


def test_limits_are_checked_when_the_interpreter_is_built(interp: Make) -> None:
    for bad in ({"short": 0}, {"short": 1.5}, {"short": True}, ["short"]):
        with pytest.raises(UsageError, match="limit"):
            interp([short], limits=bad)
    with pytest.raises(UsageError, match="limit"):
        workflow(limit=0)
    with pytest.raises(UsageError, match="'shrot', which this Interpreter does not serve"):
        interp([short], limits={"shrot": 2})


def test_a_run_woken_by_a_signal_takes_a_slot_before_its_next_step(
        interp: Make, gate: Any, eventually: Any, reach: Any) -> None:
    # The signal's journal entry is written as the run goes back to work: that write must
    # be an admitting one, or the step after the Wait runs without a slot.
    inside: set[str] = set()
    most, lock, opened = [0], threading.Lock(), gate()

    def busy(tag: str) -> str:
        with lock:
            inside.add(tag)
            most[0] = max(most[0], len(inside))
        opened.wait(PATIENCE)
        with lock:
            inside.discard(tag)
        return tag

    def woken(tag: str) -> Any:
        got = yield Wait("go")
        return [got, (yield Do("work", busy, tag))]

    i = interp({"woken": woken}, limits={"woken": 1}, concurrency=16)
    first, second = i.start(woken, "a"), i.start(woken, "b")
    reach(i, first, "waiting")
    reach(i, second, "waiting")
    i.deliver(first, "go", 1)
    eventually(lambda: inside == {"a"}, "the first run inside its step")
    i.deliver(second, "go", 2)
    eventually(lambda: "b" in inside or i.status(second).state == "pending",
               "the second run to enter its step or wait for the slot")
    assert inside == {"a"}  # the slot is the first run's
    opened.set()
    assert i.result(first, timeout=PATIENCE) == [1, "a"]
    assert i.result(second, timeout=PATIENCE) == [2, "b"]
    assert most[0] == 1


def test_a_slot_a_finished_run_frees_is_taken_at_once(interp: Make) -> None:
    # No store event tells of a slot freed by a run's end: the worker where it ended claims
    # the next run at once, not at its next sweep (up to a second, run after run).
    i = interp([short], limits={"short": 1})
    runs = [i.start(short, n) for n in range(20)]
    end = time.monotonic() + PATIENCE  # a second per run would be four times as long
    for n, rid in enumerate(runs):
        assert i.result(rid, timeout=max(0.0, end - time.monotonic())) == f"short {n}"
