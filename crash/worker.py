"""A worker process: ``python -m crash.worker --store SPEC --dir DIR [--kill JSON] ...``

Boots like a real service (``recover()`` first), starts every run of the
scenario's plan (``start`` is idempotent, so a restarted worker just resumes),
and exits 0 once every run in the store (the plan's and their children) is
finished. ``--kill`` installs an observer that SIGKILLs this very process at the
n-th matching engine event: a real kill at an exact, named point. ``--break``
deliberately breaks the engine, in this process only, to prove that the harness
notices.

Exit codes: 0 every run finished; 3 shut down gracefully (``--shutdown-after``);
4 every run finished or blocked, some blocked; 2 harness error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Any

_kills_path: str | None = None
_lease_of: tuple[Any, str] | None = None  # (store, worker id): note the lease at a kill


def note_kill(what: str, run: str | None = None, step: str | None = None,
              pos: int | None = None, **extra: Any) -> None:
    """Record (fsynced) where this process is about to be killed, for the report (and, for a
    worker that looks remote, when its lease runs out: until then its runs are its own)."""
    if _kills_path is None:
        return
    if _lease_of is not None:
        store, me = _lease_of
        extra["lease_until"] = getattr(store.workers().get(me), "lease_until", None)
    line = json.dumps({"pid": os.getpid(), "at": what, "run": run, "step": step, "pos": pos,
                       "t": time.time(), **extra})
    fd = os.open(_kills_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class Killer:
    """Observer: at the n-th event matching the spec, SIGKILL (or SIGSTOP) this process.

    The spec matches an event's ``kind`` (``event``), ``step`` and ``state``; ``child``
    (true or false) whether the run is a child (its id is derived: ``parent/position``), and
    ``fresh`` (with ``run_started``) that the run has no journal yet: a child right after the
    commit that created it, not one resumed."""

    def __init__(self, spec: dict[str, Any], store: Any = None) -> None:
        self.spec, self.store, self.seen, self.lock = spec, store, 0, threading.Lock()
        self.commits = 0
        self.commit_event = threading.Event()
        self.shutdown_after: int | None = None

    def matches(self, ev: Any) -> bool:
        s = self.spec
        if not s or ev.kind != s.get("event"):
            return False
        if s.get("step") not in (None, ev.step) or s.get("state") not in (None, ev.state):
            return False
        if "child" in s and ("/" in (ev.run_id or "")) != s["child"]:
            return False
        return not s.get("fresh") or not self.store.journal(ev.run_id)

    def __call__(self, ev: Any) -> None:
        if ev.kind == "step_committed" and self.shutdown_after is not None:
            with self.lock:
                self.commits += 1
                if self.commits >= self.shutdown_after:
                    self.commit_event.set()
        if not self.matches(ev):
            return
        s = self.spec
        with self.lock:
            self.seen += 1
            hit = self.seen == s.get("n", 1)
        if not hit:
            return
        action = s.get("action", "kill")
        note_kill(ev.kind, ev.run_id, ev.step, ev.position, state=ev.state, action=action)
        if action == "hold":
            # Hold this thread here; the harness then SIGSTOPs the whole process from outside
            # (a long GC pause, a frozen VM) until its lease lapses, and later continues it.
            release = os.path.join(os.path.dirname(_kills_path or "."), "release")
            while not os.path.exists(release):
                time.sleep(0.002)
            note_kill("released", ev.run_id, ev.step, ev.position)
            return
        sig = signal.SIGKILL
        delay = s.get("delay", 0)
        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), sig)).start()
        else:
            os.kill(os.getpid(), sig)


def kill_at_tick_start(when: str) -> None:
    """SIGKILL this process at the ``start()`` of a schedule's tick: ``before`` it (the tick is
    computed as due, its run not stored) or ``after`` it (stored, nothing else done). The
    scheduler calls the Interpreter's ``start``, so the seam is that method, patched here."""
    from replaygen import Interpreter
    original = Interpreter.start

    def start(self: Any, workflow: Any, *args: Any, run_id: str | None = None, **kwargs: Any) -> str:
        tick = run_id is not None and run_id.startswith("sched:")
        if tick and when == "before":
            note_kill("tick_start", run_id, when=when)
            os.kill(os.getpid(), signal.SIGKILL)
        done = original(self, workflow, *args, run_id=run_id, **kwargs)
        if tick and when == "after":
            note_kill("tick_start", run_id, when=when)
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    Interpreter.start = start  # type: ignore[method-assign]


class ShiftedClock:
    """The time ``offset`` seconds ago: the harness picks the offset that makes a schedule's
    tick due when the scenario starts, and gives every worker the same one."""

    def __init__(self, offset: float) -> None:
        self._offset = offset

    def now(self) -> float:
        return time.time() - self._offset


def look_remote() -> None:
    """Give this worker an owner id the others cannot judge (no boot id): they cannot tell it
    died, so only its lease frees its runs and their slots, as for a worker on another host."""
    import uuid

    from replaygen import interpreter
    interpreter.new_owner_id = lambda: "|".join(  # type: ignore[attr-defined]
        ["elsewhere", "", "", str(os.getpid()), "", uuid.uuid4().hex[:12]])


def apply_break(mode: str | None, store: Any) -> Any:
    """Deliberately break the engine inside this process (never the real code on disk)."""
    if not mode or mode in ("no-limit", "split-purge", "fork-from-start"):
        return store  # no-limit: see main(); the others break crash.ops processes only
    if mode == "early-commit":
        # Journal every step's entry *before* calling the step function (a placeholder result),
        # the classic bug a crash exposes: replay then trusts an entry for work never done.
        # The seam is the replay rules' start of a step.
        from replaygen.replay import Life
        original = Life._start

        def _start(self: Any, m: Any, attempt: int) -> Any:
            yield from self._save("running", (self._entry(m.position, "do", m.cmd.name, "ok", "null"),))
            return (yield from original(self, m, attempt))

        Life._start = _start  # type: ignore[method-assign]
        return store
    if mode == "no-fence":
        # The store's commit ignores owner and fence: every write is re-stamped with whatever
        # owner/fence the run has now, so a worker that lost its lease can still append.
        commit = store.commit

        def unfenced(writes: Any) -> Any:
            fixed = []
            for w in writes:
                rec = store.get(w.run_id)
                if rec is not None and rec.owner is not None:
                    # Write is a NamedTuple today, was a dataclass: re-stamp it either way.
                    w = w._replace(owner=rec.owner, fence=rec.fence) if hasattr(w, "_replace") \
                        else replace(w, owner=rec.owner, fence=rec.fence)
                fixed.append(w)
            return commit(fixed)

        store.commit = unfenced
        return store
    raise SystemExit(f"unknown --break mode {mode!r}")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m crash.worker")
    ap.add_argument("--store", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--kill", default="")
    ap.add_argument("--break", dest="broken", default="")
    ap.add_argument("--lease", type=float, default=10.0)
    ap.add_argument("--shutdown-after", type=int, default=0)
    ap.add_argument("--schedule", default="", help="JSON {name, at, every}: the runs are the "
                    "ticks of this schedule (the clock starts at `at`), not started here")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0,
                    help="limits={the plan workflow: N}: at most N of its runs in steps at once")
    ap.add_argument("--boot-delay", type=float, default=0.0,
                    help="seconds of downtime before booting (a deadline may pass meanwhile)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global _kills_path
    args = parse(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr,
                        format=f"worker {os.getpid()}: %(levelname)s %(name)s: %(message)s")

    time.sleep(args.boot_delay)
    from replaygen import Interpreter, Schedule
    from replaygen.store import ACTIVE
    from . import plans
    from .stores import open_store

    _kills_path = os.path.join(args.dir, "kills.log")
    from . import worker  # run as __main__, this is another module than the one plans imports
    worker._kills_path = _kills_path  # (so an in_step kill is noted too)
    spec = json.loads(args.kill) if args.kill else {}
    plans.configure(os.path.join(args.dir, "effects.log"),
                    spec if spec.get("event") == "in_step" else None)
    store = apply_break(args.broken, open_store(args.store))
    killer = Killer({} if spec.get("event") in ("in_step", "tick_start") else spec, store)
    if args.shutdown_after:
        killer.shutdown_after = args.shutdown_after
    if spec.get("event") == "tick_start":
        kill_at_tick_start(spec["when"])
    if spec.get("remote"):
        look_remote()
    runs = plans.load_runs(os.path.join(args.dir, "plan.json"))
    sched, timing = json.loads(args.schedule) if args.schedule else None, {}
    if sched:  # each run is a tick: its id sched:<name>:<tick>, its arguments its plan
        plans.offset = sched["offset"]
        timing = {"clock": ShiftedClock(sched["offset"]), "schedules": [
            Schedule(sched["name"], plans.WORKFLOW, run_id, ops, every=sched["every"])
            for run_id, ops in runs]}
    interp = Interpreter(store, {plans.WORKFLOW: plans.plan}, observer=killer, lease=args.lease,
                         concurrency=args.concurrency,
                         limits={plans.WORKFLOW: args.limit} if args.limit and
                         args.broken != "no-limit" else None, **timing)
    if spec.get("remote"):
        worker._lease_of = (store, interp.worker_id)
    interp.recover()
    for run_id, ops in [] if sched else runs:
        interp.start(plans.WORKFLOW, run_id, ops, run_id=run_id)
    while True:
        # Every run: the plan's (a schedule's may not have fired yet), and their children.
        states = [getattr(store.get(run_id), "state", "not fired") for run_id, _ in runs]
        if all(s in ("completed", "failed", "cancelled") for s in states) \
                and not store.runs(states=ACTIVE, limit=1):
            interp.shutdown(timeout=10)
            return 4 if store.runs(states=("blocked",), limit=1) else 0
        if args.shutdown_after and killer.commit_event.is_set():
            interp.shutdown(timeout=30)
            return 3
        time.sleep(0.02)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
