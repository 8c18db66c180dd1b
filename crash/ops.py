"""Operation processes: ``python -m crash.ops MODE --store SPEC --dir DIR [--kill JSON] ...``

``setup`` builds a scenario's store with the real engine, as ``setup.json`` in DIR says: runs
that finish, park (a Wait nobody answers, a long Sleep) or are cancelled, runs of a workflow no
worker knows (pending for good), in phases a gap apart (``marks.json``: a time between each).
``purge`` purges it, in batches of ``--batch``, and is SIGKILLed at a named point of the
purge loop; ``fork`` forks the runs ``forks.json`` names and works the forks to their end,
and is SIGKILLed around a fork's commit. The seams are the store object of this process
(its ``purge`` and ``commit`` methods, wrapped here), never the engine.

Exit codes: 0 done; 2 harness error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .worker import note_kill

FINISHED = ("completed", "failed", "cancelled")


def _log(path: str, **line: Any) -> None:
    """Append one line, fsynced: what this process did, for the harness's figures."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"pid": os.getpid(), "t": time.time(), **line}) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _until(store: Any, want: Callable[[Any], bool], run_ids: Sequence[str], what: str) -> None:
    end = time.monotonic() + 60
    while not all(want(store.get(r)) for r in run_ids):
        if time.monotonic() > end:
            late = [f"{r}={getattr(store.get(r), 'state', None)}" for r in run_ids
                    if not want(store.get(r))]
            raise SystemExit(f"setup: runs not {what} after 60 s: {late[:5]}")
        time.sleep(0.02)


def setup(store: Any, interp: Any, client: Any, phases: list[dict[str, Any]], gap: float,
          marks_path: str) -> None:
    """Each phase: start its runs (and idle ones), deliver its signals, wait until the runs
    to park are parked and the others finished, cancel some parked ones; a mark between."""
    from . import plans
    marks = []
    for i, ph in enumerate(phases):
        for run_id, ops in ph["runs"]:
            interp.start(plans.WORKFLOW, run_id, ops, run_id=run_id)
        for run_id in ph.get("idle", []):
            client.start("crash.idle", run_id, run_id=run_id)  # no worker knows it: pending
        for run_id, name, payload in ph.get("deliver", []):
            interp.deliver(run_id, name, payload)
        parked = set(ph.get("park", [])) | set(ph.get("cancel", []))
        _until(store, lambda r: r is not None and r.state in ("waiting", "sleeping"),
               sorted(parked), "parked")
        _until(store, lambda r: r is not None and r.state in FINISHED,
               [r for r, _ in ph["runs"] if r not in parked], "finished")
        for run_id in ph.get("cancel", []):
            interp.cancel(run_id)
        _until(store, lambda r: r is not None and r.state == "cancelled", ph.get("cancel", []),
               "cancelled")
        if i < len(phases) - 1:
            time.sleep(gap)
            marks.append(time.time())
            time.sleep(gap)
    with open(marks_path, "w") as f:
        json.dump(marks, f)


class PurgeKiller:
    """Wraps the store's ``purge`` (one call: one batch, one transaction): SIGKILL this process
    ``before`` the n-th batch, ``inside`` it (at its k-th tombstone: in the transaction, some
    rows rewritten) or ``after`` it committed."""

    def __init__(self, spec: dict[str, Any], purge: Callable[..., list[str]], log: str) -> None:
        self.spec, self.purge, self.log, self.batch = spec, purge, log, 0

    def __call__(self, before: float, *, states: Any, limit: int,
                 tombstone: Callable[[Any], Any]) -> list[str]:
        self.batch += 1
        hit = self.spec.get("n") == self.batch
        when = self.spec.get("when") if hit else None
        if when == "before":
            note_kill("purge:before", batch=self.batch)
            _die()
        if when == "inside":
            tombstone = self.inside(tombstone, self.spec.get("k", 1))
        ids = self.purge(before, states=states, limit=limit, tombstone=tombstone)
        _log(self.log, batch=self.batch, purged=len(ids))
        if when == "after":
            note_kill("purge:after", batch=self.batch, purged=len(ids))
            _die()
        return ids

    def inside(self, tombstone: Callable[[Any], Any], k: int) -> Callable[[Any], Any]:
        seen = [0]

        def marked(run: Any) -> Any:
            seen[0] += 1
            if seen[0] == k:
                note_kill("purge:inside", run.run_id, batch=self.batch, k=k)
                _die()
            return tombstone(run)
        return marked


def restart_purged(interp: Any, runs: list[list[Any]], log: str) -> None:
    """Start purged ids again: with their arguments (returns the id, starts nothing) and with
    others (refused); the harness then looks for any trace of a new run."""
    from . import plans
    for run_id, ops in runs:
        for same in (True, False):
            t, error = time.time(), None
            try:
                interp.start(plans.WORKFLOW, run_id, ops if same else [*ops, ["do", "more", 0]],
                             run_id=run_id)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            _log(log, run=run_id, same=same, error=error, at=t)
    time.sleep(0.3)  # a run it had started would take a step in here


class ForkKiller:
    """Wraps the store's ``commit``: at the n-th write that creates a fork, SIGKILL this process
    ``before`` the commit, ``after`` it returned, or ``during`` it (a timer ``delay`` seconds
    after the call: in the transaction or just after, as it falls)."""

    def __init__(self, spec: dict[str, Any], commit: Callable[[Any], Any], log: str) -> None:
        self.spec, self.commit, self.log, self.seen = spec, commit, log, 0
        self.lock = threading.Lock()

    def __call__(self, writes: Sequence[Any]) -> Any:
        forks = [w.run_id for w in writes if w.create is not None and len(w.create) == 3]
        with self.lock:
            before = self.seen
            self.seen += len(forks)
        hit = bool(forks) and before < self.spec.get("n", 0) <= self.seen
        if not hit:
            return self.commit(writes)
        when = self.spec["when"]
        note_kill(f"fork:{when}", forks[0], delay=self.spec.get("delay"))
        if when == "before":
            _die()
        if when == "during":
            threading.Timer(self.spec.get("delay", 0.001), _die).start()
        done = self.commit(writes)
        _log(self.log, fork=forks[0], committed=done)
        if when == "after":
            _die()
        time.sleep(1.0)  # "during": the timer fires in here if the commit was quicker
        return done


def split_purge(purge: Callable[..., list[str]], spec: str) -> Callable[..., list[str]]:
    """``--break split-purge`` (SQLite): a purge that deletes a batch's journal entries in a
    transaction of their own, before the one that makes the tombstones. The harness must
    catch a kill between the two (``inside``)."""
    import sqlite3
    path = spec.partition(":")[2]

    def purge_split(before: float, *, states: Any, limit: int, tombstone: Any) -> list[str]:
        conn = sqlite3.connect(path, timeout=30)
        marks = ",".join("?" * len(states))
        with conn:
            conn.execute(f"DELETE FROM journal WHERE run_id IN (SELECT run_id FROM runs WHERE "
                         f"state IN ({marks}) AND updated < ? ORDER BY created LIMIT ?)",
                         [*states, before, limit])
        conn.close()
        return purge(before, states=states, limit=limit, tombstone=tombstone)
    return purge_split


def fork(store: Any, interp: Any, forks: list[list[Any]], broken: str) -> None:
    """Recover (forks a killed forker made are adopted once its lease lapses), make each fork
    not made yet, and wait until every fork finished. ``--break fork-from-start`` forks from
    position 0 instead: the fork runs its prefix's steps again (the harness must say so)."""
    interp.recover()
    for new, src, from_step, ops in forks:
        if store.get(new) is None:
            interp.fork(src, 0 if broken == "fork-from-start" else from_step, run_id=new)
        rec = store.get(new)
        if broken and ["wait", "go"] in ops and rec.state not in FINISHED \
                and not store.signals(new):  # from the start, it waits again: answer it
            interp.deliver(new, "go", "again")
    _until(store, lambda r: r is not None and r.state in FINISHED, [f[0] for f in forks],
           "finished")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m crash.ops")
    ap.add_argument("mode", choices=("setup", "purge", "fork"))
    ap.add_argument("--store", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--kill", default="")
    ap.add_argument("--lease", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=500, help="runs purged per transaction")
    ap.add_argument("--before", type=float, default=0.0, help="purge runs finished before this")
    ap.add_argument("--break", dest="broken", default="")
    ap.add_argument("--restart", action="store_true", help="after a whole purge, start some "
                    "purged ids again (restart.json)")
    args = ap.parse_args(argv)
    from replaygen import Client, Interpreter
    from replaygen import client as client_module
    from . import plans, worker
    from .stores import open_store

    def path(name: str) -> str:
        return os.path.join(args.dir, name)
    worker._kills_path = path("kills.log")
    plans.configure(path("effects.log"))
    store = open_store(args.store)
    spec = json.loads(args.kill) if args.kill else {}
    if args.mode == "purge":
        client_module.PURGE_BATCH = args.batch  # short batches: many boundaries to kill at
        purge = split_purge(store.purge, args.store) if args.broken == "split-purge" \
            else store.purge
        store.purge = PurgeKiller(spec, purge, path("ops.log"))
    if args.mode == "fork":
        store.commit = ForkKiller(spec, store.commit, path("ops.log"))
    interp = Interpreter(store, {plans.WORKFLOW: plans.plan}, lease=args.lease)
    if args.mode == "setup":
        with open(path("setup.json")) as f:
            conf = json.load(f)
        setup(store, interp, Client(store), conf["phases"], conf["gap"], path("marks.json"))
    elif args.mode == "purge":
        done = interp.purge(max(0.0, time.time() - args.before))
        _log(path("ops.log"), done=done)
        if args.restart:
            with open(path("restart.json")) as f:
                restart_purged(interp, json.load(f), path("restarted.log"))
    else:
        with open(path("forks.json")) as f:
            fork(store, interp, json.load(f), args.broken)
    interp.shutdown(timeout=10)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
