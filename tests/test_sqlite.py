"""SQLiteStore beyond the conformance suite: real processes sharing one file, SIGKILL,
schema versions, permissions, corrupt rows and lock contention."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from replaygen import Do, Interpreter, ReplaygenError
from replaygen.stores.sqlite import SCHEMA_VERSION, SQLiteStore
from replaygen.stores.conformance import create  # noqa: E402

WORKER = str(Path(__file__).with_name("sqlite_worker.py"))
pytestmark = pytest.mark.slow


def worker(db: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, WORKER, str(db), str(db) + ".log", *args],
                            stdout=subprocess.PIPE, text=True)


def executions(db: Path) -> Counter[tuple[str, int]]:
    log = Path(str(db) + ".log")
    lines = log.read_text().split("\n") if log.exists() else []
    return Counter((p[0], int(p[1])) for p in (line.split() for line in lines) if p)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def test_two_workers_recovering_at_once_never_run_a_step_twice(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    for r in range(30):  # runs of an owner that is gone: no lease, so claimable
        args = json.dumps({"args": [f"r{r}", 8], "kwargs": {}})
        create(store, f"r{r}", "chain", args, "gone-worker")
    a, b = worker(db, "recover"), worker(db, "recover")
    claimed = [json.loads(finish(p).splitlines()[0])["recovered"] for p in (a, b)]
    assert sorted(claimed[0] + claimed[1]) == sorted(f"r{r}" for r in range(30))
    assert set(executions(db).values()) == {1}
    assert len(executions(db)) == 30 * 8
    assert {r.state for r in store.runs(limit=100)} == {"completed"}


def test_a_process_killed_mid_step_is_resumed_at_once_by_a_new_one(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    Path(f"{db}.log.kill-order-1-5").touch()
    first = worker(db, "start", "order-1", "10")
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert SQLiteStore(db).get("order-1").state == "running"  # type: ignore[union-attr]

    started = time.time()
    out = json.loads(finish(worker(db, "recover")).splitlines()[0])
    assert out["recovered"] == ["order-1"]
    assert out["at"] - started < 3.0  # a dead owner on this host is not waited for (lease: 5 s)
    runs = executions(db)
    assert runs[("order-1", 5)] == 2  # the step the kill interrupted ran again
    assert all(runs[("order-1", i)] == 1 for i in range(10) if i != 5)  # the rest were replayed
    store = SQLiteStore(db)
    assert store.get("order-1").state == "completed"  # type: ignore[union-attr]
    assert Interpreter(store, []).result("order-1") == sum(range(10))


def test_a_signal_from_another_process_wakes_the_run_promptly(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    serving = worker(db, "start", "sig-1", "3", "wait")
    store = SQLiteStore(db)
    deadline = time.time() + 30
    while (r := store.get("sig-1")) is None or r.state != "waiting":
        assert time.time() < deadline
        time.sleep(0.02)
    out = json.loads(finish(worker(db, "deliver", "sig-1", "go", '{"n": 100}')))
    finish(serving)
    log = Path(str(db) + ".log").read_text().splitlines()
    step1_at = float(next(line.split()[3] for line in log if line.split()[:2] == ["sig-1", "1"]))
    assert step1_at - out["delivered_at"] < 1.0
    assert Interpreter(store, []).result("sig-1") == 0 + 100 + 1 + 2


def test_many_processes_writing_at_once_never_see_database_locked(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    serving = worker(db, "start", "busy", "2", "wait")
    store = SQLiteStore(db)
    while (r := store.get("busy")) is None or r.state != "waiting":
        time.sleep(0.02)
    senders = [subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from replaygen.stores.sqlite import SQLiteStore\n"
            "s = SQLiteStore(sys.argv[1])\n"
            "for i in range(150): s.deliver('busy', 'noise', '1')")
         , str(db)], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in senders:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    finish(worker(db, "deliver", "busy", "go", '{"n": 1}'))
    finish(serving)
    assert len([s for s in store.signals("busy") if s.name == "noise"]) == 900


def test_the_database_file_is_owner_only(tmp_path: Path) -> None:
    create(SQLiteStore(tmp_path / "runs.db"), "r", "wf", "{}", "A")  # the first write makes it
    assert stat.S_IMODE(os.stat(tmp_path / "runs.db").st_mode) == 0o600


def test_a_database_from_a_newer_version_is_refused_clearly(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    create(store, "r", "wf", "{}", "A")
    store.close()
    with sqlite3.connect(tmp_path / "runs.db") as c:
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION + 1,))
    with pytest.raises(ReplaygenError, match="newer replaygen"):
        SQLiteStore(tmp_path / "runs.db")


def test_an_older_replaygen_sharing_a_migrated_file_still_renews_its_lease(tmp_path: Path) -> None:
    """The advertised workflows have a table of their own, not a column of ``workers``: an
    older replaygen inserts its ``workers`` rows without naming columns, and may still share
    the file during a rolling upgrade."""
    store = SQLiteStore(tmp_path / "runs.db")
    store.heartbeat("new", 30.0, workflows=["billing"])
    create(store, "r", "billing", "{}", "new")
    with sqlite3.connect(tmp_path / "runs.db") as c:  # replaygen 0.1's heartbeat, verbatim
        c.execute("INSERT INTO workers VALUES (?, ?) ON CONFLICT (owner) DO UPDATE "
                  "SET lease_until = excluded.lease_until", ("old", time.time() + 30))
    assert {o: w.workflows for o, w in store.workers().items()} == {"new": ["billing"],
                                                                      "old": None}
    store.close()


def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "app.db") as c:
        c.execute("CREATE TABLE runs (id INTEGER)")
    with pytest.raises(ReplaygenError, match="did not create"):
        SQLiteStore(tmp_path / "app.db")


def test_a_corrupt_row_blocks_only_its_run(tmp_path: Path) -> None:
    def wf(n: int):  # type: ignore[no-untyped-def]
        for i in range(3):
            yield Do(f"s{i}", int, n)
        return n

    db = tmp_path / "runs.db"
    first = Interpreter(SQLiteStore(db), {"wf": wf})
    first.run("wf", 1, run_id="bad")
    first.run("wf", 2, run_id="good")
    first.shutdown()
    with sqlite3.connect(db) as c:  # forge two unfinished runs, one with a mangled row
        c.execute("UPDATE runs SET state = 'running', result = NULL")
        c.execute("UPDATE journal SET value = '{truncated' WHERE run_id = 'bad' AND seq = 1")
    second = Interpreter(SQLiteStore(db), {"wf": wf})
    second.recover()
    assert second.result("good", timeout=10) == 2
    deadline = time.time() + 10
    while second.status("bad").state != "blocked":
        assert time.time() < deadline
        time.sleep(0.01)
    error = second.status("bad").error or ""
    assert "'bad'" in error and "row 1" in error
    second.shutdown()
