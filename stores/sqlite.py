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
from collections.abc import Callable, Collection, Mapping, Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, TypeVar

from replaygen.errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable
from replaygen.store import (
    ACTIVE, CLOSED, FINISHED, PURGED, WORKING, Claim, Entry, Notice, RunRecord, Signal, Worker,
    Write, unadmitted,
)

from ._rows import blocked_error, damage, workflow_names

T = TypeVar("T")
log = logging.getLogger("replaygen")
SCHEMA_VERSION = 2
"""The layout this code writes; a file recorded with a higher version is refused. A change an
older replaygen still works with (a table it never reads, as ``worker_workflows``: the
workflow names each worker advertises, as a JSON array) adds to a schema without a bump, so
old and new workers may share a file during an upgrade and a rollback stays possible. (A
column added to ``workers`` would not do: older code inserts its rows without naming columns.)
Schema 2 adds ``runs.parent`` (child runs), ``runs.forked_from`` (forks) and the state
``purged`` (tombstones): a worker of schema 1 would run a child without telling its parent
that it ended, so it must refuse the file; a schema 1 file is migrated when a worker of this
version opens it."""
MODES = ("rwc", "rw", "ro")
"""How a ``SQLiteStore`` opens its file, named as SQLite's own URI modes: ``rwc`` reads and
writes, and makes the file and the store when missing (a worker); ``rw`` and ``ro`` need a
store that exists already, read-write or read-only, and change nothing of a file that holds
none (another program's database, an empty file)."""
_RUN_COLUMNS = ("run_id, workflow, args, state, owner, fence, created, updated, result, error, "
                "wake_at, waiting_for, cancel_requested, resumes, parent, forked_from")
_ADDED = ("parent", "forked_from")  # columns of schema 2 that a schema 1 file lacks
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT, fence INTEGER NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
    result TEXT, error TEXT, wake_at REAL, waiting_for TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_seen INTEGER NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0, parent TEXT, forked_from TEXT);
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
PURGE_YIELD = 2.5
"""After a full purge batch, the write lock is left free for this many times as long as the
batch held it (``Client.purge`` takes the next at once): a worker's commits, which wait for
that lock, keep about three quarters of their rate while a purge runs beside them."""
PURGE_YIELD_MAX = 0.25
"""At most this long (seconds): a worker's watcher purging for ``retention`` must renew its
lease on time."""
# Most batches only append step results (every write ``keep``: entries, the row unchanged):
# then one INSERT of the entries whose runs the writes still fence, without the batch view's
# triggers (a third less CPU a write). A write that is refused aborts it (its entries' kind
# would be NULL), and the batch takes the general way, which tells the refused writes apart.
_APPEND = ("INSERT INTO journal (run_id, seq, slot, kind, name, status, value, started, ended) "
           "SELECT v.column1, v.column4, v.column5, CASE WHEN EXISTS (SELECT 1 FROM runs r "
           "WHERE r.run_id = v.column1 AND r.owner = v.column2 AND r.fence = v.column3) THEN "
           "v.column6 END, v.column7, v.column8, v.column9, v.column10, v.column11 "
           "FROM (VALUES {}) v")
_APPEND_ROW = "(" + ", ".join(["?"] * 11) + ")"
_APPEND_ROWS = 90  # rows per statement: 990 variables


_BATCH_INSERT = f"INSERT INTO batch ({_BATCH_COLUMNS}) VALUES {{}}"


@lru_cache(maxsize=2 * _APPEND_ROWS)
def _many(statement: str, row: str, rows: int) -> str:
    """``statement`` with ``rows`` copies of ``row`` for its VALUES: made once per size."""
    return statement.format(", ".join([row] * rows))

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
    INSERT INTO runs (run_id, workflow, args, state, owner, fence, created, updated,
                      forked_from)
    VALUES (NEW.run_id, NEW.name, NEW.value, NEW.state, NEW.owner, NEW.fence, NEW.ended,
            NEW.ended, NEW.waiting_for) ON CONFLICT (run_id) DO NOTHING;
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
CREATE TEMP TRIGGER batch_spawn INSTEAD OF INSERT ON batch WHEN NEW.op = 'spawn' BEGIN
    INSERT INTO runs (run_id, workflow, args, state, owner, fence, created, updated, parent,
                      cancel_requested)
    SELECT NEW.run_id, NEW.name, NEW.value, 'pending', NULL, 1, NEW.ended, NEW.ended, p.run_id,
           p.cancel_requested AND NOT p.cancel_seen FROM runs p WHERE p.run_id = NEW.owner; END;
CREATE TEMP TRIGGER batch_notify INSTEAD OF INSERT ON batch WHEN NEW.op = 'notify' BEGIN
    INSERT INTO signals (run_id, name, payload, sent) SELECT NEW.run_id, NEW.name, NEW.value,
        NEW.ended WHERE EXISTS (SELECT 1 FROM runs WHERE run_id = NEW.run_id
                                AND state NOT IN ('completed', 'failed', 'cancelled',
                                                  'purged')); END;
CREATE TEMP TRIGGER batch_bump INSTEAD OF INSERT ON batch WHEN NEW.op = 'bump' BEGIN
    {_BUMP}; END;
"""


class _Refused(Exception):
    """A write of a batch was refused: roll the batch back and apply it write by write."""


_NO_RUN = (None,) * 18


def _insert(c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], statement: str, row: str,
            per: int, refused: str) -> None:
    """Insert ``rows`` by ``statement``, ``per`` rows a statement; _Refused if one of them is
    (its error names ``refused``), which aborts the statement and leaves the rest to the caller."""
    try:
        for at in range(0, len(rows), per):
            part = rows[at:at + per]
            c.execute(_many(statement, row, len(part)), [x for r in part for x in r])
    except sqlite3.IntegrityError as exc:
        if refused in str(exc):
            raise _Refused from None
        raise


def _rows(w: Write, now: float) -> list[tuple[Any, ...]]:
    """The rows of the batch view (columns ``_BATCH_COLUMNS``) that apply one write."""
    run: tuple[str, str | None, int] = (w.run_id, w.owner, w.fence)
    if w.create:  # released at once (a client's start): no owner, claimable by any worker
        owned = w.owner if w.entries or not w.release else None  # a fork's entries are fenced
        source = w.create[2] if len(w.create) > 2 else None
        made: list[tuple[Any, ...]] = [("create", w.run_id, owned, w.fence, w.state, None, None,
                                         None, w.create[0], None, w.create[1], None, now, None,
                                         source, None, None, 0, None)]
        if owned is None:
            return made
        return made + _rows(w._replace(create=None, keep=not w.release), now)
    rows: list[tuple[Any, ...]] = [("entry", *run, None, *e, None, None, None, None, 0, None)
                                   for e in w.entries]
    if not w.keep:  # the entries (fenced by the owner) go before a release clears it
        rows.append(("release" if w.release else "update", *run, w.state, *(None,) * 7, now,
                     w.wake_at, w.waiting_for, w.result, w.error,
                     w.progress | w.cancel_seen << 1, None))
        if w.consume:
            rows += [("consume", *run, *(None,) * 14, signal) for signal in w.consume]
    if w.spawn:  # after the row update (a cancel seen in it is not passed on); parent = owner
        rows += [("spawn", c.run_id, w.run_id, None, None, None, None, None, c.workflow, None,
                  c.args, None, now, None, None, None, None, 0, None) for c in w.spawn]
    if w.notify is not None:
        rows.append(_notice(w.notify, now))
    return rows


def _notice(n: Notice, now: float) -> tuple[Any, ...]:
    return ("notify", n.run_id, None, None, None, None, None, None, n.name, None, n.payload,
            None, now, None, None, None, None, 0, None)


def _bump(writes: Sequence[Write]) -> list[tuple[Any, ...]]:
    """The row that wakes every watcher, if a write leaves a run claimable by any worker or
    tells runs of news (children made or cancelled, a child's end)."""
    return [("bump", *_NO_RUN)] if any(w.release and w.state in ACTIVE or w.spawn or w.cancel
                                       or w.notify for w in writes) else []


# The runs descending from those in the JSON array parameter, and they themselves.
_TREE = ("WITH RECURSIVE tree(id) AS (SELECT value FROM json_each(?) UNION "
         "SELECT r.run_id FROM runs r JOIN tree ON r.parent = tree.id) ")
_CANCEL_TREE = (_TREE + "UPDATE runs SET cancel_requested = 1 WHERE run_id IN (SELECT id FROM "
                "tree) AND state NOT IN ('completed', 'failed', 'cancelled', 'purged') "
                "AND NOT cancel_requested")


_LIVE = "owner IN (SELECT owner FROM workers WHERE lease_until >= ?)"


def _working(c: sqlite3.Connection, run_id: str, now: float) -> int:
    """How many other runs of this run's workflow work under live owners."""
    return int(c.execute(
        f"SELECT count(*) FROM runs WHERE workflow = (SELECT workflow FROM runs WHERE run_id = ?) "
        f"AND state IN ('pending', 'running') AND run_id != ? AND {_LIVE}",
        (run_id, run_id, now)).fetchone()[0])


def _free(c: sqlite3.Connection, limits: Mapping[str, int], now: float) -> dict[str, int]:
    """The free slots of each limited workflow (negative when over)."""
    if not limits:
        return {}
    used = dict(c.execute(
        f"SELECT workflow, count(*) FROM runs WHERE workflow IN {_IN} AND state IN "
        f"('pending', 'running') AND {_LIVE} GROUP BY workflow", (json.dumps(list(limits)), now)))
    return {w: n - used.get(w, 0) for w, n in limits.items()}


def _record(row: Sequence[Any]) -> RunRecord:
    flag = bool(row[12]) if isinstance(row[12], int) else row[12]  # a damaged cell stays visible
    return RunRecord(*row[:12], cancel_requested=flag, resumes=row[13],  # type: ignore[misc]
                     parent=row[14], forked_from=row[15])


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
        self._columns = _RUN_COLUMNS  # as a read-only file of schema 1, without parents, has them
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
            found = self._retry(partial(self._check, r))
            if found is None:
                raise self._no_store() if self._mode != "rwc" else StoreUnavailable(
                    f"SQLite store {self.path!r} holds no replaygen store yet and this process "
                    f"cannot create one: {why}")
            if found < 2:  # not migrated: read as it is
                for column in _ADDED:
                    self._columns = self._columns.replace(column, f"NULL AS {column}")
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
        found = self._check(c)
        if found == 1:  # schema 2: child runs know their parent, forks their source
            for column in _ADDED:
                c.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
            c.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                c.execute(statement)
        c.execute("CREATE INDEX IF NOT EXISTS runs_parent ON runs (parent, created)")
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

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._read(f"SELECT {self._columns} FROM runs WHERE run_id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def journal(self, run_id: str) -> list[Entry]:
        return [Entry(*row) for row in self._read(
            "SELECT seq, slot, kind, name, status, value, started, ended FROM journal "
            "WHERE run_id = ? ORDER BY seq", (run_id,))]

    def signals(self, run_id: str) -> list[Signal]:
        return [Signal(*row) for row in self._read(
            "SELECT id, name, payload, sent FROM signals WHERE run_id = ? ORDER BY id", (run_id,))]

    def commit(self, writes: Sequence[Write]) -> list[bool | None]:
        if all(w.keep and w.entries and not (w.consume or w.spawn or w.cancel or w.notify
                                             or w.create or w.admit) for w in writes):
            entries = [(w.run_id, w.owner, w.fence, *e) for w in writes for e in w.entries]
            try:
                self._tx(lambda c: self._append(c, entries), begin=len(entries) > _APPEND_ROWS)
                return [True] * len(writes)
            except _Refused:
                pass  # rolled back whole: the general way tells the refused writes apart
        now = time.time()
        if any(w.admit for w in writes):  # rare (a limited run back at work): one by one
            return self._tx(lambda c: self._apply_each(c, writes, now))
        rows = [row for w in writes for row in _rows(w, now)] + _bump(writes)
        cancels = [run_id for w in writes for run_id in w.cancel]

        def batch(c: sqlite3.Connection) -> None:
            self._apply(c, rows)
            if cancels:
                c.execute(_CANCEL_TREE, (json.dumps(cancels),))
        try:
            try:  # one statement, its own transaction, unless the batch needs several
                self._tx(batch, begin=len(rows) > _ROWS or bool(cancels))
                return [True for _ in writes]
            except _Refused:  # rolled back whole: apply the writes one by one
                return self._tx(lambda c: self._apply_each(c, writes, now))
        except sqlite3.IntegrityError as exc:
            if "signal not queued" in str(exc):
                consumed = ", ".join(f"{w.consume} (run {w.run_id!r})" for w in writes if w.consume)
                raise sqlite3.IntegrityError(f"signal {consumed} is not queued") from None
            if "runs.run_id" in str(exc) and any(w.spawn for w in writes):
                made = ", ".join(repr(c.run_id) for w in writes for c in w.spawn)
                raise ReplaygenError(f"cannot create child run {made}: a run with that id "
                                     f"exists") from None
            raise

    @staticmethod
    def _append(c: sqlite3.Connection, entries: Sequence[tuple[Any, ...]]) -> None:
        _insert(c, entries, _APPEND, _APPEND_ROW, _APPEND_ROWS,
                "NOT NULL constraint failed: journal.kind")

    @staticmethod
    def _apply(c: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        _insert(c, rows, _BATCH_INSERT, _ROW, _ROWS, _REFUSED)

    def _apply_each(self, c: sqlite3.Connection, writes: Sequence[Write],
                    now: float) -> list[bool | None]:
        done: list[bool | None] = []
        applied: list[Write] = []
        for w in writes:
            c.execute("SAVEPOINT one")  # a refused write leaves no trace, even of many statements
            try:
                ok: bool | None = True
                if w.admit and _working(c, w.run_id, now) >= w.admit:
                    w, ok = unadmitted(w), None
                self._apply(c, _rows(w, now))
                if w.cancel:
                    c.execute(_CANCEL_TREE, (json.dumps(w.cancel),))
                done.append(ok)
                applied.append(w)
            except _Refused:
                c.execute("ROLLBACK TO one")
                done.append(False)
            finally:
                c.execute("RELEASE one")
        self._apply(c, _bump(applied))
        return done

    def claim(
        self, owner: str, *, states: Collection[str] = ACTIVE, dead: Collection[str] = (),
        workflows: Collection[str] | None = None, run_ids: Collection[str] | None = None,
        reset: bool = False, limit: int = 1000, limits: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        now = time.time()
        sql = (f"SELECT rowid, workflow, state FROM runs WHERE state IN {_IN} AND (owner IS NULL "
               f"OR (owner != ? AND (owner IN {_IN} OR owner NOT IN (SELECT owner FROM workers "
               f"WHERE lease_until >= ?))))")
        params: list[Any] = [json.dumps(list(states)), owner, json.dumps(list(dead)), now]
        for column, values in (("workflow", workflows), ("run_id", run_ids)):
            if values is not None:
                sql += f" AND {column} IN {_IN}"
                params.append(json.dumps(list(values)))

        def tx(c: sqlite3.Connection) -> list[Claim]:
            free = _free(c, limits or {}, now)
            full = json.dumps([w for w, n in free.items() if n <= 0])
            # Runs are picked by rowid, not run_id: a damaged run_id must not stop the claim.
            picked = []
            for rowid, workflow, state in c.execute(
                    sql + f" AND NOT (workflow IN {_IN} AND state IN {_IN}) ORDER BY created "
                    f"LIMIT ?", [*params, full, json.dumps(WORKING), limit]):
                if state in WORKING and workflow in free:  # a slot of its workflow's
                    if free[workflow] <= 0:
                        continue
                    free[workflow] -= 1
                picked.append(rowid)
            ids = json.dumps(picked)
            c.execute(
                f"UPDATE runs SET owner = ?, fence = fence + 1, resumes = CASE WHEN ? THEN 0 "
                f"ELSE resumes + (owner IS NOT NULL AND state IN {_IN}) END WHERE rowid IN {_IN}",
                (owner, reset, json.dumps(WORKING), ids))
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

    def heartbeat(self, owner: str, lease: float, *, workflows: Collection[str]) -> None:
        names = json.dumps(sorted(set(workflows)))
        if not self._ready(create=False):
            with self._open_lock:  # no file yet: the lease is written when the file is made
                if self._r is None:
                    self._leases[owner] = (time.time() + lease, names)
                    return

        def tx(c: sqlite3.Connection) -> None:
            now = time.time()
            c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
                      "SET lease_until = excluded.lease_until", (owner, now + lease))
            c.execute(_ADVERTISE, (owner, names))
            c.execute("DELETE FROM worker_workflows WHERE owner IN "
                      "(SELECT owner FROM workers WHERE lease_until < ?)", (now - 86400,))
            c.execute("DELETE FROM workers WHERE lease_until < ?", (now - 86400,))
        self._tx(tx)

    def workers(self) -> dict[str, Worker]:
        now = time.time()
        if not self._ready(create=False):
            with self._open_lock:  # no file yet: only this handle's own heartbeats exist
                if self._r is None:
                    return {owner: Worker(_names(names), until) for owner, (until, names)
                            in self._leases.items() if until >= now}
        # A file opened read-only is not migrated: one from before worker_workflows lacks it.
        if self._readonly is not None and not self._read(
                "SELECT 1 FROM sqlite_master WHERE name = 'worker_workflows'"):
            return {r[0]: Worker(None, r[1]) for r in self._read(
                "SELECT owner, lease_until FROM workers WHERE lease_until >= ?", (now,))
                if isinstance(r[0], str)}
        return {r[0]: Worker(_names(r[1]), r[2]) for r in self._read(
            "SELECT w.owner, a.workflows, w.lease_until FROM workers w LEFT JOIN worker_workflows a "
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

    def deliver(self, run_id: str, name: str, payload: str) -> int:
        if not self._ready(create=False):  # no file, no run: say so without making the file
            self._state(None, run_id, f"deliver {name!r}")
        def tx(c: sqlite3.Connection) -> int:
            run = self._state(c, run_id, f"deliver {name!r}")
            if run.state in CLOSED:
                raise RunFinished(f"cannot deliver {name!r}: run {run_id!r} is already {run.state}")
            made = c.execute("INSERT INTO signals (run_id, name, payload, sent) VALUES "
                             "(?, ?, ?, ?)", (run_id, name, payload, time.time()))
            c.execute(_BUMP)
            return int(made.lastrowid or 0)
        return self._tx(tx)

    def cancel(self, run_id: str) -> RunRecord:
        if not self._ready(create=False):
            return self._state(None, run_id, "cancel")

        def tx(c: sqlite3.Connection) -> RunRecord:
            self._state(c, run_id, "cancel")
            if c.execute(_CANCEL_TREE, (json.dumps([run_id]),)).rowcount:
                c.execute(_BUMP)
            return self._state(c, run_id, "cancel")
        return self._tx(tx)

    def terminate(self, run_id: str, error: str, notify: Notice | None = None) -> RunRecord:
        def tx(c: sqlite3.Connection) -> RunRecord:
            run = self._state(c, run_id, "terminate")
            if run.state in CLOSED:
                return run
            now = time.time()
            c.execute(_TREE + "UPDATE runs SET state = 'cancelled', error = ?, owner = NULL, "
                      "fence = fence + 1, wake_at = NULL, waiting_for = NULL, updated = ? "
                      "WHERE run_id IN (SELECT id FROM tree) AND state NOT IN ('completed', "
                      "'failed', 'cancelled', 'purged')", (json.dumps([run_id]), error, now))
            if notify is not None:
                self._apply(c, [_notice(notify, now)])
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
        parent: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[RunRecord]:
        sql, params = f"SELECT {self._columns} FROM runs WHERE state != '{PURGED}'", []
        if states is not None:  # tombstones only when asked for
            sql, params = f"SELECT {self._columns} FROM runs WHERE state IN {_IN}", [
                json.dumps(list(states))]
        for column, value in (("workflow", workflow), ("parent", parent)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        return [_record(r) for r in self._read(
            sql + " ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?", [*params, limit, offset])]

    def counts(self) -> dict[tuple[str, str], int]:
        return {(r[0], r[1]): r[2] for r in self._read(
            "SELECT workflow, state, count(*) FROM runs GROUP BY workflow, state")
            if isinstance(r[0], str) and isinstance(r[1], str)}

    def last_entries(self, run_ids: Collection[str]) -> dict[str, Entry]:
        return {row[0]: Entry(*row[1:]) for row in self._read(
            f"SELECT j.run_id, j.seq, j.slot, j.kind, j.name, j.status, j.value, j.started, "
            f"j.ended FROM journal j WHERE j.run_id IN {_IN} AND j.seq = (SELECT max(seq) FROM "
            f"journal WHERE run_id = j.run_id)", (json.dumps(list(run_ids)),))}

    def purge(self, before: float, *, states: Collection[str], limit: int,
              tombstone: Callable[[RunRecord], tuple[str, str]]) -> list[str]:
        if not self._ready(create=False):
            return []
        # Chosen and their tombstones made (two thirds of a batch's time) before the write
        # lock is taken, which a worker's commits wait for; taken, each row is checked again.
        found: list[Any] = []
        for state in [s for s in FINISHED if s in states]:  # each by its index, oldest first
            found += self._read(f"SELECT rowid, {_RUN_COLUMNS} FROM runs WHERE state = ? AND "
                                f"updated < ? ORDER BY created LIMIT ?", (state, before, limit))
        marks = [(*tombstone(_record(row)), rowid, row[0], row[3])
                 for rowid, *row in sorted(found, key=lambda row: row[7])[:limit]]
        if not marks:
            return []

        held = [0.0]  # when the write lock was taken

        def tx(c: sqlite3.Connection) -> list[str]:
            held[0] = time.monotonic()
            done = [m[3] for m in marks if c.execute(
                f"UPDATE runs SET state = '{PURGED}', args = ?, error = ?, result = NULL, "
                f"owner = NULL, wake_at = NULL, waiting_for = NULL, cancel_requested = 0, "
                f"cancel_seen = 0 WHERE rowid = ? AND run_id = ? AND state = ? AND updated < ?",
                (*m, before)).rowcount]
            ids = json.dumps(done)
            c.execute(f"DELETE FROM journal WHERE run_id IN {_IN}", (ids,))
            c.execute(f"DELETE FROM signals WHERE run_id IN {_IN}", (ids,))
            return done
        done = self._tx(tx)
        if len(done) == limit:  # more may follow at once: let the workers' writes in first
            time.sleep(min(PURGE_YIELD * (time.monotonic() - held[0]), PURGE_YIELD_MAX))
        return done

    def close(self) -> None:
        # Closing a connection while another thread runs a statement on it crashes the process
        # (CPython's sqlite3): wait for each one's lock. Later calls raise StoreUnavailable.
        with self._open_lock, self._wlock, self._rlock:
            for conn in (self._w, self._r, getattr(self._local, "watch", None)):
                if conn is not None:
                    conn.close()
