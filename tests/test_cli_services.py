"""The CLI for services and deploys: start, terminate, cancel of a blocked run, a worker
serving @workflow modules, check, export and versions. Driven as subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter
from replaygen.cli import main
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import replay_run

from .conftest import PATIENCE
from .test_store_hardening import unprivileged

DECORATED = '''
from replaygen import Do, Version, Wait, workflow

def double(n):
    return 2 * n

@workflow(name="order")
def order(n):
    charged = yield Do("charge", double, n)
    yield Wait("approved")
    return charged
'''
CHARGE = '    charged = yield Do("charge", double, n)'
CHANGED = DECORATED.replace(CHARGE, '    yield Do("audit", double, n)\n' + CHARGE)
VERSIONED = DECORATED.replace(CHARGE, '    if (yield Version("audit", 1, 2)) == 2:\n'
                                      '        yield Do("audit", double, n)\n' + CHARGE)


def cli(*args: str, cwd: Path, store: Path) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    return subprocess.run([sys.executable, "-m", "replaygen", "--store", str(store), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def until(predicate: Callable[[], Any]) -> Any:
    end = time.monotonic() + PATIENCE * 4
    while not (value := predicate()):
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.01)
    return value


def _app(tmp_path: Path, source: str, name: str = "shop") -> Path:
    (tmp_path / f"{name}.py").write_text(source)
    return tmp_path


def test_start_queues_a_run_that_a_worker_of_a_decorated_module_serves(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _app(tmp_path, DECORATED)
    worker = subprocess.Popen([sys.executable, "-m", "replaygen", "--store", str(db), "worker",
                               "shop"], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stderr is not None
        assert any("serving shop" in line for line in worker.stderr), "the worker ended"
        started = cli("start", "order", "[21]", "--run-id", "o-1", cwd=tmp_path, store=db)
        assert started.returncode == 0, started.stderr
        assert (started.stdout, started.stderr) == ("o-1\n", "")  # a live worker serves it
        store = SQLiteStore(db)
        until(lambda: store.get("o-1").state == "waiting")  # type: ignore[union-attr]
        assert cli("signal", "o-1", "approved", cwd=tmp_path, store=db).returncode == 0
        until(lambda: store.get("o-1").state == "completed")  # type: ignore[union-attr]
        assert json.loads(store.get("o-1").result) == 42  # type: ignore[union-attr]
        again = cli("start", "order", "[21]", "--run-id", "o-1", cwd=tmp_path, store=db)
        assert again.returncode == 0 and again.stdout.strip() == "o-1"  # idempotent
        other = cli("start", "order", "[22]", "--run-id", "o-1", cwd=tmp_path, store=db)
        assert other.returncode == 1 and "already exists" in other.stderr
    finally:
        worker.terminate()
        worker.wait(30)


def test_terminate_and_the_cancel_of_a_blocked_run(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    interp = Interpreter(store, {"order": _load(tmp_path, DECORATED)})
    run = interp.start("order", 1)
    until(lambda: interp.status(run).state == "waiting")
    interp.shutdown()
    changed = Interpreter(store, {"order": _load(tmp_path, CHANGED, "changed")})
    changed.recover()
    until(lambda: changed.status(run).state == "blocked")
    changed.shutdown()

    cancel = cli("cancel", run, cwd=tmp_path, store=db)
    assert cancel.returncode == 0
    assert "blocked" in cancel.stdout and "replaygen terminate" in cancel.stdout
    done = cli("terminate", run, "--reason", "order withdrawn", cwd=tmp_path, store=db)
    assert done.returncode == 0 and "blocked -> cancelled" in done.stdout
    status = store.get(run)
    assert status is not None and status.state == "cancelled"
    assert "order withdrawn" in (status.error or "")
    again = cli("terminate", run, cwd=tmp_path, store=db)
    assert again.returncode == 0 and "already cancelled" in again.stdout


def _load(tmp_path: Path, source: str, name: str = "shop") -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(source.replace("@workflow", "# @workflow"), f"{tmp_path / name}.py", "exec"),
         namespace)
    return namespace["order"]


def test_check_exits_1_for_code_that_would_block_and_0_for_a_versioned_change(
        tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    interp = Interpreter(store, {"order": _load(tmp_path, DECORATED)})
    runs = [interp.start("order", n) for n in range(3)]
    for run in runs:
        until(lambda r=run: interp.status(r).state == "waiting")  # type: ignore[misc]
    interp.shutdown()
    with sqlite3.connect(db) as raw:  # everything into the main file: a reader's close may
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # checkpoint, but must change no byte
    before = db.read_bytes()

    _app(tmp_path, DECORATED, "v1")
    ok = cli("check", "v1", cwd=tmp_path, store=db)
    assert ok.returncode == 0, ok.stderr
    assert "3 runs checked: 3 replay, 0 would block" in ok.stdout

    _app(tmp_path, CHANGED, "v2")
    bad = cli("check", "v2", cwd=tmp_path, store=db)
    assert bad.returncode == 1
    lines = bad.stdout.strip().splitlines()
    assert len(lines) == 4 and all("position 0" in line for line in lines[:3])
    assert sorted(line.split()[0] for line in lines[:3]) == sorted(runs)

    _app(tmp_path, VERSIONED, "v3")
    fine = cli("check", "v3", "--json", cwd=tmp_path, store=db)
    assert fine.returncode == 0
    report = json.loads(fine.stdout)
    assert [c["ok"] for c in report] == [True] * 3
    assert all(c["versions"] == [["audit", 1]] for c in report)
    assert db.read_bytes() == before


def test_export_writes_a_run_that_replays_with_no_store(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    order = _load(tmp_path, DECORATED)
    interp = Interpreter(store, {"order": order})
    run = interp.start("order", 5)
    until(lambda: interp.status(run).state == "waiting")
    interp.deliver(run, "approved")
    assert interp.result(run, timeout=PATIENCE) == 10
    interp.shutdown()
    out = tmp_path / "run.json"
    assert cli("export", run, "-o", str(out), cwd=tmp_path, store=db).returncode == 0
    exported = json.loads(out.read_text())
    assert json.loads(exported["run"]["args"]) == {"args": [5], "kwargs": {}}  # no nonce
    trace = replay_run(order, out)
    assert (trace.done, trace.result) == (True, 10)


def test_versions_counts_unfinished_runs_per_branch(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = SQLiteStore(db)
    old = Interpreter(store, {"order": _load(tmp_path, DECORATED)})
    first = old.start("order", 1)
    until(lambda: old.status(first).state == "waiting")
    old.shutdown()
    new = Interpreter(store, {"order": _load(tmp_path, VERSIONED, "versioned")})
    second = new.start("order", 2)
    until(lambda: new.status(second).state == "waiting")
    new.shutdown()
    shown = cli("versions", "--json", cwd=tmp_path, store=db)
    assert shown.returncode == 0
    assert json.loads(shown.stdout) == {"audit": {"2": 1, "None": 1}}


def _made(db: Path) -> SQLiteStore:
    """A store whose file exists, as a worker leaves it (a claim is a write: it makes it)."""
    store = SQLiteStore(db)
    assert store.claim("a-worker", workflows=[]) == []
    return store


def test_start_prints_the_run_id_with_control_characters_escaped(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    _made(db).heartbeat("a-worker", 60.0, workflows=["order"])
    started = cli("start", "order", "--run-id", "red\x1b[31m\nnext\u202e", cwd=tmp_path, store=db)
    assert started.returncode == 0, started.stderr
    assert started.stdout == "red\\x1b[31m\\nnext\\u202e\n"
    record = SQLiteStore(db).get("red\x1b[31m\nnext\u202e")  # stored byte-exact
    assert record is not None and record.workflow == "order"


def test_start_of_a_workflow_no_live_worker_serves_warns_and_still_starts(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    store = _made(db)
    alone = cli("start", "order", "--run-id", "o-2", cwd=tmp_path, store=db)
    assert (alone.returncode, alone.stdout) == (0, "o-2\n")
    assert alone.stderr == ("replaygen: warning: no worker is live, so none serves workflow "
                            "'order' yet; the run waits for one that does\n")

    store.heartbeat("b-worker", 60.0, workflows=["billing", "shipping"])
    other = cli("start", "ordre", "--run-id", "o-3", cwd=tmp_path, store=db)
    assert (other.returncode, other.stdout) == (0, "o-3\n")
    assert other.stderr == ("replaygen: warning: no live worker serves workflow 'ordre' (they "
                            "serve 'billing', 'shipping'); the run waits for one that does\n")
    assert {r.run_id for r in store.runs()} == {"o-2", "o-3"}


def _waiting_run(db: Path, tmp_path: Path) -> str:
    """A run of ``order`` waiting for its signal, in a store closed again."""
    store = SQLiteStore(db)
    interp = Interpreter(store, {"order": _load(tmp_path, DECORATED)})
    run = interp.start("order", 5, run_id="o-5")
    until(lambda: interp.status(run).state == "waiting")
    interp.shutdown()
    store.close()
    return run


@pytest.mark.parametrize(("output", "said"), [
    ("no/such/dir/x.json", "cannot write 'no/such/dir/x.json': there is no directory "),
    ("outdir", "cannot write 'outdir': it is a directory; give the path of a file"),
    ("file.txt/x.json", "cannot write 'file.txt/x.json': 'file.txt' is a file, not a directory"),
])
def test_export_to_a_path_it_cannot_write_says_why_in_one_line(
        tmp_path: Path, output: str, said: str) -> None:
    db = tmp_path / "runs.db"
    run = _waiting_run(db, tmp_path)
    (tmp_path / "outdir").mkdir()
    (tmp_path / "file.txt").write_text("x")
    done = cli("export", run, "-o", output, cwd=tmp_path, store=db)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("replaygen: error: " + said), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_export_to_a_file_it_may_not_write_says_permission_denied() -> None:
    shared = Path(tempfile.mkdtemp(prefix="replaygen-export-"))  # tmp_path is root's alone
    try:
        shared.chmod(0o755)
        db = shared / "runs.db"
        run = _waiting_run(db, shared)
        for part in shared.glob("runs.db*"):  # the store may be read by anyone
            part.chmod(0o666)
        locked = shared / "locked.json"
        locked.write_text("kept\n")
        locked.chmod(0o444)

        def export() -> dict[str, Any]:  # in a child process that is not root
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(["--store", str(db), "export", run, "-o", str(locked)])
            return {"code": code, "stderr": err.getvalue()}

        out = unprivileged(export)["value"]
        assert out["code"] == 1
        assert out["stderr"].startswith(f"replaygen: error: cannot write {str(locked)!r}: "
                                        f"permission denied"), out["stderr"]
        assert len(out["stderr"].splitlines()) == 1
        assert locked.read_text() == "kept\n"
    finally:
        shutil.rmtree(shared)
