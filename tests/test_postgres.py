"""PostgresStore: the store-specific guarantees, against a real PostgreSQL server.

Connects to postgresql://postgres@127.0.0.1:5432/test (REPLAYGEN_TEST_DSN overrides). Every
test gets its own schema under a random per-session prefix; all are dropped at the end. An
unreachable server skips these tests, or fails them when CI is set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

from replaygen import Do, Interpreter, Wait  # noqa: E402
from replaygen.errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable  # noqa: E402
from replaygen.store import Entry, MemoryStore, Write  # noqa: E402
from replaygen.stores.postgres import SCHEMA_VERSION, PostgresStore  # noqa: E402
from replaygen.stores.conformance import create  # noqa: E402

pytestmark = pytest.mark.postgres
DSN = os.environ.get("REPLAYGEN_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
PREFIX = f"rgtest_{uuid.uuid4().hex[:8]}"
WORKER = str(Path(__file__).with_name("_pg_worker.py"))
_counter = iter(range(1_000_000))


@pytest.fixture(scope="session")
def admin() -> Iterator[psycopg.Connection]:
    try:
        conn = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        params = psycopg.conninfo.conninfo_to_dict(DSN)
        where = psycopg.conninfo.make_conninfo("", **{
            **params, **({"password": "***"} if "password" in params else {})})
        reason = (f"PostgreSQL is not reachable at {where} ({' '.join(str(exc).split())}); "
                  f"start it with .ci/pg-up or point REPLAYGEN_TEST_DSN at a server")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    yield conn
    conn.close()
    conn = psycopg.connect(DSN, autocommit=True, connect_timeout=10)  # the server may have restarted
    for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                [PREFIX + "%"]).fetchall():
        conn.execute(psycopg.sql.SQL("DROP SCHEMA {} CASCADE").format(psycopg.sql.Identifier(name)))
    conn.close()


@pytest.fixture
def schema(admin: psycopg.Connection) -> str:
    return f"{PREFIX}_{next(_counter)}"


@pytest.fixture
def store(schema: str) -> Iterator[PostgresStore]:
    s = PostgresStore(DSN, schema=schema)
    yield s
    s.close()


def _terminate(admin: psycopg.Connection, app: str) -> None:
    """Terminate every backend of ``app`` (what a DBA's kill or a failover does)."""
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  "WHERE application_name = %s AND pid <> pg_backend_pid()", [app])


def _settled(store: PostgresStore) -> object:
    """A watch token once the store's listener is connected and quiet."""
    token = store.watch(None, 0)
    while (new := store.watch(token, 0.3)) != token:
        token = new
    return token


def _entry(seq: int, slot: int, value: str = '"v"', name: str = "s") -> Entry:
    return Entry(seq, slot, "do", name, "ok", value, 1.5, 2.25)


# ---- the protocol, side by side with MemoryStore ------------------------------------------

def _script(store: object) -> list[object]:
    """Drive a store through the protocol's rules; return what it answered (times removed)."""
    s = store
    out: list[object] = []

    def rec(r: object) -> object:
        if r is None:
            return None
        return dataclasses.replace(r, created=0.0, updated=0.0)  # type: ignore[type-var]

    def attempt(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return ("ok", fn(*args, **kwargs))
        except ReplaygenError as exc:  # messages users see must match too
            return (type(exc).__name__, str(exc))
        except ValueError as exc:  # a broken invariant of the engine: the kind is enough
            return (type(exc).__name__, "journal" in str(exc) or "signal" in str(exc))

    s.heartbeat("A", 60, workflows=["wf"])
    s.heartbeat("B", 60, workflows=["wf"])
    hostile = "r'; DROP TABLE runs; --\u00e9\u4e2d\U0001f600\"\\"
    out.append(create(s, hostile, "wf\u00e9", '{"args":["\\u0000"],"kwargs":{}}', "A"))
    out.append(rec(create(s, hostile, "other", "{}", "B")))
    out.append(create(s, "r2", "wf", "{}", "A"))
    out.append(rec(s.get(hostile)))
    out.append(s.get("missing"))
    # fenced commits: a stale fence or another owner is refused and appends nothing
    ok = s.commit([
        Write(hostile, "A", 1, "running", (_entry(0, 0, '"\\u0000 \u00e9"'), _entry(1, 1))),
        Write("r2", "A", 2, "running", (_entry(0, 0),)),
        Write("r2", "B", 1, "running", (_entry(0, 0),)),
        Write("missing", "A", 1, "running"),
    ])
    out.append(ok)
    out.append(s.journal(hostile))
    out.append(s.journal("r2"))
    # a seq that skips or repeats is an error, as the primary key makes it
    out.append(attempt(s.commit, [Write(hostile, "A", 1, "running", (_entry(3, 2),))]))
    out.append(attempt(s.commit, [Write(hostile, "A", 1, "running", (_entry(1, 2),))]))
    out.append(s.journal(hostile))
    # signals: FIFO, consumed by exactly one write, which must find it
    out.append(attempt(s.deliver, "missing", "go", "1"))
    s.deliver(hostile, "go", '"first"')
    s.deliver(hostile, "go", '"second"')
    s.deliver("r2", "other", "null")
    sigs = s.signals(hostile)
    out.append([(g.name, g.payload) for g in sigs])
    out.append(sorted(s.wakeups("A")))
    out.append(s.commit([Write(hostile, "A", 1, "running", (_entry(2, 2, '"first"', "go"),),
                               consume=(sigs[0].id,))]))
    out.append([(g.name, g.payload) for g in s.signals(hostile)])
    out.append(attempt(s.commit, [Write(hostile, "A", 1, "running", (_entry(3, 3),),
                                        consume=(sigs[0].id,))]))
    out.append(attempt(s.commit, [Write(hostile, "A", 1, "running", (_entry(3, 3),),
                                        consume=(s.signals("r2")[0].id,))]))
    out.append(len(s.journal(hostile)))
    # cancel: idempotent, reported by wakeups until journaled (cancel_seen)
    out.append(attempt(s.cancel, "missing"))
    out.append(rec(s.cancel("r2")).cancel_requested)  # type: ignore[union-attr]
    out.append(rec(s.cancel("r2")))
    out.append(sorted(s.wakeups("A")))
    out.append(s.commit([Write("r2", "A", 1, "running", (_entry(0, 0),), cancel_seen=True)]))
    out.append(sorted(s.wakeups("A")))
    # claims: a live owner's runs are not taken; a lapsed or dead one's are, bumping the fence;
    # resumes counts deaths while pending or running and is reset by progress
    out.append(s.claim("B"))
    out.append([(c.run.run_id, c.run.fence, c.run.resumes, len(c.journal))
                for c in s.claim("B", dead=["A"], limit=1)])
    out.append(s.commit([Write(hostile, "A", 1, "running")]))  # A lost it
    out.append(s.owners())
    create(s, "r3", "wf", "{}", "C")  # C never heartbeat: no lease
    create(s, "r4", "wf2", "{}", "C")
    out.append([c.run.run_id for c in s.claim("B", workflows=["wf2"])])
    out.append([c.run.run_id for c in s.claim("B", run_ids=["r3", "nope"])])
    out.append(s.commit([Write("r3", "B", 2, "waiting", waiting_for="go", wake_at=12.5)]))
    out.append(rec(s.get("r3")))
    # finishing, blocking, release
    out.append(s.commit([Write("r4", "B", 2, "completed", result='"done"', release=True)]))
    out.append(attempt(s.deliver, "r4", "go", "1"))
    out.append(rec(s.cancel("r4")))
    out.append(s.commit([Write(hostile, "B", 2, "blocked", error='{"m":1}', release=True)]))
    out.append([c.run.run_id for c in s.claim("A")])
    everything = ("pending", "running", "sleeping", "waiting", "blocked")
    out.append([c.run.run_id for c in s.claim("A", states=everything, reset=True)])
    s.release("A")
    out.append(rec(s.get(hostile)))
    out.append(s.owners())
    out.append([r.run_id for r in s.runs()])
    out.append([r.run_id for r in s.runs(states=["completed", "waiting"], limit=1, offset=1)])
    out.append([r.run_id for r in s.runs(workflow="wf2")])
    # resumes: r3 was waiting (no increment), r2 was running under a dead owner (increment)
    c = s.claim("C", dead=["B", "A"], run_ids=["r2", "r3"])
    out.append(sorted((x.run.run_id, x.run.resumes, x.run.fence) for x in c))
    return out


def test_protocol_answers_like_memory_store(store: PostgresStore) -> None:
    assert _script(store) == _script(MemoryStore())


def test_release_and_deliver_move_the_watch_token(store: PostgresStore) -> None:
    create(store, "r", "wf", "{}", "A")
    token = _settled(store)
    for act in (lambda: store.deliver("r", "go", "1"), lambda: store.cancel("r"),
                lambda: store.release("A")):
        act()
        new = store.watch(token, 2)
        assert new != token
        token = new


def test_values_are_stored_byte_exact(store: PostgresStore) -> None:
    weird = ['"\\u0000"', '"\\ud800"', " spaces  ", "\u00e9\u0301", "'; DROP TABLE x; --",
             '{"a":1.0000000000000002}', "x" * 300_000]
    create(store, "r", "wf", weird[0], "A")
    entries = tuple(_entry(i, i, v, name=f"n'{i}\u4e2d") for i, v in enumerate(weird))
    assert store.commit([Write("r", "A", 1, "running", entries)]) == [True]
    assert store.journal("r") == list(entries)
    with pytest.raises(ReplaygenError, match="NUL"):
        store.commit([Write("r", "A", 1, "running", (_entry(len(weird), 0, "a\x00b"),))])
    assert len(store.journal("r")) == len(weird)


def test_a_write_replayed_after_an_unknown_outcome_counts_once(store: PostgresStore) -> None:
    # A connection that dies around COMMIT leaves the caller unsure; the engine retries the
    # same write. It must be recognised, not appended twice nor refused.
    create(store, "r", "wf", "{}", "A")
    store.deliver("r", "go", "1")
    sig = store.signals("r")[0].id
    w = Write("r", "A", 1, "running", (_entry(0, 0), _entry(1, 1)), consume=(sig,))
    assert store.commit([w]) == [True]
    assert store.commit([w]) == [True]
    assert len(store.journal("r")) == 2
    with pytest.raises(ValueError):  # not the same entries: a real conflict
        store.commit([w._replace(entries=(_entry(0, 0, '"other"'), _entry(1, 1)))])


def test_a_start_grouped_with_steps_is_made_only_once_the_steps_are(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # A commit applies its starts apart from its steps (one statement each). Steps first: if
    # they fail, no start is made yet, so the retry (of the call, or of each write alone)
    # makes the start and says so. Made first, it would answer False (id taken) to a start
    # that only its own earlier attempt made, and a limited run would be left unclaimed.
    create(store, "r", "wf", "{}", "A")
    step = Write("r", "A", 1, "running", (_entry(0, 0),))
    start = Write("n", "A", 1, "pending", create=("wf", "[]"))
    real = store._commit_one_statement  # noqa: SLF001

    def lost(*args: object) -> object:
        monkeypatch.setattr(store, "_commit_one_statement", real)  # once
        raise psycopg.OperationalError("the connection was lost (injected)")
    monkeypatch.setattr(store, "_commit_one_statement", lost)
    with pytest.raises(StoreUnavailable):
        store.commit([step, start])
    assert store.get("n") is None
    assert store.commit([step, start]) == [True, True]
    assert store.get("n") is not None and len(store.journal("r")) == 1


def test_a_schema_name_with_a_percent_sign_works(admin: psycopg.Connection) -> None:
    # psycopg reads % in a statement with parameters as a placeholder's, even in a quoted name.
    name = f"{PREFIX}_p%sx{next(_counter)}"
    s = PostgresStore(DSN, schema=name)
    try:
        create(s, "r", "wf", "{}", "A")
        assert s.commit([Write("r", "A", 1, "running", (_entry(0, 0),))]) == [True]
        assert s.journal("r") == [_entry(0, 0)] and s.get("r") is not None
    finally:
        s.close()
        PostgresStore.drop_schema(DSN, name)


# ---- fencing and claiming ---------------------------------------------------------------

def test_a_worker_whose_lease_lapsed_cannot_append_after_a_takeover(store: PostgresStore) -> None:
    store.heartbeat("A", 0.3, workflows=["wf"])
    create(store, "r", "wf", "{}", "A")
    assert store.commit([Write("r", "A", 1, "running", (_entry(0, 0),))]) == [True]
    store.heartbeat("B", 30, workflows=["wf"])
    assert store.claim("B") == []  # A's lease still holds
    time.sleep(0.5)
    (claim,) = store.claim("B")
    assert claim.run.fence == 2 and claim.journal == [_entry(0, 0)]
    assert claim.run.resumes == 1  # A died (for all B knows) while running
    # A comes back: it still believes it owns the run at fence 1
    store.heartbeat("A", 30, workflows=["wf"])
    assert store.commit([Write("r", "A", 1, "running", (_entry(1, 1, '"A"'),))]) == [False]
    assert store.commit([Write("r", "B", 2, "running", (_entry(1, 1, '"B"'),))]) == [True]
    assert [e.value for e in store.journal("r")] == ['"v"', '"B"']
    assert store.claim("A") == []  # B is live


def test_two_threads_claiming_never_take_the_same_run(schema: str) -> None:
    seed = PostgresStore(DSN, schema=schema)
    for i in range(300):
        create(seed, f"r{i}", "wf", "{}", "nobody")  # no lease: free for anyone
    got: dict[str, list[str]] = {"A": [], "B": []}

    def claimer(owner: str) -> None:
        s = PostgresStore(DSN, schema=schema)
        s.heartbeat(owner, 60, workflows=["wf"])
        while claims := s.claim(owner, limit=7):
            got[owner].extend(c.run.run_id for c in claims)
        s.close()

    threads = [threading.Thread(target=claimer, args=(o,)) for o in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(got["A"]) & set(got["B"])
    assert sorted(got["A"] + got["B"]) == sorted(f"r{i}" for i in range(300))
    assert got["A"] and got["B"]
    seed.close()


# ---- connection, secrets, schema ---------------------------------------------------------

def test_the_password_never_shows(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pw-s3cr3t-\u00e9"
    for dsn in (f"postgresql://postgres:{secret}@127.0.0.1:1/test",
                f"host=127.0.0.1 port=1 user=postgres password={secret} dbname=test"):
        with pytest.raises(StoreUnavailable) as err:
            PostgresStore(dsn, connect_timeout=1)
        text = f"{err.value!s} {err.value!r} {err.value.__cause__!r} {err.value.__context__!r}"
        assert secret not in text and "127.0.0.1" in text
    with pytest.raises(ReplaygenError) as bad:
        PostgresStore(f"postgresql//postgres:{secret}@127.0.0.1", connect_timeout=1)
    assert secret not in str(bad.value) and bad.value.__cause__ is None
    assert secret not in caplog.text


def test_the_password_is_redacted_in_repr(admin: psycopg.Connection, schema: str) -> None:
    # trust authentication ignores the password, so the store connects
    base = psycopg.conninfo.conninfo_to_dict(DSN)
    dsn = psycopg.conninfo.make_conninfo("", **{**base, "password": "hunter2-xyz"})
    s = PostgresStore(dsn, schema=schema)
    assert "hunter2-xyz" not in repr(s) and "***" in repr(s) and "hunter2-xyz" not in s.dsn
    s.close()


def test_unreachable_server_is_unavailable_not_a_crash() -> None:
    with pytest.raises(StoreUnavailable, match="unavailable"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=1)


def test_a_dropped_connection_is_unavailable_then_recovers(
        admin: psycopg.Connection, schema: str) -> None:
    app = f"rg-drop-{uuid.uuid4().hex[:6]}"
    s = PostgresStore(DSN, schema=schema, application_name=app)
    create(s, "r", "wf", "{}", "A")
    s.heartbeat("A", 60, workflows=["wf"])
    assert s.get("r") is not None
    _terminate(admin, app)
    with pytest.raises(StoreUnavailable, match="unavailable"):
        s.commit([Write("r", "A", 1, "running", (_entry(0, 0),))])
    # the next call reconnects; reads on a stale connection are retried at once
    assert s.commit([Write("r", "A", 1, "running", (_entry(0, 0),))]) == [True]
    _terminate(admin, app)
    assert s.get("r") is not None and len(s.journal("r")) == 1
    s.close()


def test_schema_creation_is_safe_when_many_workers_start_at_once(schema: str) -> None:
    errors: list[BaseException] = []
    stores: list[PostgresStore] = []

    def open_one() -> None:
        try:
            stores.append(PostgresStore(DSN, schema=schema))
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 8
    create(stores[0], "r", "wf", "{}", "A")
    assert all(s.get("r") is not None for s in stores)
    for s in stores:
        s.close()


def test_a_schema_written_by_a_newer_version_is_refused(
        admin: psycopg.Connection, schema: str) -> None:
    PostgresStore(DSN, schema=schema).close()
    meta = psycopg.sql.Identifier(schema, "meta")
    version = admin.execute(psycopg.sql.SQL("SELECT value FROM {} WHERE key = 'schema_version'")
                            .format(meta)).fetchone()
    assert version == (str(SCHEMA_VERSION),)
    PostgresStore(DSN, schema=schema).close()  # reopening is idempotent
    admin.execute(psycopg.sql.SQL("UPDATE {} SET value = %s WHERE key = 'schema_version'")
                  .format(meta), [str(SCHEMA_VERSION + 1)])
    with pytest.raises(ReplaygenError, match="newer replaygen"):
        PostgresStore(DSN, schema=schema)


def test_a_schema_from_before_advertised_workflows_gains_the_column(
        admin: psycopg.Connection, schema: str) -> None:
    PostgresStore(DSN, schema=schema).close()
    workers = psycopg.sql.Identifier(schema, "workers")
    admin.execute(psycopg.sql.SQL("ALTER TABLE {} DROP COLUMN workflows").format(workers))
    old_heartbeat = psycopg.sql.SQL(  # replaygen 0.1's, verbatim: it names its columns
        "INSERT INTO {} (owner, lease_until) VALUES (%s, clock_timestamp() + %s * interval "
        "'1 second') ON CONFLICT (owner) DO UPDATE SET lease_until = EXCLUDED.lease_until"
    ).format(workers)
    admin.execute(old_heartbeat, ["old", 60])
    store = PostgresStore(DSN, schema=schema)
    store.heartbeat("new", 60, workflows=["billing"])
    admin.execute(old_heartbeat, ["old", 60])  # an older worker sharing the schema goes on
    assert {o: w.workflows for o, w in store.workers().items()} == {"new": ["billing"],
                                                                      "old": None}
    store.close()


def test_a_version_1_schema_is_migrated_and_reopening_a_current_one_changes_nothing(
        admin: psycopg.Connection, schema: str) -> None:
    PostgresStore(DSN, schema=schema).close()
    ident = psycopg.sql.Identifier
    runs, meta = ident(schema, "runs"), ident(schema, "meta")
    admin.execute(psycopg.sql.SQL("DROP INDEX {}").format(ident(schema, "runs_parent")))
    admin.execute(psycopg.sql.SQL("ALTER TABLE {} DROP COLUMN forked_from, DROP COLUMN parent")
                  .format(runs))
    admin.execute(psycopg.sql.SQL("UPDATE {} SET value = '1' WHERE key = 'schema_version'")
                  .format(meta))
    store = PostgresStore(DSN, schema=schema)  # version 1: migrated
    store.commit([Write("r", "A", 0, "pending", create=("wf", "{}", "src"))])
    assert store.get("r").forked_from == "src"  # type: ignore[union-attr]
    version = psycopg.sql.SQL("SELECT value FROM {} WHERE key = 'schema_version'").format(meta)
    assert admin.execute(version).fetchone() == (str(SCHEMA_VERSION),)
    assert admin.execute("SELECT to_regclass(%s)", [f'"{schema}"."runs_parent"']).fetchone() != (None,)
    store.close()
    # A current schema is opened without the setup lock (or any DDL): while another session
    # holds that lock, opening does not wait.
    key = int.from_bytes(hashlib.sha256(f"replaygen:{schema}".encode()).digest()[:8], "big",
                         signed=True)
    opened: list[PostgresStore] = []
    with admin.transaction():
        admin.execute("SELECT pg_advisory_xact_lock(%s)", [key])
        opener = threading.Thread(target=lambda: opened.append(PostgresStore(DSN, schema=schema)))
        opener.start()
        opener.join(10)
        assert len(opened) == 1, "opening a current schema waited for the setup lock"
    assert opened[0].get("r") is not None
    opened[0].close()


def test_schemas_keep_applications_apart(admin: psycopg.Connection, schema: str) -> None:
    a = PostgresStore(DSN, schema=schema + "_a")
    b = PostgresStore(DSN, schema=schema + "_b 'quoted\"")
    create(a, "r", "wf", "{}", "A")
    assert b.get("r") is None and b.runs() == [] and b.claim("B") == []
    token = _settled(b)
    a.deliver("r", "go", "1")
    assert b.watch(token, 0.5) == token  # a's notifications are not b's
    a.close()
    b.close()


def test_a_notification_from_another_store_wakes_a_watcher(schema: str) -> None:
    a, b = PostgresStore(DSN, schema=schema), PostgresStore(DSN, schema=schema)
    create(a, "r", "wf", "{}", "A")
    token = _settled(b)
    started = time.monotonic()
    threading.Timer(0.2, lambda: a.deliver("r", "go", "1")).start()
    assert b.watch(token, 5) != token
    assert time.monotonic() - started < 2
    a.close()
    b.close()


# ---- through the interpreter -----------------------------------------------------------------

def test_a_workflow_runs_against_postgres(store: PostgresStore) -> None:
    calls: list[int] = []

    def wf(n: int):  # type: ignore[no-untyped-def]
        a = yield Do("add", lambda: calls.append(n) or n + 1)
        b = yield Wait("go")
        return [a, b]

    with Interpreter(store, [wf]) as it:
        rid = it.start(wf, 1, run_id="run 'one' \u00e9")
        other = Interpreter(PostgresStore(DSN, schema=store.schema), [wf])
        deadline = time.monotonic() + 5
        while it.status(rid).state != "waiting" and time.monotonic() < deadline:
            time.sleep(0.02)
        other.deliver(rid, "go", {"k": [1, "\u0000"]})  # from another store object
        assert it.result(rid, timeout=10) == [2, {"k": [1, "\u0000"]}]
        assert calls == [1]
        with pytest.raises(RunFinished, match="completed"):
            other.deliver(rid, "go")
        with pytest.raises(RunNotFound):
            other.cancel("nope")
        other.shutdown()


# ---- several worker processes --------------------------------------------------------------

class _Workers:
    """Worker processes (tests/_pg_worker.py) over one schema, and what their steps did."""

    def __init__(self, tmp: Path, schema: str, lease: float, delay: float = 0.0) -> None:
        self.tmp, self.schema, self.lease, self.delay = tmp, schema, lease, delay
        self.effects, self.stop = tmp / "effects", tmp / "stop"
        self.app = f"rg-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, wait: bool = True) -> subprocess.Popen[str]:
        cfg = {"dsn": DSN, "schema": self.schema, "lease": self.lease, "delay": self.delay,
               "effects": str(self.effects), "stop": str(self.stop), "app": self.app}
        err = open(self.tmp / f"worker{len(self.procs)}.log", "w")
        p = subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE,
                             stderr=err, text=True)
        self.procs.append(p)
        if wait:
            assert p.stdout is not None
            assert p.stdout.readline() == "ready\n"
            assert p.stdout.readline() == "recovered\n"
        return p

    def log(self, i: int) -> str:
        return (self.tmp / f"worker{i}.log").read_text()

    def executions(self, mark: str = "B") -> Counter[tuple[str, int]]:
        out: Counter[tuple[str, int]] = Counter()
        if self.effects.exists():
            for line in self.effects.read_text().splitlines():
                m, run, i, _ = line.split()
                if m == mark:
                    out[(run, int(i))] += 1
        return out

    def by_pid(self, pid: int) -> set[tuple[str, int]]:
        return {(r, int(i)) for m, r, i, p in (ln.split() for ln in
                self.effects.read_text().splitlines()) if int(p) == pid and m == "B"}

    def close(self) -> None:
        self.stop.touch()
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                    p.wait(timeout=15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    p.kill()
                    p.wait()


@pytest.fixture
def workers(tmp_path: Path, schema: str) -> Iterator[callable]:
    made: list[_Workers] = []

    def make(lease: float, delay: float = 0.0) -> _Workers:
        w = _Workers(tmp_path, schema, lease, delay)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _seed(store: PostgresStore, count: int, steps: int, prefix: str = "run",
          released: bool = False) -> list[str]:
    """Runs owned by "seed", which holds no lease: any worker may claim them, once it looks
    (a worker's own start announces nothing). ``released``: unowned, as a client's start
    makes them, which wakes every worker at once."""
    ids = [f"{prefix}-{i}" for i in range(count)]
    for rid in ids:
        args = json.dumps({"args": [rid, steps], "kwargs": {}})
        if released:
            assert store.commit([Write(rid, "seed", 1, "pending", create=("work", args),
                                       release=True)]) == [True]
        else:
            create(store, rid, "work", args, "seed")
    return ids


def _wait_finished(store: PostgresStore, ids: list[str], timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        states = {store.get(r).state for r in ids}  # type: ignore[union-attr]
        if states == {"completed"}:
            return time.monotonic() - started
        assert not states & {"failed", "blocked", "cancelled"}, states
        time.sleep(0.1)
    left = {r: store.get(r).state for r in ids if store.get(r).state != "completed"}  # type: ignore[union-attr]
    raise AssertionError(f"{len(left)} runs not completed after {timeout}s: {list(left.items())[:5]}")


def _assert_journals_whole(store: PostgresStore, ids: list[str], steps: int) -> None:
    for rid in ids:
        journal = store.journal(rid)
        assert [e.seq for e in journal] == list(range(steps)), rid  # no gap, no duplicate
        assert [(e.kind, e.position, e.status) for e in journal] == [("do", i, "ok")
                                                                 for i in range(steps)]


@pytest.mark.slow
def test_several_worker_processes_share_runs_and_run_every_step_once(
        workers, store: PostgresStore) -> None:
    w = workers(lease=5)
    for _ in range(3):
        w.start()
    ids: list[str] = []
    for chunk in range(12):  # each chunk is offered to all three workers at once
        ids += _seed(store, 5, 10, prefix=f"c{chunk}", released=True)
        time.sleep(0.05)
    _wait_finished(store, ids, timeout=60)
    _assert_journals_whole(store, ids, 10)
    runs = w.executions()
    assert set(runs) == {(r, i) for r in ids for i in range(10)}
    assert set(runs.values()) == {1}, [k for k, v in runs.items() if v > 1][:5]
    pids = {int(line.split()[3]) for line in w.effects.read_text().splitlines()}
    assert len(pids) >= 2, "one worker took every run"


@pytest.mark.slow
def test_a_killed_workers_runs_go_to_the_others_within_its_lease(
        workers, store: PostgresStore) -> None:
    w = workers(lease=2, delay=0.15)
    victim = w.start()
    ids = _seed(store, 20, 10)
    deadline = time.monotonic() + 10
    while set(store.owners()) - {"seed"} == set() or "seed" in store.owners():
        assert time.monotonic() < deadline, "the first worker never claimed the runs"
        time.sleep(0.05)
    w.start()  # a live owner holds every run, so this one waits
    time.sleep(0.6)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    held_by_victim = w.by_pid(victim.pid)
    assert held_by_victim, "the victim did no work before it was killed"
    _wait_finished(store, ids, timeout=2 + 10 * 0.15 + 8)
    assert time.monotonic() - killed_at < 2 + 10 * 0.15 + 5
    _assert_journals_whole(store, ids, 10)
    runs = w.executions()
    assert set(runs) == {(r, i) for r in ids for i in range(10)}
    twice = {k for k, v in runs.items() if v > 1}
    # only a step in flight when the victim died may run again, at most one per run
    assert twice <= held_by_victim and all(v <= 2 for v in runs.values())
    assert len({r for r, _ in twice}) == len(twice)


@pytest.mark.slow
def test_a_stalled_worker_past_its_lease_cannot_append_after_it_resumes(
        workers, store: PostgresStore) -> None:
    w = workers(lease=2, delay=0.4)
    stalled = w.start()
    (rid,) = _seed(store, 1, 6)
    deadline = time.monotonic() + 10
    while ("B", "2") not in {(m, i) for m, r, i, p in
                           (ln.split() for ln in (w.effects.read_text().splitlines()
                                                  if w.effects.exists() else []))}:
        assert time.monotonic() < deadline, "the worker never reached step 2"
        time.sleep(0.01)
    os.kill(stalled.pid, signal.SIGSTOP)  # frozen inside step 2 (a GC pause, a partition)
    time.sleep(2.5)  # its lease lapses
    w.start()
    _wait_finished(store, [rid], timeout=15)
    journal_before = store.journal(rid)
    os.kill(stalled.pid, signal.SIGCONT)  # step 2 ends; its commit must be refused
    deadline = time.monotonic() + 10
    while "taken over by another worker" not in w.log(0):
        assert time.monotonic() < deadline, w.log(0)
        time.sleep(0.05)
    assert store.journal(rid) == journal_before
    _assert_journals_whole(store, [rid], 6)
    runs = w.executions()
    assert runs[(rid, 2)] == 2  # at-least-once only for the step in flight
    assert all(runs[(rid, i)] == 1 for i in range(6) if i != 2)
    assert w.by_pid(stalled.pid) == {(rid, 0), (rid, 1), (rid, 2)}


def _restart_server() -> str:
    host = psycopg.conninfo.conninfo_to_dict(DSN).get("host", "")
    if (shutil.which("pg_ctlcluster") and host in ("127.0.0.1", "localhost", "")
            and not os.environ.get("PYTEST_XDIST_WORKER") and os.path.isdir("/etc/postgresql")):
        version = sorted(os.listdir("/etc/postgresql"), key=lambda v: [int(x) for x in
                                                                       v.split(".") if x.isdigit()])[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                       check=True, capture_output=True, timeout=60)
        return "restart"
    return "terminate"


@pytest.mark.slow
def test_a_server_restart_during_load_loses_no_run(
        workers, admin: psycopg.Connection, schema: str) -> None:
    w = workers(lease=15, delay=0.05)
    w.start()
    w.start()
    seeder = PostgresStore(DSN, schema=schema)
    ids = _seed(seeder, 40, 20)
    seeder.close()
    time.sleep(0.4)
    how = _restart_server()
    if how == "terminate":
        for _ in range(3):  # what a failover does to every connection
            _terminate(admin, w.app)
            time.sleep(0.3)
    store = PostgresStore(DSN, schema=schema)  # a fresh one: the admin connection may be gone
    _wait_finished(store, ids, timeout=60)
    assert "store unavailable" in w.log(0) + w.log(1)  # the outage was felt, and waited out
    _assert_journals_whole(store, ids, 20)
    runs = w.executions()
    assert set(runs) == {(r, i) for r in ids for i in range(20)}
    assert set(runs.values()) == {1}, [k for k, v in runs.items() if v > 1][:5]
    store.close()
