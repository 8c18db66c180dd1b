"""Which store each ``replaygen`` command opens, and how.

Only the worker makes a store. Every other command needs one that exists: a missing file,
an empty file, a SQLite database of another program, a missing Postgres schema and one
without replaygen's tables are refused in one line, and left exactly as they were. The
commands that only read open the store read-only, so they change no byte of it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from replaygen.stores.sqlite import SQLiteStore

from .pg import postgres_dsn
# The fixtures home, db and runs come from test_cli; ruff takes their parameters for redefinitions.
# ruff: noqa: F811
from .test_cli import cli, db, fails_in_one_line, home, runs  # noqa: F401

READING = [("runs",), ("runs", "--json"), ("show", "wait-1"), ("show", "wait-1", "--full"),
           ("versions",), ("export", "wait-1"), ("check", "app"),
           ("purge", "--older-than", "0s", "--dry-run")]
WRITING = [("signal", "wait-1", "go"), ("cancel", "wait-1"), ("terminate", "wait-1"),
           ("start", "flow", "[1]"), ("resume", "wait-1", "--app", "app"),
           ("purge", "--older-than", "1d"), ("fork", "done-1", "0")]


def fingerprint(path: Path) -> tuple[str, int, list[str]]:
    """The file's bytes (as a hash), its mtime, and the files beside it."""
    return (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns,
            sorted(p.name for p in path.parent.iterdir()))


def another_programs_database(path: Path) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.close()
    return path


@pytest.mark.parametrize("args", READING + WRITING, ids=" ".join)
@pytest.mark.parametrize("kind", ["another program's database", "an empty file"])
def test_a_file_that_holds_no_store_is_refused_and_left_as_it_was(
        home: Path, args: tuple[str, ...], kind: str) -> None:
    path = home / "other.db"
    if kind == "an empty file":
        path.touch()
    else:
        another_programs_database(path)
    before = fingerprint(path)
    fails_in_one_line(cli(*args, cwd=home, store=str(path)), "holds no replaygen store",
                      "other.db")
    assert fingerprint(path) == before


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_reading_commands_change_no_byte_of_a_store(home: Path, runs: Any, db: SQLiteStore,
                                                    args: tuple[str, ...]) -> None:
    db.close()
    with sqlite3.connect(home / "runs.db") as raw:  # everything into the main file
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    before = fingerprint(home / "runs.db")
    done = cli(*args, cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert fingerprint(home / "runs.db") == before


@pytest.mark.postgres
@pytest.mark.parametrize("args", [("runs",), ("show", "x"), ("cancel", "x"), ("start", "flow")],
                         ids=" ".join)
def test_a_postgres_schema_without_a_store_is_refused_and_left_empty(
        home: Path, args: tuple[str, ...]) -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn, schema = postgres_dsn(), f"rgcli_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        fails_in_one_line(cli(*args, "--schema", schema, cwd=home, store=dsn),
                          f"schema '{schema}' holds no replaygen store")
        with psycopg.connect(dsn, autocommit=True) as conn:
            tables = conn.execute("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = %s", [schema]).fetchall()
        assert tables == []
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
