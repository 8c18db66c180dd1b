"""Per-workflow limits (SPEC 13) across worker processes, on SQLite and Postgres: the slots of a
workflow bound the runs inside a step at once over every worker sharing the store, a slot held
by a worker killed mid-step comes back after its lease, and a run waiting for a slot holds no
thread. Worker processes are tests/_limits_worker.py; the proof is the log their steps append
to (a begin and an end line per step, O_APPEND + fsync), read back in append order."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from .pg import postgres_dsn
from replaygen import Client, Store

pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("_limits_worker.py"))
CAP = 25.0
"""Longest any wait of these tests lasts before it fails (they wait for events, not time)."""


class Line(NamedTuple):
    """One line of the steps' log: B (begin), E (end) or K (killed) of step ``step`` of run
    ``tag`` in process ``pid``."""

    mark: str
    tag: str
    step: int
    pid: int


def until(check: Callable[[], Any], what: str, cap: float = CAP) -> Any:
    """Poll ``check`` until it is truthy and return its value; fail after ``cap`` s."""
    end = time.monotonic() + cap
    while not (value := check()):
        if time.monotonic() > end:
            raise AssertionError(f"gave up after {cap}s waiting for {what}")
        time.sleep(0.01)
    return value


class Cluster:
    """Worker processes over one store, the store itself (a Client's view) and their log."""

    def __init__(self, tmp: Path, where: dict[str, str], store: Store, limit: int) -> None:
        self.tmp, self.where, self.store, self.limit = tmp, where, store, limit
        self.log, self.stop = tmp / "steps.log", tmp / "stop"
        self.client = Client(store)
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, **options: Any) -> subprocess.Popen[str]:
        """A worker with these config options (see the worker's docstring), once recovered."""
        cfg = {"store": self.where, "log": str(self.log), "limit": self.limit,
               "stop": str(self.stop), **options}
        err = open(self.tmp / f"worker{len(self.procs)}.err", "w")
        p = subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)], stdout=subprocess.PIPE,
                             stderr=err, text=True)
        err.close()
        self.procs.append(p)
        assert p.stdout is not None
        assert p.stdout.readline() == "ready\n", self.errors()
        return p

    def errors(self) -> str:
        return "\n".join(f.read_text()[-2000:] for f in sorted(self.tmp.glob("worker*.err")))

    def lines(self) -> list[Line]:
        if not self.log.exists():
            return []
        return [Line(m, tag, int(i), int(pid)) for m, tag, i, pid, _ in
                (ln.split() for ln in self.log.read_text().splitlines())]

    def drive(self, payloads: dict[str, int], cap: float = CAP) -> None:
        """Deliver "go" (with the run's payload) to each run the first time it waits, until
        every run has completed (fail after ``cap`` s)."""
        told: set[str] = set()
        end = time.monotonic() + cap
        while True:
            states = {r.run_id: r.state for r in self.store.runs(workflow="w", limit=10_000)}
            bad = {r: s for r, s in states.items() if s in ("failed", "blocked", "cancelled")}
            assert not bad, (bad, self.errors())
            if all(states.get(r) == "completed" for r in payloads):
                return
            for run_id in [r for r in payloads if states.get(r) == "waiting" and r not in told]:
                self.client.deliver(run_id, "go", payloads[run_id])
                told.add(run_id)
            left = sorted((r, s) for r, s in states.items() if s != "completed")
            assert time.monotonic() < end, f"runs left after {cap}s: {left[:6]}\n{self.errors()}"
            time.sleep(0.02)

    def close(self) -> None:
        self.stop.touch()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cluster(request: Any, tmp_path: Path) -> Iterator[Callable[[int], Cluster]]:
    """``cluster(limit)``: worker processes over a new store of this test's backend."""
    made: list[Cluster] = []
    store: Store
    if request.param == "sqlite":
        from replaygen.stores.sqlite import SQLiteStore

        where = {"sqlite": str(tmp_path / "runs.db")}
        store = SQLiteStore(where["sqlite"])
    else:
        from replaygen.stores.postgres import PostgresStore

        where = {"dsn": postgres_dsn(), "schema": "limproc_" + uuid.uuid4().hex[:10]}
        store = PostgresStore(where["dsn"], schema=where["schema"])

    def make(limit: int) -> Cluster:
        made.append(Cluster(tmp_path, where, store, limit))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.close()
        store.close()
        if "schema" in where:
            PostgresStore.drop_schema(where["dsn"], where["schema"])


def most_inside(lines: list[Line]) -> int:
    """The most distinct runs inside a step at any moment of the log (a killed step ends at
    its K line: its process died right after writing it)."""
    inside: set[str] = set()
    most = 0
    for line in lines:
        if line.mark == "B":
            inside.add(line.tag)
            most = max(most, len(inside))
        else:
            inside.discard(line.tag)
    return most


def test_a_limit_holds_over_three_worker_processes(cluster: Callable[[int], Cluster]) -> None:
    c = cluster(2)
    for _ in range(3):  # each runs one step at a time: only the limit keeps the three to two
        c.start(delay=0.06, nap=0.05, concurrency=1)
    payloads = {c.client.start("w", f"r{n}", 3, run_id=f"r{n}"): 100 + n for n in range(14)}
    c.drive(payloads)
    for run_id, payload in payloads.items():  # steps return 1, 2, 3; the signal adds
        assert c.client.result(run_id, timeout=1) == 6 + payload
    lines = c.lines()
    for run_id in payloads:  # each step ran once, whole
        assert [(ln.mark, ln.step) for ln in lines if ln.tag == run_id] == [
            ("B", 0), ("E", 0), ("B", 1), ("E", 1), ("B", 2), ("E", 2)], run_id
    assert most_inside(lines) == 2  # never more than the limit, and it was reached
    assert len({ln.pid for ln in lines}) >= 2  # so by two processes at once


def test_a_slot_held_by_a_killed_worker_comes_back_after_its_lease(
        cluster: Callable[[int], Cluster]) -> None:
    c = cluster(1)
    payloads = {c.client.start("w", f"r{n}", 3, run_id=f"r{n}"): 100 + n for n in range(4)}
    (c.tmp / "steps.log.kill-r0-0").touch()  # r0 (the oldest, claimed first) dies in step 0
    doomed = c.start(delay=0.05, nap=0.05, lease=2.0, killer=True)
    until(lambda: Line("B", "r0", 0, doomed.pid) in c.lines(), "r0 to begin on the doomed worker")
    survivor = c.start(delay=0.05, nap=0.05)  # live before the kill; the slot is not its own
    (c.tmp / "steps.log.fire").touch()
    assert doomed.wait(timeout=CAP) == -signal.SIGKILL
    c.drive(payloads)
    for run_id, payload in payloads.items():
        assert c.client.result(run_id, timeout=1) == 6 + payload
    lines = c.lines()
    killed = lines.index(Line("K", "r0", 0, doomed.pid))
    assert not [ln for ln in lines[:killed] if ln.tag != "r0"]  # the slot was r0's alone
    assert [(ln.mark, ln.step, ln.pid) for ln in lines if ln.tag == "r0"][2:] == [
        (m, i, survivor.pid) for i in range(3) for m in "BE"]  # resumed there from step 0
    assert most_inside(lines) == 1


def threads(pid: int) -> int:
    """How many threads the process runs now."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Threads:")))


def test_runs_waiting_for_a_slot_hold_no_thread(cluster: Callable[[int], Cluster]) -> None:
    c = cluster(1)
    gate, claims = c.tmp / "gate", c.tmp / "claims"
    worker = c.start(delay=0.0, gate=str(gate), claims=str(claims))

    def asked() -> int:  # how often the worker has asked the store for runs
        return len(claims.read_text().splitlines())

    first = c.client.start("w", "first", 1, run_id="first")
    until(lambda: c.lines(), "the first run to begin its step")
    seen = asked()
    until(lambda: asked() >= seen + 2, "the worker to look for runs (settled)")
    before = threads(worker.pid)
    others = [c.client.start("w", f"r{n}", 1, run_id=f"r{n}") for n in range(199)]
    seen = asked()
    # Two claims more: at least one began after every run was made, and took none of them.
    until(lambda: asked() >= seen + 2, "the worker to look for runs again")
    held = {r.run_id: (r.state, r.owner) for r in c.store.runs(workflow="w", limit=1000)}
    assert held.pop(first)[0] in ("pending", "running")
    assert set(held.values()) == {("pending", None)} and len(held) == 199  # in the store alone
    during = threads(worker.pid)
    assert during <= before + 2, (before, during)  # not one per waiting run
    assert c.lines() == [Line("B", "first", 0, worker.pid)]
    gate.touch()
    c.drive({r: 0 for r in [first, *others]}, cap=60.0)  # about 10 s: a claim per run
    assert most_inside(c.lines()) == 1
