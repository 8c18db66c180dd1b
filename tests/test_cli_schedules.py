"""``replaygen schedules``: a module's schedules with their next and last ticks, or the
schedules whose runs a store holds. Driven as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from replaygen import Client, Schedule
from replaygen.schedules import Scheduler
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import FakeClock

JOBS = '''
from replaygen import Do, Schedule, workflow

def say(text):
    return text

@workflow
def report(kind):
    yield Do("say", say, kind)

schedules = [
    Schedule("daily-report", report, "daily", cron="0 6 * * mon-fri", tz="Europe/Berlin"),
    Schedule("beat", "report", "beat", every=30, catchup="all"),
]

def make_worker(store):
    raise AssertionError("replaygen schedules must never build a worker")
'''


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    return subprocess.run([sys.executable, "-m", "replaygen", "--store", str(tmp_path / "runs.db"),
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


def _fire_beat(tmp_path: Path) -> str:
    """Fire one tick of ``beat`` into the store (queued: no worker runs it); its run id."""
    def report(kind: str) -> Any:
        yield

    store = SQLiteStore(str(tmp_path / "runs.db"))
    try:
        clock = FakeClock(1_790_000_020.0)  # 2026-09-21T14:13:40Z, 10 s after a tick
        Scheduler([Schedule("beat", "report", "beat", every=30)], {"report": report}, store,
                  Client(store).start, clock).fire_due()
        [run] = store.runs()
        return run.run_id
    finally:
        store.close()


def test_schedules_lists_a_modules_schedules_with_next_tick_and_last_tick_fired(
        tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(JOBS)
    run_id = _fire_beat(tmp_path)
    assert run_id == "sched:beat:2026-09-21T14:13:30Z"
    p = cli(tmp_path, "schedules", "jobs")
    assert p.returncode == 0, p.stderr
    head, daily, beat = p.stdout.splitlines()
    assert head.split() == ["SCHEDULE", "WORKFLOW", "WHEN", "TZ", "CATCHUP", "OVERLAP", "NEXT",
                            "(UTC)", "NEXT", "(LOCAL)", "LAST", "FIRED", "ITS", "RUN"]
    assert daily.split()[:9] == ["daily-report", "report", "cron", "0", "6", "*", "*", "mon-fri",
                                 "Europe/Berlin"]
    assert daily.split()[-2:] == ["-", "-"]  # never fired
    assert beat.split()[:7] == ["beat", "report", "every", "30s", "UTC", "all", "skip"]
    assert beat.split()[-2:] == ["2026-09-21T14:13:30Z", "pending"]
    rows = json.loads(cli(tmp_path, "schedules", "jobs", "--json").stdout)
    assert rows[0]["next"].endswith(("T04:00:00Z", "T05:00:00Z"))  # 06:00 in Berlin
    assert rows[0]["next_local"].endswith(("T06:00:00+02:00", "T06:00:00+01:00"))
    assert rows[1] | {"next": None, "next_local": None} == {
        "name": "beat", "workflow": "report", "when": "every 30s", "tz": "UTC", "catchup": "all",
        "overlap": "skip", "next": None, "next_local": None, "last": "2026-09-21T14:13:30Z",
        "last_run": run_id, "last_state": "pending"}


def test_schedules_without_a_module_lists_the_schedules_seen_in_the_store(tmp_path: Path) -> None:
    run_id = _fire_beat(tmp_path)
    p = cli(tmp_path, "schedules")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].split() == ["beat", "report", "1", run_id[-20:], "pending"]
    assert json.loads(cli(tmp_path, "schedules", "--json").stdout) == [{
        "name": "beat", "workflow": "report", "runs": 1, "last": run_id[-20:],
        "last_run": run_id, "last_state": "pending"}]


def test_schedules_refuses_a_worker_factory_and_a_bad_schedule(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(JOBS + '\nbad = [Schedule("x", report, cron="0 25 * * *")]\n')
    _fire_beat(tmp_path)
    p = cli(tmp_path, "schedules", "jobs:make_worker")
    assert p.returncode == 1
    assert "jobs:make_worker must be a list of Schedule(...), found function (this command " \
           "never builds a worker" in p.stderr
    p = cli(tmp_path, "schedules", "jobs:bad")
    assert p.returncode == 1 and "schedule 'x': bad cron '0 25 * * *': hour field" in p.stderr
    p = cli(tmp_path, "schedules", "nosuchmodule")
    assert p.returncode == 1 and "cannot import 'nosuchmodule'" in p.stderr
