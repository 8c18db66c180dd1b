"""PostgresStore: several workers on several machines sharing one PostgreSQL database.

Needs psycopg 3 (``pip install 'replaygen[postgres]'``). Everything lives in one
schema (``replaygen`` unless told otherwise), so several applications can share a
database. The store creates and versions that schema itself, under an advisory
lock, so any number of workers may start at once.

How the guarantees are kept:

- Claiming is ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE ... RETURNING``:
  two workers never claim the same run, and neither waits for the other.
- Ownership is leased: ``workers(owner, lease_until)`` is renewed by heartbeats and
  judged by the database's clock only, never by a client's. The same heartbeat records
  the workflows the worker serves (``workflows``), for ``workers()``.
- Every write is fenced (``WHERE run_id AND owner AND fence``): a worker that
  stalled past its lease and comes back finds its writes refused.
- Wake-ups go through ``LISTEN``/``NOTIFY`` on a dedicated connection; a
  notification carries a kind and a run id, never a payload.
- A transient failure (server restarted or unreachable, connection dropped,
  serialization failure, deadlock, disk full) raises ``StoreUnavailable``; the
  broken connections are dropped and the next call reconnects. A write whose
  outcome is unknown (the connection died around COMMIT) is recognised when the
  interpreter retries it, so it is neither applied twice nor mistaken for a loss.

Values are stored as TEXT, byte-exact (not JSONB, which would rewrite them), and
exchanged as UTF-8 whatever the DSN's client_encoding. A SQL_ASCII database (initdb
under the C locale) stores any bytes: there a text cell that is not UTF-8, written by
another program, is read as bytes so that it blocks its own run only, never every claim.
The DSN's password never appears in a log line, an error or a repr.

This module must never import the interpreter: it implements ``replaygen.store.Store``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

try:
    import psycopg
    from psycopg import conninfo as _conninfo
    from psycopg import sql
    from psycopg.adapt import Buffer, Loader
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "replaygen.stores.postgres needs psycopg 3: pip install 'replaygen[postgres]'"
    ) from exc

from replaygen.errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable
from replaygen.store import (
    ACTIVE, CLOSED, FINISHED, WORKING, Claim, Entry, Notice, RunRecord, Signal, Worker, Write,
    unadmitted,
)

from ._rows import blocked_error, damage, workflow_names

__all__ = ["PostgresStore", "SCHEMA_VERSION"]

T = TypeVar("T")
log = logging.getLogger("replaygen")

SCHEMA_VERSION = 2
"""The layout this code writes; a schema recorded with a higher version is refused. A change
an older replaygen still works with (a nullable column it never names, as
``workers.workflows``) adds to a version without a bump, so old and new workers may share a
schema during an upgrade and a rollback stays possible. Version 2 adds ``runs.parent`` (child
runs), ``runs.forked_from`` (forks) and the state ``purged`` (tombstones): a worker of version
1 would run a child without telling its parent that it ended, so it must refuse the schema; a
version 1 schema is migrated by the first worker of version 2."""

_NOW = "extract(epoch FROM statement_timestamp())::float8"  # the database's clock
_RUN_COLUMNS = ("run_id, workflow, args, state, owner, fence, created, updated, result, error, "
                "wake_at, waiting_for, cancel_requested, resumes, parent, forked_from")
_ENTRY_COLUMNS = "seq, slot, kind, name, status, value, started, ended"

_TABLES = """
CREATE TABLE IF NOT EXISTS {runs} (
    id bigserial UNIQUE,                 -- insertion order: claims oldest first, runs() newest
    run_id text PRIMARY KEY,
    workflow text NOT NULL,
    args text NOT NULL,
    state text NOT NULL,
    owner text,
    fence bigint NOT NULL,
    created float8 NOT NULL,
    updated float8 NOT NULL,
    result text,
    error text,
    wake_at float8,
    waiting_for text,
    cancel_requested boolean NOT NULL DEFAULT false,
    cancel_seen boolean NOT NULL DEFAULT false,
    resumes integer NOT NULL DEFAULT 0,
    next_seq integer NOT NULL DEFAULT 0, -- the journal's length: appends must start here
    token text,                          -- which create/claim took the run (for unsure outcomes)
    parent text,                         -- the run that started this one as its child
    forked_from text                     -- the run this one was forked from
);
CREATE INDEX IF NOT EXISTS {runs_owner} ON {runs} (owner);
CREATE INDEX IF NOT EXISTS {runs_state} ON {runs} (state, id);
CREATE TABLE IF NOT EXISTS {journal} (
    run_id text NOT NULL REFERENCES {runs} (run_id),
    seq integer NOT NULL,
    slot integer NOT NULL,
    kind text NOT NULL,
    name text NOT NULL,
    status text NOT NULL,
    value text,
    started float8 NOT NULL,
    ended float8 NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS {signals} (
    id bigserial PRIMARY KEY,
    run_id text NOT NULL REFERENCES {runs} (run_id),
    name text NOT NULL,
    payload text NOT NULL,
    sent float8 NOT NULL
);
CREATE INDEX IF NOT EXISTS {signals_run} ON {signals} (run_id, id);
CREATE TABLE IF NOT EXISTS {workers} (
    owner text PRIMARY KEY,
    lease_until timestamptz NOT NULL,
    workflows text[]                     -- the workflow names it serves; NULL: it never said
);
"""

# Columns added to schemas made before them: (table, column, type).
_ADDED = (("workers", "workflows", "text[]"), ("runs", "parent", "text"),
          ("runs", "forked_from", "text"))
# Every table and index of the current layout (indexes live in their table's schema).
_RELATIONS = ("meta", "runs", "journal", "signals", "workers", "runs_owner", "runs_state",
              "signals_run", "runs_parent")

# Failures that may pass: connection lost or refused, server shutting down or starting,
# serialization failure, deadlock, disk full, ... (psycopg files them all under these).
_TRANSIENT = (psycopg.OperationalError,)


def _record(row: Sequence[Any]) -> RunRecord:
    return RunRecord(*row)  # _RUN_COLUMNS is RunRecord's field order


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(*row)


class _LenientText(Loader):
    """TEXT from a SQL_ASCII database: str when the bytes are UTF-8, else the raw bytes (a row
    another program damaged), which the checks of its reader turn into a blocked run."""

    def load(self, data: Buffer) -> str | bytes:
        raw = bytes(data)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return raw


def _connect(conninfo: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    try:
        # UTF-8 both ways: under another client_encoding one row the server cannot convert fails
        # every statement that reads it. A SQL_ASCII server validates nothing it stores, but
        # would check what it sends as UTF-8 and fail the statement: there, take raw bytes.
        ascii_server = conn.info.parameter_status("server_encoding") == "SQL_ASCII"
        want = "SQL_ASCII" if ascii_server else "UTF8"
        if conn.info.parameter_status("client_encoding") != want:
            conn.execute(f"SET client_encoding TO '{want}'")
        if ascii_server:
            conn.adapters.register_loader("text", _LenientText)
    except BaseException:
        _close_quietly(conn)
        raise
    return conn


class _Connections:
    """A small pool: at most ``size`` connections, made on demand, each used by one thread
    at a time. A connection that failed is closed, never handed out again."""

    def __init__(self, conninfo: str, size: int) -> None:
        self._conninfo = conninfo
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()  # guards _idle and _closed
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False

    def connect(self) -> psycopg.Connection[Any]:
        return _connect(self._conninfo)

    def take(self) -> tuple[psycopg.Connection[Any], bool]:
        """A connection and whether it was reused (it may have died since)."""
        self._slots.acquire()
        try:
            with self._lock:
                if self._closed:
                    raise ReplaygenError("this PostgresStore is closed")
                conn = self._idle.pop() if self._idle else None
            return (conn, True) if conn is not None else (self.connect(), False)
        except BaseException:
            self._slots.release()
            raise

    def give(self, conn: psycopg.Connection[Any], broken: bool) -> None:
        try:
            if broken:
                # After a failure the other idle connections are most likely dead too
                # (a restarted server): drop them all, so one call fails, not one per connection.
                with self._lock:
                    doomed, self._idle = [conn, *self._idle], []
                for c in doomed:
                    _close_quietly(c)
                return
            with self._lock:
                if not self._closed and conn.pgconn.transaction_status == TransactionStatus.IDLE:
                    self._idle.append(conn)
                    return
            _close_quietly(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed, idle, self._idle = True, self._idle, []
        for c in idle:
            _close_quietly(c)


def _close_quietly(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except Exception:
        pass


class PostgresStore:
    """A durable store in a PostgreSQL database, shared by any number of workers.

    ``dsn`` is a libpq connection string or URI. ``schema`` names the schema that holds
    the store's tables (created if missing), so several applications can share one
    database. ``pool_size`` bounds this store's connections, besides the one that
    listens for notifications. ``connect_timeout`` (seconds) applies unless the DSN sets it.

    Raises ``StoreUnavailable`` when the server cannot be reached, and ``ReplaygenError``
    when the schema was written by a newer version of replaygen.
    """

    def __init__(self, dsn: str, *, schema: str = "replaygen", pool_size: int = 4,
                 connect_timeout: float = 5.0, application_name: str = "replaygen") -> None:
        if not isinstance(schema, str) or not schema or len(schema.encode()) > 63 \
                or "\x00" in schema:
            raise ReplaygenError(f"schema must be a name of 1 to 63 bytes, got {schema!r}")
        if pool_size < 1:
            raise ReplaygenError(f"pool_size must be at least 1, got {pool_size!r}")
        params = _parse(dsn)
        self._password = str(params.get("password") or "")
        shown = dict(params, password="***") if "password" in params else params
        self.dsn = _conninfo.make_conninfo("", **shown)
        """The DSN with its password replaced by ``***`` (safe to print)."""
        self.schema = schema
        params.setdefault("connect_timeout", str(max(1, round(connect_timeout))))
        params.setdefault("application_name", application_name)
        # Notice a peer that vanished (partition, dead host) instead of blocking forever.
        for key, value in (("keepalives", "1"), ("keepalives_idle", "10"),
                           ("keepalives_interval", "5"), ("keepalives_count", "3"),
                           ("tcp_user_timeout", "30000")):
            params.setdefault(key, value)
        self._info = _conninfo.make_conninfo("", **params)
        self._pool = _Connections(self._info, pool_size)
        self.parallel_commits = max(1, pool_size // 2)
        """Group commits a worker runs at once, each on its own connection: a start does not
        wait for the steps' commit in flight; half the pool, the rest for claims and reads."""
        # Tokens of creates and claims whose outcome is unknown, by owner: a run one of them
        # took is owned by that worker, which does not know it; its next claim() takes it back.
        self._unsure: dict[str, set[str]] = {}
        self._unsure_lock = threading.Lock()
        self._cv = threading.Condition()  # guards _epoch and _listener
        self._epoch = 0
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()  # set once the first LISTEN is in place
        channel = f"replaygen.{schema}"
        if len(channel.encode()) > 63:  # PostgreSQL truncates longer channel names
            channel = "replaygen." + hashlib.sha256(schema.encode()).hexdigest()[:40]
        self._channel = channel
        self._q = _queries(schema)
        try:
            self._call(self._setup)
        except BaseException:
            self._pool.close()
            raise

    @staticmethod
    def drop_schema(dsn: str, schema: str = "replaygen") -> None:
        """Delete ``schema`` and every run, journal and signal in it (tests, uninstalling).
        Irreversible; stop every worker using it first. A missing schema is no error."""
        params = _parse(dsn)
        try:
            with psycopg.connect(_conninfo.make_conninfo("", **params), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)))
        except psycopg.OperationalError as exc:
            secret = str(params.get("password") or "")
            text = " ".join(str(exc).split())
            raise StoreUnavailable(f"cannot drop schema {schema!r}: "
                                   f"{text.replace(secret, '***') if secret else text}") from None

    def __repr__(self) -> str:
        return f"PostgresStore({self.dsn!r}, schema={self.schema!r})"

    # ---- plumbing -------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """One line, without the password (libpq messages span lines; none should hold it)."""
        text = " ".join(text.split())
        return text.replace(self._password, "***") if self._password else text

    def _call(self, fn: Callable[[psycopg.Connection[Any]], T], *, idempotent: bool = False,
              unsure: tuple[str, str] | None = None) -> T:
        """Run ``fn`` on a pooled connection, turning transient failures into StoreUnavailable.
        An idempotent call that failed on a reused (possibly stale) connection is retried once
        on a fresh one; ``unsure`` is a token to remember when the outcome is unknown."""
        for attempt in (1, 2):
            try:
                conn, reused = self._pool.take()
            except _TRANSIENT as exc:
                raise self._unavailable(exc) from None
            try:
                result = fn(conn)
            except _TRANSIENT as exc:
                self._pool.give(conn, broken=True)
                if idempotent and reused and attempt == 1:
                    continue
                if unsure is not None:
                    with self._unsure_lock:
                        self._unsure.setdefault(unsure[0], set()).add(unsure[1])
                raise self._unavailable(exc) from None
            except psycopg.DataError as exc:
                self._pool.give(conn, broken=conn.broken)
                raise ReplaygenError(
                    f"PostgreSQL refused a value: {self._scrub(str(exc))} (TEXT cannot hold a NUL "
                    f"character; a custom codec must not produce one)") from None
            except BaseException:
                self._pool.give(conn, broken=conn.broken)
                raise
            self._pool.give(conn, broken=False)
            return result
        raise AssertionError("unreachable")

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        what = type(exc).__name__
        state = getattr(exc, "sqlstate", None)
        message = self._scrub(str(exc)) or "no detail"
        return StoreUnavailable(
            f"PostgreSQL ({self.dsn}, schema {self.schema!r}) is unavailable: {what}"
            f"{f' [{state}]' if state else ''}: {message}")

    def _setup(self, conn: psycopg.Connection[Any]) -> None:
        if not self._current(conn):
            self._create_or_migrate(conn)

    def _current(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the schema is at this version with every table, index and column it needs:
        one statement, no lock, no DDL (the usual start: the path below costs a dozen round
        trips and locks). What a concurrent migration has not committed is not seen."""
        quoted = '"' + self.schema.replace('"', '""') + '".'
        try:
            row = conn.execute(self._q["current"], [
                [quoted + f'"{name}"' for name in _RELATIONS],
                [quoted + f'"{table}"' for table, _, _ in _ADDED], [c for _, c, _ in _ADDED],
            ]).fetchone()
        except psycopg.errors.UndefinedTable:  # no meta table: a new schema
            return False
        return row == (str(SCHEMA_VERSION), len(_RELATIONS), len(_ADDED))

    def _create_or_migrate(self, conn: psycopg.Connection[Any]) -> None:
        q = self._q
        with conn.transaction():
            # Serialises concurrent first starts: CREATE ... IF NOT EXISTS alone can still race.
            key = int.from_bytes(hashlib.sha256(f"replaygen:{self.schema}".encode()).digest()[:8],
                                 "big", signed=True)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])
            conn.execute(q["create_schema"])
            conn.execute(q["create_meta"])
            row = conn.execute(q["version"]).fetchone()
            found = None if row is None else row[0]
            if found is not None and (not found.isdigit() or int(found) > SCHEMA_VERSION):
                raise ReplaygenError(
                    f"schema {self.schema!r} in {self.dsn} was written by a newer replaygen "
                    f"(schema version {found}; this one knows up to {SCHEMA_VERSION}). Upgrade "
                    f"replaygen on this worker, or use another schema.")
            conn.execute(q["create_tables"])
            # Added to schemas made before them. Looked up first: ALTER TABLE takes an exclusive
            # lock on the table (stalling every claim) even when the column is there already.
            for table, column, kind in _ADDED:
                if conn.execute(q["has_column"], [self.schema, table, column]).fetchone() is None:
                    conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        sql.Identifier(self.schema, table), sql.Identifier(column), sql.SQL(kind)))
            if found == "1":
                conn.execute(q["update_version"], [str(SCHEMA_VERSION)])
            conn.execute(q["runs_parent"])
            if found is None:
                conn.execute(q["set_version"], [str(SCHEMA_VERSION)])

    def _notify(self, conn: psycopg.Connection[Any], kind: str, run_id: str = "") -> None:
        # Delivered at commit, to every listener (this process's included). Ids only.
        if conn.info.encoding == "ascii" and not run_id.isascii():  # SQL_ASCII: psycopg decodes
            run_id = run_id.encode("unicode_escape").decode()  # notifications as ASCII
        conn.execute("SELECT pg_notify(%s, %s)", [self._channel, f"{kind} {run_id}".strip()])
        self._bump()

    def _bump(self) -> None:
        with self._cv:
            self._epoch += 1
            self._cv.notify_all()

    # ---- the protocol ------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        row = self._call(lambda c: c.execute(self._q["get"], [run_id]).fetchone(), idempotent=True)
        return None if row is None else _record(row)

    def journal(self, run_id: str) -> list[Entry]:
        rows = self._call(lambda c: c.execute(self._q["journal"], [run_id]).fetchall(),
                          idempotent=True)
        return [_entry(r) for r in rows]

    def signals(self, run_id: str) -> list[Signal]:
        rows = self._call(lambda c: c.execute(self._q["signals"], [run_id]).fetchall(),
                          idempotent=True)
        return [Signal(*r) for r in rows]

    def commit(self, writes: Sequence[Write]) -> list[bool | None]:
        if not writes:
            return []
        # Starts (a run created with nothing else: no journal to copy) are one statement with
        # their notice, apart from the steps of other runs they were grouped with: 2 round
        # trips for a group commit of both instead of 6. Each write is atomic on its own. The
        # steps go first: if they fail, no start is made yet, so a retry of the call (or of
        # each write alone) makes the starts then, and reports them made.
        starts = [i for i, w in enumerate(writes) if w.create and not w.entries and not w.admit]
        if starts and len({w.run_id for w in writes}) == len(writes):
            rest = sorted(set(range(len(writes))) - set(starts))
            done: list[bool | None] = [None] * len(writes)
            for i, ok in zip(rest, self.commit([writes[i] for i in rest]), strict=True):
                done[i] = ok
            made = self._call(lambda conn: self._start(conn, [writes[i] for i in starts]))
            for i in starts:
                done[i] = writes[i].run_id in made
            return done
        # Most batches are step results of distinct runs: then one statement (the fenced UPDATE
        # and the INSERT of the entries of the runs it updated, atomic as one statement) is one
        # round trip instead of four. Writes it refused go through the full path below.
        if len({w.run_id for w in writes}) == len(writes) and not any(
                w.create or w.consume or w.spawn or w.cancel or w.notify or w.admit
                or (w.release and w.state in ACTIVE) for w in writes):
            applied = self._call(lambda conn: self._commit_one_statement(conn, writes))
            done = [w.run_id in applied for w in writes]
            refused = [i for i, ok in enumerate(done) if not ok]
            if refused:
                for i, ok in zip(refused, self._commit_tx([writes[i] for i in refused]),
                                 strict=True):
                    done[i] = ok
            return done
        return self._commit_tx(writes)

    def _commit_one_statement(self, conn: psycopg.Connection[Any], ws: Sequence[Write]) -> set[str]:
        _check_seqs(ws)
        entries = [(w.run_id, e) for w in ws for e in w.entries]
        if len(ws) == 1 and len(entries) == 1:  # one step: plain parameters cost less to send
            w, e = ws[0], entries[0][1]
            try:
                rows = conn.execute(self._q["commit_step"], [
                    w.state, w.wake_at, w.waiting_for, w.result, w.error, w.progress, w.release,
                    w.cancel_seen, w.run_id, w.owner, w.fence, e.seq, *e]).fetchall()
            except psycopg.errors.UniqueViolation:
                raise ValueError(_SEQ_TAKEN) from None
            return {run_id for (run_id,) in rows}
        try:
            rows = conn.execute(self._q["commit_append"], [
                *self._commit_params(ws),
                [r for r, _ in entries], [e.seq for _, e in entries],
                [e.position for _, e in entries],
                [e.kind for _, e in entries], [e.name for _, e in entries],
                [e.status for _, e in entries], [e.value for _, e in entries],
                [e.started for _, e in entries], [e.ended for _, e in entries],
            ]).fetchall()
        except psycopg.errors.UniqueViolation:
            raise ValueError(_SEQ_TAKEN) from None
        return {run_id for (run_id,) in rows}

    @staticmethod
    def _commit_params(ws: Sequence[Write]) -> list[list[Any]]:
        return [
            [w.run_id for w in ws], [w.owner for w in ws], [w.fence for w in ws],
            [w.state for w in ws], [w.wake_at for w in ws], [w.waiting_for for w in ws],
            [w.result for w in ws], [w.error for w in ws], [w.release for w in ws],
            [w.cancel_seen for w in ws], [w.entries[0].seq if w.entries else 0 for w in ws],
            [len(w.entries) for w in ws], [w.progress for w in ws],
        ]

    def _commit_tx(self, given: Sequence[Write]) -> list[bool | None]:
        def tx(conn: psycopg.Connection[Any]) -> list[bool | None]:
            done: list[bool | None] = [False] * len(given)
            with conn.transaction():
                writes = [unadmitted(w) if w.admit and self._working(conn, w.run_id) >= w.admit
                          else w for w in given]
                made = self._create(conn, [w for w in writes if w.create])
                first: set[str] = set()
                for i, w in enumerate(writes):  # a second create of one id in a batch: taken
                    if w.create and w.run_id not in first:
                        first.add(w.run_id)
                        done[i] = w.run_id in made
                for batch in _rounds(writes):
                    batch = [i for i in batch if not writes[i].create]
                    if batch:
                        self._apply(conn, writes, batch, done)
                for i, w in enumerate(writes):
                    if done[i] and w.release and w.state in ACTIVE:  # claimable by others now
                        self._notify(conn, "release", w.run_id)
                    if done[i] and w is not given[i]:
                        done[i] = None  # applied unadmitted
            return done
        return self._call(tx)

    def _start(self, conn: psycopg.Connection[Any], creates: list[Write]) -> set[str]:
        """Create these runs (no journals) in one statement, notifying the workers when one is
        left for any to claim (a client's start): the ids made."""
        anyone = any(w.release for w in creates)
        made = {r for (r, _) in conn.execute(*self._creating(creates, "start_",
                                                              [anyone, self._channel]))}
        if made and anyone:
            self._bump()
        return made

    def _creating(self, ws: list[Write], kind: str = "",
                  extra: Sequence[Any] = ()) -> tuple[bytes, list[Any]]:
        """The statement creating the runs of ``ws`` (distinct ids) and its parameters."""
        rows = [(w.run_id, *(*w.create, None)[:3], w.state,  # type: ignore[misc]
                 None if w.release else w.owner, w.fence, uuid.uuid4().hex, len(w.entries))
                for w in ws]  # (id, workflow, args, fork source, ...); released: no owner
        # One row: plain parameters (arrays cost a lone start() a third more client CPU).
        if len(rows) == 1:
            return self._q[kind + "create"], [*rows[0], *extra]
        return self._q[kind + "create_many"], [*map(list, zip(*rows, strict=True)), *extra]

    def _create(self, conn: psycopg.Connection[Any], creates: list[Write]) -> set[str]:
        """Create the runs of these writes in one statement (a run's first write in the batch
        decides it); the ids made, an id taken already is not."""
        ws, seen = list[Write](), set[str]()
        for w in creates:
            if w.run_id not in seen:
                seen.add(w.run_id)
                ws.append(w)
        if not ws:
            return set()
        made = {r for (r,) in conn.execute(*self._creating(ws)).fetchall()}
        entries = [(w.run_id, e) for w in ws if w.run_id in made for e in w.entries]
        if entries:  # forks' copied journals
            self._append(conn, entries)
        if any(w.release for w in ws if w.run_id in made):  # left for any worker to claim
            self._notify(conn, "create")
        return made

    def _working(self, conn: psycopg.Connection[Any], run_id: str) -> int:
        """How many other runs of this run's workflow work under live owners; the workflow's
        lock is held until the transaction ends, so admissions of one workflow take turns."""
        row = conn.execute(self._q["workflow_of"], [run_id]).fetchone()
        if row is None:
            return 0
        self._lock_limits(conn, [row[0]])
        [(_, used)] = conn.execute(self._q["working"], [run_id, [row[0]]]).fetchall()
        return int(used)

    def _lock_limits(self, conn: psycopg.Connection[Any], workflows: Collection[str]) -> None:
        keys = sorted(int.from_bytes(hashlib.blake2b(
            f"replaygen:{self.schema}:limit:{w}".encode(), digest_size=8).digest(), "big",
            signed=True) for w in workflows)
        for key in keys:  # in one order: two claims never wait for each other's second lock
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [key])

    def _apply(self, conn: psycopg.Connection[Any], writes: Sequence[Write], batch: list[int],
               done: list[bool | None]) -> None:
        """Apply writes to distinct runs: one fenced UPDATE, one INSERT, one DELETE."""
        q, ws = self._q, [writes[i] for i in batch]
        _check_seqs(ws)
        rows = conn.execute(q["commit"], self._commit_params(ws)).fetchall()
        applied = {run_id for (run_id,) in rows}
        fresh = [w for w in ws if w.run_id in applied]
        for i, w in zip(batch, ws, strict=True):
            if w.run_id in applied:
                done[i] = True
            else:
                done[i] = self._already_applied(conn, w)
        entries = [(w.run_id, e) for w in fresh for e in w.entries]
        if entries:
            self._append(conn, entries)
        consumed = [(w.run_id, signal) for w in fresh for signal in w.consume]
        if consumed:
            gone = {row[0] for row in conn.execute(q["consume"], [
                [r for r, _ in consumed], [s for _, s in consumed]]).fetchall()}
            for run_id, signal in consumed:
                if signal not in gone:
                    raise ValueError(f"run {run_id!r}: signal {signal} is not queued")
        self._effects(conn, fresh)

    def _append(self, conn: psycopg.Connection[Any], entries: list[tuple[str, Entry]]) -> None:
        try:
            conn.execute(self._q["append"], [
                [r for r, _ in entries], [e.seq for _, e in entries],
                [e.position for _, e in entries], [e.kind for _, e in entries],
                [e.name for _, e in entries], [e.status for _, e in entries],
                [e.value for _, e in entries], [e.started for _, e in entries],
                [e.ended for _, e in entries],
            ])
        except psycopg.errors.UniqueViolation:  # guarded by next_seq; a corrupt journal
            raise ValueError(_SEQ_TAKEN) from None

    def _effects(self, conn: psycopg.Connection[Any], ws: Sequence[Write]) -> None:
        """What applied writes do to other runs: children made (each a statement of its own,
        after the fenced update, so that a cancel committed meanwhile is seen), cancels and
        notices."""
        q = self._q
        for w in ws:
            for c in w.spawn:
                try:
                    with conn.transaction():  # a savepoint: the error names the child
                        conn.execute(q["spawn"], [c.run_id, c.workflow, c.args, w.run_id])
                except psycopg.errors.UniqueViolation:
                    raise ReplaygenError(f"cannot create child run {c.run_id!r} of run "
                                         f"{w.run_id!r}: a run with that id exists") from None
            if w.cancel:
                self._cancel_tree(conn, list(w.cancel))
            if w.notify is not None:
                self._deliver_notice(conn, w.notify)
            if w.spawn or w.cancel or w.notify:
                self._notify(conn, "news", w.run_id)

    def _cancel_tree(self, conn: psycopg.Connection[Any], run_ids: list[str]) -> int:
        """Request the cancel of these runs and every run descending from them. Until a
        statement finds nothing new: a child made by a write that committed while the last
        one waited for its parent's row is seen by the next."""
        total = 0
        while n := conn.execute(self._q["cancel_tree"], [run_ids, list(CLOSED)]).rowcount:
            total += n
        return total

    def _deliver_notice(self, conn: psycopg.Connection[Any], n: Notice) -> None:
        conn.execute(self._q["notice"], [n.run_id, n.name, n.payload, n.run_id, list(CLOSED)])

    def _already_applied(self, conn: psycopg.Connection[Any], w: Write) -> bool:
        """A write the fenced UPDATE refused: stale fence (False), an exact repeat of a write
        that did commit although its caller saw the connection fail (True), or a seq the
        journal does not continue from (ValueError, as MemoryStore)."""
        if not w.entries:
            return False
        row = conn.execute(self._q["lock"], [w.run_id]).fetchone()
        if row is None or row[0] != w.owner or row[1] != w.fence:
            return False
        next_seq, first = row[2], w.entries[0].seq
        if next_seq == first + len(w.entries):
            held = conn.execute(self._q["entries"],
                                [w.run_id, first, next_seq]).fetchall()
            if [_entry(r) for r in held] == list(w.entries):
                return True
        raise ValueError(f"run {w.run_id!r}: journal seq {first} already taken or skipped "
                         f"(the journal holds {next_seq} entries)")

    def claim(
        self, owner: str, *, states: Collection[str] = ACTIVE, dead: Collection[str] = (),
        workflows: Collection[str] | None = None, run_ids: Collection[str] | None = None,
        reset: bool = False, limit: int = 1000, limits: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        token = uuid.uuid4().hex
        with self._unsure_lock:
            unsure = list(self._unsure.get(owner, ()))
        params = {"owner": owner, "token": token, "states": list(states), "dead": list(dead),
                  "reset": reset, "working": list(WORKING), "unsure": unsure, "limit": limit,
                  "ids": None if run_ids is None else list(run_ids),
                  "wfs": None if workflows is None else list(workflows), "full": []}

        def tx(conn: psycopg.Connection[Any]) -> list[Claim]:
            with conn.transaction():
                if limits:
                    params["ids"] = self._admitted(conn, limits, params)
                rows = conn.execute(self._q["claim"], params).fetchall()
                rows.sort(key=lambda r: r[0])
                runs: list[RunRecord] = []
                for row_id, *row in rows:
                    run = _record(row)
                    if (problem := damage(run)) is None:  # damage needs a SQL_ASCII database
                        runs.append(run)
                        continue
                    log.warning("run %r blocked: its row (id %d) is damaged: %s", run.run_id,
                                row_id, problem)
                    conn.execute(self._q["block"], [blocked_error(run, f"id {row_id}", problem),
                                                    row_id])
                journals: dict[str, list[Entry]] = {run.run_id: [] for run in runs}
                if runs:
                    for row in conn.execute(self._q["journals"], [list(journals)]):
                        journals[row[0]].append(_entry(row[1:]))
            return [Claim(run, journals[run.run_id]) for run in runs]
        claims = self._call(tx, unsure=(owner, token))
        if unsure:  # any run those tokens took is claimed afresh now
            with self._unsure_lock:
                self._unsure[owner].difference_update(unsure)
        return claims

    def _admitted(self, conn: psycopg.Connection[Any], limits: Mapping[str, int],
                  params: dict[str, Any]) -> list[str]:
        """The runs a claim with ``limits`` may take: locked, within the free slots (the
        limited workflows' locks are held until the claim commits)."""
        self._lock_limits(conn, limits)
        free = {w: limits[w] - n for w, n in conn.execute(
            self._q["working"], ["", list(limits)]).fetchall()}
        params["full"] = [w for w, n in free.items() if n <= 0]
        picked = []
        for run_id, workflow, state in conn.execute(self._q["candidates"], params).fetchall():
            if state in WORKING and workflow in free:  # a slot of its workflow's
                if free[workflow] <= 0:
                    continue
                free[workflow] -= 1
            picked.append(run_id)
        return picked

    def purge(self, before: float, *, states: Collection[str], limit: int,
              tombstone: Callable[[RunRecord], tuple[str, str]]) -> list[str]:
        def tx(conn: psycopg.Connection[Any]) -> list[str]:
            with conn.transaction():
                found: list[RunRecord] = []
                for state in [s for s in FINISHED if s in states]:  # each by its index
                    found += map(_record, conn.execute(
                        self._q["purgeable"], [state, before, limit - len(found)]).fetchall())
                    if len(found) >= limit:
                        break
                marks = [(r.run_id, *tombstone(r)) for r in found]
                ids = [m[0] for m in marks]
                if ids:
                    conn.execute(self._q["tombstone"], [ids, [m[1] for m in marks],
                                                        [m[2] for m in marks]])
                    conn.execute(self._q["drop_journals"], [ids])
                    conn.execute(self._q["drop_signals"], [ids])
                return ids
        return self._call(tx)

    def owners(self) -> list[str]:
        rows = self._call(lambda c: c.execute(self._q["owners"], [list(FINISHED)]).fetchall(),
                          idempotent=True)
        return sorted(r[0] for r in rows if isinstance(r[0], str))  # a damaged owner: nobody's

    def heartbeat(self, owner: str, lease: float, *, workflows: Collection[str]) -> None:
        served = sorted(set(workflows))
        self._call(lambda c: c.execute(self._q["heartbeat"], [owner, float(lease), served]),
                   idempotent=True)

    def workers(self) -> dict[str, Worker]:
        rows = self._call(lambda c: c.execute(self._q["workers"]).fetchall(), idempotent=True)
        return {r[0]: Worker(workflow_names(r[1]), r[2]) for r in rows if isinstance(r[0], str)}

    def counts(self) -> dict[tuple[str, str], int]:
        rows = self._call(lambda c: c.execute(self._q["counts"]).fetchall(), idempotent=True)
        return {(r[0], r[1]): r[2] for r in rows if isinstance(r[0], str) and isinstance(r[1], str)}

    def last_entries(self, run_ids: Collection[str]) -> dict[str, Entry]:
        rows = self._call(lambda c: c.execute(self._q["last_entries"], [list(run_ids)]).fetchall(),
                          idempotent=True)
        return {r[0]: _entry(r[1:]) for r in rows}

    def release(self, owner: str) -> None:
        def tx(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(self._q["drop_worker"], [owner])
                conn.execute(self._q["release"], [owner])
                self._notify(conn, "release")
        self._call(tx, idempotent=True)

    def deliver(self, run_id: str, name: str, payload: str) -> int:
        def tx(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                # FOR SHARE: the run cannot finish between this check and the insert.
                row = conn.execute(self._q["share"], [run_id]).fetchone()
                if row is None:
                    raise RunNotFound(f"cannot deliver {name!r}: no run {run_id!r} in this store")
                if row[0] in CLOSED:
                    raise RunFinished(
                        f"cannot deliver {name!r}: run {run_id!r} is already {row[0]}")
                made = conn.execute(self._q["deliver"], [run_id, name, payload]).fetchone()
                self._notify(conn, "signal", run_id)
                return int(made[0]) if made else 0
        return self._call(tx)

    def cancel(self, run_id: str) -> RunRecord:
        def tx(conn: psycopg.Connection[Any]) -> RunRecord:
            with conn.transaction():
                # Its row first: a write of it under way (making a child) commits before.
                if conn.execute(self._q["lock"], [run_id]).fetchone() is None:
                    raise RunNotFound(f"cannot cancel: no run {run_id!r} in this store")
                if self._cancel_tree(conn, [run_id]):
                    self._notify(conn, "cancel", run_id)
                return _record(conn.execute(self._q["get"], [run_id]).fetchone() or ())
        return self._call(tx, idempotent=True)

    def terminate(self, run_id: str, error: str, notify: Notice | None = None) -> RunRecord:
        def tx(conn: psycopg.Connection[Any]) -> RunRecord:
            with conn.transaction():
                row = conn.execute(self._q["lock"], [run_id]).fetchone()
                if row is None:
                    raise RunNotFound(f"cannot terminate: no run {run_id!r} in this store")
                done = 0
                while n := conn.execute(self._q["terminate_tree"],
                                        [[run_id], error, list(CLOSED)]).rowcount:
                    done += n
                if done:
                    if notify is not None:
                        self._deliver_notice(conn, notify)
                    self._notify(conn, "release", run_id)
                return _record(conn.execute(self._q["get"], [run_id]).fetchone() or ())
        return self._call(tx, idempotent=True)

    def wakeups(self, owner: str) -> list[tuple[str, bool]]:
        rows = self._call(lambda c: c.execute(self._q["wakeups"], [owner]).fetchall(),
                          idempotent=True)
        return [(r[0], r[1]) for r in rows if isinstance(r[0], str)]

    def watch(self, token: object, timeout: float) -> object:
        with self._cv:
            start = self._listener is None and not self._stop.is_set()
            if start:
                self._listener = threading.Thread(target=self._listen, daemon=True,
                                                  name="replaygen-pg-listen")
                self._listener.start()
        if start:  # so that what happens after this call returns is never missed
            self._listening.wait(2.0)
        with self._cv:
            self._cv.wait_for(lambda: self._epoch != token, timeout)
            return self._epoch

    def _listen(self) -> None:
        """Keep one connection LISTENing; every notification (and every reconnect, since
        notifications may have been missed meanwhile) moves the watch token on."""
        delay, failing = 0.1, False
        while not self._stop.is_set():
            try:
                with self._pool.connect() as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    if failing:
                        log.warning("PostgreSQL (%s): listening for notifications again", self.dsn)
                    delay, failing = 0.1, False
                    if self._listening.is_set():
                        self._bump()
                    self._listening.set()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._bump()
            except Exception as exc:
                if not failing:
                    log.warning("PostgreSQL (%s): lost the notification connection (%s); "
                                "reconnecting", self.dsn, self._scrub(str(exc)))
                failing = True
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def runs(
        self, *, states: Collection[str] | None = None, workflow: str | None = None,
        parent: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[RunRecord]:
        params = {"states": None if states is None else list(states), "workflow": workflow,
                  "parent": parent, "limit": limit, "offset": offset}
        rows = self._call(lambda c: c.execute(self._q["runs"], params).fetchall(),
                          idempotent=True)
        return [_record(r) for r in rows]

    def close(self) -> None:
        self._stop.set()
        self._pool.close()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=2.0)


def _parse(dsn: str) -> dict[str, Any]:
    if not isinstance(dsn, str):
        raise ReplaygenError(f"dsn must be a str, got {type(dsn).__name__}")
    try:
        return dict(_conninfo.conninfo_to_dict(dsn))
    except psycopg.Error:
        # libpq's message quotes the string, password included: do not pass it on.
        raise ReplaygenError(
            "the PostgreSQL DSN cannot be parsed (not shown: it may hold a password); use "
            "'postgresql://user:password@host:port/dbname' or 'host=... dbname=...'") from None


def _rounds(writes: Sequence[Write]) -> list[list[int]]:
    """Split indices so that no round holds two writes of one run (they apply in order)."""
    rounds: list[list[int]] = []
    seen: dict[str, int] = {}
    for i, w in enumerate(writes):
        n = seen.get(w.run_id, 0)
        seen[w.run_id] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    return rounds


_SEQ_TAKEN = "journal seq already taken (the journal and next_seq of a run disagree)"


def _check_seqs(ws: Sequence[Write]) -> None:
    for w in ws:
        for k, e in enumerate(w.entries):
            if e.seq != w.entries[0].seq + k:
                raise ValueError(f"run {w.run_id!r}: journal seqs of one write are not "
                                 f"consecutive ({[x.seq for x in w.entries]})")


# Runs a claim may take (see Store.claim); with limits, not the working runs of a full workflow.
_CLAIMABLE = """
    WHERE r.state = ANY(%(states)s)
      AND (%(ids)b::text[] IS NULL OR r.run_id = ANY(%(ids)b::text[]))
      AND (%(wfs)b::text[] IS NULL OR r.workflow = ANY(%(wfs)b::text[]))
      AND (r.owner IS NULL
           OR (r.owner <> %(owner)s AND (r.owner = ANY(%(dead)b::text[])
               OR NOT EXISTS (SELECT 1 FROM {workers} l WHERE l.owner = r.owner
                              AND l.lease_until >= now())))
           OR (r.owner = %(owner)s AND r.token = ANY(%(unsure)b::text[])))
      AND NOT (r.workflow = ANY(%(full)b::text[]) AND r.state = ANY(%(working)b::text[]))"""


# The statements, with {names} of the schema's relations filled in by _queries().
_TEXT: dict[str, str] = {
    "create_schema": "CREATE SCHEMA IF NOT EXISTS {schema}",
    "create_meta": "CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value text NOT NULL)",
    "version": "SELECT value FROM {meta} WHERE key = 'schema_version'",
    "set_version": "INSERT INTO {meta} VALUES ('schema_version', %s)",
    "create_tables": _TABLES,
    "create": f"""
        INSERT INTO {{runs}} (run_id, workflow, args, forked_from, state, owner, fence,
                              token, next_seq, created, updated)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, {_NOW}, {_NOW})
        ON CONFLICT (run_id) DO NOTHING RETURNING run_id""",
    "create_many": f"""
        INSERT INTO {{runs}} (run_id, workflow, args, forked_from, state, owner, fence,
                              token, next_seq, created, updated)
        SELECT r, w, a, src, s, o, f, t, n, {_NOW}, {_NOW}
        FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                    %b::bigint[], %b::text[], %b::int[])
            AS x(r, w, a, src, s, o, f, t, n)
        ORDER BY r  -- one order for every batch: two batches sharing ids never deadlock
        ON CONFLICT (run_id) DO NOTHING RETURNING run_id""",
    "get": f"SELECT {_RUN_COLUMNS} FROM {{runs}} WHERE run_id = %s",
    "share": "SELECT state FROM {runs} WHERE run_id = %s FOR SHARE",
    "lock": "SELECT owner, fence, next_seq FROM {runs} WHERE run_id = %s FOR UPDATE",
    "journal": f"SELECT {_ENTRY_COLUMNS} FROM {{journal}} WHERE run_id = %s ORDER BY seq",
    "journals": f"SELECT run_id, {_ENTRY_COLUMNS} FROM {{journal}} WHERE run_id = ANY(%s) "
                f"ORDER BY run_id, seq",
    "entries": f"SELECT {_ENTRY_COLUMNS} FROM {{journal}} WHERE run_id = %s AND seq >= %s "
               f"AND seq < %s ORDER BY seq",
    "signals": "SELECT id, name, payload, sent FROM {signals} WHERE run_id = %s ORDER BY id",
    # The fence: a write applies only while its owner still holds the run at its fence,
    # and its entries only where the journal ends (else _already_applied sorts it out).
    "commit": f"""
        UPDATE {{runs}} r SET state = w.state, updated = {_NOW}, wake_at = w.wake_at,
            waiting_for = w.waiting_for, result = w.result, error = w.error,
            resumes = CASE WHEN w.progress THEN 0 ELSE r.resumes END,
            owner = CASE WHEN w.release THEN NULL ELSE r.owner END,
            cancel_seen = r.cancel_seen OR w.cancel_seen,
            next_seq = r.next_seq + w.n
        FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::float8[],
                    %b::text[], %b::text[], %b::text[], %b::bool[], %b::bool[],
                    %b::int[], %b::int[], %b::bool[])
            AS w(run_id, owner, fence, state, wake_at, waiting_for, result, error, release,
                 cancel_seen, first, n, progress)
        WHERE r.run_id = w.run_id AND r.owner = w.owner AND r.fence = w.fence
            AND (w.n = 0 OR r.next_seq = w.first)
        RETURNING r.run_id""",
    "append": f"""
        INSERT INTO {{journal}} (run_id, {_ENTRY_COLUMNS})
        SELECT * FROM unnest(%b::text[], %b::int[], %b::int[], %b::text[], %b::text[],
                             %b::text[], %b::text[], %b::float8[], %b::float8[])""",
    "consume": """
        DELETE FROM {signals} s USING unnest(%b::text[], %b::bigint[]) AS c(run_id, id)
        WHERE s.id = c.id AND s.run_id = c.run_id RETURNING s.id""",
    "candidates": f"""
        SELECT r.run_id, r.workflow, r.state FROM {{runs}} r {_CLAIMABLE}
        ORDER BY r.id LIMIT %(limit)s FOR UPDATE OF r SKIP LOCKED""",
    "claim": f"""
        WITH c AS (
            SELECT r.run_id FROM {{runs}} r {_CLAIMABLE}
            ORDER BY r.id LIMIT %(limit)s
            FOR UPDATE OF r SKIP LOCKED)
        UPDATE {{runs}} r SET owner = %(owner)s, fence = r.fence + 1, token = %(token)s,
            resumes = CASE WHEN %(reset)s THEN 0
                ELSE r.resumes + CASE WHEN r.owner IS NOT NULL AND r.owner <> %(owner)s
                AND r.state = ANY(%(working)b::text[]) THEN 1 ELSE 0 END END
        FROM c WHERE r.run_id = c.run_id
        RETURNING r.id, {', '.join('r.' + c for c in _RUN_COLUMNS.split(', '))}""",
    "owners": "SELECT DISTINCT owner FROM {runs} WHERE owner IS NOT NULL "
              "AND state <> ALL(%b::text[])",
    "counts": "SELECT workflow, state, count(*) FROM {runs} GROUP BY workflow, state",
    "workflow_of": "SELECT workflow FROM {runs} WHERE run_id = %s",
    # Runs of these workflows (but one) that work under live owners: the slots in use.
    "working": """
        SELECT w, (SELECT count(*) FROM {runs} r WHERE r.workflow = w
                   AND r.state = ANY('{{pending,running}}') AND r.run_id <> %s
                   AND EXISTS (SELECT 1 FROM {workers} l WHERE l.owner = r.owner
                               AND l.lease_until >= now()))
        FROM unnest(%b::text[]) AS w""",
    "purgeable": f"""
        SELECT {_RUN_COLUMNS} FROM {{runs}} WHERE state = %s AND updated < %s
        ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED""",
    "tombstone": """
        UPDATE {runs} r SET state = 'purged', args = t.args, error = t.error, result = NULL,
            owner = NULL, wake_at = NULL, waiting_for = NULL, cancel_requested = false,
            cancel_seen = false
        FROM unnest(%b::text[], %b::text[], %b::text[]) AS t(run_id, args, error)
        WHERE r.run_id = t.run_id""",
    "drop_journals": "DELETE FROM {journal} WHERE run_id = ANY(%s)",
    "drop_signals": "DELETE FROM {signals} WHERE run_id = ANY(%s)",
    "last_entries": f"SELECT DISTINCT ON (run_id) run_id, {_ENTRY_COLUMNS} FROM {{journal}} "
                    f"WHERE run_id = ANY(%s) ORDER BY run_id, seq DESC",
    "block": f"UPDATE {{runs}} SET state = 'blocked', owner = NULL, error = %s, "
             f"updated = {_NOW} WHERE id = %s",
    # to_regclass: NULL (not an error) for a relation that is missing.
    "current": """
        SELECT (SELECT value FROM {meta} WHERE key = 'schema_version'),
            (SELECT count(to_regclass(r)) FROM unnest(%b::text[]) AS r)::int,
            (SELECT count(*) FROM pg_catalog.pg_attribute a,
                unnest(%b::text[], %b::text[]) AS c(t, name)
             WHERE a.attrelid = to_regclass(c.t) AND a.attname = c.name
                AND NOT a.attisdropped)::int""",
    "has_column": """
        SELECT 1 FROM information_schema.columns WHERE table_schema = %s
            AND table_name = %s AND column_name = %s""",
    "heartbeat": """
        INSERT INTO {workers} AS w (owner, lease_until, workflows)
        VALUES (%s, clock_timestamp() + %s * interval '1 second', %b::text[])
        ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until,
            workflows = COALESCE(EXCLUDED.workflows, w.workflows)""",
    "workers": "SELECT owner, workflows, extract(epoch FROM lease_until)::float8 FROM "
               "{workers} WHERE lease_until >= now()",
    "drop_worker": "DELETE FROM {workers} WHERE owner = %s",
    "release": "UPDATE {runs} SET owner = NULL WHERE owner = %s",
    "deliver": f"INSERT INTO {{signals}} (run_id, name, payload, sent) "
               f"VALUES (%s, %s, %s, {_NOW}) RETURNING id",
    "notice": f"""
        INSERT INTO {{signals}} (run_id, name, payload, sent)
        SELECT %s, %s, %s, {_NOW} WHERE EXISTS (
            SELECT 1 FROM {{runs}} WHERE run_id = %s AND state <> ALL(%b::text[]))""",
    "spawn": f"""
        INSERT INTO {{runs}} (run_id, workflow, args, state, owner, fence, created, updated,
                              parent, cancel_requested)
        SELECT %s, %s, %s, 'pending', NULL, 1, {_NOW}, {_NOW}, p.run_id,
               p.cancel_requested AND NOT p.cancel_seen
        FROM {{runs}} p WHERE p.run_id = %s""",
    "cancel_tree": """
        WITH RECURSIVE tree(id) AS (
            SELECT unnest(%b::text[])
            UNION SELECT r.run_id FROM {runs} r JOIN tree ON r.parent = tree.id)
        UPDATE {runs} SET cancel_requested = true
        WHERE run_id IN (SELECT id FROM tree) AND state <> ALL(%b::text[])
            AND NOT cancel_requested""",
    "terminate_tree": f"""
        WITH RECURSIVE tree(id) AS (
            SELECT unnest(%b::text[])
            UNION SELECT r.run_id FROM {{runs}} r JOIN tree ON r.parent = tree.id)
        UPDATE {{runs}} SET state = 'cancelled', error = %s, owner = NULL, fence = fence + 1,
            wake_at = NULL, waiting_for = NULL, updated = {_NOW}
        WHERE run_id IN (SELECT id FROM tree) AND state <> ALL(%b::text[])""",
    "update_version": "UPDATE {meta} SET value = %s WHERE key = 'schema_version'",
    "runs_parent": "CREATE INDEX IF NOT EXISTS {runs_parent} ON {runs} (parent, id)",
    "wakeups": """
        SELECT r.run_id, r.cancel_requested AND NOT r.cancel_seen FROM {runs} r
        WHERE r.owner = %s AND ((r.cancel_requested AND NOT r.cancel_seen)
              OR EXISTS (SELECT 1 FROM {signals} s WHERE s.run_id = r.run_id))
        ORDER BY r.id""",
    "runs": f"""
        SELECT {_RUN_COLUMNS} FROM {{runs}}
        WHERE (%(states)b::text[] IS NULL AND state <> 'purged'
               OR state = ANY(%(states)b::text[]))
          AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s::text)
          AND (%(parent)s::text IS NULL OR parent = %(parent)s::text)
        ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s""",
}
_TEXT["commit_step"] = f"""
    WITH w AS (
        UPDATE {{runs}} r SET state = %s, updated = {_NOW}, wake_at = %s::float8,
            waiting_for = %s::text, result = %s::text, error = %s::text,
            resumes = CASE WHEN %s::bool THEN 0 ELSE r.resumes END,
            owner = CASE WHEN %s::bool THEN NULL ELSE r.owner END,
            cancel_seen = r.cancel_seen OR %s::bool, next_seq = r.next_seq + 1
        WHERE r.run_id = %s AND r.owner = %s AND r.fence = %s AND r.next_seq = %s
        RETURNING r.run_id)
    INSERT INTO {{journal}} (run_id, {_ENTRY_COLUMNS})
    SELECT run_id, %s::int, %s::int, %s::text, %s::text, %s::text, %s::text, %s::float8,
           %s::float8 FROM w
    RETURNING run_id"""
for one in ("create", "create_many"):  # a start alone: the row and its notice, one statement
    _TEXT[f"start_{one}"] = f"WITH made AS ({_TEXT[one]}) SELECT run_id, CASE WHEN %s THEN " \
                          f"pg_notify(%s, 'create') END FROM made"
_TEXT["commit_append"] = f"""
    WITH w AS ({_TEXT["commit"]}), a AS (
        INSERT INTO {{journal}} (run_id, {_ENTRY_COLUMNS})
        SELECT * FROM unnest(%b::text[], %b::int[], %b::int[], %b::text[], %b::text[],
                             %b::text[], %b::text[], %b::float8[], %b::float8[])
            AS e(run_id, {_ENTRY_COLUMNS})
        WHERE e.run_id IN (SELECT run_id FROM w))
    SELECT run_id FROM w"""


def _queries(schema: str) -> dict[str, bytes]:
    """The statements for ``schema``, as bytes rendered once: psycopg renders a composed
    query anew at each execute (~5% of a lone step's CPU), and caches its parse by these
    bytes. Identifiers are UTF-8, as the connections are (or SQL_ASCII's raw bytes)."""
    names = {
        "schema": sql.Identifier(schema),
        **{t: sql.Identifier(schema, t) for t in ("meta", "runs", "journal", "signals", "workers")},
        # index names live in the table's schema and must not be schema-qualified
        **{i: sql.Identifier(i) for i in ("runs_owner", "runs_state", "signals_run",
                                          "runs_parent")},
    }
    return {k: _render(v, {n: names[n] for n in names if "{" + n + "}" in v})
            for k, v in _TEXT.items()}


def _render(text: str, names: dict[str, sql.Composable]) -> bytes:
    if "%s" in text or "%b" in text or "%(" in text:
        # psycopg reads a % in a statement with parameters as a placeholder's, even within a
        # quoted name: a schema named "a%sb" would shift every parameter. Doubled, it is one %.
        names = {n: sql.SQL(i.as_string().replace("%", "%%")) for n, i in names.items()}
    return sql.SQL(text).format(**names).as_bytes()
