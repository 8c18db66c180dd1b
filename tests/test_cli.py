"""The ``replaygen`` command, driven as a subprocess against a SQLite store in tmp_path."""

from __future__ import annotations

import json
import os
import re
import runpy
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter
from replaygen.stores.conformance import create
from replaygen.stores.sqlite import SQLiteStore

APP = '''
import time
from replaygen import Do, Wait

def slow(n, delay):
    time.sleep(delay)
    return {"n": n, "secret": "RESULT-SECRET"}

def flow(n, delay=0.0, secret="ARG-SECRET"):
    first = yield Do("first", slow, n, delay)
    go = yield Wait("go")
    yield Do("second", slow, go, 0.0)
    return first["n"]

def quick():
    yield Do("answer", lambda: 42)
    return 42

def boom():
    yield Do("explode", lambda: 1 / 0)

workflows = [flow, quick, boom]
'''
BROKEN = APP.replace('Do("first"', 'Do("renamed"')  # a deploy that changed the first step


def cli(*args: str, cwd: Path, store: str | None = None, timeout: float = 60) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    if store is not None:
        env["REPLAYGEN_STORE"] = store
    return subprocess.run([sys.executable, "-m", "replaygen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fails_in_one_line(done: Any, *words: str) -> None:
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "broken.py").write_text(BROKEN)
    return tmp_path


@pytest.fixture
def db(home: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(home / "runs.db")
    yield store
    store.close()


@pytest.fixture
def runs(home: Path, db: SQLiteStore) -> dict[str, str]:
    """Three runs, oldest first: one completed, one failed, one waiting for signal 'go'."""
    app = runpy.run_path(str(home / "app.py"))
    with Interpreter(db, app["workflows"]) as interp:
        ids = {"completed": interp.start("quick", run_id="done-1"),
               "failed": interp.start("boom", run_id="boom-1"),
               "waiting": interp.start("flow", 7, run_id="wait-1")}
        for state, run_id in ids.items():
            eventually(lambda r=run_id, s=state: interp.status(r).state == s)
    return ids


def test_runs_lists_newest_first_with_state_workflow_and_step(home: Path, runs: Any) -> None:
    done = cli("--store", "sqlite:///runs.db", "runs", cwd=home)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["RUN", "STATE", "WORKFLOW", "AGE", "LAST", "STEP", "DETAIL"]
    # Columns are two spaces apart. The runs' worker has shut down: the unfinished one says so.
    assert [re.split(" {2,}", line)[:3] for line in lines[1:]] == [
        ["wait-1", "waiting (no worker is live)", "flow"], ["boom-1", "failed", "boom"],
        ["done-1", "completed", "quick"]]
    assert "#1 wait go" in lines[1] and "for signal go" in lines[1]
    assert "ZeroDivisionError" in lines[2]


def test_runs_filters_and_pages(home: Path, runs: Any) -> None:
    def ids(*args: str) -> list[str]:
        done = cli("runs", "--json", *args, cwd=home, store=str(home / "runs.db"))
        assert done.returncode == 0, done.stderr
        return [r["run_id"] for r in json.loads(done.stdout)]

    assert ids("--state", "waiting") == ["wait-1"]
    assert ids("--state", "failed,completed") == ["boom-1", "done-1"]
    assert ids("--workflow", "quick") == ["done-1"]
    assert ids("--limit", "1", "--offset", "1") == ["boom-1"]


def test_runs_json_has_the_record_and_last_entry(home: Path, runs: Any) -> None:
    done = cli("runs", "--json", "--state", "completed", cwd=home, store="runs.db")
    [run] = json.loads(done.stdout)
    assert run["result"] == 42 and run["args"] == {"args": [], "kwargs": {}}
    assert run["last_entry"]["name"] == "answer" and run["last_entry"]["value"] == 42


def test_show_prints_where_the_run_is_parked_and_its_journal(home: Path, runs: Any) -> None:
    done = cli("show", "wait-1", cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "state:       waiting" in out and "waiting for: signal go" in out
    assert "POS  SEQ  KIND   NAME   STATUS  TOOK" in out
    assert re.search(r"1 +1 +timer +go +ok .* no timeout", out)  # the Wait, as first reached
    assert '{"n":7,"secret":"RESULT-SECRET"}' in out


def test_show_truncates_values_unless_full(home: Path, runs: Any) -> None:
    short = cli("show", "boom-1", cwd=home, store="runs.db").stdout
    full = cli("show", "boom-1", "--full", cwd=home, store="runs.db").stdout
    assert "error:       StepFailed: step 'explode' failed: ZeroDivisionError" in short
    assert "Traceback" not in short and "Traceback" in full  # the step's stored traceback


def test_counts_of_one_are_singular(home: Path, runs: Any) -> None:
    shown = cli("show", "done-1", cwd=home, store="runs.db").stdout
    assert "journal (1 entry):" in shown
    checked = cli("check", "app", "--state", "waiting", cwd=home, store="runs.db")
    assert checked.stdout == "1 run checked: 1 replays, 0 would block\n", checked.stderr
    checked = cli("check", "app", "--state", "waiting,failed", cwd=home, store="runs.db")
    assert checked.stdout == "2 runs checked: 2 replay, 0 would block\n", checked.stderr


def test_show_json(home: Path, runs: Any) -> None:
    shown = json.loads(cli("show", "wait-1", "--json", cwd=home, store="runs.db").stdout)
    assert shown["run"]["state"] == "waiting" and shown["run"]["waiting_for"] == "go"
    assert [e["name"] for e in shown["journal"]] == ["first", "go"]
    assert shown["signals"] == []


def test_signal_queues_the_payload(home: Path, runs: Any, db: SQLiteStore) -> None:
    done = cli("signal", "wait-1", "go", '{"ok": [1, "ü"]}', cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert "queued" in done.stdout
    [queued] = db.signals("wait-1")
    assert (queued.name, json.loads(queued.payload)) == ("go", {"ok": [1, "ü"]})
    assert "1 queued" in cli("show", "wait-1", cwd=home, store="runs.db").stdout


def test_signal_without_payload_sends_null(home: Path, runs: Any, db: SQLiteStore) -> None:
    assert cli("signal", "wait-1", "go", cwd=home, store="runs.db").returncode == 0
    assert db.signals("wait-1")[0].payload == "null"


def test_cancel_requests_once_and_ignores_finished_runs(home: Path, runs: Any,
                                                        db: SQLiteStore) -> None:
    for _ in range(2):
        done = cli("cancel", "wait-1", cwd=home, store="runs.db")
        assert done.returncode == 0 and "cancel requested" in done.stdout
    assert db.get("wait-1").cancel_requested  # type: ignore[union-attr]
    done = cli("cancel", "done-1", cwd=home, store="runs.db")
    assert done.returncode == 0 and "already completed; nothing changed" in done.stdout


def test_resume_retries_a_blocked_run_with_the_current_code(home: Path, runs: Any,
                                                            db: SQLiteStore) -> None:
    bad = cli("resume", "wait-1", "--app", "broken", cwd=home, store="runs.db")
    fails_in_one_line(bad, "still blocked")
    shown = cli("show", "wait-1", cwd=home, store="runs.db").stdout
    assert ("blocked:     NonDeterminismError: run 'wait-1' is not deterministic at position 0: "
            "the journal holds do 'first' but the code yielded Do('renamed')") in shown
    fixed = cli("resume", "wait-1", "--app", "app", cwd=home, store="runs.db")
    assert fixed.returncode == 0, fixed.stderr
    assert "is waiting: for signal go" in fixed.stdout
    run = db.get("wait-1")
    assert run is not None and run.state == "waiting" and run.owner is None and not run.error


def test_resume_of_a_finished_run_is_refused(home: Path, runs: Any) -> None:
    fails_in_one_line(cli("resume", "done-1", "--app", "app", cwd=home, store="runs.db"),
                      "completed")


def test_worker_parks_runs_on_sigterm_and_the_next_worker_finishes_them(
    home: Path, db: SQLiteStore
) -> None:
    ids = [f"job-{i}" for i in range(3)]
    for i, run_id in enumerate(ids):  # started elsewhere: pending, unowned
        create(db, run_id, "flow", json.dumps({"args": [i, 1.5], "kwargs": {}}), "starter")
    db.release("starter")
    worker = subprocess.Popen([sys.executable, "-m", "replaygen", "--store", "runs.db", "worker",
                               "app"], cwd=home, stderr=subprocess.PIPE, text=True)
    try:  # SIGTERM lands while every run is inside its 1.5 s step
        eventually(lambda: all(db.get(r).state == "running" for r in ids))  # type: ignore[union-attr]
        worker.send_signal(signal.SIGTERM)
        _, logs = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, logs
    assert "recovered 3 runs" in logs and "Traceback" not in logs
    assert "SECRET" not in logs  # INFO logs carry no arguments or results
    for run_id in ids:
        run = db.get(run_id)
        assert run is not None and run.state in ("running", "waiting") and run.owner is None
        assert [e.name for e in db.journal(run_id)] == ["first"]  # the step finished first
        assert cli("signal", run_id, "go", cwd=home, store="runs.db").returncode == 0
    second = subprocess.Popen([sys.executable, "-m", "replaygen", "worker", "app:workflows"],
                              cwd=home, env={**os.environ, "REPLAYGEN_STORE": "runs.db"},
                              stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: all(db.get(r).state == "completed" for r in ids))  # type: ignore[union-attr]
        second.send_signal(signal.SIGINT)
        assert second.wait(30) == 0
    finally:
        second.kill()
    assert [json.loads(db.get(r).result) for r in ids] == [0, 1, 2]  # type: ignore[union-attr, arg-type]


# ---- every error is one line on stderr and a non-zero exit ---------------------------

NO_SUCH_RUN = [("show", "nope"), ("signal", "nope", "go"), ("cancel", "nope"),
               ("terminate", "nope"), ("resume", "nope", "--app", "app"), ("export", "nope")]


@pytest.mark.parametrize("args", NO_SUCH_RUN, ids=" ".join)
def test_no_such_run_is_said_in_one_wording_by_every_command(home: Path, runs: Any,
                                                             args: tuple[str, ...]) -> None:
    done = cli(*args, cwd=home, store="runs.db")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "replaygen: error: no run 'nope' in this store (see: replaygen runs)\n"


@pytest.mark.parametrize("payload", ['{"approved": tru', "NaN", "'single'"])
def test_bad_json_payload(home: Path, runs: Any, db: SQLiteStore, payload: str) -> None:
    fails_in_one_line(cli("signal", "wait-1", "go", payload, cwd=home, store="runs.db"),
                      "bad JSON payload")
    assert db.signals("wait-1") == []


def test_signal_to_a_finished_run(home: Path, runs: Any) -> None:
    fails_in_one_line(cli("signal", "done-1", "go", cwd=home, store="runs.db"),
                      "already completed")


@pytest.mark.parametrize("store", ["sqlite:///no/such/dir/runs.db", "sqlite:////nowhere/x.db",
                                   "missing.db"])
def test_missing_sqlite_database(home: Path, store: str) -> None:
    fails_in_one_line(cli("runs", cwd=home, store=store), "no database at")
    assert not (home / "missing.db").exists()  # a typo never creates an empty store


def test_unreachable_postgres(home: Path) -> None:
    fails_in_one_line(cli("--store", "postgresql://nobody@127.0.0.1:1/none", "runs", cwd=home))


def test_database_from_a_newer_version(home: Path, runs: Any) -> None:  # runs: the file exists
    with sqlite3.connect(home / "runs.db") as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    fails_in_one_line(cli("runs", cwd=home, store="runs.db"), "newer replaygen", "upgrade")


@pytest.mark.parametrize("args", [("worker", "no_such_module"),
                                  ("resume", "wait-1", "--app", "no_such_module")])
def test_missing_module(home: Path, runs: Any, args: tuple[str, ...]) -> None:
    fails_in_one_line(cli(*args, cwd=home, store="runs.db"), "cannot import 'no_such_module'")


@pytest.mark.parametrize(("module", "said"), [
    ("raises", "cannot import 'raises': RuntimeError: no config"),
    ("exits", "cannot import 'exits': SystemExit: 3"),
    ("needs", "cannot import 'needs': ModuleNotFoundError: No module named 'no_such_dependency'"),
])
def test_a_module_that_fails_at_import_gets_one_message_from_every_command(
        home: Path, runs: Any, module: str, said: str) -> None:
    (home / "raises.py").write_text("raise RuntimeError('no config')\n")
    (home / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (home / "needs.py").write_text("import no_such_dependency\n")
    for args, code in [(("worker", module), 1), (("check", module), 1),
                       (("resume", "wait-1", "--app", module), 1), (("lint", module), 2)]:
        done = cli(*args, cwd=home, store="runs.db")
        assert (done.returncode, done.stdout) == (code, ""), args
        assert done.stderr == f"replaygen: error: {said}\n", args  # no PYTHONPATH hint: found


def test_missing_workflows_attribute(home: Path, runs: Any) -> None:
    fails_in_one_line(cli("worker", "app:nothing", cwd=home, store="runs.db"),
                      "no attribute 'nothing'")


def test_no_store_given(home: Path) -> None:
    fails_in_one_line(cli("runs", cwd=home), "REPLAYGEN_STORE")


def test_unknown_state(home: Path, runs: Any) -> None:
    fails_in_one_line(cli("runs", "--state", "stuck", cwd=home, store="runs.db"),
                      "unknown state 'stuck'")
