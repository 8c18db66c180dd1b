"""Child runs under SIGKILL: real worker processes, killed at random moments, restarted.

Three situations, each for at least ``ROUNDS`` kills, on SQLite and on PostgreSQL:

* around child creation: one worker runs parents that each start children in an ``All``
  and runs the children too; it is killed again and again and restarted
  (``Interpreter(store, ...).recover()``);
* a parent waiting while its children finish in another process: one process knows only
  the parent's workflow, another only the child's; the parent's process is killed (and
  sometimes the child's);
* a cascading cancel: a tree of runs whose leaves compensate when cancelled; the process
  sending the cancel is killed before, during or after ``cancel()``, and the worker while
  the leaves compensate.

The processes are tests/_crash_kids_worker.py, the workflows tests/_crash_kids_app.py, whose
steps log every execution with its pid (tests/_effects.py). Tests wait for states in the
store or files, never for time; only the moments of the kills are random
(``CRASH_KIDS_SEED`` replays a seed a failure names).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replaygen import Client
from replaygen.store import ACTIVE, FINISHED, RunRecord

from . import _effects
from ._crash_kids_app import family_result
from ._services_worker import close, open_store
from .pg import postgres_dsn

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
ROUNDS = max(20, int(os.environ.get("CRASH_KIDS_ROUNDS", 20)))
"""Kills of the process under test, per test (at least 20)."""
PATIENCE = 60.0
"""Longest a test waits for one event before it fails."""


class Lab:
    """One test's store, box of files, worker processes, and the pids it killed."""

    def __init__(self, tmp: Path, spec: str) -> None:
        self.box = tmp / "box"
        self.box.mkdir()
        self.spec = spec
        self.store = open_store(spec)
        self.client = Client(self.store)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()
        self.roles: dict[int, str] = {}  # pid -> the workflows that worker knows
        self.seed = int(os.environ.get("CRASH_KIDS_SEED", random.randrange(1 << 30)))
        self.rng = random.Random(self.seed)

    # ---- processes ----------------------------------------------------------------------------

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log = open(self.box / f"proc-{len(self.procs)}.log", "wb")
        with log:
            proc = subprocess.Popen([sys.executable, "-m", "tests._crash_kids_worker", args[0],
                                     self.spec, str(self.box), *args[1:]],
                                    cwd=ROOT, env=env, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def serve(self, names: str) -> subprocess.Popen[bytes]:
        """A worker knowing only the workflows ``names``, once it has recovered."""
        proc = self.spawn("serve", names)
        self.roles[proc.pid] = names
        self.until(f"worker {proc.pid} ({names}) to recover",
                   lambda: (self.box / f"ready-{proc.pid}").exists())
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            self.killed.add(proc.pid)
        proc.wait(timeout=PATIENCE)

    def pause(self, most: float) -> None:
        """A random moment for a kill to land (never a way to wait for something)."""
        time.sleep(self.rng.uniform(0, most))

    def until(self, what: str, ready: Callable[[], object]) -> None:
        """Poll ``ready()``; fail after PATIENCE, at once if a process that was not killed died,
        or if a run got blocked."""
        end = time.monotonic() + PATIENCE
        while not ready():
            for i, proc in enumerate(self.procs):
                if proc.poll() not in (None, 0) and proc.pid not in self.killed:
                    raise AssertionError(f"process {proc.pid} exited {proc.returncode} while "
                                         f"waiting for {what}:\n{self.log(i)}")
            blocked = self.store.runs(states=("blocked",), limit=1)
            assert not blocked, f"{blocked[0].run_id} blocked: {blocked[0].error} {self}"
            if time.monotonic() > end:
                raise AssertionError(f"gave up after {PATIENCE}s waiting for {what}; {self}")
            time.sleep(0.01)

    def log(self, i: int) -> str:
        return (self.box / f"proc-{i}.log").read_text(errors="replace")[-3000:]

    def __str__(self) -> str:
        states = Counter(r.state for r in self.store.runs(limit=100_000))
        return f"seed {self.seed}, {len(self.killed)} kills, runs by state {dict(states)}"

    def close(self) -> None:
        (self.box / "stop").touch()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        close(self.store)

    # ---- what the store and the side-effect log say ---------------------------------------------

    def finished(self) -> bool:
        return not self.store.runs(states=ACTIVE, limit=1)

    def tree(self, root: str) -> list[RunRecord]:
        """``root`` and every run below it, parents first."""
        found = [self.store.get(root)]
        for rec in found:
            assert rec is not None
            found += self.store.runs(parent=rec.run_id, limit=10_000)
        return found  # type: ignore[return-value]

    def executions(self) -> dict[tuple[str, str], list[int]]:
        """(run id, step) -> the pids that executed it, in order."""
        out: dict[tuple[str, str], list[int]] = {}
        for _, run_id, step, pid in _effects.lines(str(self.box)):
            out.setdefault((run_id, step), []).append(pid)
        return out

    def assert_steps_once(self, runs: list[str]) -> None:
        """Each step is journaled once and executed at least once; every execution but the
        journaled one belongs to a process that was killed (once per process)."""
        ran = self.executions()
        for run_id in runs:
            steps = Counter(e.name for e in self.store.journal(run_id) if e.kind == "do")
            assert set(steps.values()) <= {1}, (run_id, steps, str(self))
            for step in steps:
                pids = ran.get((run_id, step), [])
                assert pids, (run_id, step, "journaled, never executed", str(self))
                assert len([p for p in pids if p not in self.killed]) <= 1, (run_id, step, pids)
                assert len(pids) == len(set(pids)), (run_id, step, pids)

    def assert_one_spawn_per_child(self, parent: str, positions: list[int]) -> None:
        """Exactly the children the parent's code starts, each journaled once."""
        journal = self.store.journal(parent)
        spawns = Counter(e.position for e in journal if e.kind == "spawn")
        ends = Counter(e.position for e in journal if e.kind == "child")
        assert spawns == Counter(positions), (parent, spawns, str(self))
        assert set(ends.values()) <= {1}, (parent, ends)
        kids = {r.run_id for r in self.store.runs(parent=parent, limit=10_000)}
        assert kids == {f"{parent}/{p}" for p in positions}, (parent, kids)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Lab]:
    """A fresh SQLite file, or a fresh schema in the test PostgreSQL database."""
    dsn = schema = None
    if request.param == "sqlite":
        spec: dict[str, str] = {"sqlite": str(tmp_path / "runs.db")}
    else:
        dsn, schema = postgres_dsn(), f"rgkids_{uuid.uuid4().hex[:12]}"
        spec = {"postgres": dsn, "schema": schema}
    made = Lab(tmp_path, json.dumps(spec))
    try:
        yield made
    finally:
        made.close()
        if schema is not None:
            from replaygen.stores.postgres import PostgresStore

            PostgresStore.drop_schema(dsn or "", schema)


# ---- a. kills around child creation -----------------------------------------------------------

KIDS = 3
"""Children per parent: ``family`` starts them at positions 1..KIDS (a step comes first)."""


def start_parents(lab: Lab, prefix: str, count: int, work: float) -> list[str]:
    return [lab.client.start("family", str(lab.box), KIDS, work, run_id=f"{prefix}-{i}")
            for i in range(count)]


def assert_families(lab: Lab, parents: list[str]) -> None:
    """Each parent completed with its children's results, started each child once."""
    for parent in parents:
        assert lab.client.result(parent) == family_result(KIDS), (parent, str(lab))
        lab.assert_one_spawn_per_child(parent, list(range(1, KIDS + 1)))
        assert all(r.state == "completed" for r in lab.tree(parent)), (parent, str(lab))
    lab.assert_steps_once([r.run_id for p in parents for r in lab.tree(p)])


def test_kills_around_child_creation_leave_each_parent_exactly_its_children(lab: Lab) -> None:
    parents: list[str] = []
    while len(lab.killed) < ROUNDS:
        if lab.finished():  # a fresh batch: its children are made right after the recover
            parents += start_parents(lab, f"a{len(lab.killed)}", 4, 0.01)
        worker = lab.serve("family,leaf")
        lab.pause(0.12)
        lab.kill(worker)
    lab.serve("family,leaf")
    lab.until("every run to finish", lab.finished)
    assert_families(lab, parents)


# ---- b. the parent waits, the children finish in another process -------------------------------


def test_a_parent_whose_process_is_killed_wakes_when_its_children_finish_in_another(
        lab: Lab) -> None:
    children, parents_worker = lab.serve("leaf"), lab.serve("family")
    parents: list[str] = []
    kills = 0
    while kills < ROUNDS:
        if lab.finished():
            batch = start_parents(lab, f"b{kills}", 3, 0.03)
            parents += batch
            lab.until("the batch's children to be made", lambda batch=batch: any(
                lab.store.runs(parent=p, limit=1) for p in batch))
        lab.pause(0.15)
        lab.kill(parents_worker)
        kills += 1
        if lab.rng.random() < 0.3:  # sometimes the children's process too
            lab.kill(children)
            children = lab.serve("leaf")
        parents_worker = lab.serve("family")
    lab.until("every run to finish", lab.finished)
    assert_families(lab, parents)
    for (run_id, step), pids in lab.executions().items():  # each process ran what it knows only
        knows = "family" if step in ("before", "after") else "leaf"
        assert {lab.roles[p] for p in pids} == {knows}, (run_id, step, pids, lab.roles)


# ---- c. a cascading cancel ----------------------------------------------------------------------

DEPTH, FANOUT = 3, 3
"""The tree of c: 1 + 3 + 9 runs above 27 leaves."""


def depth_of(rec: RunRecord) -> int:
    return int(json.loads(rec.args)["args"][1])


def cancel_through_kills(lab: Lab, root: str) -> None:
    """Send the cancel from processes killed at random points, before, inside or after their
    ``cancel()``, until one got it through: the root's cancel is then requested."""
    def landed() -> bool:
        rec = lab.store.get(root)
        return rec is not None and (rec.cancel_requested or rec.state in FINISHED)

    while not landed():
        proc = lab.spawn("cancel", root)
        when = lab.rng.choice(["before", "during", "after"])
        if when != "before":
            lab.until("the canceller to open the store", lambda proc=proc: proc.poll() is not None
                      or (lab.box / f"ready-{proc.pid}").exists())
            (lab.box / f"go-{proc.pid}").touch()
        if when == "after":
            lab.until("the canceller to return", lambda proc=proc: proc.poll() is not None
                      or (lab.box / f"cancelled-{proc.pid}").exists())
        lab.pause(0.05 if when == "before" else 0.004)
        lab.kill(proc)


def assert_cancelled_tree(lab: Lab, root: str) -> None:
    """Every run of the tree is cancelled; each leaf compensated (its step journaled once);
    each node started all its children or, cancelled before it could, none."""
    runs = lab.tree(root)
    assert {r.state for r in runs} == {"cancelled"}, (root, str(lab))
    for rec in runs:
        journal = lab.store.journal(rec.run_id)
        if depth_of(rec) == 0:
            compensations = [e for e in journal if e.kind == "do" and e.name == "compensate"]
            assert len(compensations) == 1, (rec.run_id, journal)
        else:
            spawned = sorted(e.position for e in journal if e.kind == "spawn")
            assert spawned in ([], list(range(FANOUT))), (rec.run_id, spawned)
            lab.assert_one_spawn_per_child(rec.run_id, spawned)
    lab.assert_steps_once([r.run_id for r in runs])


def test_a_cascading_cancel_through_kills_cancels_every_descendant_and_each_leaf_compensates(
        lab: Lab) -> None:
    worker = lab.serve("node")
    leaves = FANOUT ** DEPTH
    for r in range(ROUNDS):
        root = lab.client.start("node", str(lab.box), DEPTH, FANOUT, run_id=f"t{r}")
        if lab.rng.random() < 0.75:  # else the cancel sweeps while the tree is being made
            lab.until(f"the leaves of {root} to wait", lambda root=root: len([
                x for x in lab.store.runs(states=("waiting",), workflow="node", limit=10_000)
                if x.run_id.startswith(root + "/") and depth_of(x) == 0]) == leaves)
        cancel_through_kills(lab, root)
        lab.pause(0.06)  # the leaves compensate meanwhile
        lab.kill(worker)
        worker = lab.serve("node")
        lab.until(f"every run of {root} to end", lab.finished)
        assert_cancelled_tree(lab, root)
