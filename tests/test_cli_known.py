"""`replaygen runs` and `show` say which unfinished runs no live worker knows how to run.

A worker never claims a run of a workflow it does not know, so such a run waits in
silence; workers advertise the workflows they serve with their lease, and the CLI
compares. Driven as subprocesses against SQLite and Postgres, and in-process for stores
that cannot say (a third-party store from before ``workers()``, an older worker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Client, Interpreter, MemoryStore, Store, cli
from replaygen.stores.sqlite import SQLiteStore

from ._billing import billing
from .pg import postgres_dsn

CAP = 60.0
"""Longest a test waits for a worker before it fails."""


def replaygen(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    done = subprocess.run([sys.executable, "-m", "replaygen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=CAP)
    assert done.returncode == 0, done.stderr
    return done


def until(ready: Callable[[], Any], what: str) -> None:
    end = time.monotonic() + CAP
    while not ready():
        assert time.monotonic() < end, f"gave up after {CAP}s waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: Any, tmp_path: Path) -> Iterator[tuple[Store, list[str]]]:
    """A store, and the arguments that give the CLI the same one."""
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "runs.db")
        yield store, ["--store", str(tmp_path / "runs.db")]
        store.close()
        return
    dsn = postgres_dsn()
    from replaygen.stores.postgres import PostgresStore

    schema = "known_" + uuid.uuid4().hex[:10]
    pg = PostgresStore(dsn, schema=schema)
    yield pg, ["--store", dsn, "--schema", schema]
    pg.close()
    PostgresStore.drop_schema(dsn, schema)


def _row(table: str, run_id: str) -> str:
    [line] = [x for x in table.splitlines() if x.startswith(run_id + " ")]
    return line


def test_runs_and_show_name_the_runs_no_live_worker_knows(
        backend: tuple[Store, list[str]], tmp_path: Path) -> None:
    store, where = backend
    worker = Interpreter(store, [billing])  # knows only 'billing'
    worker.recover()
    worker.start(billing, str(tmp_path), "b", True, run_id="bill-1")  # parks on Wait("go")
    until(lambda: worker.status("bill-1").state == "waiting", "the billing run to wait")
    Client(store).start("shipping", str(tmp_path), "s", False, run_id="ship-1")

    table = replaygen(*where, "runs", cwd=tmp_path).stdout
    assert "pending (no live worker knows workflow 'shipping')" in _row(table, "ship-1")
    assert "no live worker" not in _row(table, "bill-1") and "waiting" in _row(table, "bill-1")
    listed = {r["run_id"]: r for r in json.loads(replaygen(*where, "runs", "--json",
                                                           cwd=tmp_path).stdout)}
    assert listed["ship-1"]["known_by_live_worker"] is False
    assert listed["bill-1"]["known_by_live_worker"] is True
    Client(store).start("billing", str(tmp_path), "quick", False, run_id="bill-2")
    until(lambda: worker.status("bill-2").state == "completed", "the worker to run bill-2")
    [done] = json.loads(replaygen(*where, "runs", "--json", "--state", "completed",
                                  cwd=tmp_path).stdout)
    assert done["known_by_live_worker"] is None  # a finished run waits for no worker
    shown = replaygen(*where, "show", "ship-1", cwd=tmp_path).stdout
    assert "no live worker knows workflow 'shipping'" in shown
    assert "no live worker" not in replaygen(*where, "show", "bill-1", cwd=tmp_path).stdout
    shown_json = json.loads(replaygen(*where, "show", "ship-1", "--json", cwd=tmp_path).stdout)
    assert shown_json["run"]["known_by_live_worker"] is False

    worker.shutdown()  # releases its lease: no worker is live now
    table = replaygen(*where, "runs", cwd=tmp_path).stdout
    assert "pending (no worker is live)" in _row(table, "ship-1")
    assert "waiting (no worker is live)" in _row(table, "bill-1")
    listed = {r["run_id"]: r for r in json.loads(replaygen(*where, "runs", "--json",
                                                           cwd=tmp_path).stdout)}
    assert [listed[r]["known_by_live_worker"] for r in ("ship-1", "bill-1")] == [False, False]


class OlderStore:
    """A third-party store written before ``workers()``: everything else it has."""

    def __init__(self, inner: MemoryStore) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "workers":
            raise AttributeError(name)
        return getattr(self._inner, name)


def _cli(store: object, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         *args: str) -> str:
    monkeypatch.setattr(cli, "open_store", lambda *a, **k: store)
    assert cli.main(["--store", "any.db", *args]) == 0
    return capsys.readouterr().out


@pytest.fixture
def unserved() -> MemoryStore:
    """A store holding a pending 'shipping' run and no live worker."""
    store = MemoryStore()
    Client(store).start("shipping", run_id="ship-1")
    return store


def test_a_worker_killed_on_this_machine_is_not_live_at_once(
        backend: tuple[Store, list[str]], tmp_path: Path) -> None:
    store, where = backend
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    worker = subprocess.Popen([sys.executable, "-m", "replaygen", *where, "worker",
                               "tests._billing"], cwd=root, env=env, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert worker.stderr is not None
        assert any("serving tests._billing" in line for line in worker.stderr), "it ended"
        Client(store).start("billing", str(tmp_path), "b", True, run_id="bill-1")
        until(lambda: store.get("bill-1").state == "waiting",  # type: ignore[union-attr]
              "the worker to park bill-1 on its Wait")
        assert "live" not in _row(replaygen(*where, "runs", cwd=tmp_path).stdout, "bill-1")
    finally:
        worker.kill()  # SIGKILL: its lease is still valid for seconds
        assert worker.wait(CAP) == -signal.SIGKILL
    assert "waiting (no worker is live)" in _row(replaygen(*where, "runs", cwd=tmp_path).stdout,
                                                 "bill-1")
    assert "no worker is live" in replaygen(*where, "show", "bill-1", cwd=tmp_path).stdout
    [listed] = json.loads(replaygen(*where, "runs", "--json", cwd=tmp_path).stdout)
    assert listed["known_by_live_worker"] is False


def test_a_worker_on_another_machine_is_live_until_its_lease_lapses(
        unserved: MemoryStore, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = "other-host|another-boot-id|pid:[4026531836]|4242|123456|0123456789ab"
    unserved.heartbeat(elsewhere, 60.0, workflows=["billing"])  # its process cannot be seen
    assert "pending (no live worker knows workflow 'shipping')" in _row(
        _cli(unserved, monkeypatch, capsys, "runs"), "ship-1")
