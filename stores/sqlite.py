"""SQLiteStore: the embedded default. Standard library only, durable on power loss by default,
safe for several processes on one machine sharing one database file.

Every state change is one ``BEGIN IMMEDIATE`` transaction. The database runs in
WAL mode; ``synchronous="FULL"`` (the default) fsyncs each commit, so a
committed step survives power loss. ``synchronous="NORMAL"`` is several times
faster and still survives any process crash, but a power loss or OS crash may
lose the last commits (steps whose entries were lost run again on recovery).

Contention between processes is absorbed here (busy timeout plus retries, set-up
included); what cannot be absorbed (disk full, I/O error, a lock held for too long, a
file this process may not write) surfaces as ``StoreUnavailable``, which the
interpreter waits out.

The file is created on first use (starting a run, a claim: a write), never by the
constructor, so a process that fails to start leaves no file behind; an existing file
is opened and checked at once. A file this process may not write is opened read-only:
reads work, writes raise ``StoreUnavailable`` saying why. A row damaged by another
program (text that is not UTF-8, a value of the wrong type) stops its own run only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from replaygen.errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable
from replaygen.store import ACTIVE, FINISHED, Claim, Entry, RunRecord, Signal, Write

from ._rows import blocked_error, damage, workflow_names

T = TypeVar("T")
log = logging.getLogger("replaygen")
SCHEMA_VERSION = 1
"""The layout this code writes; a file recorded with a higher version is refused. A change an
older replaygen still works with (a table it never reads, as ``worker_workflows``: the
workflow names each worker advertises, as a JSON array) adds to schema 1 without a bump, so
old and new workers may share a file during an upgrade and a rollback stays possible. (A
column added to ``workers`` would not do: older code inserts its rows without naming columns.)"""
MODES = ("rwc", "rw", "ro")
"""How a ``SQLiteStore`` opens its file, named as SQLite's own URI modes: ``rwc`` reads and
writes, and makes the file and the store when missing (a worker); ``rw`` and ``ro`` need a
store that exists already, read-write or read-only, and change nothing of a file that holds
none (another program's database, an empty file)."""
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
CREATE TABLE IF NOT EXISTS worker_workflows (owner TEXT PRIMARY KEY, workflows TEXT NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('epoch', 0);
"""
_BUMP = "UPDATE meta SET value = value + 1 WHERE key = 'epoch'"
_ADVERTISE = ("INSERT INTO worker_workflows VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
              "SET workflows = excluded.workflows")
_IN = "(SELECT value FROM json_each(?))"  # a list parameter without a variable-count limit
# A batch of writes is one INSERT into this view: each row is one change ("op"), applied by
# the trigger for its op, so the whole batch is one statement, one transaction and one
# release of the GIL (each sqlite3 call releases it, and under load winning it back costs
# more than the statement). A refused row aborts the statement, undoing all of it. The rows
# of one INSERT ... VALUES are applied in order (a write's entries before the release that
# clears the owner they are fenced by); the conformance suite holds SQLite to that.
_BATCH_COLUMNS = ("op, run_id, owner, fence, state, seq, slot, kind, name, status, value, "
                  "started, ended, wake_at, waiting_for, result, error, flags, consume")
_ROW = "(" + ", ".join(["?"] * 19) + ")"
_ROWS = 50  # rows per statement: 950 variables, under any SQLite's limit of 999
_REFUSED = "replaygen: refused"
_FENCED = "WHERE run_id = NEW.run_id AND owner = NEW.owner AND fence = NEW.fence"
_REFUSE = f"SELECT RAISE(ABORT, '{_REFUSED}') WHERE changes() = 0"
_UPDATE = ("UPDATE runs SET state = NEW.state, updated = NEW.ended, wake_at = NEW.wake_at, "
           "waiting_for = NEW.waiting_for, result = NEW.result, error = NEW.error, "
           "resumes = CASE WHEN NEW.flags & 1 THEN 0 ELSE resumes END, "
           "cancel_seen = CASE WHEN NEW.flags & 2 THEN 1 ELSE cancel_seen END")
_BATCH = f"""
CREATE TEMP VIEW batch ({_BATCH_COLUMNS}) AS SELECT {", ".join(["NULL"] * 19)} WHERE 0;
CREATE TEMP TRIGGER batch_create INSTEAD OF INSERT ON batch WHEN NEW.op = 'create' BEGIN
    INSERT INTO runs (run_id, workflow, args, state, owner, fence, created, updated)
    VALUES (NEW.run_id, NEW.name, NEW.value, NEW.state, NEW.owner, NEW.fence, NEW.ended,
            NEW.ended) ON CONFLICT (run_id) DO NOTHING;
    {_REFUSE}; END;
CREATE TEMP TRIGGER batch_entry INSTEAD OF INSERT ON batch WHEN NEW.op = 'entry' BEGIN
    INSERT INTO journal SELECT NEW.run_id, NEW.seq, NEW.slot, NEW.kind, NEW.name, NEW.status,
        NEW.value, NEW.started, NEW.ended WHERE EXISTS (SELECT 1 FROM runs {_FENCED});
    {_REFUSE}; END;
CREATE TEMP TRIGGER batch_update INSTEAD OF INSERT ON batch WHEN NEW.op = 'update' BEGIN
    {_UPDATE} {_FENCED}; {_REFUSE}; END;
CREATE TEMP TRIGGER batch_release INSTEAD OF INSERT ON batch WHEN NEW.op = 'release' BEGIN
    {_UPDATE}, owner = NULL {_FENCED}; {_REFUSE}; END;
CREATE TEMP TRIGGER batch_consume INSTEAD OF INSERT ON batch WHEN NEW.op = 'consume' BEGIN
    DELETE FROM signals WHERE id = NEW.consume AND run_id = NEW.run_id;
    SELECT RAISE(ABORT, 'replaygen: signal not queued') WHERE changes() = 0; END;
CREATE TEMP TRIGGER batch_bump INSTEAD OF INSERT ON batch WHEN NEW.op = 'bump' BEGIN
    {_BUMP}; END;
"""


class _Refused(Exception):
    """A write of a batch was refused: roll the batch back and apply it write by write."""


_NO_RUN = (None,) * 18


def _rows(w: Write, now: float) -> list[tuple[Any, ...]]:
    """The rows of the batch view (columns ``_BATCH_COLUMNS``) that apply one write."""
    run: tuple[str, str | None, int] = (w.run_id, w.owner, w.fence)
    if w.create:  # released at once (a client's start): no owner, claimable by any worker
        run = (w.run_id, None if w.release else w.owner, w.fence)
        return [("create", *run, w.state, None, None, None, w.create[0], None, w.create[1], None,
                 now, None, None, None, None, 0, None)]
    rows: list[tuple[Any, ...]] = [("entry", *run, None, *e, None, None, None, None, 0, None)
                                   for e in w.entries]
    if not w.keep:  # the entries (fenced by the owner) go before a release clears it
        rows.append(("release" if w.release else "update", *run, w.state, *(None,) * 7, now,
                     w.wake_at, w.waiting_for, w.result, w.error,
                     bool(w.entries) | w.cancel_seen << 1, None))
        if w.consume is not None:
            rows.append(("consume", *run, *(None,) * 14, w.consume))
    return rows


def _bump(writes: Sequence[Write]) -> list[tuple[Any, ...]]:
    """The row that wakes every watcher, if a write leaves a run claimable by any worker."""
    return [("bump", *_NO_RUN)] if any(w.release and w.state in ACTIVE for w in writes) else []


def _record(row: Sequence[Any]) -> RunRecord:
    flag = bool(row[12]) if isinstance(row[12], int) else row[12]  # a damaged cell stays visible
    return RunRecord(*row[:12], cancel_requested=flag, resumes=row[13])  # type: ignore[misc]


_UNDECODABLE = "Could not decode to UTF-8"  # sqlite3's error for a TEXT cell that is not UTF-8


def _text(raw: bytes) -> str | bytes:
    """A TEXT cell as str, or its raw bytes when they are not UTF-8 (a damaged row): the check
    of whoever uses the value then stops that row's run alone."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _fetch(c: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    """Every row of a query; a cell that is not UTF-8 comes back as bytes instead of failing
    the whole query. sqlite3's own decoder is tried first: a text_factory costs ~50% per row."""
    try:
        return c.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if _UNDECODABLE not in str(exc):
            raise
    c.text_factory = _text
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.text_factory = str


def _names(text: str | bytes | None) -> list[str] | None:
    """Advertised workflow names from their JSON text; None if missing or damaged."""
    try:
        return None if text is None else workflow_names(json.loads(text))
    except ValueError:
        return None


def _busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _read_only(exc: sqlite3.Error) -> bool:
    """SQLite refused to write (a read-only file, directory or mount), or to create the -shm
    file that even reading a WAL database needs."""
    return "readonly" in str(exc) or "read-only" in str(exc)


def _owner(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"this process runs as uid {os.geteuid()}"
    return (f"mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}; this process runs as "
            f"uid {os.geteuid()}")


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _folder_problem(path: str) -> str | None:
    """Why no database file can be made at ``path`` at all, or None."""
    folder = _folder(path)
    if not os.path.exists(folder):
        return f"the directory {folder!r} does not exist: create it (or fix the path)"
    if not os.path.isdir(folder):
        return f"{folder!r} is not a directory: fix the path"
    return None


def _write_problem(path: str) -> str | None:
    """Why this process may not write the database at ``path``, or None. (Root may write
    anything: permissions do not stop it.)"""
    if not os.access(path, os.W_OK):
        return f"the file is not writable by this process ({_owner(path)})"
    folder = _folder(path)
    if not os.access(folder, os.W_OK | os.X_OK) and not all(
            os.access(path + suffix, os.W_OK) for suffix in ("-wal", "-shm")):
        return (f"its directory {folder!r} is not writable by this process ({_owner(folder)}), "
                f"and SQLite keeps its -wal and -shm files there")
    return None


def _open_problem(path: str) -> str | None:
    """Why this process cannot open the file at all, in words, or None."""
    if os.path.isdir(path):
        return "it is a directory, not a database file: give the path of a file"
    folder = _folder(path)
    if not os.access(folder, os.X_OK):
        return (f"permission denied: this process cannot enter the directory {folder!r} "
                f"({_owner(folder)}); fix its permissions (chmod, chown) or run as its owner")
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return (f"permission denied: this process cannot read the file ({_owner(path)}); fix "
                f"its permissions (chmod, chown) or run as its owner")
    return None


class SQLiteStore:
    """A durable store in one SQLite file; see the module docstring for the guarantees.

    ``synchronous`` is ``"FULL"`` (durable on power loss, the default) or ``"NORMAL"``
    (survives process crashes; power loss may drop the last commits). ``busy_timeout``
    is how long (seconds) a write waits for another process's transaction before
    the store reports itself unavailable. ``mode`` (see ``MODES``) is ``"rwc"`` (the
    default: the file and the store are made when missing), ``"rw"`` or ``"ro"`` (a store
    must exist already; ``"ro"`` also refuses every write, as a file this process may not
    write is).

    The file is made (owner-only) on the first write; an existing one is opened and its
    schema checked by the constructor. Raises ``StoreUnavailable`` for a path that cannot
    be used (no such directory, a directory, no permission) and ``ReplaygenError`` for a
    file written by a newer replaygen or by another program, and, with ``"rw"`` or ``"ro"``,
    for a missing file or one that holds no store.
    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "FULL",
                 busy_timeout: float = 30.0, mode: str = "rwc") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ReplaygenError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if mode not in MODES:
            raise ReplaygenError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
        self.path = os.fspath(path)
        self._synchronous, self._busy, self._mode = synchronous, busy_timeout, mode
        self._wlock, self._rlock = threading.Lock(), threading.Lock()
        self._open_lock = threading.Lock()  # guards opening: _w, _r, _uri, _readonly, _leases
        self._local = threading.local()
        self._w: sqlite3.Connection | None = None  # the writer; None while read-only
        self._r: sqlite3.Connection | None = None  # the reader; set once the file is open
        self._uri: str | None = None  # how to open a read-only file, when it is one
        self._readonly: str | None = None  # why this process cannot write, when it cannot
        # Heartbeats given before the file existed: (lease until, advertised names as JSON).
        self._leases: dict[str, tuple[float, str | None]] = {}
        if self.path == ":memory:" or os.path.exists(self.path) or mode != "rwc":
            self._open()  # an existing file is checked now, not at its first use
        elif (problem := _folder_problem(self.path)) is not None:
            raise StoreUnavailable(f"cannot use SQLite store {self.path!r}: {problem}")

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, synchronous={self._synchronous!r})"

    # ---- opening ------------------------------------------------------------------

    def _ready(self, create: bool) -> bool:
        """Open the file if that has not been done; False if it does not exist and ``create``
        is false (nothing was ever stored: a read answers empty, nothing is made)."""
        if self._r is not None:
            return True
        with self._open_lock:
            if self._r is None:
                if not create and not os.path.exists(self.path):
                    return False
                self._open()
            return True

    def _open(self) -> None:
        """Create the file if missing, then open it read-write, or read-only when this
        process may not write it (called once, under _open_lock or by the constructor)."""
        memory = self.path == ":memory:"
        if self._mode != "rwc" and memory:
            raise ReplaygenError(f"an in-memory SQLite database holds no store to open with "
                                 f"mode {self._mode!r}; use mode 'rwc'")
        if self._mode != "rwc" and not os.path.exists(self.path):
            raise ReplaygenError(f"no SQLite store at {os.path.abspath(self.path)!r}: the file "
                                 f"does not exist (a worker creates it)")
        if not memory and not os.path.exists(self.path):
            if (problem := _folder_problem(self.path)) is not None:
                raise StoreUnavailable(f"cannot create SQLite store {self.path!r}: {problem}")
            try:  # owner-only from birth; O_EXCL: another process may be making it right now
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                folder = _folder(self.path)
                raise StoreUnavailable(
                    f"cannot create SQLite store {self.path!r}: {exc.strerror} in the directory "
                    f"{folder!r} ({_owner(folder)}); let this user write there (chmod, chown), or "
                    f"choose another path") from None
        if (problem := None if memory else _open_problem(self.path)) is not None:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {problem}")
        why = "it was opened read-only (mode 'ro')" if self._mode == "ro" else \
            None if memory else _write_problem(self.path)
        try:
            if why is None:
                try:
                    self._open_writable()
                except sqlite3.OperationalError as exc:
                    if not _read_only(exc):
                        raise
                    why = f"SQLite cannot write it ({exc}; a read-only mount?)"
            if why is not None:
                self._open_read_only(why)
        except sqlite3.Error as exc:
            raise self._fail(exc, "cannot open") from None

    def _open_writable(self) -> None:
        w = self._connect()
        try:
            if self._mode == "rw" and self._retry(partial(self._check, w)) is None:
                raise self._no_store()  # looked before anything (WAL, the schema) is written
            # A new file's switch to WAL takes an exclusive lock without calling the busy
            # handler: another process opening the same new file must wait here too.
            self._retry(lambda: w.execute("PRAGMA journal_mode=WAL"))
            w.execute(f"PRAGMA synchronous={self._synchronous}")
            self._retry(lambda: w.executescript(_BATCH))
            self._w = w
            self._in_tx(self._migrate)
            self._r = self._connect()
        except BaseException:
            w.close()
            self._w = None
            raise

    def _open_read_only(self, why: str) -> None:
        uri = Path(os.path.abspath(self.path)).as_uri()
        # Even reading a WAL database needs its -shm file. With one there (a process has the
        # database open), it is shared read-only. With none, the file is opened immutable:
        # a -shm and -wal file made now would get this user as owner and the database's
        # read-only mode, and turn the next writer read-only too. An immutable view does not
        # see what processes that open the database afterwards write.
        shm = os.path.exists(self.path + "-shm")
        target = f"{uri}?mode=ro" if shm else f"{uri}?immutable=1"
        r = self._connect(target)
        try:
            if self._retry(partial(self._check, r)) is None:
                raise self._no_store() if self._mode != "rwc" else StoreUnavailable(
                    f"SQLite store {self.path!r} holds no replaygen store yet and this process "
                    f"cannot create one: {why}")
        except BaseException:
            r.close()
            raise
        self._r, self._uri, self._readonly = r, target, why
        if self._mode != "ro":  # asked for, it is no news
            log.info("SQLite store %r is open read-only: %s", self.path, why)

    def _no_store(self) -> ReplaygenError:
        what = "an empty file" if os.path.getsize(self.path) == 0 else "a database of another program"
        return ReplaygenError(f"{self.path!r} holds no replaygen store ({what}); it was left as "
                              f"it is: check the path (a worker creates a store)")

    def _connect(self, uri: str | None = None) -> sqlite3.Connection:
        return sqlite3.connect(uri or self.path, uri=uri is not None, isolation_level=None,
                               check_same_thread=False, timeout=min(self._busy, 5.0))

    def _check(self, c: sqlite3.Connection) -> int | None:
        """The schema version the file holds (None: no store yet); refuses a file this code
        must not touch."""
        has_meta = c.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        found = _fetch(c, "SELECT value FROM meta WHERE key = 'schema'") if has_meta else []
        if found and (type(found[0][0]) is not int or found[0][0] < 1):
            raise ReplaygenError(
                f"{self.path!r}: its meta table holds the schema version {found[0][0]!r}, which "
                f"no replaygen writes; the file is damaged (restore it from a backup)")
        if found and found[0][0] > SCHEMA_VERSION:
            raise ReplaygenError(
                f"{self.path!r} was written by a newer replaygen (schema {found[0][0]}; this "
                f"version reads schema {SCHEMA_VERSION}): upgrade replaygen to open it")
        if not found and c.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            raise ReplaygenError(f"{self.path!r} holds a table 'runs' that replaygen did not create; "
                                 f"use another file")
        return found[0][0] if found else None

    def _migrate(self, c: sqlite3.Connection) -> None:
        self._check(c)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
        c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        for owner, (until, names) in self._leases.items():  # given before the file existed
            c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
                      "SET lease_until = max(lease_until, excluded.lease_until)", (owner, until))
            if names is not None:
                c.execute(_ADVERTISE, (owner, names))
        self._leases.clear()

    # ---- plumbing ---------------------------------------------------------------

    def _fail(self, exc: sqlite3.Error, doing: str = "") -> StoreUnavailable:
        hint = None
        if "unable to open" in str(exc):
            hint = _open_problem(self.path)
        elif _read_only(exc):
            hint = self._readonly or _write_problem(self.path)
        text = f"{exc}: {hint}" if hint else str(exc)
        return StoreUnavailable(f"{doing + ' ' if doing else ''}SQLite store {self.path!r}: {text}")

    def _retry(self, fn: Callable[[], T]) -> T:
        """``fn()``, called again while another process holds the lock, up to the busy timeout."""
        give_up = time.monotonic() + self._busy
        delay = 0.001
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or time.monotonic() >= give_up:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _tx(self, fn: Callable[[sqlite3.Connection], T], begin: bool = True) -> T:
        """Run ``fn`` in one write transaction, creating the file first if need be."""
        if self._r is None:
            self._ready(create=True)
        if self._mode == "ro":
            raise ReplaygenError(f"SQLite store {self.path!r} was opened read-only (mode 'ro'), "
                                 f"so it cannot be changed: open it with mode 'rw' to write")
        if self._readonly is not None:
            raise StoreUnavailable(
                f"SQLite store {self.path!r} is open read-only, so it cannot be changed: "
                f"{self._readonly}. Let this user write the file and its directory (chmod, "
                f"chown), or run as their owner")
        try:
            return self._in_tx(fn, begin)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise self._fail(exc) from exc

    def _in_tx(self, fn: Callable[[sqlite3.Connection], T], begin: bool = True) -> T:
        """Run ``fn`` in one write transaction, retrying while another process holds the lock.
        With ``begin=False``, ``fn`` is a single statement, a transaction of its own."""
        c = self._w
        assert c is not None

        def attempt() -> T:
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

        with self._wlock:
            try:  # the common case at once; only a busy file goes through the retry loop
                return attempt()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
            return self._retry(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a query; nothing (and no file made) while the file does not exist."""
        if not self._ready(create=False):
            return []
        assert self._r is not None
        with self._rlock:
            try:
                return _fetch(self._r, sql, params)
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
        now = time.time()
        rows = [row for w in writes for row in _rows(w, now)]
        try:
            try:  # one statement, its own transaction, unless the batch needs several
                self._tx(lambda c: self._apply(c, rows + _bump(writes)), begin=len(rows) >= _ROWS)
                return [True] * len(writes)
            except _Refused:  # rolled back whole: apply the writes one by one
                return self._tx(lambda c: self._apply_each(c, writes, now))
        except sqlite3.IntegrityError as exc:
            if "signal not queued" not in str(exc):
                raise
            consumed = ", ".join(f"{w.consume} (run {w.run_id!r})" for w in writes if w.consume)
            raise sqlite3.IntegrityError(f"signal {consumed} is not queued") from None

    @staticmethod
    def _apply(c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        try:
            for at in range(0, len(rows), _ROWS):
                part = rows[at:at + _ROWS]
                c.execute(f"INSERT INTO batch ({_BATCH_COLUMNS}) VALUES " +
                          ", ".join([_ROW] * len(part)), [x for r in part for x in r])
        except sqlite3.IntegrityError as exc:
            if _REFUSED in str(exc):
                raise _Refused from None
            raise

    def _apply_each(self, c: sqlite3.Connection, writes: Sequence[Write], now: float) -> list[bool]:
        done = []
        for w in writes:
            c.execute("SAVEPOINT one")  # a refused write leaves no trace, even of many statements
            try:
                self._apply(c, _rows(w, now))
                done.append(True)
            except _Refused:
                c.execute("ROLLBACK TO one")
                done.append(False)
            finally:
                c.execute("RELEASE one")
        self._apply(c, _bump([w for w, ok in zip(writes, done, strict=True) if ok]))
        return done

    def claim(
        self, owner: str, *, dead: Collection[str] = (), workflows: Collection[str] | None = None,
        blocked: bool = False, run_ids: Collection[str] | None = None, limit: int = 1000,
    ) -> list[Claim]:
        states = [*ACTIVE, "blocked"] if blocked else list(ACTIVE)
        sql = (f"SELECT rowid FROM runs WHERE state IN {_IN} AND (owner IS NULL OR (owner != ? "
               f"AND (owner IN {_IN} OR owner NOT IN (SELECT owner FROM workers "
               f"WHERE lease_until >= ?))))")
        params: list[Any] = [json.dumps(states), owner, json.dumps(list(dead)), time.time()]
        for column, values in (("workflow", workflows), ("run_id", run_ids)):
            if values is not None:
                sql += f" AND {column} IN {_IN}"
                params.append(json.dumps(list(values)))
        params.append(limit)

        def tx(c: sqlite3.Connection) -> list[Claim]:
            # Runs are picked by rowid, not run_id: a damaged run_id must not stop the claim.
            ids = json.dumps([r[0] for r in c.execute(sql + " ORDER BY created LIMIT ?", params)])
            c.execute(
                f"UPDATE runs SET owner = ?, fence = fence + 1, resumes = CASE WHEN state = 'blocked' "
                f"THEN 0 ELSE resumes + (owner IS NOT NULL AND state IN ('pending', 'running')) END "
                f"WHERE rowid IN {_IN}",
                (owner, ids))
            runs: list[RunRecord] = []
            for rowid, *row in _fetch(c, f"SELECT rowid, {_RUN_COLUMNS} FROM runs "
                                         f"WHERE rowid IN {_IN} ORDER BY created", (ids,)):
                run = _record(row)
                problem = damage(run)
                if problem is None:
                    runs.append(run)
                    continue
                log.warning("run %r blocked: its row (rowid %d) is damaged: %s", run.run_id,
                            rowid, problem)
                c.execute("UPDATE runs SET state = 'blocked', owner = NULL, error = ?, updated = ? "
                          "WHERE rowid = ?", (blocked_error(run, f"rowid {rowid}", problem),
                                              time.time(), rowid))
            journals: dict[str, list[Entry]] = {r.run_id: [] for r in runs}
            for row in _fetch(
                c, f"SELECT run_id, seq, slot, kind, name, status, value, started, ended FROM "
                   f"journal WHERE run_id IN {_IN} ORDER BY run_id, seq", (json.dumps(list(journals)),)
            ):
                journals[row[0]].append(Entry(*row[1:]))
            return [Claim(r, journals[r.run_id]) for r in runs]
        return self._tx(tx)

    def owners(self) -> list[str]:
        return [r[0] for r in self._read(  # a damaged owner is nobody's: its lease has lapsed
            f"SELECT DISTINCT owner FROM runs WHERE owner IS NOT NULL AND state NOT IN {_IN}",
            (json.dumps(FINISHED),)) if isinstance(r[0], str)]

    def heartbeat(self, owner: str, lease: float, *,
                  workflows: Collection[str] | None = None) -> None:
        names = None if workflows is None else json.dumps(sorted(set(workflows)))
        if not self._ready(create=False):
            with self._open_lock:  # no file yet: the lease is written when the file is made
                if self._r is None:
                    kept = self._leases.get(owner, (0.0, None))[1]
                    self._leases[owner] = (time.time() + lease, kept if names is None else names)
                    return

        def tx(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
                      "SET lease_until = excluded.lease_until", (owner, now + lease))
            if names is not None:
                c.execute(_ADVERTISE, (owner, names))
            c.execute("DELETE FROM worker_workflows WHERE owner IN "
                      "(SELECT owner FROM workers WHERE lease_until < ?)", (now - 86400,))
            c.execute("DELETE FROM workers WHERE lease_until < ?", (now - 86400,))
        self._tx(tx)

    def workers(self) -> dict[str, list[str] | None]:
        now = time.time()
        if not self._ready(create=False):
            with self._open_lock:  # no file yet: only this handle's own heartbeats exist
                if self._r is None:
                    return {owner: _names(names) for owner, (until, names) in self._leases.items()
                            if until >= now}
        # A file opened read-only is not migrated: one from before worker_workflows lacks it.
        if self._readonly is not None and not self._read(
                "SELECT 1 FROM sqlite_master WHERE name = 'worker_workflows'"):
            return {r[0]: None for r in self._read(
                "SELECT owner FROM workers WHERE lease_until >= ?", (now,)) if isinstance(r[0], str)}
        return {r[0]: _names(r[1]) for r in self._read(
            "SELECT w.owner, a.workflows FROM workers w LEFT JOIN worker_workflows a "
            "ON a.owner = w.owner WHERE w.lease_until >= ?", (now,)) if isinstance(r[0], str)}

    def release(self, owner: str) -> None:
        if not self._ready(create=False):
            with self._open_lock:
                if self._r is None:
                    self._leases.pop(owner, None)
                    return

        def tx(c: sqlite3.Connection) -> None:
            c.execute("UPDATE runs SET owner = NULL WHERE owner = ?", (owner,))
            c.execute("DELETE FROM workers WHERE owner = ?", (owner,))
            c.execute("DELETE FROM worker_workflows WHERE owner = ?", (owner,))
            c.execute(_BUMP)
        self._tx(tx)

    def _state(self, c: sqlite3.Connection | None, run_id: str, doing: str) -> RunRecord:
        rows = [] if c is None else _fetch(c, f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?",
                                           (run_id,))
        if not rows:
            raise RunNotFound(f"cannot {doing}: no run {run_id!r} in {self.path!r}")
        return _record(rows[0])

    def deliver(self, run_id: str, name: str, payload: str) -> None:
        if not self._ready(create=False):  # no file, no run: say so without making the file
            self._state(None, run_id, f"deliver {name!r}")
        def tx(c: sqlite3.Connection) -> None:
            run = self._state(c, run_id, f"deliver {name!r}")
            if run.state in FINISHED:
                raise RunFinished(f"cannot deliver {name!r}: run {run_id!r} is already {run.state}")
            c.execute("INSERT INTO signals (run_id, name, payload, sent) VALUES (?, ?, ?, ?)",
                      (run_id, name, payload, time.time()))
            c.execute(_BUMP)
        self._tx(tx)

    def cancel(self, run_id: str) -> RunRecord:
        if not self._ready(create=False):
            return self._state(None, run_id, "cancel")

        def tx(c: sqlite3.Connection) -> RunRecord:
            run = self._state(c, run_id, "cancel")
            if run.state in FINISHED or run.cancel_requested:
                return run
            c.execute("UPDATE runs SET cancel_requested = 1 WHERE run_id = ?", (run_id,))
            c.execute(_BUMP)
            return self._state(c, run_id, "cancel")
        return self._tx(tx)

    def terminate(self, run_id: str, error: str) -> RunRecord:
        def tx(c: sqlite3.Connection) -> RunRecord:
            run = self._state(c, run_id, "terminate")
            if run.state in FINISHED:
                return run
            c.execute("UPDATE runs SET state = 'cancelled', error = ?, owner = NULL, "
                      "fence = fence + 1, wake_at = NULL, waiting_for = NULL, updated = ? "
                      "WHERE run_id = ?", (error, time.time(), run_id))
            c.execute(_BUMP)
            return self._state(c, run_id, "terminate")
        return self._tx(tx)

    def wakeups(self, owner: str) -> list[tuple[str, bool]]:
        return [(r[0], bool(r[1])) for r in self._read(
            "SELECT run_id, cancel_requested AND NOT cancel_seen FROM runs r WHERE owner = ? AND "
            "((cancel_requested AND NOT cancel_seen) OR EXISTS "
            "(SELECT 1 FROM signals s WHERE s.run_id = r.run_id))", (owner,)) if isinstance(r[0], str)]

    def watch(self, token: object, timeout: float) -> object:
        # Another connection's commit changes PRAGMA data_version, a cheap check against
        # shared memory; only then is the epoch (bumped by signals, cancels, releases) read.
        end, seen = time.monotonic() + timeout, None
        while not self._ready(create=False):  # no file yet: until this or another process makes it
            if time.monotonic() >= end:
                return token
            time.sleep(0.01)
        conn = getattr(self._local, "watch", None)
        if conn is None:
            conn = self._local.watch = self._connect(self._uri)
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
        # Closing a connection while another thread runs a statement on it crashes the process
        # (CPython's sqlite3): wait for each one's lock. Later calls raise StoreUnavailable.
        with self._open_lock, self._wlock, self._rlock:
            for conn in (self._w, self._r, getattr(self._local, "watch", None)):
                if conn is not None:
                    conn.close()
