"""The public ``Interpreter``: registered workflows, ``start`` ... ``shutdown``, claims, and
the watcher that keeps this worker's lease and hears what other processes do.

It holds no replay rule (``replay``) and no thread plumbing of the runs (``runtime``): it
claims runs, builds each one's life, and hands it to the runtime. A fresh run and a
recovered run take the same path: a claim, a life, replay until the journal runs out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from ._identity import is_dead, new_owner_id
from .client import DEFAULT_MAX_PAYLOAD, PURGE_BATCH, Client, NewRun, RunStatus, seconds
from .codec import Codec
from .errors import CorruptRecord, ReplaygenError, RunBlocked, UsageError, read_error
from .journal import Journal
from .observe import Event, Observer, notify
from .registry import Workflow, check_limits, limits_of, registered, table
from .effects import CANCEL, UNREAD
from .replay import Life, Settings
from .runtime import Clock, Runtime, SystemClock
from .schedules import Schedule, Scheduler
from .shadow import compare
from .store import ACTIVE, FINISHED, Claim, RunRecord, Store

log = logging.getLogger("replaygen")


class Interpreter(Client):
    """Runs workflows durably against a store: a worker, and a Client of the same store.

    ``workflows`` is a list of generator functions (each named by its ``@workflow`` name or
    ``__qualname__``) or a dict ``{name: function}``; omitted, every ``@workflow`` is served,
    including those imported later. The name is what the store keeps. A run of a workflow
    this worker does not know is never claimed: it waits for a worker that knows it.
    ``concurrency`` bounds the steps running at once (and the ready runs claimed),
    ``lease`` (seconds) how long a silent worker keeps its runs, ``max_resumes`` how many
    resumptions without progress mark a crash loop, ``max_payload`` the largest encoded
    value in bytes. ``clock`` and ``codec`` are injectable; ``observer`` gets every ``Event``.
    ``always_replay`` (for tests) replays each run from the top after every step and blocks
    it at once where its code disagrees with its journal: non-determinism found on the first
    run, not after a crash. It costs a replay per step (quadratic in a run's length).
    ``limits`` ({workflow name: n}, over ``@workflow(limit=n)``): at most n runs of that
    workflow execute steps at once across the workers sharing the store; the others wait,
    ``pending``, in the store. ``retention`` (seconds or a timedelta): finished runs older
    than that are purged in the background, a short batch at a time (see ``purge``).
    ``schedules`` (``Schedule``s, checked here) start runs at their ticks (``schedules.py``).
    """

    def __init__(
        self, store: Store, workflows: Iterable[Workflow] | Mapping[str, Workflow] | None = None,
        *, clock: Clock | None = None, codec: Codec | None = None, concurrency: int = 64,
        lease: float = 10.0, max_resumes: int = 100, max_payload: int = DEFAULT_MAX_PAYLOAD,
        observer: Observer | None = None, always_replay: bool = False,
        limits: Mapping[str, int] | None = None, retention: float | timedelta | None = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        self._fixed = None if workflows is None else table(workflows)
        self._limits = check_limits(limits, self._fixed)
        self._retention = None if retention is None else seconds("retention", retention, 1e-9)
        if concurrency < 1 or lease <= 0 or max_resumes < 0 or max_payload < 1:
            raise UsageError(f"need concurrency >= 1, lease > 0, max_resumes >= 0, max_payload >= 1; "
                             f"got {concurrency}, {lease}, {max_resumes}, {max_payload}")
        super().__init__(store, codec=codec, max_payload=max_payload)
        if not hasattr(store, "claim"):
            raise UsageError(f"{store!r} cannot execute runs (it has no claim()); pass e.g. "
                             f"SQLiteStore('runs.db') or MemoryStore()")
        self._clock = clock or SystemClock()
        self._scheduler = Scheduler(schedules, self._known(), store, self.start, self._clock)
        self._lease, self._observer, self._concurrency = lease, observer, concurrency
        self._settings = Settings(self._codec, max_payload, now=self._clock.now,
                                  max_resumes=max_resumes, observed=observer is not None,
                                  verify=compare if always_replay else None,
                                  limits=limits_of(self._known(), self._limits))
        self.worker_id = new_owner_id()
        self._start_lock = threading.Lock()  # orders start() against shutdown()
        self._closed = self._adopting = False
        self._strangers: float | None = None  # when to say which runs recover() left
        self._starting = 0
        self._heartbeat()
        self._unclaimed: dict[str, str] = {}  # run id -> workflow: made here, to claim
        self._look = False  # a slot of a limited workflow came free here: claim at once
        self._runtime = Runtime(store, self.worker_id, self._clock, concurrency, observer,
                                self._waits, self._freed, self._group)
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="replaygen-watch")
        self._watcher.start()

    # ---- public API ---------------------------------------------------------

    def run(self, workflow: Workflow | str, *args: Any, **kwargs: Any) -> Any:
        """Start a run and wait for its result."""
        return self.result(self.start(workflow, *args, **kwargs))

    def recover(self) -> list[str]:
        """Claim and resume every unfinished run of a known workflow that no live worker owns;
        from now on also adopt runs whose owner dies and runs started by clients. Blocked runs
        are retried with the current code, except those blocked for a crash loop: retrying
        them could take this worker down too, so they wait for ``resume()``. Returns the ids."""
        if self._closed:
            raise ReplaygenError("this Interpreter is shut down")
        known = self._known()
        blocked = [r.run_id for r in self._store.runs(states=("blocked",), limit=100_000)
                   if r.workflow in known and read_error(r.error, self._codec).get("type")
                   != RunBlocked.__name__]
        claims = self._claim()
        if blocked:  # retried with new code: a crash loop's count starts afresh
            claims += self._claim(states=("blocked",), run_ids=blocked, reset=True)
        notify(self._observer, Event("recovered", count=len(claims)))
        self._adopting = True
        log.info("recovered %d runs", len(claims))
        # The watcher says which runs it left, later: not while the recovered runs start up.
        self._strangers = time.monotonic() + 2.0
        return claims

    def resume(self, run_id: str, timeout: float = 30.0) -> RunStatus:
        """Retry one run here with the current code (a blocked run included), then wait up to
        ``timeout`` s until it finishes, blocks again or parks. Raises if a live worker holds it."""
        record = self._record(run_id)
        if record.state not in FINISHED and record.owner != self.worker_id:
            if record.workflow not in self._known():
                raise ReplaygenError(f"run {run_id!r} is of workflow {record.workflow!r}, which "
                                     f"this worker does not know; resume it where it is known")
            claims = self._claim(states=(*ACTIVE, "blocked"), run_ids=[run_id],
                                 reset=record.state == "blocked")
            if not claims:
                raise ReplaygenError(f"run {run_id!r} is held by the live worker {record.owner}; "
                                     f"it goes on there" if record.owner else f"run {run_id!r} "
                                     f"waits for a free slot of workflow {record.workflow!r} "
                                     f"(limits); it starts when one is free")
        end = time.monotonic() + timeout
        while time.monotonic() < end and (a := self._runtime.actors.get(run_id)) and a.busy():
            time.sleep(0.01)
        return self.status(run_id)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work, let running steps finish (up to ``timeout`` s), and release every
        run so the next recover(), here or on another worker, resumes it. Every thread that
        touches the store has ended when this returns; the store stays open."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = self._settings.closing = True
        self._adopting = False
        notify(self._observer, Event("shutdown"))
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

    def _known(self) -> dict[str, Workflow]:
        return self._fixed if self._fixed is not None else registered()

    def _workflow_name(self, workflow: object) -> str:
        known = self._known()
        if isinstance(workflow, str) and workflow in known:
            return workflow
        for name, fn in known.items():
            if fn is workflow:
                return name
        raise UsageError(f"{workflow!r} is not a registered workflow; registered: "
                         f"{sorted(known) or 'none'} (decorate it with @workflow or pass it "
                         f"in workflows=)")

    def _create(self, new: list[NewRun]) -> list[bool]:
        with self._start_lock:
            if self._closed:
                raise ReplaygenError("this Interpreter is shut down; start runs on a new one")
            self._starting += 1  # shutdown() waits for starts in flight
            # A run of a limited workflow waits in the store for a free slot, to be claimed
            # here when one is free.
            limited = {r.run_id: r.workflow for r in new if r.workflow in self._settings.limits}
            self._unclaimed.update(limited)
        done: list[Any] = []
        try:  # the inserts share the group commit of other runs' steps
            done = self._group.commit([r.write(self.worker_id, r.run_id in limited) for r in new])
        finally:
            now = time.time()
            with self._start_lock:
                made = {r.run_id for r, d in zip(new, done, strict=False) if d is True}
                for run_id in limited.keys() - made:
                    self._unclaimed.pop(run_id, None)
                for run in new:  # adopted before shutdown() goes on; once (a start() may first)
                    held = run.run_id in limited or run.run_id in self._runtime.actors
                    if run.run_id in made and not held:
                        self._adopt(Claim(RunRecord(run.run_id, run.workflow, run.args, "pending",
                                                    self.worker_id, 1, now, now,
                                                    forked_from=run.source), list(run.entries)))
                        log.info("run %s started (workflow %s)", run.run_id, run.workflow)
                self._starting -= 1
        failed = next((d for d in done if isinstance(d, BaseException)), None)
        if failed is not None:
            raise failed
        return [bool(d) for d in done]

    def _existing(self, run_id: str, name: str, args_text: str) -> RunRecord:
        old = super()._existing(run_id, name, args_text)
        with self._start_lock:  # adopted once, here or by the _create() that made it
            if old.owner == self.worker_id and old.state not in FINISHED \
                    and run_id not in self._runtime.actors:
                # Our create() committed though it was reported as failed: run it now. Read
                # again: ``old`` may be of a run that has since ended here and been let go.
                now = self._store.get(run_id)
                if now is not None and now.owner == self.worker_id and now.state not in FINISHED:
                    self._adopt(Claim(now, self._store.journal(run_id)))
        # A limited run waits unowned for a slot (ours too, if our create was reported failed
        # though it committed): claimed here when one is free, as _create() would have.
        if old.owner is None and old.state == "pending" and old.workflow in self._settings.limits:
            self._waits([(run_id, old.workflow)])
        return old

    def _heartbeat(self) -> None:
        self._store.heartbeat(self.worker_id, self._lease, workflows=sorted(self._known()))

    def _tell(self, run_id: str, *events: Any) -> None:
        self._runtime.tell(run_id, *events)

    def _wait_for(self, run_id: str, seconds: float) -> None:
        ended = self._runtime.waiter(run_id)
        if ended is None:  # executed by another worker: poll
            super()._wait_for(run_id, seconds)
        else:  # its end sets the event, so no wake-up is missed
            ended.wait(seconds)

    # ---- claiming -------------------------------------------------------------

    def _claim(self, *, states: tuple[str, ...] = ACTIVE, run_ids: list[str] | None = None,
               reset: bool = False, limit: int | None = None) -> list[str]:
        """Claim runs of known workflows (never another's) that no live worker holds, adopt
        each batch as it lands (its runs go on while the next is read); their ids, no rows."""
        dead = [o for o in self._store.owners() if o != self.worker_id and is_dead(o)]
        known, claims = self._known(), list[str]()
        limits = self._settings.limits = limits_of(known, self._limits)
        while known and (limit is None or len(claims) < limit):
            size = 500 if limit is None else min(500, limit - len(claims))
            batch = self._store.claim(self.worker_id, states=states, dead=dead, limit=size,
                                      workflows=list(known), run_ids=run_ids, reset=reset,
                                      limits=limits)
            for claim in batch:
                self._adopt(claim)
            claims += [claim.run.run_id for claim in batch]
            if len(batch) < size:
                break
        return claims

    def _room(self) -> int:
        """How many more ready runs this worker can run now (parked runs do not count)."""
        busy = sum(a.state in ("pending", "running") for a in list(self._runtime.actors.values()))
        return max(0, self._concurrency - busy)

    def _waits(self, runs: list[tuple[str, str]]) -> None:
        """Runs this worker made or held that wait in the store, (id, workflow): children, and
        runs that found no free slot (workflow ""). The watcher claims them (the commit that
        left them woke it) if their workflows are known here, even before ``recover()``;
        after it, the watcher's claims take them anyway."""
        known = self._known()
        with self._start_lock:
            self._unclaimed.update((r, w) for r, w in runs if not w or w in known)
        self._look = True  # the commit that left them may have woken the watcher already

    def _freed(self) -> None:
        """A run of a limited workflow held here stopped working (it finished, parked or
        blocked): its slot is free, and no store event says so; the watcher claims now."""
        self._look = True

    def _adopt(self, claim: Claim) -> None:
        record, broken = claim.run, None
        try:
            journal = Journal(record.run_id, claim.journal, self._codec)
        except CorruptRecord as exc:
            journal, broken = Journal(record.run_id, [], self._codec), exc
        if claim.journal:
            log.info("run %s resumed (%d journal entries to replay)", record.run_id, len(claim.journal))
        life = Life(self._settings, record.run_id, record.workflow,
                    self._known().get(record.workflow), record.args, journal,
                    written=(record.state, record.wake_at, record.waiting_for),
                    resumes=record.resumes, cancel=record.cancel_requested,
                    parent=record.parent, broken=broken)
        self._runtime.adopt(record.run_id, life.life(), record.fence, record.state,
                            limited=record.workflow in self._settings.limits)

    # ---- the watcher ----------------------------------------------------------

    def _watch(self) -> None:
        """Renew the lease, learn of signals and cancels sent by other processes, and adopt
        runs whose owner died or that clients started."""
        token: object = None
        beat = adopt = sweep = tidy = 0.0
        failing = backlog = False
        while not self._runtime.stopped:
            try:
                # With runs left unclaimed for want of room, look for room often: a slot a
                # finished run frees wakes no watcher. With limits, look often for a slot a
                # run here freed (_freed).
                new = self._store.watch(token, 0.05 if backlog or self._settings.limits
                                        else min(1.0, self._lease / 3))
                if self._runtime.stopped:
                    return
                now = time.monotonic()
                if now >= beat:
                    self._heartbeat()
                    beat = now + self._lease / 3
                if not self._closed:  # at least once a second: a tick fires within about 1s
                    self._scheduler.fire_due()
                if new != token or now >= sweep:  # the timed sweep is a safety net
                    token, sweep = new, now + 5.0
                    for run_id, cancel in self._store.wakeups(self.worker_id):
                        self._runtime.tell(run_id, *((CANCEL, UNREAD) if cancel else (UNREAD,)))
                    adopt = 0.0
                if self._strangers is not None and now >= self._strangers:
                    self._strangers = None
                    _log_strangers(self._store, self._known())
                # Before recover(), only the runs made here are claimed here.
                with self._start_lock:
                    wanted = None if self._adopting else dict(self._unclaimed)
                    if self._adopting:
                        self._unclaimed.clear()
                if (wanted or self._adopting) and (self._look or now >= adopt) \
                        and not self._closed and (room := self._room()):
                    self._look = False  # before the claim, which sees every slot freed so far
                    backlog = self._take(wanted, room)
                    adopt = now + (0.05 if backlog else min(1.0, self._lease / 4))
                if self._retention is not None and now >= tidy and not self._closed:
                    done = self.purge(self._retention, limit=PURGE_BATCH)
                    tidy = now + (2.0 if done == PURGE_BATCH else  # a bounded rate
                                  min(60.0, self._retention / 4))
                failing = False
            except Exception as exc:
                if not failing:  # one line per outage, not one per retry
                    log.warning("cannot watch the store (%s); retrying until it is back", exc)
                failing = True
                time.sleep(0.5)


    def _take(self, wanted: dict[str, str] | None, room: int) -> bool:
        """Claim and adopt up to ``room`` runs (of the ``wanted`` ones, if given); True if
        more may wait now (every free slot was taken, or another transaction held one)."""
        claims = self._claim(run_ids=None if wanted is None else list(wanted), limit=room)
        if not wanted:
            return len(claims) == room
        limited = self._settings.limits
        missed = set(wanted) - set(claims)
        # A run waiting for a slot is asked for again, and so is one another transaction held
        # (SKIP LOCKED): it is still unowned. One another worker took, or that ended, is not.
        held = {r for r in missed if wanted[r] not in limited and (len(claims) == room or (
            (rec := self._store.get(r)) is not None and rec.state in ACTIVE and rec.owner is None))}
        with self._start_lock:
            for run_id in set(wanted) - held - {r for r in missed if wanted[r] in limited}:
                self._unclaimed.pop(run_id, None)
        return len(claims) == room or bool(held)


def _log_strangers(store: Store, known: Mapping[str, Workflow]) -> None:
    """Say once which unfinished runs a worker leaves for workers that know their workflows."""
    try:
        strangers: dict[str, int] = {}
        for r in store.runs(states=(*ACTIVE, "blocked"), limit=1000):
            if r.workflow not in known:
                strangers[r.workflow] = strangers.get(r.workflow, 0) + 1
    except Exception:
        return
    if strangers:
        log.info("left %s for workers that know them (this one knows %s)", ", ".join(
            f"{n} runs of {w!r}" for w, n in sorted(strangers.items())), sorted(known))
