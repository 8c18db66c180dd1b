"""Opening a SQLite store (issue 15): a bad path says what to do, a read-only file can be
read, a start-up that fails leaves no file, and processes opening a new file at the same
moment all succeed.

Tests run as root in CI containers, and root ignores file permissions: the permission
tests run their store in a forked child that has dropped to the user ``nobody``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Do, Interpreter, ReplaygenError, RunNotFound, StoreUnavailable, UsageError
from replaygen.store import Entry, Write
import replaygen.stores.sqlite as sqlite_store
from replaygen.stores.conformance import create
from replaygen.stores.sqlite import SQLiteStore

NOBODY = 65534
PATIENCE = 60.0


def unprivileged(fn: Callable[[], Any]) -> dict[str, Any]:
    """Run ``fn`` in a forked child without root's powers; return ``{"value": ...}`` or
    ``{"error": type name, "message": ...}``, sent back as JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            try:
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
            except OSError as exc:
                out: dict[str, Any] = {"skip": f"cannot drop root here: {exc}"}
            else:
                try:
                    out = {"value": fn()}
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    out = {"error": type(exc).__name__, "message": str(exc)}
            with os.fdopen(w, "wb") as f:
                f.write(json.dumps(out, default=repr).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    try:
        while True:
            ready, _, _ = select.select([r], [], [], PATIENCE)
            assert ready, "the unprivileged child did not answer"
            chunk = os.read(r, 65536)
            if not chunk:
                break
            data += chunk
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    out = json.loads(data)
    if "skip" in out:
        pytest.skip(out["skip"])
    return out  # type: ignore[no-any-return]


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory the unprivileged child can reach (pytest's tmp_path is root-only)."""
    folder = Path(tempfile.mkdtemp(prefix="replaygen-perm-"))
    folder.chmod(0o755)
    yield folder
    folder.chmod(0o700)
    shutil.rmtree(folder)


def filled(db: Path) -> None:
    """A store with one run, one journal entry and one signal, closed cleanly."""
    store = SQLiteStore(db)
    create(store, "r", "wf", '{"args":[],"kwargs":{}}', "A")
    assert store.commit([Write("r", "A", 1, "running", (Entry(0, 0, "do", "s", "ok", "1", 1.0, 2.0),))])
    store.deliver("r", "go", '"p"')
    store.release("A")
    store.close()


def reads_then_writes(db: Path) -> Callable[[], Any]:
    def act() -> Any:
        store = SQLiteStore(db)
        run = store.get("r")
        read = [run.state if run else None, [e.value for e in store.journal("r")],
                [r.run_id for r in store.runs()], [s.payload for s in store.signals("r")]]
        refused = []
        for write in (lambda: create(store, "r2", "wf", "{}", "B"),
                      lambda: store.deliver("r", "go", "1"),
                      lambda: store.heartbeat("B", 10.0, workflows=["wf"]),
                      lambda: store.claim("B")):
            try:
                write()
                refused.append("written")
            except StoreUnavailable as exc:
                refused.append(str(exc))
        return {"read": read, "refused": refused}
    return act


READ = ["running", ["1"], ["r"], ['"p"']]


# ---- paths that cannot be a store ------------------------------------------------------


def test_a_missing_directory_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match=r"directory .*no/such/dir' does not exist: create it"):
        SQLiteStore(tmp_path / "no" / "such" / "dir" / "x.db")
    assert list(tmp_path.iterdir()) == []


def test_a_directory_given_as_the_database_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="is a directory, not a database file"):
        SQLiteStore(tmp_path)


def test_a_file_given_as_the_directory_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        SQLiteStore(tmp_path / "plain" / "x.db")


def test_a_file_that_is_not_a_database_is_refused_as_unavailable(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("not sqlite at all, just some text " * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SQLiteStore(tmp_path / "notes.db")


# ---- mode: an existing store only ------------------------------------------------------


def _state_of(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_an_existing_store_only_mode_refuses_a_missing_file_and_makes_none(
        tmp_path: Path, mode: str) -> None:
    with pytest.raises(ReplaygenError, match="the file does not exist"):
        SQLiteStore(tmp_path / "runs.db", mode=mode)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["rw", "ro"])
@pytest.mark.parametrize("kind", ["empty", "foreign"])
def test_an_existing_store_only_mode_leaves_a_file_without_a_store_as_it_was(
        tmp_path: Path, mode: str, kind: str) -> None:
    db = tmp_path / "app.db"
    db.touch()
    if kind == "foreign":
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # another program's WAL database
            conn.execute("CREATE TABLE users (name TEXT)")
        conn.close()
    before = _state_of(db)
    with pytest.raises(ReplaygenError, match="holds no replaygen store"):
        SQLiteStore(db, mode=mode)
    assert _state_of(db) == before


def test_mode_ro_reads_a_store_and_refuses_every_write_changing_no_byte(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    filled(db)
    before = _state_of(db)
    store = SQLiteStore(db, mode="ro")
    run = store.get("r")
    assert [run.state if run else None, [e.value for e in store.journal("r")],
            [r.run_id for r in store.runs()], [s.payload for s in store.signals("r")]] == READ
    for write in (lambda: create(store, "r2", "wf", "{}", "B"),
                  lambda: store.deliver("r", "go", "1"), lambda: store.cancel("r"),
                  lambda: store.heartbeat("B", 10.0, workflows=[]), lambda: store.claim("B")):
        with pytest.raises(ReplaygenError, match="opened read-only .mode 'ro'"):
            write()
    store.close()
    assert _state_of(db) == before


def test_mode_rw_writes_to_an_existing_store(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    filled(db)
    store = SQLiteStore(db, mode="rw")
    store.deliver("r", "go", "2")
    assert [s.payload for s in store.signals("r")] == ['"p"', "2"]
    store.close()


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReplaygenError, match="mode must be one of 'rwc', 'rw', 'ro'"):
        SQLiteStore(tmp_path / "runs.db", mode="w")
    with pytest.raises(ReplaygenError, match="in-memory SQLite database holds no store"):
        SQLiteStore(":memory:", mode="ro")


# ---- permissions -----------------------------------------------------------------------


def test_a_read_only_file_in_a_read_only_directory_can_be_read(shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o444)  # and the directory is root's (0755), or 0555 for a non-root owner
    shared.chmod(0o555)
    out = unprivileged(reads_then_writes(db))
    assert out["value"]["read"] == READ
    for refused in out["value"]["refused"]:
        assert "read-only" in refused and "not writable" in refused and "chmod" in refused
    assert sorted(p.name for p in shared.iterdir()) == ["runs.db"]


def test_a_read_only_file_in_a_writable_directory_can_be_read(shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o444)
    shared.chmod(0o777)
    out = unprivileged(reads_then_writes(db))
    assert out["value"]["read"] == READ
    for refused in out["value"]["refused"]:
        assert "read-only" in refused and "the file is not writable" in refused and "mode 0444" in refused
    # No -wal or -shm file of the reader's (read-only like the database) is left to stop the
    # next writer.
    assert sorted(p.name for p in shared.iterdir()) == ["runs.db"]


def test_a_writable_file_in_a_read_only_directory_says_the_directory_is_the_problem(
        shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o666)
    shared.chmod(0o555)
    out = unprivileged(reads_then_writes(db))
    assert out["value"]["read"] == READ
    for refused in out["value"]["refused"]:
        assert "read-only" in refused and f"directory {str(shared)!r} is not writable" in refused


def test_a_file_sqlite_cannot_write_is_opened_read_only_whatever_access_says(shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o444)
    shared.chmod(0o555)

    def act() -> Any:
        # As on a mount or a file system whose permissions access() does not see.
        sqlite_store._write_problem = lambda path: None
        return reads_then_writes(db)()

    out = unprivileged(act)
    assert out["value"]["read"] == READ
    for refused in out["value"]["refused"]:
        assert "read-only" in refused and "SQLite cannot write it" in refused


def test_a_read_only_file_from_before_advertised_workflows_lists_its_workers(
        shared: Path) -> None:
    db = shared / "runs.db"
    shutil.copy(Path(__file__).parent / "golden" / "v1.db", db)  # no worker_workflows table
    with sqlite3.connect(db) as c:  # a live worker of that version
        c.execute("INSERT INTO workers VALUES ('old', ?)", (time.time() + 3600,))
    c.close()
    db.chmod(0o444)
    shared.chmod(0o555)
    out = unprivileged(lambda: {o: w.workflows for o, w in SQLiteStore(db).workers().items()})
    assert out == {"value": {"old": None}}  # live, but it never said what it serves


def test_a_read_only_reader_sees_what_a_live_writer_commits(shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o644)  # the writer's -shm file gets the same mode: readable by the reader
    parent, child = socket.socketpair()
    for end in (parent, child):
        end.settimeout(PATIENCE)

    def read_twice() -> Any:
        child.sendall(b"f")  # forked: from now on the parent may open files of its own
        assert child.recv(1) == b"w"  # the writer holds the file open
        store = SQLiteStore(db)
        first = [r.run_id for r in store.runs()]
        child.sendall(b"r")
        assert child.recv(1) == b"c"  # the writer has committed another run
        return [first, [r.run_id for r in store.runs()]]

    result: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: result.append(unprivileged(read_twice)))
    reader.start()
    assert parent.recv(1) == b"f"
    writer = SQLiteStore(db)  # keeps a -shm file: the reader needs no immutable mode
    parent.sendall(b"w")
    assert parent.recv(1) == b"r"
    create(writer, "r2", "wf", "{}", "A")
    parent.sendall(b"c")
    reader.join(PATIENCE)
    writer.close()
    parent.close()
    child.close()
    assert result[0]["value"] == [["r"], ["r2", "r"]]


def test_an_unreadable_file_says_permission_denied(shared: Path) -> None:
    db = shared / "runs.db"
    filled(db)
    db.chmod(0o000)
    def open_it() -> None:
        SQLiteStore(db)

    out = unprivileged(open_it)
    assert out["error"] == "StoreUnavailable"
    assert "permission denied" in out["message"] and "cannot read the file" in out["message"]
    assert "mode 0000" in out["message"]


def test_a_new_store_in_a_read_only_directory_fails_at_its_first_write(shared: Path) -> None:
    db = shared / "runs.db"
    shared.chmod(0o555)

    def act() -> Any:
        store = SQLiteStore(db)  # nothing to check yet, nothing made
        assert store.get("r") is None and store.runs() == []
        create(store, "r", "wf", "{}", "A")

    out = unprivileged(act)
    assert out["error"] == "StoreUnavailable"
    assert "cannot create" in out["message"] and "Permission denied" in out["message"]
    assert not db.exists()


# ---- no file until the first write -------------------------------------------------------


def not_a_generator(n: int) -> int:
    return n


def workflow(n: int) -> Any:
    return (yield Do("double", int, 2 * n))


def test_a_refused_start_up_leaves_no_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    with pytest.raises(UsageError):
        Interpreter(store, workflows=[not_a_generator])  # type: ignore[list-item]
    assert not db.exists()

    interp = Interpreter(store, workflows=[workflow])  # its heartbeat makes no file either
    assert not db.exists()
    assert interp.run(workflow, 21) == 42  # the first real use does
    interp.shutdown()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_reads_of_a_store_never_written_make_no_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    assert (store.get("r"), store.journal("r"), store.signals("r"), store.runs()) == (None, [], [], [])
    assert (store.owners(), store.wakeups("A")) == ([], [])
    assert store.watch(None, 0.01) is None
    store.heartbeat("A", 10.0, workflows=["wf"])
    store.release("A")
    with pytest.raises(RunNotFound):
        store.deliver("r", "go", "1")
    with pytest.raises(RunNotFound):
        store.cancel("r")
    store.close()
    assert not db.exists()


def test_a_lease_given_before_the_file_existed_still_protects_the_runs(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    first = SQLiteStore(db)
    first.heartbeat("A", 60.0, workflows=["wf"])  # before any file
    create(first, "r", "wf", "{}", "A")  # makes the file, with A's lease
    assert SQLiteStore(db).claim("B") == []  # A is live: its run is not taken


def test_a_watcher_wakes_when_another_handle_makes_the_file(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    watcher, maker = SQLiteStore(db), SQLiteStore(db)
    seen: list[object] = []
    thread = threading.Thread(target=lambda: seen.append(watcher.watch(None, PATIENCE)))
    thread.start()
    create(maker, "r", "wf", "{}", "A")
    thread.join(PATIENCE)
    assert seen and seen[0] is not None


# ---- closing ----------------------------------------------------------------------------

CLOSER = r"""
import os, sys, threading, time
from replaygen import StoreUnavailable
from replaygen.stores.conformance import create
from replaygen.stores.sqlite import SQLiteStore
for i in range(30):
    store = SQLiteStore(os.path.join(sys.argv[1], f"{i}.db"))
    create(store, "r", "wf", "{}", "A")
    stop, done, errors = threading.Event(), [0], []
    def use(claim):
        while not stop.is_set():
            try:
                store.claim("B", dead=["A"]) if claim else store.get("r")
                done[0] += 1
            except StoreUnavailable:
                pass  # closed: the store says so
            except Exception as exc:
                errors.append(repr(exc))
                return
    users = [threading.Thread(target=use, args=(claim,)) for claim in (True, False)]
    for t in users:
        t.start()
    while done[0] < 20:  # both threads are busy with the store
        time.sleep(0.001)
    store.close()
    stop.set()
    for t in users:
        t.join()
    assert not errors, errors
print("ok")
"""


def test_closing_a_store_other_threads_still_use_does_not_crash(tmp_path: Path) -> None:
    # An Interpreter's threads may still touch the store just after shutdown() (a claim
    # begun before it). In a subprocess: a crash must fail this test, not the test run.
    done = subprocess.run([sys.executable, "-c", CLOSER, str(tmp_path)], capture_output=True,
                          text=True, timeout=PATIENCE)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr[-2000:]


# ---- processes opening a new file at the same moment ---------------------------------------

OPENER = r"""
import os, sys
from replaygen.stores.conformance import create
from replaygen.stores.sqlite import SQLiteStore
folder, me, go = sys.argv[1], sys.argv[2], int(sys.argv[3])
for round in range(int(sys.argv[4])):
    print("ready", flush=True)
    os.read(go, 1)  # the barrier: every opener is released at once
    try:
        store = SQLiteStore(os.path.join(folder, f"round-{round}.db"))
        store.heartbeat(me, 30.0, workflows=["wf"])
        create(store, f"run-{me}", "wf", "{}", me)
        store.close()
        print("ok", flush=True)
    except Exception as exc:
        print(f"FAIL {type(exc).__name__}: {exc}", flush=True)
"""


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    rounds, openers = 40, 3
    gates = [os.pipe() for _ in range(openers)]
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), f"p{i}", str(r),
                               str(rounds)], pass_fds=(r,), stdout=subprocess.PIPE, text=True)
             for i, (r, _) in enumerate(gates)]
    try:
        failures = []
        for round in range(rounds):
            assert all(p.stdout and p.stdout.readline() == "ready\n" for p in procs)
            for _, w in gates:
                os.write(w, b"g")
            answers = [p.stdout.readline().strip() for p in procs if p.stdout]
            failures += [f"round {round}: {a}" for a in answers if a != "ok"]
            if not failures:
                runs = SQLiteStore(tmp_path / f"round-{round}.db").runs()
                assert sorted(r.run_id for r in runs) == [f"run-p{i}" for i in range(openers)]
        assert failures == []
    finally:
        for r, w in gates:
            os.close(r)
            os.close(w)
        for p in procs:
            p.wait(PATIENCE)
