"""The CLI's operations (SPEC 13), driven as a subprocess on SQLite and Postgres: ``purge``
(for real and ``--dry-run``, its usage errors, never an unfinished run), ``fork`` (by step
name, by position, ``--run-id``, its refusals), and what ``show`` and ``runs`` say of
forked and purged runs. A worker in this process runs the workflows, forks included."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replaygen import All, Do, Interpreter, Store, Wait, WorkflowFailed
from replaygen.stores.sqlite import SQLiteStore

from .conftest import PATIENCE
from .pg import postgres_dsn
from .test_cli import fails_in_one_line

DAY = 86400.0

ran: list[str] = []
fixed = {"charge": False}


def note(text: str) -> str:
    ran.append(text)
    return text


def charge(amount: int) -> str:
    ran.append(f"charge {amount}")
    if not fixed["charge"]:
        raise ValueError("the card service rejected the currency")
    return f"charged {amount}"


def order(item: str, amount: int) -> Any:
    held = yield Do("reserve", note, f"held {item}")
    packed = yield All(Do("a", note, "a"), Do("b", note, "b"), Do("c", note, "c"))
    paid = yield Do("charge", charge, amount)
    return [held, packed, paid]


def quick(n: int) -> Any:
    return (yield Do("answer", note, f"quick {n}"))


def parked() -> Any:
    return (yield Wait("go"))


def numbered() -> Any:
    yield Do("7", note, "seven")
    return (yield Do("8", charge, 8))


@dataclass
class Ops:
    """A store with runs in it, the worker that ran them, and the CLI pointed at the store."""

    store: Store
    worker: Interpreter
    where: list[str]
    age: Callable[[str, float], None]
    home: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
        return subprocess.run([sys.executable, "-m", "replaygen", *self.where, *args],
                              cwd=self.home, env=env, capture_output=True, text=True,
                              timeout=60)

    def ok(self, *args: str) -> str:
        done = self.cli(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def state(self, run_id: str) -> str:
        return self.worker.status(run_id).state


def _sqlite(tmp_path: Path) -> tuple[Store, list[str], Callable[[str, float], None], Callable[[], None]]:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path)

    def age(run_id: str, seconds: float) -> None:  # as if it had ended that long ago
        with sqlite3.connect(path) as raw:
            raw.execute("UPDATE runs SET updated = updated - ? WHERE run_id = ?", (seconds, run_id))
        raw.close()

    return store, ["--store", str(path)], age, store.close


def _postgres() -> tuple[Store, list[str], Callable[[str, float], None], Callable[[], None]]:
    import psycopg

    from replaygen.stores.postgres import PostgresStore

    dsn, schema = postgres_dsn(), "cliops_" + uuid.uuid4().hex[:10]
    store = PostgresStore(dsn, schema=schema)

    def age(run_id: str, seconds: float) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'UPDATE "{schema}".runs SET updated = updated - %s WHERE run_id = %s',
                         [seconds, run_id])

    def drop() -> None:
        store.close()
        PostgresStore.drop_schema(dsn, schema)

    return store, ["--store", dsn, "--schema", schema], age, drop


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ops(request: Any, tmp_path: Path) -> Iterator[Ops]:
    """Runs q1, q2 (completed), o1 (failed at 'charge', after an All of 3) and p1 (waiting
    for 'go'), kept by a live worker that also takes the runs the CLI forks."""
    store, where, age, drop = _sqlite(tmp_path) if request.param == "sqlite" else _postgres()
    fixed["charge"] = False
    worker = Interpreter(store, [order, quick, parked, numbered])
    worker.recover()  # from now on it takes the runs clients start (the CLI's forks)
    try:
        for n in (1, 2):
            assert worker.result(worker.start(quick, n, run_id=f"q{n}"), PATIENCE) == f"quick {n}"
        with pytest.raises(WorkflowFailed, match="rejected the currency"):
            worker.result(worker.start(order, "lamp", 30, run_id="o1"), PATIENCE)
        worker.start(parked, run_id="p1")
        _until(lambda: worker.status("p1").state == "waiting")
        ran.clear()
        yield Ops(store, worker, where, age, tmp_path)
    finally:
        worker.shutdown(5.0)
        drop()


def _until(ready: Callable[[], bool]) -> None:
    import time

    end = time.monotonic() + PATIENCE
    while not ready():
        assert time.monotonic() < end, "gave up waiting"
        time.sleep(0.01)


# ---- purge -------------------------------------------------------------------------------------

def test_purge_takes_only_finished_runs_that_ended_before_the_cutoff(ops: Ops) -> None:
    ops.age("q1", 2 * DAY)
    ops.age("o1", 2 * DAY)
    ops.age("p1", 2 * DAY)  # unfinished: never purged, however old
    assert ops.ok("purge", "--older-than", "1d").startswith("purged 2 runs (completed, failed or "
                                                           "cancelled runs that ended more than 1d")
    assert [ops.state(r) for r in ("q1", "o1", "q2", "p1")] == ["purged", "purged", "completed",
                                                                "waiting"]
    assert ops.store.journal("q1") == [] and len(ops.store.journal("p1")) == 1
    assert ops.ok("purge", "--older-than", "1d").startswith("purged 0 runs")
    ops.worker.deliver("p1", "go", "went")  # the waiting run goes on as if nothing happened
    assert ops.worker.result("p1", PATIENCE) == "went"


def test_purge_by_state_and_in_the_other_units(ops: Ops) -> None:
    ops.age("q1", 3 * 3600)
    ops.age("o1", 3 * 3600)
    assert ops.ok("purge", "--older-than", "4h").startswith("purged 0 runs")
    assert ops.ok("purge", "--older-than", "120m", "--state", "failed").startswith(
        "purged 1 run (failed runs that ended more than 120m ago)")
    assert ops.state("o1") == "purged" and ops.state("q1") == "completed"
    assert ops.ok("purge", "--older-than", "7200s", "--state", "cancelled,completed",
                  "--state", "cancelled").startswith("purged 1 run (cancelled or completed")
    assert ops.state("q1") == "purged" and ops.state("q2") == "completed"


def test_a_dry_run_counts_what_purge_would_take_and_deletes_nothing(ops: Ops) -> None:
    ops.age("q1", 2 * DAY)
    ops.age("o1", 2 * DAY)
    ops.age("p1", 2 * DAY)
    before = {r: (ops.state(r), len(ops.store.journal(r))) for r in ("q1", "q2", "o1", "p1")}
    assert ops.ok("purge", "--older-than", "1d", "--dry-run") == (
        "would purge 2 runs (completed, failed or cancelled runs that ended more than 1d ago); "
        "nothing was deleted\n")
    assert ops.ok("purge", "--older-than", "1d", "--state", "failed", "--dry-run").startswith(
        "would purge 1 run (failed runs")
    assert ops.ok("purge", "--older-than", "0s", "--dry-run").startswith("would purge 3 runs")
    assert {r: (ops.state(r), len(ops.store.journal(r))) for r in before} == before
    assert ops.ok("purge", "--older-than", "0s").startswith("purged 3 runs")  # as counted


@pytest.mark.parametrize("args, words", [
    (["--older-than", "30"], "'30' is not a duration: give a number and a unit s, m, h or d"),
    (["--older-than", "2w"], "'2w' is not a duration"),
    (["--older-than=-1d"], "'-1d' is not a duration"),
    (["--older-than", "1d", "--state", "nope"], "unknown state 'nope'; states are pending"),
    (["--older-than", "1d", "--state", "completed,waiting"], "a waiting run is never purged"),
    (["--older-than", "1d", "--state", "blocked"], "a blocked run is never purged"),
    (["--state", "failed"], "the following arguments are required: --older-than"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_duration_or_state_is_a_usage_error_and_purges_nothing(
        ops: Ops, args: list[str], words: str) -> None:
    ops.age("q1", 2 * DAY)
    done = ops.cli("purge", *args)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.splitlines()[-1].startswith("replaygen purge: error: ")
    assert words in done.stderr and "Traceback" not in done.stderr
    assert ops.state("q1") == "completed"


# ---- fork --------------------------------------------------------------------------------------

def test_fork_by_name_runs_that_step_again_and_none_before(ops: Ops) -> None:
    fixed["charge"] = True  # the fix is deployed
    new = ops.ok("fork", "o1", "charge").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", new)
    assert ops.worker.result(new, PATIENCE) == ["held lamp", ["a", "b", "c"], "charged 30"]
    assert ran == ["charge 30"]
    assert ops.worker.status(new).forked_from == "o1" and ops.state("o1") == "failed"
    shown = ops.ok("show", new)
    assert "forked from: o1\n" in shown and "parent:" not in shown
    assert json.loads(ops.ok("show", new, "--json"))["run"]["forked_from"] == "o1"


def test_fork_by_position_with_a_run_id(ops: Ops) -> None:
    fixed["charge"] = True
    assert ops.ok("fork", "o1", "1", "--run-id", "o1-again") == "o1-again\n"
    assert ops.worker.result("o1-again", PATIENCE)[2] == "charged 30"
    assert sorted(ran) == ["a", "b", "c", "charge 30"]  # the All ran again, 'reserve' did not


def test_a_step_named_with_digits_is_forked_by_name(ops: Ops) -> None:
    with pytest.raises(WorkflowFailed):
        ops.worker.result(ops.worker.start(numbered, run_id="n1"), PATIENCE)
    fails_in_one_line(ops.cli("fork", "n1", "8"), "positions are 0 to 2")
    fixed["charge"] = True
    ran.clear()
    new = ops.ok("fork", "n1", "8", "--by-name").strip()
    assert ops.worker.result(new, PATIENCE) == "charged 8" and ran == ["charge 8"]


@pytest.mark.parametrize("args, words", [
    (["p1", "go"], "cannot fork run 'p1': it is waiting; fork a finished or blocked run"),
    (["o1", "nope"], "has no step of that name (its steps: reserve, a, b, c, charge)"),
    (["o1", "2"], "inside the All at positions 1 to 3; fork from position 1"),
    (["o1", "b"], "inside the All at positions 1 to 3"),
    (["o1", "9"], "its positions are 0 to 5"),
    (["nobody", "0"], "no run 'nobody' in this store (see: replaygen runs)"),
    (["o1", "0", "--run-id", "q1"], "a run with that id exists; choose another run_id"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_refused_fork_is_one_line_and_exit_1(ops: Ops, args: list[str], words: str) -> None:
    done = ops.cli("fork", *args)
    fails_in_one_line(done, words)
    assert done.returncode == 1 and done.stdout == ""
    assert len(ops.store.runs(limit=100)) == 4  # nothing was started


def test_a_purged_run_cannot_be_forked(ops: Ops) -> None:
    ops.ok("purge", "--older-than", "0s", "--state", "failed")
    fails_in_one_line(ops.cli("fork", "o1", "charge"), "cannot fork run 'o1': it is purged "
                                                       "(its journal is gone)")


# ---- show and runs -----------------------------------------------------------------------------

def test_show_reads_a_group_entry_as_words(ops: Ops) -> None:
    shown = ops.ok("show", "o1")
    assert re.search(r"\n1 +1 +group +all +ok +\S+ +all of 3\n", shown), shown
    assert [e["kind"] for e in json.loads(ops.ok("show", "o1", "--json"))["journal"]][:2] == [
        "do", "group"]


def test_show_of_a_purged_run_says_so_and_lists_no_journal(ops: Ops) -> None:
    ops.ok("purge", "--older-than", "0s", "--state", "completed")
    shown = ops.ok("show", "q1")
    assert "state:       purged\n" in shown
    assert re.search(r"purged: +Purged: run 'q1' was purged at .* \(it had completed\); its "
                     r"journal and result are no longer kept", shown)
    assert "args:        kept as a hash only (sha256:" in shown
    assert shown.endswith("\njournal: purged (a purged run keeps no journal, result or signals)\n")
    as_json = json.loads(ops.ok("show", "q1", "--json"))
    assert as_json["run"]["state"] == "purged" and as_json["journal"] == []


def test_runs_lists_tombstones_only_when_asked_for_purged(ops: Ops) -> None:
    ops.ok("purge", "--older-than", "0s", "--state", "completed")

    def ids(*args: str) -> list[str]:
        return [r["run_id"] for r in json.loads(ops.ok("runs", "--json", *args))]

    assert ids() == ["p1", "o1"]
    assert ids("--state", "purged") == ["q2", "q1"]
    assert ids("--state", "purged,failed") == ["o1", "q2", "q1"]
    table = ops.ok("runs", "--state", "purged")
    assert re.search(r"\nq1 +purged +quick .* Purged: run 'q1' was purged", table)
    fails_in_one_line(ops.cli("runs", "--state", "gone"), "unknown state 'gone'", "blocked and purged")
