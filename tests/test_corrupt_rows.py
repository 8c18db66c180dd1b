"""A row damaged behind a SQLite store's back stops its own run only (issue 15). The damage
is real: written by raw SQL, as another program would, in the ways that TEXT-typed
conformance tests cannot reach (bytes that are not UTF-8, blobs, values of the wrong
storage class). Each test checks that a neighbour run still completes through an
Interpreter and that the damaged run is blocked with a message naming it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from replaygen import Do, Interpreter, ReplaygenError, StoreUnavailable, Wait
from replaygen.store import Store
from replaygen.stores.sqlite import SQLiteStore

BAD_TEXT = "CAST(x'ff' AS TEXT)"  # a TEXT cell holding a byte that is not UTF-8
BLOB = "x'7b7d'"  # a blob ('{}' as bytes) where text belongs
PATIENCE = 10.0


def stepper(n: int) -> Any:
    total = 0
    for i in range(3):
        total += yield Do(f"s{i}", int, n + i)
    got = yield Wait("go")
    return total + got


def ends(n: int) -> Any:
    yield Do("s", int, n)
    if n < 0:
        raise ValueError("negative")
    return n


WORKFLOWS = {"stepper": stepper, "ends": ends}


def poll(interp: Interpreter, run_id: str, state: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while (now := interp.status(run_id).state) != state:
        assert time.monotonic() < deadline, f"run {run_id!r} stayed {now}, not {state}"
        time.sleep(0.01)


def park(store: Store, *run_ids: str) -> None:
    """Runs of ``stepper``, three steps in and parked at their Wait by a worker that stopped."""
    interp = Interpreter(store, WORKFLOWS)
    for run_id in run_ids:
        interp.start("stepper", 1, run_id=run_id)
    for run_id in run_ids:
        poll(interp, run_id, "waiting")
    interp.shutdown()


def good_completes(interp: Interpreter) -> None:
    interp.deliver("good", "go", 10)
    assert interp.result("good", timeout=PATIENCE) == 1 + 2 + 3 + 10


def blocked_error(interp: Interpreter, run_id: str) -> str:
    poll(interp, run_id, "blocked")
    return interp.status(run_id).error or ""


# ---- SQLite -----------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def damage(db: Path, sql: str) -> None:
    with sqlite3.connect(db) as c:
        assert c.execute(sql).rowcount == 1


@pytest.mark.parametrize("column, value", [
    ("value", BAD_TEXT), ("value", BLOB), ("name", BAD_TEXT), ("kind", BAD_TEXT),
    ("status", BLOB), ("slot", "'one'"), ("slot", "1.5"),
])
def test_a_journal_cell_of_the_wrong_kind_blocks_its_run_only(db: Path, column: str, value: str) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE journal SET {column} = {value} WHERE run_id = 'bad' AND seq = 1")
    store = SQLiteStore(db)
    assert len(store.journal("bad")) == 3  # reading it does not fail
    interp = Interpreter(store, WORKFLOWS)
    assert sorted(interp.recover()) == ["bad", "good"]
    good_completes(interp)
    error = blocked_error(interp, "bad")
    assert "'bad'" in error and "journal row 1" in error
    interp.shutdown()


@pytest.mark.parametrize("column, value", [
    ("args", BAD_TEXT), ("args", BLOB), ("waiting_for", BAD_TEXT), ("wake_at", "'soon'"),
    ("created", "'yesterday'"), ("cancel_requested", "'maybe'"),
])
def test_a_run_cell_of_the_wrong_kind_blocks_its_run_only(db: Path, column: str, value: str) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE runs SET {column} = {value} WHERE run_id = 'bad'")
    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert "good" in interp.recover()
    good_completes(interp)
    error = blocked_error(interp, "bad")
    assert "'bad'" in error and f"column {column}" in error and "rowid" in error
    interp.shutdown()


@pytest.mark.parametrize("value", [BAD_TEXT, BLOB, "NULL"])
def test_a_damaged_run_id_is_blocked_and_listed_and_stops_nothing_else(db: Path, value: str) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE runs SET run_id = {value} WHERE run_id = 'bad'")
    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert interp.recover() == ["good"]
    good_completes(interp)
    [damaged] = [r for r in interp._store.runs() if r.run_id != "good"]  # noqa: SLF001
    assert damaged.state == "blocked" and damaged.owner is None
    assert "rowid" in (damaged.error or "") and "column run_id" in (damaged.error or "")
    interp.shutdown()


def test_a_damaged_owner_stops_no_claim(db: Path) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE runs SET owner = {BAD_TEXT} WHERE run_id = 'bad'")
    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert sorted(interp.recover()) == ["bad", "good"]  # an owner no one can be has no lease
    good_completes(interp)
    interp.deliver("bad", "go", 1)
    assert interp.result("bad", timeout=PATIENCE) == 7
    interp.shutdown()


def test_a_damaged_workflow_name_is_no_workflow_a_worker_knows(db: Path) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE runs SET workflow = {BAD_TEXT} WHERE run_id = 'bad'")
    store = SQLiteStore(db)
    assert [c.run.run_id for c in store.claim("B", workflows=list(WORKFLOWS))] == ["good"]
    assert store.get("bad").state == "waiting"  # type: ignore[union-attr]  # untouched
    store.release("B")

    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert interp.recover() == ["good"]
    good_completes(interp)
    if interp.status("bad").state == "blocked":  # claimed with no workflow filter: named
        assert "column workflow" in (interp.status("bad").error or "")
    interp.shutdown()


def test_finished_runs_with_damaged_text_spoil_only_their_own_answers(db: Path) -> None:
    first = Interpreter(SQLiteStore(db), WORKFLOWS)
    for run_id, n in (("bad-result", 1), ("bad-error", -1), ("bad-args", 2)):
        first.start("ends", n, run_id=run_id)
        poll(first, run_id, "failed" if n < 0 else "completed")
    first.shutdown()
    for run_id, column in (("bad-result", "result"), ("bad-error", "error"), ("bad-args", "args")):
        damage(db, f"UPDATE runs SET {column} = {BAD_TEXT} WHERE run_id = '{run_id}'")

    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    interp.recover()
    assert interp.result(interp.start("ends", 5, run_id="new"), timeout=PATIENCE) == 5
    assert [interp.status(r).state for r in ("bad-result", "bad-error", "bad-args")] == [
        "completed", "failed", "completed"]
    assert "\\xff" in (interp.status("bad-error").error or "")
    with pytest.raises(ReplaygenError, match="'bad-result'") as caught:
        interp.result("bad-result", timeout=PATIENCE)
    assert not isinstance(caught.value, StoreUnavailable)
    assert interp.result("bad-args", timeout=PATIENCE) == 2
    assert len(interp._store.runs()) == 4  # noqa: SLF001
    interp.shutdown()


def test_a_damaged_signal_payload_blocks_its_run_only(db: Path) -> None:
    park(SQLiteStore(db), "bad", "good")
    SQLiteStore(db).deliver("bad", "go", "1")
    damage(db, f"UPDATE signals SET payload = {BAD_TEXT} WHERE run_id = 'bad'")
    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert sorted(interp.recover()) == ["bad", "good"]
    good_completes(interp)
    error = blocked_error(interp, "bad")
    assert "'bad'" in error and "journal row 3" in error
    interp.shutdown()


def test_a_damaged_signal_name_matches_no_wait_and_stops_nothing(db: Path) -> None:
    park(SQLiteStore(db), "bad", "good")
    SQLiteStore(db).deliver("bad", "go", "1")
    damage(db, f"UPDATE signals SET name = {BAD_TEXT} WHERE run_id = 'bad'")
    interp = Interpreter(SQLiteStore(db), WORKFLOWS)
    assert sorted(interp.recover()) == ["bad", "good"]
    good_completes(interp)
    assert [s.name for s in interp._store.signals("bad")] == [b"\xff"]  # noqa: SLF001
    interp.deliver("bad", "go", 1)
    assert interp.result("bad", timeout=PATIENCE) == 7
    interp.shutdown()


@pytest.mark.parametrize("value", ["'two'", BAD_TEXT, "0"])
def test_a_damaged_schema_version_is_refused_clearly(db: Path, value: str) -> None:
    SQLiteStore(db).create("r", "wf", "{}", "A")
    damage(db, f"UPDATE meta SET value = {value} WHERE key = 'schema'")
    with pytest.raises(ReplaygenError, match="schema version .* damaged"):
        SQLiteStore(db)
