"""The public ``Interpreter``: registered workflows, ``start`` ... ``shutdown``, claims, and
the watcher that keeps this worker's lease and hears what other processes do.

It holds no replay rule (``replay``) and no thread plumbing of the runs (``runtime``): it
claims runs, builds each one's life, and hands it to the runtime. A fresh run and a
recovered run take the same path: a claim, a life, replay until the journal runs out.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ._identity import is_dead, new_owner_id
from .codec import Codec, JSONCodec
from .commands import check_name
from .errors import (
    Cancelled, CorruptRecord, ReplaygenError, ResultTimeout, RunNotFound, UsageError,
    WorkflowFailed,
)
from .journal import Journal, describe_error, read_error
from .observe import Event, Observer
from .replay import Life, Rules
from .runtime import Clock, Runtime, SystemClock
from .store import FINISHED, Claim, RunRecord, Store, Write

__all__ = ["DEFAULT_MAX_PAYLOAD", "Clock", "Interpreter", "RunStatus", "SystemClock"]

log = logging.getLogger("replaygen")
Workflow = Callable[..., Generator[Any, Any, Any]]
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""The largest encoded step result, argument list or signal payload, in bytes."""


@dataclass(frozen=True)
class RunStatus:
    """What ``Interpreter.status`` reports. ``state`` is one of the fixed state strings."""

    run_id: str
    state: str
    error: str | None
    workflow: str
    created: float
    updated: float
    wake_at: float | None
    waiting_for: str | None


class Interpreter:
    """Runs registered workflows durably against a store.

    ``workflows`` is a list of generator functions (named by ``__qualname__``)
    or a dict ``{name: function}``; the name is what the store keeps.
    ``concurrency`` bounds the steps running at once, ``lease`` (seconds) how
    long a silent worker keeps its runs, ``max_resumes`` how many resumptions
    without progress mark a crash loop, ``max_payload`` the largest encoded
    value in bytes. ``clock`` and ``codec`` are injectable; ``observer`` gets
    every ``Event``.
    """

    def __init__(
        self, store: Store, workflows: Iterable[Workflow] | Mapping[str, Workflow] = (), *,
        clock: Clock | None = None, codec: Codec | None = None, concurrency: int = 64,
        lease: float = 10.0, max_resumes: int = 100, max_payload: int = DEFAULT_MAX_PAYLOAD,
        observer: Observer | None = None,
    ) -> None:
        missing = [m for m in ("commit", "claim", "watch") if not hasattr(store, m)]
        if missing:
            raise UsageError(f"{store!r} is not a store (it has no {', '.join(missing)}); pass e.g. "
                             f"SQLiteStore('runs.db') or MemoryStore()")
        if callable(workflows):
            raise UsageError(f"workflows must be a list or dict of workflows, got the lone "
                             f"function {workflows!r}; write workflows=[{workflows.__name__}]")
        if concurrency < 1 or lease <= 0 or max_resumes < 0 or max_payload < 1:
            raise UsageError(f"need concurrency >= 1, lease > 0, max_resumes >= 0, max_payload >= 1; "
                             f"got {concurrency}, {lease}, {max_resumes}, {max_payload}")
        self._workflows: dict[str, Workflow] = {}
        self._names: dict[Workflow, str] = {}
        items = workflows.items() if isinstance(workflows, Mapping) else (
            (getattr(fn, "__qualname__", repr(fn)), fn) for fn in workflows)
        for name, fn in items:
            self._register(name, fn)
        self._store, self._clock = store, clock or SystemClock()
        self._codec: Codec = codec or JSONCodec()
        self._lease, self._observer = lease, observer
        self._rules = Rules(self._codec, self._clock.now, max_payload, max_resumes, observer is not None)
        self.worker_id = new_owner_id()
        self._id_key, self._ids = os.urandom(32), itertools.count()
        self._start_lock = threading.Lock()  # orders start() against shutdown()
        self._closed = self._adopting = False
        self._starting = 0
        self._store.heartbeat(self.worker_id, lease)
        self._runtime = Runtime(store, self.worker_id, self._clock, concurrency, observer)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="replaygen-watch")
        self._watcher.start()

    # ---- public API ---------------------------------------------------------

    def start(self, workflow: Workflow | str, *args: Any, run_id: str | None = None,
              **kwargs: Any) -> str:
        """Start a run and return its id once it is durable. Starting an existing ``run_id``
        with the same workflow and arguments returns it; with others it raises."""
        name = self._workflow_name(workflow)
        run_id = self._new_run_id() if run_id is None else check_name("run_id", run_id)
        args_text = self._rules.encode({"args": list(args), "kwargs": kwargs},
                                       "the arguments of workflow {!r}", name)
        with self._start_lock:
            if self._closed:
                raise ReplaygenError("this Interpreter is shut down; start runs on a new one")
            self._starting += 1  # shutdown() waits for starts in flight
        try:  # the insert shares the group commit of other runs' steps
            [done] = self._runtime.group.commit([Write(run_id, self.worker_id, 1, "pending",
                                                       create=(name, args_text))])
            if isinstance(done, BaseException):
                raise done
            if done:
                now = time.time()
                record = RunRecord(run_id, name, args_text, "pending", self.worker_id, 1, now, now)
                self._adopt(Claim(record, []))
                log.info("run %s started (workflow %s)", run_id, name)
                return run_id
        finally:
            with self._start_lock:
                self._starting -= 1
        old = self._record(run_id)
        if old.workflow == name and self._same_args(old.args, args_text):
            if old.owner == self.worker_id and old.state not in FINISHED \
                    and run_id not in self._runtime.actors:
                # Our create() committed though it was reported as failed: run it now.
                self._adopt(Claim(old, self._store.journal(run_id)))
            return run_id
        raise UsageError(
            f"run {run_id!r} already exists as {old.workflow}({old.args}); this start() asked for "
            f"{name}({args_text}). Use another run_id, or the same workflow and arguments."
        )

    def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result; raise WorkflowFailed or Cancelled."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
            raise UsageError(f"timeout must be seconds (a number) or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._record(run_id)
            if record.state == "completed":
                try:
                    return None if record.result is None else self._codec.decode(record.result)
                except Exception as exc:
                    raise CorruptRecord(f"run {run_id!r}: the stored result cannot be decoded: "
                                        f"{exc}") from None
            if record.state in ("failed", "cancelled"):
                info = read_error(record.error, self._codec)
                if record.state == "cancelled":
                    raise Cancelled(info.get("message") or f"run {run_id!r} was cancelled")
                raise WorkflowFailed(run_id, info.get("type", "Error"),
                                     info.get("message", ""), info.get("traceback"))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"run {run_id!r} is still {record.state} after {timeout}s")
            actor = self._runtime.actors.get(run_id)
            if actor is not None:  # its end sets the event, so no wake-up is missed
                actor.ended.wait(min(left if left is not None else 1.0, 1.0))
            else:  # executed by another worker: poll
                time.sleep(min(left if left is not None else 0.05, 0.05))

    def run(self, workflow: Workflow | str, *args: Any, **kwargs: Any) -> Any:
        """Start a run and wait for its result."""
        return self.result(self.start(workflow, *args, **kwargs))

    def status(self, run_id: str) -> RunStatus:
        """The run's state (a fixed string) and, when failed or blocked, why."""
        r = self._record(run_id)
        error = describe_error(read_error(r.error, self._codec)) if r.error else None
        return RunStatus(r.run_id, r.state, error, r.workflow, r.created, r.updated,
                         r.wake_at, r.waiting_for)

    def deliver(self, run_id: str, signal: str, payload: Any = None) -> None:
        """Queue a signal for the run; durable before this returns."""
        check_name("signal name", signal)
        text = self._rules.encode(payload, "the payload of signal {!r}", signal)
        self._store.deliver(check_name("run_id", run_id), signal, text)
        self._runtime.hint(run_id, False)

    def cancel(self, run_id: str) -> None:
        """Raise Cancelled inside the run at its current or next yield; idempotent."""
        record = self._store.cancel(check_name("run_id", run_id))
        if record.cancel_requested:
            self._runtime.hint(run_id, True)

    def recover(self) -> list[str]:
        """Claim and resume every unfinished run no live worker owns (blocked runs are retried
        with the current code); from now on also adopt runs whose owner dies. Returns their ids."""
        if self._closed:
            raise ReplaygenError("this Interpreter is shut down")
        claims = self._claim(blocked=True, workflows=None)
        self._emit(Event("recovered", count=len(claims)))  # claimed, not yet resumed
        for claim in claims:
            self._adopt(claim)
        self._adopting = True
        log.info("recovered %d runs", len(claims))
        return [c.run.run_id for c in claims]

    def resume(self, run_id: str, timeout: float = 30.0) -> RunStatus:
        """Retry one run here with the current code (a blocked run included), then wait up to
        ``timeout`` s until it finishes, blocks again or parks. Raises if a live worker holds it."""
        record = self._record(run_id)
        if record.state not in FINISHED and record.owner != self.worker_id:
            claims = self._claim(blocked=True, workflows=None, run_ids=[run_id])
            if not claims:
                raise ReplaygenError(f"run {run_id!r} is held by the live worker {record.owner}; "
                                     f"it goes on there")
            self._adopt(claims[0])
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._busy(run_id):
            time.sleep(0.01)
        return self.status(run_id)

    def _busy(self, run_id: str) -> bool:
        actor = self._runtime.actors.get(run_id)
        return actor is not None and actor.busy()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running steps finish (up to ``timeout`` s), and release every
        run so the next recover(), here or on another worker, resumes it. Every thread that
        touches the store has ended when this returns; the store stays open."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = self._rules.closing = True
        self._adopting = False
        self._emit(Event("shutdown"))
        end = time.monotonic() + timeout
        while time.monotonic() < end and (self._starting or any(
                a.busy() for a in list(self._runtime.actors.values()))):
            time.sleep(0.01)
        self._runtime.stop(max(0.0, end - time.monotonic()) + 1.0)
        # The release wakes the watcher's wait on the store; released again once it has
        # ended, in case it renewed the lease meanwhile.
        for _ in range(2):
            try:
                self._store.release(self.worker_id)
            except Exception as exc:  # the lease lapses on its own
                log.warning("could not release runs at shutdown (%s); they are freed when the "
                            "lease of %.0fs lapses", exc, self._lease)
                break
            self._watcher.join(timeout + 2.0)

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- helpers of the public API ------------------------------------------

    def _register(self, name: str, fn: Workflow) -> None:
        check_name("workflow name", name)
        if not inspect.isgeneratorfunction(fn):
            raise UsageError(f"workflow {name!r} ({fn!r}) is not a generator function; a workflow "
                             f"must `yield` commands (Do, Sleep, Wait, Version, All)")
        if name in self._workflows:
            old = self._workflows[name]
            raise UsageError(f"two workflows are registered as {name!r}: {old.__module__}."
                             f"{old.__qualname__} and {fn.__module__}.{fn.__qualname__}; pass a "
                             f"dict to name them apart")
        self._workflows[name] = fn
        self._names.setdefault(fn, name)

    def _workflow_name(self, workflow: object) -> str:
        if isinstance(workflow, str) and workflow in self._workflows:
            return workflow
        if callable(workflow) and workflow in self._names:
            return self._names[workflow]
        raise UsageError(f"{workflow!r} is not a registered workflow; registered: "
                         f"{sorted(self._workflows) or 'none'}")

    def _new_run_id(self) -> str:
        # Unguessable as a uuid4, but a keyed hash of (pid, counter): os.urandom per start
        # would give up the GIL and then wait for the busy driver to hand it back.
        return hashlib.blake2b(b"%d:%d" % (os.getpid(), next(self._ids)), key=self._id_key,
                               digest_size=16).hexdigest()

    def _same_args(self, old: str, new: str) -> bool:
        # Canonical forms, so key order does not matter but True, 1 and 1.0 differ.
        try:
            a, b = (json.dumps(self._codec.decode(t), sort_keys=True, default=repr) for t in (old, new))
            return a == b
        except Exception:
            return old == new

    def _record(self, run_id: str) -> RunRecord:
        record = self._store.get(check_name("run_id", run_id))
        if record is None:
            raise RunNotFound(f"no run {run_id!r} in this store")
        return record

    def _emit(self, event: Event) -> None:
        if self._observer is not None:
            try:
                self._observer(event)
            except Exception:
                log.exception("observer failed on %s", event.kind)

    # ---- claiming -------------------------------------------------------------

    def _claim(self, *, blocked: bool, workflows: Iterable[str] | None,
               run_ids: list[str] | None = None) -> list[Claim]:
        dead = [o for o in self._store.owners() if o != self.worker_id and is_dead(o)]
        claims: list[Claim] = []
        while True:
            batch = self._store.claim(self.worker_id, dead=dead, blocked=blocked, limit=500,
                                      workflows=None if workflows is None else list(workflows),
                                      run_ids=run_ids)
            claims += batch
            if len(batch) < 500:
                return claims

    def _adopt(self, claim: Claim) -> None:
        record, broken = claim.run, None
        try:
            journal = Journal(record.run_id, claim.journal, self._codec)
        except CorruptRecord as exc:
            journal, broken = Journal(record.run_id, [], self._codec), exc
        life = Life(self._rules, record.run_id, record.workflow,
                    self._workflows.get(record.workflow), record.args, journal,
                    written=(record.state, record.wake_at, record.waiting_for),
                    resumes=record.resumes, cancel=record.cancel_requested, broken=broken)
        self._runtime.adopt(life, record.fence)

    # ---- the watcher ----------------------------------------------------------

    def _watch(self) -> None:
        """Renew the lease, learn of signals and cancels sent by other processes, and adopt
        runs whose owner died."""
        token: object = None
        beat = adopt = sweep = 0.0
        failing = False
        while not self._runtime.stopped:
            try:
                new = self._store.watch(token, min(1.0, self._lease / 3))
                if self._runtime.stopped:
                    return
                now = time.monotonic()
                if now >= beat:
                    self._store.heartbeat(self.worker_id, self._lease)
                    beat = now + self._lease / 3
                if new != token or now >= sweep:  # the timed sweep is a safety net
                    token, sweep = new, now + 5.0
                    for run_id, cancel in self._store.wakeups(self.worker_id):
                        self._runtime.hint(run_id, cancel)
                    if self._adopting:
                        adopt = 0.0
                if self._adopting and now >= adopt and not self._closed:
                    for claim in self._claim(blocked=False, workflows=self._workflows):
                        self._adopt(claim)
                    adopt = now + min(1.0, self._lease / 4)
                failing = False
            except Exception as exc:
                if not failing:  # one line per outage, not one per retry
                    log.warning("cannot watch the store (%s); retrying until it is back", exc)
                failing = True
                time.sleep(0.5)
