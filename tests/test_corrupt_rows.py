"""A row damaged behind a store's back stops its own run only, on SQLite and PostgreSQL
(issue 15). The damage is real: written by raw SQL, as another program would, in the ways
that TEXT-typed conformance tests cannot reach (bytes that are not UTF-8, blobs, values
of the wrong storage class). Each test checks that a neighbour run still completes
through an Interpreter and that the damaged run is blocked with a message naming it."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Do, Interpreter, ReplaygenError, StoreUnavailable, Wait
from replaygen.store import Store
from replaygen.stores.sqlite import SQLiteStore
from replaygen.stores.conformance import create  # noqa: E402

from .pg import postgres_dsn

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
    ("value", BAD_TEXT), ("value", BLOB), ("value", "NULL"), ("name", BAD_TEXT),
    ("kind", BAD_TEXT), ("status", BLOB), ("slot", "'one'"), ("slot", "1.5"),
])
def test_a_journal_cell_of_the_wrong_kind_blocks_its_run_only(db: Path, column: str, value: str) -> None:
    park(SQLiteStore(db), "bad", "good")
    damage(db, f"UPDATE journal SET {column} = {value} WHERE run_id = 'bad' AND seq = 1")
    store = SQLiteStore(db)
    assert len(store.journal("bad")) == 4  # reading it does not fail (3 steps and the Wait)
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
    assert "'bad'" in error and "journal row 4" in error  # after 3 steps and the Wait's
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
    create(SQLiteStore(db), "r", "wf", "{}", "A")
    damage(db, f"UPDATE meta SET value = {value} WHERE key = 'schema'")
    with pytest.raises(ReplaygenError, match="schema version .* damaged"):
        SQLiteStore(db)


# ---- PostgreSQL in a SQL_ASCII database ---------------------------------------------
# A UTF8 database refuses bytes that are not UTF-8, and every column is typed, so there
# damage is a matter of content (the conformance suite's tamper tests). A SQL_ASCII
# database (what initdb makes under the C locale) stores any bytes and validates nothing.


@pytest.fixture(scope="module")
def ascii_dsn() -> Iterator[str]:
    import psycopg

    dsn = postgres_dsn()
    name = "rg_ascii_" + uuid.uuid4().hex[:10]
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                      f"TEMPLATE template0")
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test role may not create a SQL_ASCII database")
    url = psycopg.conninfo.make_conninfo(dsn, dbname=name)
    yield url
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def ascii_store(ascii_dsn: str) -> Iterator[Callable[[], Store]]:
    from replaygen.stores.postgres import PostgresStore

    schema = "t_" + uuid.uuid4().hex[:10]
    made: list[Store] = []

    def make() -> Store:
        made.append(PostgresStore(ascii_dsn, schema=schema))
        return made[-1]

    yield make
    for store in made:
        store.close()
    PostgresStore.drop_schema(ascii_dsn, schema)


def pg_damage(dsn: str, store: Store, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(f"SET search_path TO {store.schema}")  # type: ignore[attr-defined]
        assert c.execute(sql).rowcount in (1, -1)  # one row changed, or a DDL statement


@pytest.mark.postgres
def test_a_sql_ascii_database_returns_text_not_bytes(ascii_store: Callable[[], Store]) -> None:
    store = ascii_store()
    name = "ünïcödé ✓ 漢字 🚀"
    assert create(store, name, name, '{"é":1}', "A") is None
    record = store.get(name)
    assert record is not None and (record.run_id, record.workflow, record.args) == (name, name, '{"é":1}')
    assert [r.run_id for r in store.runs(workflow=name)] == [name]


@pytest.mark.postgres
@pytest.mark.parametrize("table, column", [("journal", "value"), ("journal", "name"), ("runs", "args")])
def test_bytes_that_are_not_utf8_block_their_run_only_in_a_sql_ascii_database(
        ascii_dsn: str, ascii_store: Callable[[], Store], table: str, column: str) -> None:
    park(ascii_store(), "bad", "good")
    seq = " AND seq = 1" if table == "journal" else ""
    pg_damage(ascii_dsn, ascii_store(), f"UPDATE {table} SET {column} = E'\\xff' "
                                        f"WHERE run_id = 'bad'{seq}")
    interp = Interpreter(ascii_store(), WORKFLOWS)
    assert "good" in interp.recover()
    good_completes(interp)
    error = blocked_error(interp, "bad")
    assert "'bad'" in error and ("journal row 1" if table == "journal" else "column args") in error
    interp.shutdown()


@pytest.mark.postgres
def test_a_run_id_that_is_not_utf8_is_blocked_in_a_sql_ascii_database(
        ascii_dsn: str, ascii_store: Callable[[], Store]) -> None:
    park(ascii_store(), "bad", "good")
    pg_damage(ascii_dsn, ascii_store(), "ALTER TABLE journal DROP CONSTRAINT journal_run_id_fkey")
    pg_damage(ascii_dsn, ascii_store(), "UPDATE runs SET run_id = E'\\xff' WHERE run_id = 'bad'")
    interp = Interpreter(ascii_store(), WORKFLOWS)
    assert interp.recover() == ["good"]
    good_completes(interp)
    [damaged] = [r for r in interp._store.runs() if r.run_id != "good"]  # noqa: SLF001
    assert (damaged.run_id, damaged.state) == (b"\xff", "blocked")
    assert "column run_id" in (damaged.error or "")
    interp.shutdown()


@pytest.mark.postgres
def test_a_client_encoding_in_the_dsn_changes_nothing_stored() -> None:
    import psycopg

    from replaygen.stores.postgres import PostgresStore

    dsn = psycopg.conninfo.make_conninfo(postgres_dsn(), client_encoding="LATIN1")
    schema = "t_" + uuid.uuid4().hex[:10]
    store = PostgresStore(dsn, schema=schema)
    try:
        name = "ünïcödé ✓ 漢字 🚀"  # most of it has no LATIN1 form
        assert create(store, name, "wf", '{"k":"漢字"}', "A") is None
        record = store.get(name)
        assert record is not None and (record.run_id, record.args) == (name, '{"k":"漢字"}')
    finally:
        store.close()
        PostgresStore.drop_schema(dsn, schema)
