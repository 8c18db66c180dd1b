"""Services, clients and workers (SPEC section 10) with real processes and real SIGKILL.

A worker is a process that imports an app module of ``@workflow`` functions and calls
``Interpreter(store).recover()``; a client is a process that runs only ``Client(store)``.
The processes are tests/_services_worker.py; the apps are tests/_service_app.py,
tests/_billing.py and tests/_shipping.py, whose steps record every execution with its pid
(tests/_effects.py). Tests wait for events in the store or in files, never for time, and
run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Cancelled, Client, Do, Interpreter, Sleep, Store, Wait
from replaygen.store import ACTIVE, RunRecord
from replaygen.testing import FakeClock

from . import _effects
from ._services_worker import close, open_store
from .pg import postgres_dsn

ROOT = Path(__file__).resolve().parent.parent
PATIENCE = 30.0
"""Longest a test waits for one event (a process, a state) before it fails."""

RECOVER_ONLY = """\
import json, sys, time
from replaygen import Interpreter
from tests._services_worker import open_store
store = open_store(sys.argv[1])

import tests._service_app
print(json.dumps(Interpreter(store).recover()), flush=True)

while store.runs(states=("pending", "running", "sleeping", "waiting"), limit=1):
    time.sleep(0.02)  # serve until every run has finished
"""
"""The whole of a recovering worker: import the app, recover(), serve."""


class Services:
    """One test's store, effects box, processes and in-process interpreters."""

    def __init__(self, tmp: Path, spec: str) -> None:
        self.box = tmp / "box"
        self.box.mkdir()
        self.spec = spec
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()
        self._stores: list[Store] = []
        self._interpreters: list[Interpreter] = []
        self.store = self.open()
        self.client = Client(self.store)

    # ---- stores and interpreters in this process ----------------------------------------------

    def open(self) -> Store:
        """Another store object on the same database (as another process would have)."""
        self._stores.append(open_store(self.spec))
        return self._stores[-1]

    def interpreter(self, workflows: Any, **options: Any) -> Interpreter:
        self._interpreters.append(Interpreter(self.open(), workflows, **options))
        return self._interpreters[-1]

    def runs(self) -> dict[str, RunRecord]:
        return {r.run_id: r for r in self.store.runs(limit=10_000)}

    def pids(self, key: str, step: object, mark: str = "B") -> list[int]:
        """The pids that executed (``B``: began, ``E``: ended) ``step`` of run ``key``, in order."""
        return [p for m, k, s, p in _effects.lines(str(self.box)) if (m, k, s) == (mark, key, str(step))]

    # ---- processes ----------------------------------------------------------------------------

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with open(self.box / f"{name}.out", "wb") as out, open(self.box / f"{name}.err", "wb") as err:
            self.procs[name] = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                                                stdout=out, stderr=err)
        return self.procs[name]

    def serve(self, name: str, *modules: str, start: list[Any] | None = None, recover: bool = False,
              concurrency: int | None = None, stop: bool = True,
              until_parked: bool = False) -> subprocess.Popen[bytes]:
        """A worker process serving ``modules`` (see tests/_services_worker.py)."""
        args = ["-m", "tests._services_worker", "serve", self.spec,
                "--report", str(self.box / f"{name}.json"), "--start", json.dumps(start or [])]
        args += [a for m in modules for a in ("--import", m)]
        args += ["--recover"] if recover else []
        args += ["--concurrency", str(concurrency)] if concurrency else []
        args += ["--until-parked"] if until_parked else \
            ["--stop", str(self.box / f"{name}.stop")] if stop else []
        return self.spawn(name, *args)

    def client_process(self, name: str, starts: list[Any]) -> subprocess.Popen[bytes]:
        return self.spawn(name, "-m", "tests._services_worker", "client", self.spec,
                          json.dumps(starts), str(self.box / f"{name}.json"))

    def report(self, name: str) -> dict[str, Any]:
        """What process ``name`` reported once it was ready."""
        path = self.box / f"{name}.json"
        self.until(f"{name} to report", path.exists)
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def output(self, name: str) -> str:
        return (self.box / f"{name}.out").read_text() + (self.box / f"{name}.err").read_text()

    def exited(self, name: str) -> None:
        """Wait for ``name`` to exit, and check that it succeeded."""
        try:
            code = self.procs[name].wait(timeout=PATIENCE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still runs after {PATIENCE}s\n{self.diagnose()}") from None
        assert code == 0, f"{name} exited with {code}:\n{self.output(name)}"

    def stop(self, *names: str) -> None:
        for name in names:
            (self.box / f"{name}.stop").touch()
        for name in names:
            self.exited(name)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=PATIENCE)
        self.killed.add(name)

    def until(self, what: str, ready: Callable[[], object], cap: float = PATIENCE) -> None:
        """Poll ``ready()`` (it may assert invariants as it goes); fail after ``cap`` seconds,
        or as soon as a process dies that was not killed."""
        end = time.monotonic() + cap
        while not ready():
            for name, proc in self.procs.items():
                code = proc.poll()
                if code not in (None, 0) and name not in self.killed:
                    raise AssertionError(f"{name} exited with {code} while the test waited for "
                                         f"{what}:\n{self.output(name)}")
            if time.monotonic() > end:
                raise AssertionError(f"gave up after {cap}s waiting for {what}\n{self.diagnose()}")
            time.sleep(0.02)

    def diagnose(self) -> str:
        states = Counter((r.workflow, r.state, r.owner is not None) for r in self.runs().values())
        logs = "".join(f"--- {n}:\n{self.output(n)[-3000:]}" for n in self.procs)
        return f"runs (workflow, state, owned): {dict(states)}\n{logs}"

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        for interp in self._interpreters:
            interp.shutdown(timeout=5)
        for store in self._stores:
            close(store)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def services(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Services]:
    """A fresh SQLite file, or a fresh schema in the test PostgreSQL database."""
    schema = dsn = None
    if request.param == "sqlite":
        spec: dict[str, str] = {"sqlite": str(tmp_path / "runs.db")}
    else:
        dsn, schema = postgres_dsn(), f"rgsvc_{uuid.uuid4().hex[:12]}"
        spec = {"postgres": dsn, "schema": schema}
    svc = Services(tmp_path, json.dumps(spec))
    try:
        yield svc
    finally:
        svc.close()
        if schema is not None:
            from replaygen.stores.postgres import PostgresStore

            PostgresStore.drop_schema(dsn or "", schema)


# ---- 1. the mission: a new process that imports the app and recovers finishes the runs -------


@pytest.mark.slow
def test_a_process_that_only_imports_the_app_and_recovers_finishes_a_killed_process_runs(
        services: Services) -> None:
    svc, box, steps = services, str(services.box), 5
    holds = {"o1": 1, "o2": 2, "o3": 3}  # run -> the step it is inside when A is killed
    svc.serve("a", "tests._service_app", stop=False,
              start=[["order", [box, key, steps, hold], key] for key, hold in holds.items()])
    a = svc.report("a")
    svc.until("each run to be inside its held step, the steps before it journaled", lambda: all(
        len(svc.store.journal(key)) == hold and svc.pids(key, hold) for key, hold in holds.items()))
    svc.kill("a")
    for key in holds:
        record = svc.store.get(key)
        assert record is not None and (record.state, record.owner) == ("running", a["worker"])

    (svc.box / "open").touch()  # the held steps go through when they run again
    b = svc.spawn("b", "-c", RECOVER_ONLY, svc.spec).pid
    svc.until("every run to finish", lambda: not svc.store.runs(states=ACTIVE, limit=1))
    svc.exited("b")

    assert sorted(json.loads(svc.output("b").splitlines()[0])) == sorted(holds)
    for key, hold in holds.items():
        assert svc.client.result(key, timeout=PATIENCE) == {
            "key": key, "total": sum(i * i for i in range(steps))}
        for i in range(steps):
            if i < hold:  # journaled before the kill: replayed, never executed again
                assert svc.pids(key, i) == [a["pid"]], (key, i)
            elif i == hold:  # in flight at the kill: executed again (at-least-once)
                assert svc.pids(key, i) == [a["pid"], b], (key, i)
            else:
                assert svc.pids(key, i) == [b], (key, i)


# ---- 2. two services sharing one store --------------------------------------------------------

APPS = {"billing": "tests._billing", "shipping": "tests._shipping"}


@pytest.mark.slow
@pytest.mark.parametrize("first", ["billing", "shipping"])
def test_each_service_runs_its_own_workflow_and_never_touches_the_other_services_runs(
        services: Services, first: str) -> None:
    svc, box = services, str(services.box)
    second = "shipping" if first == "billing" else "billing"
    parked = {wf: [f"{wf}-parked-{i}" for i in range(2)] for wf in APPS}
    pending = {wf: [f"{wf}-pending-{i}" for i in range(2)] for wf in APPS}
    # Each service starts runs of its own, which park on Wait("go"), and shuts down.
    for wf, app in APPS.items():
        svc.serve(f"seed-{wf}", app, until_parked=True,
                  start=[[wf, [box, key, True], key] for key in parked[wf]])
    for wf in APPS:
        svc.exited(f"seed-{wf}")
    for wf in APPS:
        for key in pending[wf]:
            svc.client.start(wf, box, key, False, run_id=key)
        for key in parked[wf]:
            svc.client.deliver(key, "go", f"go-{key}")
    before = {key: (r, svc.store.journal(key)) for key, r in svc.runs().items()}
    nobody = (None,)  # a run a Client started is owned by nobody until a worker claims it
    assert sorted(r.state for r, _ in before.values()) == ["pending"] * 4 + ["waiting"] * 4
    assert all(r.owner in nobody for r, _ in before.values())

    workers: dict[str, str] = {}  # workflow -> id of the worker of the service that knows it

    def untouched_by_strangers() -> bool:  # checked on every poll
        for r in svc.runs().values():
            assert r.state != "blocked" and r.error is None, r
            assert r.owner in nobody or r.owner == workers.get(r.workflow), (r, workers)
        return True

    def completed(*wfs: str) -> bool:
        return untouched_by_strangers() and all(
            r.state == "completed" for r in svc.runs().values() if r.workflow in wfs)

    # Only the first service is up: it finishes its runs, the other's wait untouched.
    svc.serve(first, APPS[first], recover=True)
    workers[first] = svc.report(first)["worker"]
    for wf in APPS:  # started while it is up: the start wakes its watcher, which takes its own
        svc.client.start(wf, box, f"{wf}-fresh", False, run_id=f"{wf}-fresh")
    waiting_fresh = svc.store.get(f"{second}-fresh")
    svc.until(f"every {first} run to complete", lambda: completed(first))
    for key, (record, journal) in before.items():
        if record.workflow == second:
            assert (svc.store.get(key), svc.store.journal(key)) == (record, journal)
    assert svc.store.get(f"{second}-fresh") == waiting_fresh
    assert waiting_fresh is not None and waiting_fresh.state == "pending"
    assert waiting_fresh.owner in nobody

    # Now the other service boots and finishes its own.
    svc.serve(second, APPS[second], recover=True)
    workers[second] = svc.report(second)["worker"]
    svc.until("every run to complete", lambda: completed(*APPS))
    svc.stop(first, second)

    for wf in APPS:
        for key in parked[wf]:
            assert svc.client.result(key) == f"{wf} {key} go-{key}"
        for key in [*pending[wf], f"{wf}-fresh"]:
            assert svc.client.result(key) == f"{wf} {key} now"
    after = svc.runs()
    for key, (record, _) in before.items():  # claimed once, by its own service, never by the other
        assert after[key].fence == record.fence + 1, (key, record, after[key])
    ran = Counter((k, s) for m, k, s, _ in _effects.lines(box) if m == "B")
    assert set(ran.values()) == {1} and len(ran) == 2 * len(after)
    for wf in APPS:
        own = {svc.procs[f"seed-{wf}"].pid, svc.procs[wf].pid}
        assert {p for _, k, _, p in _effects.lines(box) if k.startswith(wf)} <= own, wf


# ---- 3. a client process, two worker processes -------------------------------------------------


@pytest.mark.slow
def test_a_parent_whose_worker_does_not_know_its_children_completes_when_their_services_run_them(
        services: Services) -> None:
    svc, box = services, str(services.box)
    svc.serve("orders", "tests._orders", recover=True)
    run_id = svc.client.start("checkout", box, "o1", run_id="o1")
    svc.until("the children to be made", lambda: len(svc.store.runs(parent="o1")) == 2)
    assert svc.client.status("o1").state == "waiting"  # the orders worker cannot run them
    for wf, app in APPS.items():
        svc.serve(wf, app, recover=True)
    assert svc.client.result(run_id, timeout=PATIENCE) == ["billing o1-bill now",
                                                            "shipping o1-ship now"]
    pids = {wf: svc.report(wf)["pid"] for wf in APPS}
    for wf, child in (("billing", "o1/0"), ("shipping", "o1/1")):
        assert svc.client.status(child).parent == "o1"
        assert svc.pids(f"o1-{wf[:4]}", "first") == [pids[wf]]  # its own service ran it
    svc.stop("orders", *APPS)


@pytest.mark.slow
def test_runs_a_client_process_starts_are_executed_by_the_workers_only(services: Services) -> None:
    svc, box = services, str(services.box)
    for name in ("w1", "w2"):
        svc.serve(name, "tests._service_app", recover=True, concurrency=10)
    workers = {name: svc.report(name) for name in ("w1", "w2")}
    keys = [f"fan-{i:03d}" for i in range(100)]
    svc.client_process("client", [["fan", [box, key], key] for key in keys])
    svc.exited("client")
    client = svc.report("client")
    assert client["run_ids"] == keys
    assert client["threads_after"] == client["threads_before"]  # a Client starts no thread
    svc.until("the 100 runs to finish", lambda: not svc.store.runs(states=ACTIVE, limit=1))
    svc.stop("w1", "w2")

    pids = {w["pid"] for w in workers.values()}
    results = [svc.client.result(key) for key in keys]
    assert [r["key"] for r in results] == keys
    assert {r["pid"] for r in results} == pids  # both workers took part
    ran = Counter((k, p) for m, k, _, p in _effects.lines(box) if m == "B")
    assert sorted(k for k, _ in ran) == keys and set(ran.values()) == {1}  # each step once
    assert {p for _, p in ran} == pids and client["pid"] not in pids


# ---- 4. terminate --------------------------------------------------------------------------------


def _until(what: str, ready: Callable[[], object]) -> None:
    end = time.monotonic() + PATIENCE
    while not ready():
        assert time.monotonic() < end, f"gave up after {PATIENCE}s waiting for {what}"
        time.sleep(0.01)


def _state(store: Store, run_id: str) -> str | None:
    record = store.get(run_id)
    return None if record is None else record.state


def _assert_terminated(client: Client, run_id: str, reason: str) -> None:
    status = client.status(run_id)
    assert (status.state, status.error) == ("cancelled", f"Terminated: {reason}")
    with pytest.raises(Cancelled) as raised:
        client.result(run_id, timeout=PATIENCE)
    assert str(raised.value) == reason


def test_terminate_ends_a_blocked_run(services: Services) -> None:
    def v1() -> Any:
        yield Do("reserve", int, 1)
        return (yield Wait("go"))

    def v2() -> Any:  # the deploy that changed the first step: old runs block
        yield Do("charge", int, 1)
        return (yield Wait("go"))

    svc = services
    old = svc.interpreter({"evolving": v1})
    old.start("evolving", run_id="evolving")
    _until("the run to wait", lambda: _state(svc.store, "evolving") == "waiting")
    old.shutdown()
    svc.interpreter({"evolving": v2}).recover()
    _until("the run to block", lambda: _state(svc.store, "evolving") == "blocked")
    journal = svc.store.journal("evolving")

    status = Client(svc.open()).terminate("evolving", "bad deploy, rolled back")
    assert (status.state, status.error) == ("cancelled", "Terminated: bad deploy, rolled back")
    _assert_terminated(svc.client, "evolving", "bad deploy, rolled back")
    # Code that would replay it again does not bring it back.
    assert svc.interpreter({"evolving": v1}).recover() == []
    assert svc.store.journal("evolving") == journal
    _assert_terminated(svc.client, "evolving", "bad deploy, rolled back")


def test_terminate_ends_a_sleeping_run_whose_worker_never_wakes_it(services: Services) -> None:
    ran: list[str] = []

    def napper(key: str, seconds: float) -> Any:
        yield Sleep(seconds)
        yield Do("after", ran.append, key)
        return key

    svc, clock = services, FakeClock()
    worker = svc.interpreter({"napper": napper}, clock=clock)
    worker.start("napper", "sleeper", 3600, run_id="sleeper")
    worker.start("napper", "bystander", 3601, run_id="bystander")  # wakes just after the sleeper
    _until("both runs to sleep", lambda: {_state(svc.store, r) for r in ("sleeper", "bystander")}
           == {"sleeping"})
    journal = svc.store.journal("sleeper")

    Client(svc.open()).terminate("sleeper", "no longer needed")  # as from another process
    clock.advance(7200)
    assert worker.result("bystander", timeout=PATIENCE) == "bystander"
    worker.resume("sleeper", timeout=PATIENCE)  # returns once this worker has let the run go
    worker.shutdown()  # and every thread that could still act on it has ended
    assert ran == ["bystander"]  # the sleeper's timer fired too, and ran nothing
    assert svc.store.journal("sleeper") == journal
    _assert_terminated(svc.client, "sleeper", "no longer needed")


@pytest.mark.parametrize("by", ["its worker", "another process"])
def test_terminate_ends_a_running_run_and_its_late_step_result_is_refused(
        services: Services, by: str) -> None:
    ran: list[str] = []
    inside, gate, leaving = threading.Event(), threading.Event(), threading.Event()

    def held(key: str) -> str:
        inside.set()
        gate.wait(PATIENCE)
        leaving.set()
        return key

    def job(key: str) -> Any:
        yield Do("held", held, key)
        yield Do("after", ran.append, key)
        return key

    svc = services
    worker = svc.interpreter({"job": job})
    worker.start("job", "running", run_id="running")
    assert inside.wait(PATIENCE)
    assert _state(svc.store, "running") == "running"
    terminator = worker if by == "its worker" else Client(svc.open())
    status = terminator.terminate("running", "stuck on a dead API")
    assert (status.state, status.error) == ("cancelled", "Terminated: stuck on a dead API")

    gate.set()  # the step returns now; its result must not be journaled
    assert leaving.wait(PATIENCE)
    worker.resume("running", timeout=PATIENCE)  # returns once this worker has let the run go
    worker.shutdown()  # and every thread that could still act on it has ended
    assert ran == []
    assert svc.store.journal("running") == []
    _assert_terminated(svc.client, "running", "stuck on a dead API")


@pytest.mark.slow
def test_a_run_terminated_while_its_step_runs_never_runs_again_after_its_worker_is_killed(
        services: Services) -> None:
    svc, box = services, str(services.box)
    svc.serve("a", "tests._service_app", stop=False, start=[
        ["order", [box, key, 3, 1], key] for key in ("doomed", "bystander")])
    a = svc.report("a")["pid"]
    svc.until("both runs to be inside step 1", lambda: all(
        len(svc.store.journal(key)) == 1 and svc.pids(key, 1) for key in ("doomed", "bystander")))
    journal = svc.store.journal("doomed")

    status = svc.client.terminate("doomed", "customer withdrew")
    assert (status.state, status.error) == ("cancelled", "Terminated: customer withdrew")
    (svc.box / "open-doomed").touch()  # the step ends in the worker; the fence refuses its result
    svc.until("the doomed step to end", lambda: svc.pids("doomed", 1, "E"))
    svc.kill("a")

    svc.serve("b", "tests._service_app", recover=True)
    b = svc.report("b")
    assert b["recovered"] == ["bystander"]
    (svc.box / "open-bystander").touch()
    assert svc.client.result("bystander", timeout=PATIENCE) == {"key": "bystander", "total": 5}
    # A run started after recover() is taken by b's watcher: it has looked at the store since.
    svc.client.start("order", box, "after", 1, run_id="after")
    assert svc.client.result("after", timeout=PATIENCE) == {"key": "after", "total": 0}
    svc.stop("b")

    assert svc.store.journal("doomed") == journal
    assert [(m, s, p) for m, k, s, p in _effects.lines(box) if k == "doomed"] == [
        ("B", "0", a), ("E", "0", a), ("B", "1", a), ("E", "1", a)]
    assert svc.pids("bystander", 1) == [a, b["pid"]]  # in flight at the kill: ran again
    _assert_terminated(svc.client, "doomed", "customer withdrew")


# ---- a client's start -------------------------------------------------------------------------


def test_a_run_a_client_starts_is_owned_by_nobody(services: Services) -> None:
    services.client.start("anything", run_id="queued")
    record = services.store.get("queued")
    assert record is not None and (record.state, record.owner) == ("pending", None)


def test_the_first_claim_of_a_run_a_client_started_is_no_crash_resumption(services: Services) -> None:
    def once() -> Any:
        return (yield Do("only", int, 7))

    services.client.start("once", run_id="fresh")
    services.interpreter({"once": once}, max_resumes=0).recover()
    _until("the run to finish or block", lambda: _state(services.store, "fresh") in (
        "completed", "blocked"))
    assert services.client.status("fresh").state == "completed", services.client.status("fresh").error
