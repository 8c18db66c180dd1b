"""SQLiteStore: the embedded default. Standard library only, durable on power loss by default,
safe for several processes on one machine sharing one database file.

Every state change is one ``BEGIN IMMEDIATE`` transaction. The database runs in
WAL mode; ``synchronous="FULL"`` (the default) fsyncs each commit, so a
committed step survives power loss. ``synchronous="NORMAL"`` is several times
faster and still survives any process crash, but a power loss or OS crash may
lose the last commits (steps whose entries were lost run again on recovery).

Contention between processes is absorbed here (busy timeout plus retries);
what cannot be absorbed (disk full, I/O error, a lock held for too long)
surfaces as ``StoreUnavailable``, which the interpreter waits out.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from replaygen.errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable
from replaygen.store import ACTIVE, FINISHED, Claim, Entry, RunRecord, Signal, Write

T = TypeVar("T")
SCHEMA_VERSION = 1
_RUN_COLUMNS = ("run_id, workflow, args, state, owner, fence, created, updated, result, error, "
                "wake_at, waiting_for, cancel_requested, resumes")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT, fence INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    result TEXT, error TEXT, wake_at REAL, waiting_for TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_seen INTEGER NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, created);
CREATE TABLE IF NOT EXISTS journal (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, slot INTEGER NOT NULL, kind TEXT NOT NULL,
    name TEXT NOT NULL, status TEXT NOT NULL, value TEXT, started REAL NOT NULL,
    ended REAL NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, name TEXT NOT NULL,
    payload TEXT NOT NULL, sent REAL NOT NULL);
CREATE INDEX IF NOT EXISTS signals_run ON signals (run_id, id);
CREATE TABLE IF NOT EXISTS workers (owner TEXT PRIMARY KEY, lease_until REAL NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('epoch', 0);
"""
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'epoch'"
_IN = "(SELECT value FROM json_each(?))"  # a list parameter without a variable-count limit
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # a journal row, then the owner and fence it needs
_APPEND = ("INSERT INTO journal SELECT column1, column2, column3, column4, column5, column6, "
           "column7, column8, column9 FROM (VALUES {}) WHERE EXISTS (SELECT 1 FROM runs "
           "WHERE run_id = column1 AND owner = column10 AND fence = column11)")


class _Refused(Exception):
    """A write of a batch was refused: roll the batch back and apply it write by write."""


def _record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(*row[:12], cancel_requested=bool(row[12]), resumes=row[13])  # type: ignore[misc]


class SQLiteStore:
    """A durable store in one SQLite file; see the module docstring for the guarantees.

    ``synchronous`` is ``"FULL"`` (durable on power loss, the default) or ``"NORMAL"``
    (survives process crashes; power loss may drop the last commits). ``busy_timeout``
    is how long (seconds) a write waits for another process's transaction before
    the store reports itself unavailable.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 30.0) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ReplaygenError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = os.fspath(path)
        self._synchronous, self._busy = synchronous, busy_timeout
        if self.path != ":memory:" and not os.path.exists(self.path):
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # owner-only from birth
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._local = threading.local()
        self._w = self._connect()
        self._r = self._connect()
        self._tx(self._migrate)

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self._synchronous!r})"

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=min(self._busy, 5.0))
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            return conn
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc

    def _migrate(self, c: sqlite3.Connection) -> None:
        has_meta = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        found = c.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if has_meta else None
        if found is not None and found[0] > SCHEMA_VERSION:
            raise ReplaygenError(
                f"{self.path!r} was written by a newer replaygen (schema {found[0]}; this version "
                f"reads schema {SCHEMA_VERSION}): upgrade replaygen to open it")
        if found is None and c.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            raise ReplaygenError(f"{self.path!r} holds a table 'runs' that replaygen did not create; "
                                 f"use another file")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
        c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    # ---- plumbing ---------------------------------------------------------------

    def _fail(self, exc: sqlite3.Error) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite store {self.path!r}: {exc}")

    def _tx(self, fn: Callable[[sqlite3.Connection], T], begin: bool = True) -> T:
        """Run ``fn`` in one write transaction, retrying while another process holds the lock.
        With ``begin=False``, ``fn`` is a single statement, a transaction of its own."""
        give_up = time.monotonic() + self._busy
        delay = 0.001
        with self._wlock:
            c = self._w
            while True:
                try:
                    if not begin:
                        return fn(c)
                    c.execute("BEGIN IMMEDIATE")
                    try:
                        out = fn(c)
                        c.execute("COMMIT")
                        return out
                    except BaseException:
                        if c.in_transaction:
                            c.execute("ROLLBACK")
                        raise
                except sqlite3.OperationalError as exc:
                    if "locked" in str(exc) or "busy" in str(exc):
                        if time.monotonic() < give_up:
                            time.sleep(delay)
                            delay = min(delay * 2, 0.1)
                            continue
                    raise self._fail(exc) from exc
                except (sqlite3.DatabaseError, sqlite3.InterfaceError) as exc:
                    if isinstance(exc, sqlite3.IntegrityError):
                        raise
                    raise self._fail(exc) from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._rlock:
            try:
                return self._r.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._fail(exc) from exc

    # ---- the Store protocol -----------------------------------------------------------

    def create(self, run_id: str, workflow: str, args: str, owner: str) -> RunRecord | None:
        if self.commit([Write(run_id, owner, 1, "pending", create=(workflow, args))])[0]:
            return None
        return self.get(run_id)  # runs are never deleted, so it is there

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def journal(self, run_id: str) -> list[Entry]:
        return [Entry(*row) for row in self._read(
            "SELECT seq, slot, kind, name, status, value, started, ended FROM journal "
            "WHERE run_id = ? ORDER BY seq", (run_id,))]

    def signals(self, run_id: str) -> list[Signal]:
        return [Signal(*row) for row in self._read(
            "SELECT id, name, payload, sent FROM signals WHERE run_id = ? ORDER BY id", (run_id,))]

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        # Each statement releases the GIL and must win it back from the engine's busy threads,
        # so a batch is a handful of statements whatever its size: new runs in one INSERT, every
        # journal row (each fenced by its run's owner and fence) in one INSERT, the rest per run.
        # A batch in which any write is refused is rolled back and applied write by write.
        if len(writes) == 1 and writes[0].keep:  # a lone step: one statement, no BEGIN/COMMIT
            w = writes[0]
            return [self._tx(lambda c: self._append(c, [w]) == len(w.entries), begin=False)]
        try:
            return self._tx(lambda c: self._commit_all(c, writes))
        except _Refused:
            return self._tx(lambda c: [self._commit_one(c, w) for w in writes])

    @staticmethod
    def _append(c: sqlite3.Connection, writes: Sequence[Write]) -> int:
        """Insert the writes' journal rows where the run's owner and fence match; the row count."""
        rows = [(w.run_id, *e, w.owner, w.fence) for w in writes for e in w.entries]
        done = 0
        for at in range(0, len(rows), 80):  # 880 variables: under any SQLite's limit
            part = rows[at:at + 80]
            done += c.execute(_APPEND.format(", ".join([_ROW] * len(part))),
                              [x for r in part for x in r]).rowcount
        return done

    def _commit_all(self, c: sqlite3.Connection, writes: Sequence[Write]) -> list[bool]:
        now = time.time()
        new = [(w.run_id, *w.create, w.state, w.owner, w.fence, now, now) for w in writes if w.create]
        for at in range(0, len(new), 100):
            part = new[at:at + 100]
            if c.execute("INSERT INTO runs (run_id, workflow, args, state, owner, fence, created, "
                         "updated) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(part)) +
                         " ON CONFLICT (run_id) DO NOTHING",
                         [x for r in part for x in r]).rowcount != len(part):
                raise _Refused
        # Journal rows before the run rows: a release below clears the owner they are fenced by.
        old = [w for w in writes if not w.create]
        if self._append(c, old) != sum(len(w.entries) for w in old):
            raise _Refused
        for w in old:
            if not w.keep and not self._update(c, w, now):
                raise _Refused
        if any(w.release and w.state in ACTIVE for w in old):  # claimable: tell the watchers
            c.execute(_BUMP)
        return [True] * len(writes)

    def _update(self, c: sqlite3.Connection, w: Write, now: float) -> bool:
        """The fenced update of the run row (and the signal it consumes); False if refused."""
        # Name only the columns that change: touching an indexed column (owner)
        # costs an index write on every step.
        sets = "state = ?, updated = ?, wake_at = ?, waiting_for = ?, result = ?, error = ?"
        if w.entries:
            sets += ", resumes = 0"
        if w.cancel_seen:
            sets += ", cancel_seen = 1"
        if w.release:
            sets += ", owner = NULL"
        if c.execute(f"UPDATE runs SET {sets} WHERE run_id = ? AND owner = ? AND fence = ?",
                     (w.state, now, w.wake_at, w.waiting_for, w.result, w.error, w.run_id, w.owner,
                      w.fence)).rowcount != 1:
            return False
        if w.consume is not None and c.execute(
            "DELETE FROM signals WHERE id = ? AND run_id = ?", (w.consume, w.run_id)
        ).rowcount != 1:
            raise sqlite3.IntegrityError(f"run {w.run_id!r}: signal {w.consume} is not queued")
        return True

    def _commit_one(self, c: sqlite3.Connection, w: Write) -> bool:
        # A lone write is refused before it writes anything (its rows and its run row are
        # fenced by the same owner and fence), so others in the transaction are untouched.
        try:
            return self._commit_all(c, [w])[0]
        except _Refused:
            return False

    def claim(
        self, owner: str, *, dead: Collection[str] = (), workflows: Collection[str] | None = None,
        blocked: bool = False, run_ids: Collection[str] | None = None, limit: int = 1000,
    ) -> list[Claim]:
        states = [*ACTIVE, "blocked"] if blocked else list(ACTIVE)
        sql = (f"SELECT run_id FROM runs WHERE state IN {_IN} AND (owner IS NULL OR (owner != ? "
               f"AND (owner IN {_IN} OR owner NOT IN (SELECT owner FROM workers "
               f"WHERE lease_until >= ?))))")
        params: list[Any] = [json.dumps(states), owner, json.dumps(list(dead)), time.time()]
        for column, values in (("workflow", workflows), ("run_id", run_ids)):
            if values is not None:
                sql += f" AND {column} IN {_IN}"
                params.append(json.dumps(list(values)))
        params.append(limit)

        def tx(c: sqlite3.Connection) -> list[Claim]:
            ids = json.dumps([r[0] for r in c.execute(sql + " ORDER BY created LIMIT ?", params)])
            c.execute(
                f"UPDATE runs SET owner = ?, fence = fence + 1, resumes = CASE WHEN state = 'blocked' "
                f"THEN 0 ELSE resumes + (owner IS NOT NULL AND state IN ('pending', 'running')) END "
                f"WHERE run_id IN {_IN}",
                (owner, ids))
            journals: dict[str, list[Entry]] = {}
            for row in c.execute(
                f"SELECT run_id, seq, slot, kind, name, status, value, started, ended FROM journal "
                f"WHERE run_id IN {_IN} ORDER BY run_id, seq", (ids,)
            ):
                journals.setdefault(row[0], []).append(Entry(*row[1:]))
            return [Claim(r, journals.get(r.run_id, [])) for r in map(_record, c.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id IN {_IN} ORDER BY created", (ids,)))]
        return self._tx(tx)

    def owners(self) -> list[str]:
        return [r[0] for r in self._read(
            f"SELECT DISTINCT owner FROM runs WHERE owner IS NOT NULL AND state NOT IN {_IN}",
            (json.dumps(FINISHED),))]

    def heartbeat(self, owner: str, lease: float) -> None:
        def tx(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
                      "SET lease_until = excluded.lease_until", (owner, now + lease))
            c.execute("DELETE FROM workers WHERE lease_until < ?", (now - 86400,))
        self._tx(tx)

    def release(self, owner: str) -> None:
        def tx(c: sqlite3.Connection) -> None:
            c.execute("UPDATE runs SET owner = NULL WHERE owner = ?", (owner,))
            c.execute("DELETE FROM workers WHERE owner = ?", (owner,))
            c.execute(_BUMP)
        self._tx(tx)

    def _state(self, c: sqlite3.Connection, run_id: str, doing: str) -> RunRecord:
        row = c.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"cannot {doing}: no run {run_id!r} in {self.path!r}")
        return _record(row)

    def deliver(self, run_id: str, name: str, payload: str) -> None:
        def tx(c: sqlite3.Connection) -> None:
            run = self._state(c, run_id, f"deliver {name!r}")
            if run.state in FINISHED:
                raise RunFinished(f"cannot deliver {name!r}: run {run_id!r} is already {run.state}")
            c.execute("INSERT INTO signals (run_id, name, payload, sent) VALUES (?, ?, ?, ?)",
                      (run_id, name, payload, time.time()))
            c.execute(_BUMP)
        self._tx(tx)

    def cancel(self, run_id: str) -> RunRecord:
        def tx(c: sqlite3.Connection) -> RunRecord:
            run = self._state(c, run_id, "cancel")
            if run.state in FINISHED or run.cancel_requested:
                return run
            c.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
            c.execute(_BUMP)
            return self._state(c, run_id, "cancel")
        return self._tx(tx)

    def wakeups(self, owner: str) -> list[tuple[str, bool]]:
        return [(r[0], bool(r[1])) for r in self._read(
            "SELECT run_id, cancel_requested AND NOT cancel_seen FROM runs r WHERE owner = ? AND "
            "((cancel_requested AND NOT cancel_seen) OR EXISTS "
            "(SELECT 1 FROM signals s WHERE s.run_id = r.run_id))", (owner,))]

    def watch(self, token: object, timeout: float) -> object:
        # Another connection's commit changes PRAGMA data_version, a cheap check against
        # shared memory; only then is the epoch (bumped by signals, cancels, releases) read.
        conn = getattr(self._local, "watch", None)
        if conn is None:
            conn = self._local.watch = self._connect()
        end, seen = time.monotonic() + timeout, None
        try:
            while True:
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
                    if epoch != token:
                        return epoch
                if time.monotonic() >= end:
                    return token
                time.sleep(0.01)
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def runs(
        self, *, states: Collection[str] | None = None, workflow: str | None = None,
        limit: int = 100, offset: int = 0,
    ) -> list[RunRecord]:
        sql, params = f"SELECT {_RUN_COLUMNS} FROM runs WHERE 1", []
        if states is not None:
            sql += f" AND state IN {_IN}"
            params.append(json.dumps(list(states)))
        if workflow is not None:
            sql += " AND workflow = ?"
            params.append(workflow)
        return [_record(r) for r in self._read(
            sql + " ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset])]

    def close(self) -> None:
        for conn in (self._w, self._r, getattr(self._local, "watch", None)):
            if conn is not None:
                conn.close()
