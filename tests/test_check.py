"""Deploy without fear: check stored runs against new code, runs as fixtures,
always-replay, the Version census. On SQLite and Postgres, with real stores."""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Do, Interpreter, NonDeterminismError, Store, Version, Wait
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import census, check, export_run, load_run, replay_run

from .conftest import PATIENCE
from .pg import postgres_dsn


def fee(order: int) -> int:
    return order * 2


def ship(order: int) -> str:
    return f"shipped {order}"


def v1(order: int) -> Any:
    charged = yield Do("charge", fee, order)
    yield Wait("approved")
    return (yield Do("ship", ship, charged))


def v2_incompatible(order: int) -> Any:  # a step inserted before the Wait: old runs diverge
    yield Do("audit", fee, order)
    charged = yield Do("charge", fee, order)
    yield Wait("approved")
    return (yield Do("ship", ship, charged))


def v2_versioned(order: int) -> Any:  # the same change behind a Version: old runs replay
    if (yield Version("audit", 1, 2)) == 2:
        yield Do("audit", fee, order)
    charged = yield Do("charge", fee, order)
    yield Wait("approved")
    return (yield Do("ship", ship, charged))


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: Any, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    if request.param == "sqlite":
        yield lambda: SQLiteStore(tmp_path / "runs.db")
        return
    dsn = postgres_dsn()
    from replaygen.stores.postgres import PostgresStore

    schema = "check_" + uuid.uuid4().hex[:10]
    yield lambda: PostgresStore(dsn, schema=schema)
    PostgresStore.drop_schema(dsn, schema)


def _waiting_runs(store: Store, n: int) -> list[str]:
    interp = Interpreter(store, {"order": v1})
    runs = [interp.start("order", i) for i in range(n)]
    for run in runs:
        _until(lambda r=run: interp.status(r).state == "waiting")  # type: ignore[misc]
    interp.shutdown()
    return runs


def _until(predicate: Callable[[], bool]) -> None:
    import time
    end = time.monotonic() + PATIENCE
    while not predicate():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.005)


def _snapshot(store: Store, path: Path | None) -> Any:
    """Every byte of a SQLite file (and its WAL), or every row of every run of a store."""
    if path is not None:
        # The -shm file is SQLite's shared-memory index of the WAL, rewritten by every reader.
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in (
            path, path.with_name(path.name + "-wal")) if p.exists()]
    runs = store.runs(limit=10_000)
    return [(r, store.journal(r.run_id), store.signals(r.run_id)) for r in runs]


def test_check_finds_exactly_the_runs_new_code_would_block(
        make_store: Callable[[], Store], tmp_path: Path) -> None:
    store = make_store()
    runs = _waiting_runs(store, 3)
    db = tmp_path / "runs.db" if isinstance(store, SQLiteStore) else None
    before = _snapshot(store, db)

    same = check(store, {"order": v1})
    assert [(c.run_id, c.ok) for c in sorted(same, key=lambda c: c.run_id)] == sorted(
        (r, True) for r in runs)

    broken = check(store, {"order": v2_incompatible})
    assert sorted(c.run_id for c in broken if not c.ok) == sorted(runs)
    for c in broken:
        assert c.position == 0
        assert "do 'charge'" in c.message and "Do('audit')" in c.message

    versioned = check(store, {"order": v2_versioned})
    assert all(c.ok for c in versioned) and len(versioned) == 3
    assert {c.versions for c in versioned} == {(("audit", 1),)}  # old runs take branch 1

    assert check(store, {"other": v1}) == []  # runs of workflows not in the code: not checked
    assert _snapshot(store, db) == before  # nothing written, no lease taken
    assert all(store.get(r).owner is None for r in runs)  # type: ignore[union-attr]


def test_check_does_not_disturb_a_worker_running_at_the_same_time(
        make_store: Callable[[], Store]) -> None:
    store = make_store()
    worker = Interpreter(store, {"order": v1})
    runs = [worker.start("order", i) for i in range(5)]
    checked = check(make_store(), {"order": v2_incompatible})
    for run in runs:
        worker.deliver(run, "approved")
    assert [worker.result(r, timeout=PATIENCE) for r in runs] == [
        f"shipped {2 * i}" for i in range(5)]
    assert all(c.run_id in runs for c in checked)
    worker.shutdown()


def test_an_exported_run_replays_with_no_store_and_gives_the_stored_result(
        tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    interp = Interpreter(store, {"order": v1})
    run = interp.start("order", 21)
    _until(lambda: interp.status(run).state == "waiting")
    interp.deliver(run, "approved")
    assert interp.result(run, timeout=PATIENCE) == "shipped 42"
    interp.shutdown()
    fixture = tmp_path / "order.json"
    exported = export_run(store, run)
    fixture.write_text(json.dumps(exported))
    store.close()
    assert set(exported) == {"format", "run", "journal"}
    assert exported["run"]["workflow"] == "order"
    assert json.loads(exported["run"]["args"]) == {"args": [21], "kwargs": {}}  # no nonce
    assert [(e["kind"], e["name"]) for e in exported["journal"]] == [
        ("do", "charge"), ("timer", "approved"), ("wait", "approved"), ("do", "ship")]

    trace = replay_run(v1, fixture)
    assert (trace.done, trace.result, trace.error) == (True, "shipped 42", None)
    assert [type(c).__name__ for c in trace.commands] == ["Do", "Wait", "Do"]
    changed = replay_run(v2_incompatible, fixture)
    assert isinstance(changed.error, NonDeterminismError)
    assert check(load_run(fixture), {"order": v1}, states=["completed"])[0].ok


def test_always_replay_blocks_a_body_that_reads_the_clock_on_its_first_run(
        interp: Any, reach: Any) -> None:
    ticks = itertools.count()

    def now() -> int:  # stands for datetime.now(): another value each time the body runs
        return next(ticks)

    def wf() -> Any:
        if now() % 2 == 0:
            yield Do("morning", fee, 1)
        else:
            yield Do("evening", fee, 1)
        yield Do("done", fee, 2)

    i = interp([wf], always_replay=True)
    status = reach(i, i.start(wf), "blocked")
    assert "position 0" in status.error and "'morning'" in status.error
    assert "Do('evening')" in status.error


def test_always_replay_changes_nothing_for_a_deterministic_workflow(interp: Any) -> None:
    def wf(n: int) -> Any:
        a = yield Do("a", fee, n)
        b = yield Do("b", fee, a)
        return b

    assert interp([wf], always_replay=True).run(wf, 3) == 12


def test_the_census_counts_unfinished_runs_per_version_branch(
        make_store: Callable[[], Store]) -> None:
    store = make_store()
    old = _waiting_runs(store, 2)
    interp = Interpreter(store, {"order": v2_versioned})
    new = interp.start("order", 9)
    _until(lambda: interp.status(new).state == "waiting")
    interp.shutdown()
    assert census(store) == {"audit": {2: 1, None: 2}}
    assert census(store, "audit") == {"audit": {2: 1, None: 2}}
    assert len(old) == 2


def test_the_census_counts_only_runs_of_workflows_that_use_the_change(
        make_store: Callable[[], Store]) -> None:
    store = make_store()
    _waiting_runs(store, 1)  # order, from before the change: no marker yet
    interp = Interpreter(store, {"order": v2_versioned, "refund": v1})
    new = interp.start("order", 9)
    unrelated = interp.start("refund", 3)  # a workflow that never uses "audit"
    for run in (new, unrelated):
        _until(lambda r=run: interp.status(r).state == "waiting")  # type: ignore[misc]
    interp.shutdown()
    assert census(store) == {"audit": {2: 1, None: 1}}
    assert census(store, "audit") == {"audit": {2: 1, None: 1}}
    assert census(store, "no-such-change") == {}


def test_always_replay_blocks_a_step_named_after_the_real_clock(interp: Any, reach: Any) -> None:
    import datetime

    def wf() -> Any:
        stamp = datetime.datetime.now().isoformat()  # read in the body: differs on replay
        yield Do(f"report {stamp}", fee, 1)
        yield Do("done", fee, 2)

    i = interp([wf], always_replay=True)
    status = reach(i, i.start(wf), "blocked")
    assert "NonDeterminismError" in status.error and "position 0" in status.error
