"""The store protocol every durable backend implements, its records, and MemoryStore.

A store keeps runs, their append-only journals and their signal inboxes, and
makes each state change atomic. It knows nothing of generators or commands:
the interpreter decides, the store records. Stores hold encoded text only.

Ownership: a worker claims a run, which bumps the run's ``fence``. Every
``Write`` names the owner and fence it was made under, and the store refuses
it (``commit`` answers ``False``) when the run has since been claimed by
someone else, so a worker that lost a run can never append to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

from .errors import ReplaygenError, RunFinished, RunNotFound
from .effects import Notice, Spawn
from .journal import Entry

__all__ = ["ACTIVE", "CLOSED", "FINISHED", "PURGED", "STATES", "WORKING", "Claim", "Entry",
           "MemoryStore", "Notice", "RunRecord", "Signal", "Spawn", "Store", "Worker", "Write",
           "unadmitted"]

ACTIVE = ("pending", "running", "sleeping", "waiting")
FINISHED = ("completed", "failed", "cancelled")
STATES = (*ACTIVE, *FINISHED, "blocked")
WORKING = ("pending", "running")
"""A run in one of these states, held by a live worker, executes (or is about to): it holds
one of its workflow's slots (``limits``). One whose owner is lost while it is working is
resumed without progress when claimed again (``RunRecord.resumes`` + 1, counted by ``claim``)."""
PURGED = "purged"
"""The state of a purged run's tombstone (outside ``STATES``: ``runs()`` lists none)."""
CLOSED = (*FINISHED, PURGED)
"""States a run never leaves: no signal, cancel or terminate changes such a run."""


@dataclass(frozen=True)
class RunRecord:
    """A run as the store holds it. ``args``, ``result`` and ``error`` are encoded text."""

    run_id: str
    workflow: str
    args: str
    state: str
    owner: str | None
    fence: int
    created: float
    updated: float
    result: str | None = None
    error: str | None = None
    wake_at: float | None = None
    waiting_for: str | None = None
    cancel_requested: bool = False
    resumes: int = 0
    parent: str | None = None
    """The run that started this one as its child (``Child``), or None."""
    forked_from: str | None = None
    """The run this one was forked from (``fork``), or None."""


@dataclass(frozen=True)
class Signal:
    """A delivered signal not yet consumed by a Wait."""

    id: int
    name: str
    payload: str
    sent: float


class Worker(NamedTuple):
    """A live worker, as ``Store.workers()`` tells it."""

    workflows: list[str] | None
    """The workflow names it last advertised, sorted (None: it never said)."""
    lease_until: float
    """When its lease runs out, in the store's clock (epoch seconds)."""


@dataclass(frozen=True)
class Claim:
    """A run a worker has just claimed, with its whole journal."""

    run: RunRecord
    journal: list[Entry]


class Write(NamedTuple):  # a tuple: one is built per journaled step
    """One atomic, fenced state change of one run: append entries and update the run row."""

    run_id: str
    owner: str
    fence: int
    state: str
    entries: tuple[Entry, ...] = ()
    wake_at: float | None = None
    waiting_for: str | None = None
    result: str | None = None
    error: str | None = None
    consume: tuple[int, ...] = ()
    """Ids of the signals this write consumes (deleted in the same transaction; one that is
    not queued fails the write)."""
    cancel_seen: bool = False
    """The run's cancel request is now journaled; stop reporting it in wakeups()."""
    release: bool = False
    """Give up ownership (the run finished, is blocked, or is parked for any worker)."""
    keep: bool = False
    """Only ``entries`` are new; the run row is unchanged (a store may skip rewriting it, but
    must still check the fence)."""
    spawn: tuple[Spawn, ...] = ()
    """Child runs to insert, after the row update: pending, unowned (any worker may claim
    them, and the watchers are woken), ``parent`` this run, with their cancel requested at
    once when this run's is requested and not yet seen. A child id that exists fails the
    write (an error, not a refusal)."""
    cancel: tuple[str, ...] = ()
    """Runs whose cancel is requested, after the spawns, as ``Store.cancel`` does."""
    notify: Notice | None = None
    """A signal delivered to another run, unless that run is finished or missing."""
    progress: bool = False
    """The run made progress: its resumption count (``RunRecord.resumes``) goes back to 0."""
    admit: int = 0
    """With n > 0: the run goes to work (``state`` is working) only if fewer than n other runs
    of its workflow work under live owners (``WORKING``, lease live); else the write applies
    as ``unadmitted(write)`` does, and ``commit`` answers None for it."""
    create: tuple[str, str] | tuple[str, str, str] | None = None
    """(workflow, args[, forked_from]): insert this run as ``state`` with ``entries``, owned by
    ``owner`` with ``fence`` (by nobody with ``release``: a client's start, which wakes the
    watchers), unless a run with this id exists (then the write is refused). Lets ``start()``
    share the group commit of other runs' steps."""


def unadmitted(w: Write) -> Write:
    """What an admitting write that finds no free slot applies instead: its entries, with the
    run released as ``pending``, to be claimed (and so admitted) when a slot is free."""
    return w._replace(state="pending", wake_at=None, waiting_for=None, release=True, keep=False,
                      admit=0)


class Store(Protocol):
    """What the engine needs from a durable backend: exactly what it must do, never what it
    must decide. Every method is atomic. Stores hold encoded text only; ``now`` is the store's
    clock wherever leases are judged. A store whose transactions run side by side may set
    ``parallel_commits`` (default 1): how many ``commit`` calls a worker makes at once."""

    def get(self, run_id: str) -> RunRecord | None: ...

    def journal(self, run_id: str) -> list[Entry]:
        """The run's entries in ``seq`` order."""
        ...

    def signals(self, run_id: str) -> list[Signal]:
        """The run's unconsumed signals, oldest first."""
        ...

    def commit(self, writes: Sequence[Write]) -> list[bool | None]:
        """Apply writes, each as its fields say (see ``Write``) and each all or nothing, in one
        transaction or a few (PostgreSQL commits starts apart from steps). A write whose owner
        and fence are not the run's, or whose create finds the id taken, is skipped and leaves
        no trace (False); an admitting write without a free slot applies unadmitted (None). A
        signal to consume that is not queued, a journal ``seq`` that does not continue the
        run's journal, or a child id that is taken, fails the call: writes of the call may
        have applied, and each tells so when it is retried."""
        ...

    def claim(
        self, owner: str, *, states: Collection[str] = ACTIVE, dead: Collection[str] = (),
        workflows: Collection[str] | None = None, run_ids: Collection[str] | None = None,
        reset: bool = False, limit: int = 1000, limits: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        """Take over up to ``limit`` runs in ``states`` (of these ``workflows`` and ``run_ids``,
        if given), oldest first, that no live worker owns: unowned, owner in ``dead``, or the
        owner's lease lapsed. Each gets ``owner`` and fence + 1, and ``resumes`` + 1 if its lost
        owner held it in a ``WORKING`` state (0 with ``reset``). A working run of a workflow
        in ``limits`` (name: n) is taken only while fewer than n runs of it work under live
        owners, counting those taken here (atomically with other workers' claims and
        admitting writes)."""
        ...

    def owners(self) -> list[str]:
        """The distinct owners of unfinished runs (the engine tells which are dead)."""
        ...

    def heartbeat(self, owner: str, lease: float, *, workflows: Collection[str]) -> None:
        """Extend ``owner``'s lease to now + ``lease`` seconds and record the ``workflows`` it
        serves."""
        ...

    def workers(self) -> dict[str, Worker]:
        """Each worker whose lease is live: what it serves and when its lease runs out."""
        ...

    def release(self, owner: str) -> None:
        """Give up every run ``owner`` holds, and its lease (graceful shutdown)."""
        ...

    def deliver(self, run_id: str, name: str, payload: str) -> int:
        """Queue a signal and return its id; raise RunNotFound, or RunFinished for a finished
        run."""
        ...

    def cancel(self, run_id: str) -> RunRecord:
        """Request cancellation of the run and of every unfinished run descending from it
        (children, their children...), in one transaction, waking their owners. Idempotent;
        finished runs are left as they are. Returns the run's record; raise RunNotFound."""
        ...

    def terminate(self, run_id: str, error: str, notify: Notice | None = None) -> RunRecord:
        """End an unfinished run and every unfinished run descending from it now: state
        ``cancelled`` with ``error``, no owner, fence bumped (their owners' later writes are
        refused), and ``notify`` delivered as a ``Write`` delivers it. A finished run is
        returned unchanged. Raise RunNotFound."""
        ...

    def wakeups(self, owner: str) -> list[tuple[str, bool]]:
        """Runs held by ``owner`` with queued signals or an unjournaled cancel: (run id, cancel)."""
        ...

    def watch(self, token: object, timeout: float) -> object:
        """Block up to ``timeout`` s until a signal, cancel or release may have happened since
        ``token`` was returned; return the new token (None to start)."""
        ...

    def runs(
        self, *, states: Collection[str] | None = None, workflow: str | None = None,
        parent: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[RunRecord]:
        """Runs, newest first, in these ``states`` (None: all but tombstones), of this
        ``workflow``, children of ``parent`` (each filter only if given)."""
        ...

    def counts(self) -> dict[tuple[str, str], int]:
        """How many runs there are per (workflow, state)."""
        ...

    def last_entries(self, run_ids: Collection[str]) -> dict[str, Entry]:
        """The last journal entry of each of these runs (a run with none is left out)."""
        ...

    def purge(self, before: float, *, states: Collection[str], limit: int,
              tombstone: Callable[[RunRecord], tuple[str, str]]) -> list[str]:
        """In one short transaction, turn up to ``limit`` runs in ``states`` (finished ones)
        last updated before ``before`` (epoch seconds) into tombstones, oldest first: state
        ``purged``, ``args`` and ``error`` as ``tombstone(run)`` gives them, no result; their
        journal entries and signals deleted. Runs another transaction holds are skipped.
        Returns their ids."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """An in-process store for tests: the full protocol, nothing durable.

    Several Interpreters may share one MemoryStore; a new Interpreter over it is a restart.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._runs: dict[str, RunRecord] = {}
        self._journals: dict[str, list[Entry]] = {}
        self._signals: dict[str, list[Signal]] = {}
        self._cancel_seen: set[str] = set()
        self._leases: dict[str, float] = {}
        self._serves: dict[str, list[str]] = {}  # what each leased worker advertised
        self._ids = 0
        self._epoch = 0

    def _bump(self) -> None:
        self._epoch += 1
        self._lock.notify_all()

    def put(self, record: RunRecord, journal: list[Entry]) -> None:
        """Hold a copy of a run (from an export or another store), replacing any by its id."""
        with self._lock:
            self._runs[record.run_id], self._journals[record.run_id] = record, list(journal)
            self._signals.setdefault(record.run_id, [])

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self._runs.get(run_id)

    def journal(self, run_id: str) -> list[Entry]:
        with self._lock:
            return list(self._journals.get(run_id, ()))

    def signals(self, run_id: str) -> list[Signal]:
        with self._lock:
            return list(self._signals.get(run_id, ()))

    def commit(self, writes: Sequence[Write]) -> list[bool | None]:
        with self._lock:
            for w in writes:  # all or nothing, as a real transaction
                self._check(w)
            return [self._apply(w) for w in writes]

    def _check(self, w: Write) -> None:
        if w.create:
            return
        run = self._runs.get(w.run_id)
        if run is None or run.owner != w.owner or run.fence != w.fence:
            return
        if [e.seq for e in w.entries] != list(range(
                len(self._journals[w.run_id]), len(self._journals[w.run_id]) + len(w.entries))):
            raise ValueError(f"run {w.run_id!r}: journal seq already taken or skipped")
        if w.consume and not set(w.consume) <= {s.id for s in self._signals[w.run_id]}:
            raise ValueError(f"run {w.run_id!r}: signal {w.consume} is not queued")
        for child in w.spawn:
            if child.run_id in self._runs:
                raise ReplaygenError(f"cannot create child run {child.run_id!r} of run "
                                     f"{w.run_id!r}: a run with that id exists")

    def _apply(self, w: Write) -> bool | None:
        if w.create:
            if w.run_id in self._runs:
                return False
            now = time.time()
            owner = None if w.release else w.owner  # released at once: a client's start
            workflow, args, *source = w.create
            self._runs[w.run_id] = RunRecord(w.run_id, workflow, args, w.state, owner, w.fence,
                                             now, now, forked_from=source[0] if source else None)
            self._journals[w.run_id], self._signals[w.run_id] = list(w.entries), []
            if w.release:  # a client's start: wake the workers
                self._bump()
            return True
        run = self._runs.get(w.run_id)
        if run is None or run.owner != w.owner or run.fence != w.fence:
            return False
        admitted: bool | None = True
        if w.admit and self._working(run.workflow, time.time(), w.run_id) >= w.admit:
            w, admitted = unadmitted(w), None
        self._journals[w.run_id].extend(w.entries)
        if w.consume:
            self._signals[w.run_id] = [s for s in self._signals[w.run_id] if s.id not in w.consume]
        if w.cancel_seen:
            self._cancel_seen.add(w.run_id)
        now = time.time()
        if not w.keep:  # as SQLite: a write of entries alone leaves the row as it was
            self._runs[w.run_id] = replace(
                run, state=w.state, updated=now, wake_at=w.wake_at, waiting_for=w.waiting_for,
                result=w.result, error=w.error, resumes=0 if w.progress else run.resumes,
                owner=None if w.release else run.owner)
        born_cancelled = run.cancel_requested and w.run_id not in self._cancel_seen
        for child in w.spawn:  # after the row: a cancel seen in this write is not passed on
            self._runs[child.run_id] = RunRecord(
                child.run_id, child.workflow, child.args, "pending", None, 1, now, now,
                cancel_requested=born_cancelled, parent=w.run_id)
            self._journals[child.run_id], self._signals[child.run_id] = [], []
        for run_id in w.cancel:
            self._cancel_tree(run_id)
        if w.notify is not None:
            self._notify(w.notify)
        if w.release or w.spawn or w.cancel or w.notify:
            self._bump()
        return admitted

    def _working(self, workflow: str, now: float, but: str | None = None) -> int:
        """How many runs of ``workflow`` (``but`` one) work under live owners."""
        return sum(r.workflow == workflow and r.state in WORKING and r.run_id != but
                   and self._live(r.owner, now) for r in self._runs.values())

    def _tree(self, run_id: str) -> list[str]:
        """The run and every run descending from it."""
        found, at = [run_id], 0
        while at < len(found):
            found += [r.run_id for r in self._runs.values() if r.parent == found[at]]
            at += 1
        return found

    def _cancel_tree(self, run_id: str) -> None:
        for rid in self._tree(run_id):
            run = self._runs.get(rid)
            if run is not None and run.state not in CLOSED and not run.cancel_requested:
                self._runs[rid] = replace(run, cancel_requested=True)

    def _notify(self, notice: Notice) -> None:
        target = self._runs.get(notice.run_id)
        if target is not None and target.state not in CLOSED:
            self._ids += 1
            self._signals[notice.run_id].append(
                Signal(self._ids, notice.name, notice.payload, time.time()))

    def _live(self, owner: str | None, now: float) -> bool:
        return owner is not None and self._leases.get(owner, 0.0) >= now

    def claim(
        self, owner: str, *, states: Collection[str] = ACTIVE, dead: Collection[str] = (),
        workflows: Collection[str] | None = None, run_ids: Collection[str] | None = None,
        reset: bool = False, limit: int = 1000, limits: Mapping[str, int] | None = None,
    ) -> list[Claim]:
        with self._lock:
            now, out = time.time(), list[Claim]()
            free = {w: n - self._working(w, now) for w, n in (limits or {}).items()}
            for run in list(self._runs.values()):
                if len(out) >= limit:
                    break
                if (
                    run.state not in states or run.owner == owner
                    or (run_ids is not None and run.run_id not in run_ids)
                    or (workflows is not None and run.workflow not in workflows)
                    or (run.owner not in dead and self._live(run.owner, now))
                ):
                    continue
                if run.state in WORKING and run.workflow in free:
                    if free[run.workflow] <= 0:
                        continue
                    free[run.workflow] -= 1
                lost_working = run.owner is not None and run.state in WORKING
                resumes = 0 if reset else run.resumes + lost_working
                run = replace(run, owner=owner, fence=run.fence + 1, resumes=resumes)
                self._runs[run.run_id] = run
                out.append(Claim(run, list(self._journals[run.run_id])))
            return out

    def owners(self) -> list[str]:
        with self._lock:
            return sorted({r.owner for r in self._runs.values()
                           if r.owner is not None and r.state not in FINISHED})

    def heartbeat(self, owner: str, lease: float, *, workflows: Collection[str]) -> None:
        with self._lock:
            self._leases[owner] = time.time() + lease
            self._serves[owner] = sorted(set(workflows))

    def workers(self) -> dict[str, Worker]:
        with self._lock:
            now = time.time()
            return {owner: Worker(list(self._serves[owner]) if owner in self._serves else None,
                                  until) for owner, until in self._leases.items() if until >= now}

    def release(self, owner: str) -> None:
        with self._lock:
            self._leases.pop(owner, None)
            self._serves.pop(owner, None)
            for run in list(self._runs.values()):
                if run.owner == owner:
                    self._runs[run.run_id] = replace(run, owner=None)
            self._bump()

    def deliver(self, run_id: str, name: str, payload: str) -> int:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFound(f"cannot deliver {name!r}: no run {run_id!r} in this store")
            if run.state in CLOSED:
                raise RunFinished(
                    f"cannot deliver {name!r}: run {run_id!r} is already {run.state}"
                )
            self._ids += 1
            self._signals[run_id].append(Signal(self._ids, name, payload, time.time()))
            self._bump()
            return self._ids

    def cancel(self, run_id: str) -> RunRecord:
        with self._lock:
            if run_id not in self._runs:
                raise RunNotFound(f"cannot cancel: no run {run_id!r} in this store")
            self._cancel_tree(run_id)
            self._bump()
            return self._runs[run_id]

    def terminate(self, run_id: str, error: str, notify: Notice | None = None) -> RunRecord:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise RunNotFound(f"cannot terminate: no run {run_id!r} in this store")
            if run.state in CLOSED:
                return run
            for rid in self._tree(run_id):
                r = self._runs[rid]
                if r.state not in CLOSED:
                    self._runs[rid] = replace(
                        r, state="cancelled", error=error, owner=None, fence=r.fence + 1,
                        wake_at=None, waiting_for=None, updated=time.time())
            if notify is not None:
                self._notify(notify)
            self._bump()
            return self._runs[run_id]

    def wakeups(self, owner: str) -> list[tuple[str, bool]]:
        with self._lock:
            out = []
            for run in self._runs.values():
                cancel = run.cancel_requested and run.run_id not in self._cancel_seen
                if run.owner == owner and (cancel or self._signals[run.run_id]):
                    out.append((run.run_id, cancel))
            return out

    def watch(self, token: object, timeout: float) -> object:
        with self._lock:
            self._lock.wait_for(lambda: self._epoch != token, timeout)
            return self._epoch

    def runs(
        self, *, states: Collection[str] | None = None, workflow: str | None = None,
        parent: str | None = None, limit: int = 100, offset: int = 0,
    ) -> list[RunRecord]:
        with self._lock:
            found = [
                r for r in reversed(self._runs.values())
                if (r.state in states if states is not None else r.state != PURGED)
                and (workflow is None or r.workflow == workflow)
                and (parent is None or r.parent == parent)
            ]
            return found[offset:offset + limit]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            found: dict[tuple[str, str], int] = {}
            for r in self._runs.values():
                found[(r.workflow, r.state)] = found.get((r.workflow, r.state), 0) + 1
            return found

    def last_entries(self, run_ids: Collection[str]) -> dict[str, Entry]:
        with self._lock:
            return {r: self._journals[r][-1] for r in run_ids if self._journals.get(r)}

    def purge(self, before: float, *, states: Collection[str], limit: int,
              tombstone: Callable[[RunRecord], tuple[str, str]]) -> list[str]:
        with self._lock:
            found = sorted((r for r in self._runs.values() if r.state in states
                            and r.state in FINISHED and r.updated < before),
                           key=lambda r: r.created)[:limit]
            for r in found:
                args, error = tombstone(r)
                self._runs[r.run_id] = replace(
                    r, state=PURGED, args=args, error=error, result=None, owner=None,
                    wake_at=None, waiting_for=None, cancel_requested=False)
                self._journals[r.run_id], self._signals[r.run_id] = [], []
                self._cancel_seen.discard(r.run_id)
            return [r.run_id for r in found]

    def close(self) -> None:
        pass
