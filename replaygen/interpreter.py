"""The interpreter: drives workflow generators, answering each command live or from the journal.

A fresh run and a recovered run take the same path: replay answers commands
from the journal until it runs out, then the same loop executes live.

Threads (this module owns them all):
- one driver runs the engine's code for every run (each run an actor fed by
  its mailbox) and, inline, each lone synchronous step that has been quick;
  the engine's code is a generator that yields each write, so the driver
  turns every ready run until it waits for a write, then commits them all
  in one transaction (group commit) and goes on. No run goes past a command
  before its entry is durable, and a quick step costs no thread hand-off;
- a bounded pool runs the steps that have been slow (over ``_INLINE``) and
  the steps of an ``All``; an event loop thread runs ``async def`` steps;
- a watchdog hands the driver role to a new thread when a turn runs long
  (a step slow for the first time, heavy workflow code): the old thread
  finishes that turn and leaves, so no run waits long behind another;
- a timer thread wakes sleeping runs and retry backoffs;
- a watcher thread renews the lease, learns of signals and cancels sent by
  other processes, and adopts runs whose owner died.
Parked runs (sleeping, waiting) hold no thread.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import inspect
import itertools
import json
import logging
import os
import queue
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from ._identity import is_dead, new_owner_id
from .codec import Codec, JSONCodec
from .commands import All, Command, Do, Sleep, Version, Wait, check_name
from .errors import (
    Cancelled, CorruptRecord, NonDeterminismError, ReplaygenError, ResultTimeout, RunNotFound,
    StepFailed, StoreUnavailable, UsageError, WaitTimeout, WorkflowFailed,
)
from .journal import FINAL, Journal, describe
from .observe import Event, Observer, StepInfo, _current
from .store import FINISHED, Claim, Entry, RunRecord, Store, Write

log = logging.getLogger("replaygen")
Workflow = Callable[..., Generator[Any, Any, Any]]
DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""The largest encoded step result, argument list or signal payload, in bytes."""


class Clock(Protocol):
    """Wall-clock time in epoch seconds; deadlines are journaled in it. Tests inject a fake."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


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


class _Blocked(ReplaygenError):
    """This run must be blocked (crash loop, unknown workflow)."""


class _Lost(Exception):
    """A write was refused: another worker owns the run now."""


class _Abandon(Exception):
    """Shutdown gave up on a write during a store outage."""


_Act = Generator[Write, Any, Any]
"""The engine's own code for a run is a generator too: it yields each write and is resumed
with the commit's answer, so one driver thread interleaves many runs and commits their
writes together."""
_INLINE = 0.001
"""A synchronous step whose recent calls took less than this (seconds) runs on the driver;
a slower one runs on the pool, so that it holds no other run up."""
_SLOW_TURN = 0.005
"""Seconds a turn (a step inline, or workflow code) may hold the driver before a new thread
takes over the other runs."""
_NOT_AWAITABLE = frozenset({dict, list, str, int, float, bool, type(None)})


def _errinfo(exc: BaseException) -> dict[str, str]:
    # Truncated so that an error always fits under the payload limit.
    return {"type": type(exc).__name__, "message": str(exc)[:10_000],
            "traceback": "".join(traceback.format_exception(exc))[-50_000:]}


class _Pool:
    """Daemon threads, started on demand up to ``size``; a stuck step never blocks process exit."""

    def __init__(self, size: int) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._size, self._threads, self._lock = size, 0, threading.Lock()

    def submit(self, fn: Callable[[], object]) -> None:
        self._tasks.put(fn)
        if self._idle.acquire(blocking=False):
            return
        with self._lock:
            if self._threads < self._size:
                self._threads += 1
                threading.Thread(target=self._work, daemon=True, name="replaygen-step").start()

    def _work(self) -> None:
        try:
            while (fn := self._tasks.get()) is not None:
                fn()
                self._idle.release()
        finally:  # an interrupt ends this thread; let a new one take its place
            with self._lock:
                self._threads -= 1

    def stop(self) -> None:
        for _ in range(self._threads):
            self._tasks.put(None)


class _Timers:
    """One thread firing callbacks at wall-clock deadlines; it waits on the monotonic clock,
    re-reads the wall clock at least once a second, and never fires early."""

    def __init__(self, clock: Clock) -> None:
        self._clock, self._cv = clock, threading.Condition()
        self._heap: list[tuple[float, int, list[Callable[[], object] | None]]] = []
        self._ids, self._stopped = itertools.count(), False
        threading.Thread(target=self._run, daemon=True, name="replaygen-timers").start()
        subscribe = getattr(clock, "subscribe", None)
        if subscribe is not None:
            subscribe(self.kick)

    def at(self, deadline: float, fn: Callable[[], object]) -> list[Callable[[], object] | None]:
        handle: list[Callable[[], object] | None] = [fn]
        with self._cv:
            heapq.heappush(self._heap, (deadline, next(self._ids), handle))
            self._cv.notify()
        return handle

    def kick(self) -> None:
        with self._cv:
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                due: list[Callable[[], object]] = []
                while not due and not self._stopped:
                    now = self._clock.now()
                    while self._heap and self._heap[0][0] <= now:
                        fn = heapq.heappop(self._heap)[2][0]
                        if fn is not None:
                            due.append(fn)
                    if not due:
                        self._cv.wait(min(self._heap[0][0] - now, 1.0) if self._heap else 1.0)
                if self._stopped:
                    return
            for fn in due:
                fn()


class _Member:
    """One command of the current yield (a lone command, or one member of an All)."""

    __slots__ = ("cmd", "done", "value", "error", "running", "timer", "deadline", "slot")

    def __init__(self, cmd: Command) -> None:
        self.cmd, self.done, self.running = cmd, False, False
        self.slot = _NO_SLOT
        self.value: Any = None
        self.error: BaseException | None = None
        self.timer: list[Callable[[], object] | None] | None = None
        self.deadline: float | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        self.done, self.value, self.error, self.deadline = True, value, error, None


_NO_SLOT, _QUEUED, _GRANTED = 0, 1, 2  # a step member's claim on a slot


class _Run:
    """In-memory state of one run this worker owns. Touched only by its actor (on one thread
    at a time), except ``cancel`` (set by any thread) and the mailbox (under the lock)."""

    def __init__(self, record: RunRecord, journal: Journal) -> None:
        self.id, self.workflow, self.fence = record.run_id, record.workflow, record.fence
        self.args, self.resumes, self.cancel = record.args, record.resumes, record.cancel_requested
        self.written: tuple[str, float | None, str | None] = (
            record.state, record.wake_at, record.waiting_for)
        self.journal = journal
        self.gen: Generator[Any, Any, Any] | None = None
        self.cmd: Command | None = None
        self.members: list[_Member] = []
        self.slot = 0       # first slot of the current yield
        self.live = False   # the current yield needed live work (so a pending cancel applies)
        self.mailbox: deque[Callable[[], _Act]] = deque()
        self.actor: _Act | None = None  # the mailbox action under way, paused at a write
        self.reply: Any = None          # the commit's answer to that write: bool or exception
        self.turning = False            # the actor runs (so a GeneratorExit is not a close())
        self.scheduled = self.gone = self.finishing = False


_LEAD = object()  # a follower woken to lead the next group commit


class _Pending:
    """Writes waiting in the group-commit queue; ``wake`` is released when they are done."""

    __slots__ = ("writes", "results", "wake")

    def __init__(self, writes: list[Write]) -> None:
        self.writes, self.wake = writes, threading.Lock()
        self.results: Any = None
        self.wake.acquire()


def _answer(result: Any) -> bool:
    """A write's outcome from a group commit: True, False (fence lost), or the error it met."""
    if isinstance(result, StoreUnavailable):
        raise StoreUnavailable(str(result))  # a fresh one per writer: they share the batch's
    if isinstance(result, BaseException):
        raise result
    return bool(result)


class _Outcome:
    __slots__ = ("started", "value", "error", "interrupt")

    def __init__(self, started: float, value: Any = None, error: Exception | None = None,
                 interrupt: BaseException | None = None) -> None:
        self.started, self.value, self.error, self.interrupt = started, value, error, interrupt


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
        missing = [m for m in ("create", "commit", "claim", "watch") if not hasattr(store, m)]
        if missing:
            raise UsageError(f"{store!r} is not a store (it has no {', '.join(missing)}); pass e.g. "
                             f"SQLiteStore('runs.db') or MemoryStore()")
        if callable(workflows):
            raise UsageError(f"workflows must be a list or dict of workflows, got the lone "
                             f"function {workflows!r}; write workflows=[{workflows.__name__}]")
        if concurrency < 1 or lease <= 0 or max_resumes < 0 or max_payload < 1:
            raise UsageError(f"need concurrency >= 1, lease > 0, max_resumes >= 0, max_payload >= 1; "
                             f"got {concurrency}, {lease}, {max_resumes}, {max_payload}")
        self._store, self._clock = store, clock or SystemClock()
        self._codec: Codec = codec or JSONCodec()
        self._lease, self._max_resumes, self._max_payload = lease, max_resumes, max_payload
        self._observer = observer
        self._workflows: dict[str, Workflow] = {}
        self._names: dict[Workflow, str] = {}
        items = workflows.items() if isinstance(workflows, Mapping) else (
            (getattr(fn, "__qualname__", repr(fn)), fn) for fn in workflows)
        for name, fn in items:
            self._register(name, fn)
        self.worker_id = new_owner_id()
        self._id_key, self._ids = os.urandom(32), itertools.count()
        self._lock = threading.Lock()        # guards _runs, _waiters and every run's mailbox
        self._start_lock = threading.Lock()  # orders start() against shutdown()
        self._runs: dict[str, _Run] = {}
        self._waiters: dict[str, threading.Event] = {}
        self._closed = self._stopped = self._adopting = False
        self._starting = 0
        self._wake = threading.Condition(self._lock)           # the driver waits for work
        self._watchdog_cv = threading.Condition(self._lock)    # the watchdog waits for a turn
        self._ready: deque[_Run] = deque()                     # runs with work to do
        self._pending: list[tuple[_Run, Write]] = []           # their writes, to commit
        self._driver: object = None
        self._turns, self._in_turn, self._idle = 0, False, True
        self._slots = concurrency                              # for synchronous steps
        self._cost: dict[object, float] = {}                   # step function -> its duration
        self._slot_queue: deque[tuple[_Run, _Member]] = deque()
        self._commit_lock = threading.Lock()  # guards the group-commit queue and its leader flag
        self._queue: list[_Pending] = []
        self._committing = False
        self._outage_since: float | None = None
        self._pool = _Pool(concurrency)
        self._timers = _Timers(self._clock)
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._asem: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._store.heartbeat(self.worker_id, lease)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="replaygen-watch")
        self._watcher.start()
        threading.Thread(target=self._watchdog, daemon=True, name="replaygen-watchdog").start()
        with self._lock:
            self._promote()

    # ---- public API ---------------------------------------------------------

    def start(self, workflow: Workflow | str, *args: Any, run_id: str | None = None,
              **kwargs: Any) -> str:
        """Start a run and return its id once it is durable. Starting an existing ``run_id``
        with the same workflow and arguments returns it; with others it raises."""
        name = self._workflow_name(workflow)
        run_id = self._new_run_id() if run_id is None else check_name("run_id", run_id)
        args_text = self._encode({"args": list(args), "kwargs": kwargs},
                                 f"the arguments of workflow {name!r}")
        with self._start_lock:
            if self._closed:
                raise ReplaygenError("this Interpreter is shut down; start runs on a new one")
            self._starting += 1  # shutdown() waits for starts in flight
        try:  # the insert shares the group commit of other runs' steps
            if _answer(self._commit_grouped([Write(run_id, self.worker_id, 1, "pending",
                                                   create=(name, args_text))])[0]):
                now = time.time()
                record = RunRecord(run_id, name, args_text, "pending", self.worker_id, 1, now, now)
                self._adopt_one(Claim(record, []))
                log.info("run %s started (workflow %s)", run_id, name)
                return run_id
        finally:
            with self._start_lock:
                self._starting -= 1
        old = self._record(run_id)
        if old.workflow == name and self._same_args(old.args, args_text):
            if old.owner == self.worker_id and old.state not in FINISHED and run_id not in self._runs:
                # Our create() committed though it was reported as failed: run it now.
                self._adopt_one(Claim(old, self._store.journal(run_id)))
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
                return self._decode(record.result, run_id)
            if record.state in ("failed", "cancelled"):
                info = self._error(record)
                if record.state == "cancelled":
                    raise Cancelled(info.get("message") or f"run {run_id!r} was cancelled")
                raise WorkflowFailed(run_id, info.get("type", "Error"),
                                     info.get("message", ""), info.get("traceback"))
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"run {run_id!r} is still {record.state} after {timeout}s")
            with self._lock:  # _forget() sets the event under this lock, so no wake-up is missed
                event = self._waiters.setdefault(run_id, threading.Event()) \
                    if run_id in self._runs else None
            if event is not None:
                event.wait(min(left if left is not None else 1.0, 1.0))
            else:  # executed by another worker: poll
                time.sleep(min(left if left is not None else 0.05, 0.05))

    def run(self, workflow: Workflow | str, *args: Any, **kwargs: Any) -> Any:
        """Start a run and wait for its result."""
        return self.result(self.start(workflow, *args, **kwargs))

    def status(self, run_id: str) -> RunStatus:
        """The run's state (a fixed string) and, when failed or blocked, why."""
        r = self._record(run_id)
        info = self._error(r) if r.error else None
        error = f"{info.get('type', 'Error')}: {info.get('message', '')}" if info else None
        return RunStatus(r.run_id, r.state, error, r.workflow, r.created, r.updated,
                         r.wake_at, r.waiting_for)

    def deliver(self, run_id: str, signal: str, payload: Any = None) -> None:
        """Queue a signal for the run; durable before this returns."""
        check_name("signal name", signal)
        text = self._encode(payload, "the payload of signal {!r}", signal)
        self._store.deliver(check_name("run_id", run_id), signal, text)
        self._hint(run_id, False)

    def cancel(self, run_id: str) -> None:
        """Raise Cancelled inside the run at its current or next yield; idempotent."""
        record = self._store.cancel(check_name("run_id", run_id))
        if record.cancel_requested:
            self._hint(run_id, True)

    def recover(self) -> list[str]:
        """Claim and resume every unfinished run no live worker owns (blocked runs are retried
        with the current code); from now on also adopt runs whose owner dies. Returns their ids."""
        if self._closed:
            raise ReplaygenError("this Interpreter is shut down")
        claims = self._claim(blocked=True, workflows=None)
        self._emit("recovered", count=len(claims))  # claimed, not yet resumed
        for claim in claims:
            self._adopt_one(claim)
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
            self._adopt_one(claims[0])
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._busy(self._runs.get(run_id)):
            time.sleep(0.01)
        return self.status(run_id)

    def _busy(self, run: _Run | None) -> bool:
        return run is not None and (run.scheduled or any(m.running for m in run.members))

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running steps finish (up to ``timeout`` s), and release every
        run so the next recover(), here or on another worker, resumes it. Keeps the store open."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        self._adopting = False
        self._emit("shutdown")
        end = time.monotonic() + timeout
        while time.monotonic() < end and (self._starting or any(
                map(self._busy, list(self._runs.values())))):
            time.sleep(0.01)
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
            self._watchdog_cv.notify()
            pending, self._pending = self._pending, []
        if pending:  # results that are in hand: keep them, so that those steps need not run again
            self._commit_batch([w for _, w in pending])
        try:
            self._store.release(self.worker_id)
        except Exception as exc:  # the lease lapses on its own
            log.warning("could not release runs at shutdown (%s); they are freed when the lease "
                        "of %.0fs lapses", exc, self._lease)
        for run in list(self._runs.values()):
            self._forget(run)
        self._pool.stop()
        self._timers.stop()
        if self._aloop is not None:
            self._aloop.call_soon_threadsafe(self._aloop.stop)

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

    def _error(self, record: RunRecord) -> dict[str, str]:
        try:
            info = self._codec.decode(record.error or "{}")
            return info if isinstance(info, dict) else {"message": str(info)}
        except Exception:
            return {"type": "Error", "message": str(record.error)}

    def _decode(self, text: str | None, run_id: str) -> Any:
        try:
            return None if text is None else self._codec.decode(text)
        except Exception as exc:
            raise CorruptRecord(f"run {run_id!r}: the stored result cannot be decoded: {exc}") from None

    def _encode(self, value: Any, what: str, *names: str) -> str:
        """Encode ``value``; ``what`` (formatted with ``names``) names it in the error."""
        try:
            text = self._codec.encode(value)
            size = len(text) if text.isascii() else len(text.encode())
            if size <= self._max_payload:
                return text
        except (TypeError, ValueError) as exc:
            what = what.format(*names) if names else what
            raise UsageError(f"{what} cannot be stored: {exc}") from None
        what = what.format(*names) if names else what
        log.warning("%s is %d bytes encoded, over the limit of %d", what, size, self._max_payload)
        raise UsageError(f"{what} is {size} bytes encoded, over the limit of {self._max_payload} "
                         f"bytes; keep large data elsewhere and pass a reference (or raise "
                         f"max_payload)")

    def _emit(self, kind: str, run: _Run | None = None, **fields: Any) -> None:
        if self._observer is not None:
            try:
                self._observer(Event(kind, run.id if run else None, run.workflow if run else None, **fields))
            except Exception:
                log.exception("observer failed on %s", kind)

    # ---- claiming and the actor ---------------------------------------------

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

    def _adopt_one(self, claim: Claim) -> None:
        try:
            journal = Journal(claim.run.run_id, claim.journal)
            action: Callable[[_Run], _Act] = self._begin
        except CorruptRecord as exc:
            journal, action = Journal(claim.run.run_id, []), partial(_raise, exc)
        run = _Run(claim.run, journal)
        with self._lock:
            self._runs[run.id] = run
        self._post(run, partial(action, run))

    def _hint(self, run_id: str, cancel: bool) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.cancel = run.cancel or cancel
            self._post(run, partial(self._continue, run))

    def _post(self, run: _Run, action: Callable[[], _Act]) -> bool:
        with self._lock:
            if run.gone:
                return False
            run.mailbox.append(action)
            if not run.scheduled:
                run.scheduled = True
                self._ready.append(run)
                self._wake.notify_all()
            return True

    def _drive(self, me: object) -> None:
        """The driver: turns ready runs until each waits for a write, then commits all their
        writes at once. One thread holds the role; the watchdog hands it to a new thread when
        a turn runs long (a slow step), and this one leaves once that turn is over."""
        try:
            while True:
                with self._lock:
                    while self._driver is me and not (self._stopped or self._ready or self._pending):
                        self._idle = True
                        self._wake.wait()
                    if self._driver is not me or self._stopped:
                        return
                    if self._idle:
                        self._idle = False
                        self._watchdog_cv.notify()
                    batch: list[tuple[_Run, Write]] = []
                    if self._ready:
                        run = self._ready.popleft()
                        self._turns += 1
                        self._in_turn = True
                    else:
                        batch, self._pending = self._pending, []
                if batch:
                    results = self._commit([w for _, w in batch])
                    with self._lock:
                        for (run, _), result in zip(batch, results, strict=True):
                            run.reply = result
                            self._ready.append(run)
                        self._wake.notify_all()  # for a new driver, if this one was replaced
                    continue
                write = self._turn(run)
                # Nothing else to do (one run alone, as a sequential job is): commit, go on.
                while write is not None and not (self._ready or self._pending or self._stopped):
                    with self._lock:
                        if self._driver is not me:
                            break
                        self._in_turn = False
                    run.reply, write = self._commit([write])[0], None
                    with self._lock:
                        if self._driver is not me:
                            self._ready.append(run)
                            self._wake.notify_all()
                            break
                        self._turns, self._in_turn = self._turns + 1, True
                    write = self._turn(run)
                with self._lock:
                    if self._driver is me:
                        self._in_turn = False
                    if write is not None:
                        self._pending.append((run, write))
                        self._wake.notify_all()  # a new driver may be idle
        except BaseException:
            with self._lock:  # an interrupt ends this thread: let a new driver take over
                if self._driver is me:
                    self._promote()
            raise

    def _promote(self) -> None:
        """Make a new thread the driver (called under the lock)."""
        old, self._driver = self._driver, object()
        try:
            threading.Thread(target=self._drive, args=(self._driver,), daemon=True,
                             name="replaygen-driver").start()
        except RuntimeError as exc:  # no thread to be had: the old driver goes on after its turn
            self._driver = old
            log.error("cannot start a thread for the engine (%s); runs wait for the current one", exc)
            return
        self._in_turn = self._idle = False
        self._watchdog_cv.notify()  # it may be waiting for an idle driver to get busy

    def _watchdog(self) -> None:
        with self._lock:
            while not self._stopped:
                if self._idle:
                    self._watchdog_cv.wait()
                    continue
                turn = self._turns
                self._watchdog_cv.wait(_SLOW_TURN)
                if self._in_turn and self._turns == turn and not self._stopped:
                    self._promote()  # the driver is stuck in one turn (a slow step)

    def _turn(self, run: _Run) -> Write | None:
        """Run the run's actor until it yields a write (returned) or has nothing left to do."""
        reply, run.reply = run.reply, None
        while True:
            actor = run.actor
            if actor is None:
                with self._lock:
                    if run.gone or not run.mailbox:
                        run.scheduled = False
                        return None
                    action = run.mailbox.popleft()
                actor = run.actor = self._guarded(run, action)
            run.turning = True
            try:
                return actor.throw(reply) if isinstance(reply, BaseException) else actor.send(reply)
            except StopIteration:
                run.actor = reply = None
            except Exception:  # a bug of the engine's own: _guarded lets none through
                log.exception("internal error in run %s; it stays claimed until this worker "
                              "stops", run.id)
                run.actor = None
                self._forget(run)
                return None
            except BaseException:
                run.actor = None
                with self._lock:
                    run.scheduled = False
                raise
            finally:
                run.turning = False

    def _guarded(self, run: _Run, action: Callable[[], _Act]) -> _Act:
        try:
            yield from action()
        except _Lost:
            if not (run.finishing and self._finished(run.id)):  # else our own write landed
                log.warning("run %s was taken over by another worker; stopped here", run.id)
            self._forget(run)
        except _Abandon:
            self._forget(run)
        except StoreUnavailable as exc:  # a read failed: re-examine the yield later
            log.warning("run %s waits for the store: %s", run.id, exc)
            threading.Timer(1.0, self._post, (run, partial(self._continue, run))).start()
        except Exception as exc:
            yield from self._contain(run, exc)
        except BaseException as exc:
            if isinstance(exc, GeneratorExit) and not run.turning:
                raise  # the actor was dropped while it waited for a commit (shutdown)
            # An interrupt is not a failure: leave the run resumable and let it propagate.
            log.error("run %s interrupted; it stays resumable (recover() resumes it)", run.id)
            try:
                yield from self._write(run, run.written[0], release=True)
            finally:
                self._forget(run)
            raise

    def _finished(self, run_id: str) -> bool:
        try:
            record = self._store.get(run_id)
        except Exception:
            return False
        return record is not None and record.state in FINISHED

    def _contain(self, run: _Run, exc: Exception) -> _Act:
        if not isinstance(exc, ReplaygenError):
            log.error("internal error while handling run %s", run.id, exc_info=exc)
        try:
            yield from self._block(run, exc)
        except Exception:
            log.exception("could not block run %s; it stays claimed until its lease lapses", run.id)
            self._forget(run)

    def _forget(self, run: _Run) -> None:
        with self._lock:
            run.gone = True
            event = None
            if self._runs.get(run.id) is run:  # not a newer claim of the same run
                del self._runs[run.id]
                event = self._waiters.pop(run.id, None)
        for m in run.members:
            if m.timer is not None:
                m.timer[0] = None
        if run.gen is not None:
            try:  # yields in a `finally` are refused by Python and never executed
                run.gen.close()
            except BaseException:
                pass
        if event is not None:
            event.set()

    # ---- writing ------------------------------------------------------------

    def _write(self, run: _Run, state: str, entries: Iterable[tuple[int, str, str, str, str | None,
               float]] = (), *, wake_at: float | None = None, waiting_for: str | None = None,
               **fields: Any) -> Generator[Write, Any, list[Entry]]:
        now, seq = self._clock.now(), run.journal.next_seq  # ended: when the entry is written
        made = [Entry(seq + i, slot, kind, name, status, value, started, now)
                for i, (slot, kind, name, status, value, started) in enumerate(entries)]
        # Most steps only append: then the run row need not be rewritten (a cheaper write).
        keep = bool(made) and not fields and not run.resumes and \
            run.written == (state, wake_at, waiting_for)
        write = Write(run.id, self.worker_id, run.fence, state, tuple(made), wake_at, waiting_for,
                      keep=keep, **fields)
        if not (yield write):  # the driver commits it with other runs' writes
            raise _Lost(run.id)
        for e in made:
            run.journal.append(e)
        run.written = (state, wake_at, waiting_for)
        run.resumes = 0 if made else run.resumes
        return made

    def _commit(self, writes: list[Write]) -> list[Any]:
        """Commit the writes together with whatever else is being written now; while the store
        is unavailable, retry with backoff (the runs wait; nothing is failed or lost)."""
        results = self._commit_grouped(writes)
        delay = 0.05
        while again := [i for i, r in enumerate(results) if isinstance(r, StoreUnavailable)]:
            if self._stopped:
                return [_Abandon() if isinstance(r, StoreUnavailable) else r for r in results]
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.error("store unavailable (%s); runs wait and retry until it is back", results[again[0]])
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            for i, result in zip(again, self._commit_grouped([writes[i] for i in again]),
                                 strict=True):
                results[i] = result
        if self._outage_since is not None:
            self._outage_since = None
            log.warning("store available again; runs resume")
        return results

    def _commit_grouped(self, writes: list[Write]) -> list[Any]:
        # Leader-follower group commit: a writer that finds no commit in progress commits at
        # once; the others queue and sleep on their own lock (no thundering herd), and when a
        # commit ends the first of them is woken to lead the next, taking all queued by then.
        with self._commit_lock:
            me = _Pending(writes) if self._committing else None
            if me is not None:
                self._queue.append(me)
            self._committing = True
        batch: list[_Pending] = []
        if me is not None:
            me.wake.acquire()
            if me.results is not _LEAD:
                return me.results  # type: ignore[no-any-return]
            with self._commit_lock:
                batch, self._queue = self._queue, []
        results = self._commit_batch([w for p in batch for w in p.writes] if batch else writes)
        at = 0
        for item in batch:
            item.results, at = results[at:at + len(item.writes)], at + len(item.writes)
        with self._commit_lock:
            if self._queue:
                self._queue[0].results = _LEAD
                self._queue[0].wake.release()
            else:
                self._committing = False
        for item in batch:
            if item is not me:
                item.wake.release()
        return results if me is None else me.results

    def _commit_batch(self, writes: list[Write]) -> list[Any]:
        try:
            return list(self._store.commit(writes))
        except StoreUnavailable as exc:
            return [exc] * len(writes)
        except Exception as exc:
            if len(writes) == 1:
                return [exc]
            # One bad write must not sink the others grouped with it: commit them one by one.
            return [self._commit_batch([w])[0] for w in writes]

    # ---- driving a run --------------------------------------------------------

    def _begin(self, run: _Run) -> _Act:
        fn = self._workflows.get(run.workflow)
        if fn is None:
            raise _Blocked(f"run {run.id!r} is of workflow {run.workflow!r}, which this "
                           f"interpreter does not know (registered: {sorted(self._workflows)}); "
                           f"register it and call recover()")
        try:
            payload = self._codec.decode(run.args)
            args, kwargs = payload["args"], payload["kwargs"]
        except Exception as exc:
            raise CorruptRecord(f"run {run.id!r}: its stored arguments cannot be read ({exc!r}); "
                                f"the run is blocked until the row is repaired") from None
        self._emit("run_started", run)
        if run.journal.next_seq:
            log.info("run %s resumed (%d journal entries to replay)", run.id, run.journal.next_seq)
        try:
            run.gen = fn(*args, **kwargs)
        except Exception as exc:  # wrong arguments for the function
            return (yield from self._finish(run, "failed", exc))
        yield from self._advance(run, None, None)

    def _advance(self, run: _Run, value: Any, error: BaseException | None) -> _Act:
        """Resume the generator and keep answering until the run must wait for something."""
        gen = run.gen
        assert gen is not None
        while not self._closed:
            try:
                cmd = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                return (yield from self._finish(run, "completed", stop.value))
            except Exception as exc:
                state = "cancelled" if isinstance(exc, Cancelled) else "failed"
                return (yield from self._finish(run, state, exc))
            value = error = None
            if type(cmd) is Do:  # fast path of replay: a lone step with just its result
                entries = run.journal.slots.get(run.slot)
                if entries and len(entries) == 1 and entries[0].kind == "do" \
                        and entries[0].status == "ok" and entries[0].name == cmd.name:
                    run.slot += 1
                    value = run.journal.decode(entries[0], self._codec)
                    continue
            if isinstance(cmd, Version):
                value = yield from self._version(run, cmd)
                continue
            if not isinstance(cmd, (Do, Sleep, Wait, All)):
                return (yield from self._finish(run, "failed", UsageError(
                    f"the workflow yielded {describe(cmd)}, which is not a command; yield Do, "
                    f"Sleep, Wait, Version or All")))
            run.cmd, run.live = cmd, False
            run.members = [_Member(m) for m in (cmd.commands if isinstance(cmd, All) else (cmd,))]
            answer = yield from self._settle(run)
            if answer is None:
                return
            value, error = answer

    def _continue(self, run: _Run) -> _Act:
        """Re-examine the current yield after a wake-up (timer, signal, cancel, step done)."""
        if run.members and not self._closed:
            answer = yield from self._settle(run)
            if answer is not None:
                yield from self._advance(run, *answer)

    def _settle(self, run: _Run) -> Generator[Write, Any, tuple[Any, BaseException | None] | None]:
        """Answer the current yield from the journal or by live work, or park; None = not yet."""
        if run.journal.cancelled_at(run.slot):
            return self._answered(run, None, Cancelled(f"run {run.id!r} was cancelled"))
        if run.cancel and not run.journal.cancelled:
            self._withdraw(run)
        for i, m in enumerate(run.members):
            if not m.done and not m.running:
                yield from self._resolve(run, i)
        members, cancel = run.members, run.cancel and not run.journal.cancelled
        if all(m.done for m in members):
            if not (cancel and run.live):
                if isinstance(run.cmd, All):
                    failed = next((m.error for m in members if m.error is not None), None)
                    return self._answered(run, None if failed else [m.value for m in members], failed)
                return self._answered(run, members[0].value, members[0].error)
        if any(m.running for m in members):
            return None
        if cancel:
            yield from self._write(run, "running", [(run.slot, "cancel", "", "", None,
                                   self._clock.now())], cancel_seen=True)
            return self._answered(run, None, Cancelled(f"run {run.id!r} was cancelled"))
        yield from self._park(run)
        return None

    def _answered(self, run: _Run, value: Any, error: BaseException | None) -> tuple[Any, Any]:
        for m in run.members:
            if m.timer is not None:
                m.timer[0] = None
        run.slot += len(run.members)
        run.members, run.cmd = [], None
        return value, error

    def _park(self, run: _Run) -> _Act:
        pending = [m for m in run.members if not m.done]
        waits = [m.cmd.signal for m in pending if isinstance(m.cmd, Wait)]
        state = "waiting" if waits else "sleeping" if any(
            isinstance(m.cmd, Sleep) for m in pending) else "running"
        wake_at = min((m.deadline for m in pending if m.deadline is not None), default=None)
        want = (state, wake_at, ",".join(waits) or None)
        if want != run.written:
            yield from self._write(run, state, wake_at=wake_at, waiting_for=want[2])
        if state != "running":
            self._emit("run_parked", run, state=state, position=run.slot)

    def _wake_at(self, run: _Run, m: _Member, deadline: float) -> None:
        if m.timer is not None:
            m.timer[0] = None
        m.deadline = deadline
        m.timer = self._timers.at(deadline, partial(self._post, run, partial(self._continue, run)))

    def _resolve(self, run: _Run, i: int) -> _Act:
        """Answer member ``i`` from the journal, or start (or keep waiting for) its live work."""
        m, slot, j = run.members[i], run.slot + i, run.journal
        cmd = m.cmd
        entries = j.match(slot, cmd)
        final = entries[-1] if entries and entries[-1].kind in FINAL else None
        # No new live work while shutting down or while a cancel waits to be raised.
        halt = self._closed or (run.cancel and not j.cancelled)
        if isinstance(cmd, Do):
            if final is None:
                if entries:  # a retry's entry: its backoff may still run
                    next_at = j.decode(entries[-1], self._codec).get("next_at", 0.0)
                    if self._clock.now() < next_at:
                        return self._wake_at(run, m, next_at)
                if halt:
                    return
                final = yield from self._run_step(run, i, len(entries) + 1)
                if final is None:  # in flight elsewhere, or a retry was journaled
                    return None if m.running else (yield from self._resolve(run, i))
            if final.status == "ok":
                return m.settle(j.decode(final, self._codec))
            info = j.decode(final, self._codec)
            return m.settle(error=StepFailed(cmd.name, info.get("type", "Error"),
                                             info.get("message", ""), info.get("traceback")))
        run.live = run.live or final is None
        if halt and final is None:
            return None
        now = self._clock.now()
        if isinstance(cmd, Sleep):
            if final is None:
                single = len(run.members) == 1
                deadline = now + cmd.seconds
                yield from self._write(run, "sleeping" if single else run.written[0],
                                       [(slot, "sleep", "", "ok", repr(deadline), now)],
                                       wake_at=deadline if single else run.written[1])
            else:
                deadline = float(j.decode(final, self._codec))
            return m.settle() if now >= deadline else self._wake_at(run, m, deadline)
        assert isinstance(cmd, Wait)
        if final is not None:
            if final.status == "timeout":
                return m.settle(error=WaitTimeout(cmd.signal))
            return m.settle(j.decode(final, self._codec))
        timeout_at = float(j.decode(entries[0], self._codec)) if entries else None
        if timeout_at is None and cmd.timeout is not None:
            timeout_at = now + cmd.timeout
            yield from self._write(run, run.written[0], [(slot, "timer", cmd.signal, "ok",
                                   repr(timeout_at), now)], wake_at=run.written[1],
                                   waiting_for=run.written[2])
        signal = next((s for s in self._store.signals(run.id) if s.name == cmd.signal), None)
        if signal is not None:
            yield from self._write(run, "running", [(slot, "wait", cmd.signal, "ok",
                                   signal.payload, now)], consume=signal.id)
            self._emit("signal_taken", run, step=cmd.signal, position=slot)
            return m.settle(j.decode(j.slots[slot][-1], self._codec))
        if timeout_at is not None and now >= timeout_at:
            yield from self._write(run, "running", [(slot, "wait", cmd.signal, "timeout", None, now)])
            return m.settle(error=WaitTimeout(cmd.signal))
        if timeout_at is not None:
            return self._wake_at(run, m, timeout_at)
        m.deadline = None

    def _run_step(self, run: _Run, i: int, attempt: int) -> Generator[Write, Any, Entry | None]:
        """Start try ``attempt`` of a Do member. A lone synchronous step that has been quick
        runs inline (on the driver) and its entry is returned; other steps run on the pool or
        event loop and report back. A synchronous step takes one of ``concurrency`` slots."""
        m, slot = run.members[i], run.slot + i
        cmd = m.cmd
        assert isinstance(cmd, Do)
        if run.resumes > self._max_resumes:
            raise _Blocked(
                f"run {run.id!r} was resumed {run.resumes} times without progress; each time its "
                f"worker died in step {cmd.name!r} (position {slot}). Blocked so that it cannot "
                f"take every worker down: fix the step, then call recover()")
        # A synchronous step holds one of `concurrency` slots while it runs; without a free
        # one the run waits (still pending if it was), but holds none across its first write.
        sync = not _is_async(cmd.fn)
        if sync and not self._take_slot(run, m, peek=run.written[0] != "running"):
            return None
        run.live = True
        if run.written[0] != "running":
            yield from self._write(run, "running")
            if sync and not self._take_slot(run, m):
                return None
        info = StepInfo(run.id, cmd.name, slot, attempt)
        if self._observer is not None:
            self._emit("step_started", run, step=cmd.name, position=slot, attempt=attempt)
        m.running = True
        if not sync:
            future = asyncio.run_coroutine_threadsafe(self._acall(cmd, info), self._async_loop())
            future.add_done_callback(lambda f: self._post(
                run, partial(self._step_done_later, run, i, attempt, f.result())))
            return None
        if len(run.members) > 1 or self._cost.get(_cost_key(cmd.fn), 0.0) > _INLINE:
            self._pool.submit(lambda: self._post(run, partial(
                self._step_done_later, run, i, attempt, self._call(cmd, info))))
            return None
        return (yield from self._step_done(run, i, attempt, self._call(cmd, info)))

    def _take_slot(self, run: _Run, m: _Member, peek: bool = False) -> bool:
        """Take a slot (with ``peek``, only see that one is free or granted); else queue."""
        with self._lock:
            if m.slot == _GRANTED:
                m.slot = _GRANTED if peek else _NO_SLOT
                return True
            if self._slots:
                self._slots -= not peek
                return True
            self._slot_queue.append((run, m))
            m.slot, m.running = _QUEUED, True  # until a slot is granted
            return False

    def _free_slot(self) -> None:
        """Give a slot back: to the first waiter, which runs its step with it or passes it on."""
        with self._lock:
            while self._slot_queue:
                run, m = self._slot_queue.popleft()
                if not run.gone:
                    m.slot = _GRANTED
                    break
            else:
                self._slots += 1
                return
        if not self._post(run, partial(self._slot_granted, run, m)):
            self._free_slot()  # the run is gone meanwhile

    def _slot_granted(self, run: _Run, m: _Member) -> _Act:
        m.running = False
        try:
            yield from self._continue(run)
        finally:
            if m.slot == _GRANTED:  # unused (cancelled, or the engine is closing): pass it on
                m.slot = _NO_SLOT
                self._free_slot()

    def _withdraw(self, run: _Run) -> None:
        """A cancel is due: members queued for a slot stop waiting (they never started)."""
        with self._lock:
            for m in run.members:
                if m.slot == _QUEUED:
                    self._slot_queue.remove((run, m))
                    m.slot, m.running = _NO_SLOT, False

    def _call(self, cmd: Do[Any], info: StepInfo) -> _Outcome:
        started, token, t0 = self._clock.now(), _current.set(info), time.perf_counter()
        try:
            value = cmd.fn(*cmd.args, **cmd.kwargs)
            if type(value) not in _NOT_AWAITABLE and inspect.isawaitable(value):
                value = asyncio.run_coroutine_threadsafe(_await(value), self._async_loop()).result()
            return _Outcome(started, value)
        except Exception as exc:
            return _Outcome(started, error=exc)
        except BaseException as exc:
            return _Outcome(started, interrupt=exc)
        finally:
            _current.reset(token)
            self._free_slot()
            took, key = time.perf_counter() - t0, _cost_key(cmd.fn)
            self._cost[key] = (self._cost.get(key, took) + took) / 2  # recent calls count most

    async def _acall(self, cmd: Do[Any], info: StepInfo) -> _Outcome:
        if self._asem is None:
            self._asem = asyncio.Semaphore(self._concurrency)
        async with self._asem:
            started = self._clock.now()
            _current.set(info)  # the task has its own context
            try:
                return _Outcome(started, await cmd.fn(*cmd.args, **cmd.kwargs))
            except Exception as exc:
                return _Outcome(started, error=exc)
            except BaseException as exc:
                return _Outcome(started, interrupt=exc)

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._aloop is None:
                self._aloop = asyncio.new_event_loop()
                threading.Thread(target=self._aloop.run_forever, daemon=True,
                                 name="replaygen-async").start()
            return self._aloop

    def _step_done_later(self, run: _Run, i: int, attempt: int, outcome: _Outcome) -> _Act:
        yield from self._step_done(run, i, attempt, outcome)
        yield from self._continue(run)

    def _step_done(self, run: _Run, i: int, attempt: int,
                   outcome: _Outcome) -> Generator[Write, Any, Entry | None]:
        """Journal a try's outcome: the final entry, or a retry entry when another try is due."""
        m, slot = run.members[i], run.slot + i
        cmd = m.cmd
        assert isinstance(cmd, Do)
        m.running = False
        if outcome.interrupt is not None:
            raise outcome.interrupt
        error, retryable = outcome.error, outcome.error is not None
        if self._observer is not None:
            self._emit("step_returned", run, step=cmd.name, position=slot, attempt=attempt,
                       duration=self._clock.now() - outcome.started, error=error and repr(error))
        if error is None:
            try:
                text = self._encode(outcome.value, "the result of step {!r}", cmd.name)
            except UsageError as exc:
                error = exc
        if error is None:
            entry = (slot, "do", cmd.name, "ok", text, outcome.started)
        elif retryable and cmd.retry and attempt < cmd.retry.attempts and cmd.retry.retries(error):
            now = self._clock.now()
            next_at = now + cmd.retry.delay(attempt, random.random())
            value = self._encode({**_errinfo(error), "attempt": attempt, "next_at": next_at}, "error")
            yield from self._write(run, "running", [(slot, "retry", cmd.name, "error", value,
                                   outcome.started)])
            log.warning("run %s: step %r failed (try %d of %d), retrying in %.2fs: %r",
                        run.id, cmd.name, attempt, cmd.retry.attempts, next_at - now, error)
            self._emit("step_retrying", run, step=cmd.name, position=slot, attempt=attempt,
                       error=repr(error))
            return None
        else:
            log.warning("run %s: step %r failed: %r", run.id, cmd.name, error)
            entry = (slot, "do", cmd.name, "error", self._encode(_errinfo(error), "error"),
                     outcome.started)
        made = (yield from self._write(run, "running", [entry]))[0]
        if self._observer is not None:
            self._emit("step_committed", run, step=cmd.name, position=slot, attempt=attempt,
                       duration=made.ended - outcome.started)
        return made

    def _version(self, run: _Run, cmd: Version) -> Generator[Write, Any, int]:
        marker = run.journal.versions.get(cmd.change_id)
        if marker is not None:
            value = run.journal.decode(marker, self._codec)
            if not isinstance(value, int) or not cmd.min <= value <= cmd.max:
                raise NonDeterminismError(
                    run.id, run.slot, f"Version({cmd.change_id!r}) = {value!r}",
                    f"accepts only {cmd.min}..{cmd.max} there")
            return value
        # Entries at or past this point mean the run was written by code without this call.
        value = cmd.min if run.journal.end > run.slot else cmd.max
        yield from self._write(run, run.written[0], [(run.slot, "version", cmd.change_id, "ok",
                               str(value), self._clock.now())], wake_at=run.written[1],
                               waiting_for=run.written[2])
        return value

    def _finish(self, run: _Run, state: str, outcome: Any) -> _Act:
        if run.journal.end > run.slot:
            held = [e for s in range(run.slot, run.journal.end) for e in run.journal.slots.get(s, ())]
            verb = "returned" if state == "completed" else f"raised {type(outcome).__name__}"
            raise NonDeterminismError(run.id, run.slot, f"{len(held)} more entries (next: "
                                      f"{held[0].kind} {held[0].name!r})", f"{verb} instead")
        result = error = None
        if state == "completed":
            try:
                result = self._encode(outcome, "the workflow's return value")
            except UsageError as exc:
                state, outcome = "failed", exc
        if state != "completed":
            error = self._encode(_errinfo(outcome), "error")
        run.finishing = True
        yield from self._write(run, state, result=result, error=error, release=True)
        if state == "failed":
            log.warning("run %s failed: %r", run.id, outcome)
        else:
            log.info("run %s %s", run.id, state)
        self._emit("run_finished", run, state=state, error=None if error is None else repr(outcome))
        self._forget(run)

    def _block(self, run: _Run, exc: Exception) -> _Act:
        yield from self._write(run, "blocked", error=self._encode(_errinfo(exc), "error"), release=True)
        log.warning("run %s blocked: %s", run.id, exc)
        self._emit("run_blocked", run, error=str(exc))
        self._forget(run)

    # ---- the watcher ----------------------------------------------------------

    def _watch(self) -> None:
        token: object = None
        beat = adopt = sweep = 0.0
        failing = False
        while not self._stopped:
            try:
                new = self._store.watch(token, min(1.0, self._lease / 3))
                if self._stopped:
                    return
                now = time.monotonic()
                if now >= beat:
                    self._store.heartbeat(self.worker_id, self._lease)
                    beat = now + self._lease / 3
                if new != token or now >= sweep:  # the timed sweep is a safety net
                    token, sweep = new, now + 5.0
                    for run_id, cancel in self._store.wakeups(self.worker_id):
                        self._hint(run_id, cancel)
                    if self._adopting:
                        adopt = 0.0
                if self._adopting and now >= adopt and not self._closed:
                    for claim in self._claim(blocked=False, workflows=self._workflows):
                        self._adopt_one(claim)
                    adopt = now + min(1.0, self._lease / 4)
                failing = False
            except Exception as exc:
                if not failing:  # one line per outage, not one per retry
                    log.warning("cannot watch the store (%s); retrying until it is back", exc)
                failing = True
                time.sleep(0.5)


def _cost_key(fn: Any) -> object:
    """Steps made by one piece of code (one ``def`` or lambda, or one class) share a key, so
    that the map stays as small as the program however many closures it makes."""
    while isinstance(fn, partial):
        fn = fn.func
    code = getattr(fn, "__code__", None)
    return id(code) if code is not None else (type(fn), getattr(fn, "__qualname__", None))


@functools.lru_cache(maxsize=1024)
def _is_async_cached(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn)


def _is_async(fn: Callable[..., Any]) -> bool:
    try:
        return _is_async_cached(fn)
    except TypeError:  # unhashable callable
        return inspect.iscoroutinefunction(fn)


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _raise(exc: Exception, run: _Run) -> _Act:
    raise exc
