"""The runtime: performs what the replay rules ask, with threads, commits and timers.

It drives every run's life (a generator of the effects of ``effects.py``), never knows what a
command means, nor imports the rules; and it owns every thread that runs them. One driver
turns ready lives until each asks for a write, then commits their writes in one group commit
(alone with one run, it commits and goes on in place): no life goes past a write before it
is durable. A watchdog hands the driver role to a new thread when a turn runs long (a slow
step). A pool and an event loop run slow and ``async`` steps, all within ``concurrency``
slots. The driver rings the alarms lives ask for. Parked runs hold no thread.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import inspect
import itertools
import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Generator
from functools import partial
from typing import Any, Protocol

from .commit import Abandoned, GroupCommit
from .errors import StoreUnavailable
from .observe import Observer, _current, notify
from .effects import (
    GRANTED, RING, UNREAD, Acquire, Alarm, Call, Done, Effect, Emit, Idle, Inbox, Lookup,
    Outcome, Save, Withdraw,
)
from .store import WORKING, Store, Write

log = logging.getLogger("replaygen")
_INLINE = 0.001
"""A synchronous step whose recent calls took less than this (seconds) runs on the driver;
a slower one runs on the pool, so that it holds no other run up."""
_SLOW_TURN = 0.005
"""Seconds a turn (a step inline, or workflow code) may hold the driver before a new thread
takes over the other runs."""
_NOT_AWAITABLE = frozenset({dict, list, str, int, float, bool, type(None)})
_EMPTY: frozenset[int] = frozenset()


class Clock(Protocol):
    """Wall-clock time in epoch seconds; deadlines are journaled in it. Tests inject a fake."""

    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


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


class Actor:
    """The runtime's side of one run it holds: its life (a generator of effects), its mailbox
    and its slots. Touched by the thread turning it, except under the runtime's lock
    (mailbox, flags) and the steps' lock (slots)."""

    __slots__ = ("id", "fence", "gen", "state", "mailbox", "reply", "scheduled", "gone", "held",
                 "queued", "running", "alarm", "left", "limited")

    def __init__(self, run_id: str, gen: Generator[Effect, Any, Any], fence: int,
                 state: str, limited: bool = False) -> None:
        self.id, self.gen, self.fence = run_id, gen, fence
        self.state = state              # as its last write said (or the claim)
        self.limited = limited          # its workflow has store-wide slots (limits)
        # Its event box and slot sets are immutable, swapped whole under their lock: a parked
        # run (tens of thousands in a worker) shares the empty ones.
        self.mailbox: tuple[Any, ...] = ()
        self.reply: Any = None          # the answer to the effect the life waits on
        self.scheduled = self.gone = False
        self.held = _EMPTY              # positions holding a slot for their next Call
        self.queued = _EMPTY            # positions waiting for a slot
        # Added to by the driver, discarded under the runtime's lock: a set changed in place.
        self.running: set[int] = set()  # positions whose step runs off the driver
        self.alarm: int | None = None  # the seq of the alarm the life asked for last
        self.left: threading.Event | None = None  # set when it is let go; made by the first waiter

    def busy(self) -> bool:
        """It has work in hand: a step running, or a turn due (read in this order: a step's
        end schedules the turn before it stops counting as running)."""
        return bool(self.running) or self.scheduled


class Steps:
    """Runs steps within ``concurrency`` slots, one bound for sync, pooled and async steps:
    a lone step that has been quick runs inline (on the driver), others on the pool or
    the event loop, and report back with a ``Done``."""

    def __init__(self, clock: Clock, concurrency: int,
                 post: Callable[[Actor, Any], bool]) -> None:
        self._clock, self._post = clock, post
        self._lock = threading.Lock()  # guards the free slots, the queue, actors' slot sets
        self._free, self._queue = concurrency, deque[tuple[Actor, int]]()
        self._cost: dict[object, float] = {}  # step function -> its duration
        self._pool = _Pool(concurrency)
        self._aloop: asyncio.AbstractEventLoop | None = None
        # Async steps in flight. The loop holds its tasks weakly: a step awaiting what nothing
        # else holds would be collected mid-await, its cleanup (free) run by whatever thread
        # allocated then, even one holding _lock.
        self._tasks: set[Any] = set()  # concurrent.futures.Future[Outcome]

    def acquire(self, actor: Actor, effect: Acquire | Call, keep: bool = True) -> bool:
        """Take a slot for the step at ``effect.position`` (kept for its next call if ``keep``;
        else the one kept for it is used), or queue it for one: False."""
        position = effect.position
        with self._lock:
            if position in actor.held:
                if not keep:
                    actor.held -= {position}
                return True
            if self._free and position not in actor.queued:
                self._free -= 1
                if keep:
                    actor.held |= {position}
                return True
            if position not in actor.queued:
                actor.queued |= {position}
                self._queue.append((actor, position))
            return False

    def free(self) -> None:
        """A slot came free: keep it for the longest waiter and tell it, or put it back."""
        with self._lock:
            while self._queue:
                actor, position = self._queue.popleft()
                if not actor.gone and position in actor.queued:
                    actor.queued -= {position}
                    actor.held |= {position}
                    break
            else:
                self._free += 1
                return
        if not self._post(actor, GRANTED):  # gone meanwhile: pass it on
            with self._lock:
                actor.held -= {position}
            self.free()

    def withdraw(self, actor: Actor, effect: Withdraw | None = None) -> None:
        with self._lock:
            freed = len(actor.held)
            actor.held = actor.queued = _EMPTY
        for _ in range(freed):
            self.free()

    def call(self, actor: Actor, effect: Call) -> Outcome | bool | None:
        """Run a step in a slot (the one kept for it, or a free one): inline if it is alone
        and has been quick, else on the pool or the event loop (a ``Done`` follows). With no
        slot free it is queued instead: False, and a ``Granted`` once one is kept for it."""
        if not self.acquire(actor, effect, keep=False):
            return False
        key = _cost_key(effect.fn)
        if not effect.alone or self._cost.get(key, 0.0) > _INLINE or _is_async(effect.fn):
            done = partial(self._done, actor, effect.position, effect.attempt)
            actor.running.add(effect.position)
            if _is_async(effect.fn):
                future = asyncio.run_coroutine_threadsafe(self._acall(effect), self._async_loop())
                self._tasks.add(future)
                future.add_done_callback(self._tasks.discard)
                future.add_done_callback(lambda f: done(f.result()))
            else:
                self._pool.submit(lambda: done(self._call(effect, key)))
            return None
        return self._call(effect, key)

    def _done(self, actor: Actor, position: int, attempt: int, outcome: Outcome) -> None:
        self._post(actor, Done(position, attempt, outcome))

    def _call(self, step: Call, key: object) -> Outcome:
        started, token, t0 = self._clock.now(), _current.set(step.info), time.perf_counter()
        try:
            value = step.fn(*step.args, **step.kwargs)
            if type(value) not in _NOT_AWAITABLE and inspect.isawaitable(value):
                value = asyncio.run_coroutine_threadsafe(_await(value), self._async_loop()).result()
            return Outcome(started, value)
        except Exception as exc:
            return Outcome(started, error=exc)
        except BaseException as exc:
            return Outcome(started, interrupt=exc)
        finally:
            _current.reset(token)
            self.free()
            took = time.perf_counter() - t0  # recent calls count most:
            self._cost[key] = (self._cost.get(key, took) + took) / 2

    async def _acall(self, step: Call) -> Outcome:
        started = self._clock.now()
        _current.set(step.info)  # the task has its own context
        try:
            return Outcome(started, await step.fn(*step.args, **step.kwargs))
        except Exception as exc:
            return Outcome(started, error=exc)
        except BaseException as exc:
            return Outcome(started, interrupt=exc)
        finally:
            self.free()

    def _async_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._aloop is None:
                self._aloop = asyncio.new_event_loop()
                threading.Thread(target=self._aloop.run_forever, daemon=True,
                                 name="replaygen-async").start()
            return self._aloop

    def stop(self) -> None:
        self._pool.stop()
        if self._aloop is not None:
            self._aloop.call_soon_threadsafe(self._aloop.stop)


class _Alarms:
    """The alarms lives ask for, rung by the driver; used under the runtime's lock. Kept by
    run id, so that an alarm never keeps a run it let go alive."""

    def __init__(self, actors: dict[str, Actor]) -> None:
        self.heap: list[tuple[float, int, str, bool]] = []  # (at, seq, run id, once)
        self._actors, self._seq = actors, itertools.count()

    def set(self, actor: Actor, at: float | None, once: bool) -> None:
        """Alarm ``actor`` at ``at``: its one alarm, replacing the last (``once``: an extra
        wake-up that replaces nothing)."""
        seq = next(self._seq)
        if not once:
            actor.alarm = None if at is None else seq
        if at is not None:
            heapq.heappush(self.heap, (at, seq, actor.id, once))
            if len(self.heap) > 2 * len(self._actors) + 1024:  # mostly replaced ones: drop them
                self.heap = [a for a in self.heap if self._owner(a) is not None]
                heapq.heapify(self.heap)

    def ring(self, now: float, deliver: Callable[[Actor, Any], object]) -> float:
        """Wake the runs whose alarm is due; the seconds to the next one, at most 1 s so that a
        wall-clock change is seen."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            alarm = heapq.heappop(heap)
            if (actor := self._owner(alarm)) is not None:
                if not alarm[3]:
                    actor.alarm = None  # rung: the life asks again for a deadline still ahead
                deliver(actor, RING if not alarm[3] else UNREAD)
        return min(heap[0][0] - now, 1.0) if heap else 1.0

    def _owner(self, alarm: tuple[float, int, str, bool]) -> Actor | None:
        """The run the alarm still belongs to: neither replaced nor let go."""
        _, seq, run_id, once = alarm
        actor = self._actors.get(run_id)
        return actor if actor is not None and (once or actor.alarm == seq) else None


class Runtime:
    """Runs lives: turns them on the driver, performs their effects, commits their writes."""

    def __init__(self, store: Store, owner: str, clock: Clock, concurrency: int,
                 observer: Observer | None,
                 unclaimed: Callable[[list[tuple[str, str]]], None],
                 freed: Callable[[], None] = lambda: None, group: GroupCommit | None = None) -> None:
        self.store, self.owner, self.clock, self.observer = store, owner, clock, observer
        self._unclaimed = unclaimed  # told of runs left for a claim: (id, workflow or "")
        self._freed = freed  # told when a limited run stops working here: its slot is free
        self.actors: dict[str, Actor] = {}
        self.lock = threading.Lock()  # guards actors, _ready, _pending and mailboxes
        self.stopped = False
        self.group = group or GroupCommit(store)  # shared with start(); stopped with this
        self._wake = threading.Condition(self.lock)          # the driver waits for work
        self._watchdog_cv = threading.Condition(self.lock)   # the watchdog waits for a turn
        self._ready: deque[Actor] = deque()                  # lives with work to do
        self._pending: list[tuple[Actor, Write]] = []        # their writes, to commit
        self._alarms = _Alarms(self.actors)
        self._driver: object = None
        self._drivers: list[threading.Thread] = []
        self._turns, self._in_turn, self._idle = 0, False, True
        self.steps = Steps(clock, concurrency, self.post)
        if (subscribe := getattr(clock, "subscribe", None)) is not None:
            subscribe(partial(_kick, weakref.ref(self)))  # a test clock moved: alarms may be due
        self._perform: dict[type, Callable[[Actor, Any], Any]] = {
            Acquire: self.steps.acquire, Call: self.steps.call, Withdraw: self.steps.withdraw,
            Alarm: self._alarm, Inbox: self._inbox, Lookup: self._lookup,
            Emit: lambda _, e: notify(self.observer, e.event),
        }
        self._watchdog = threading.Thread(target=self._watch_turns, daemon=True,
                                          name="replaygen-watchdog")
        self._watchdog.start()
        with self.lock:
            self._promote()

    def kick(self) -> None:
        """The clock moved (a test's): look for alarms now due."""
        with self.lock:
            self._wake.notify_all()

    # ---- runs --------------------------------------------------------------------------------

    def adopt(self, run_id: str, life: Generator[Effect, Any, Any], fence: int,
              state: str, limited: bool = False) -> Actor:
        """Hold the run (claimed at ``fence``, in ``state``; of a workflow with ``limits`` if
        ``limited``) and start its life."""
        actor = Actor(run_id, life, fence, state, limited)
        with self.lock:
            old = self.actors.get(actor.id)
            self.actors[actor.id] = actor
            actor.scheduled = True
            self._ready.append(actor)
            self._wake.notify_all()
        if old is not None:  # an older claim of ours that we lost
            self.forget(old)
        return actor

    def tell(self, run_id: str, *events: Any) -> None:
        """Give the run events (a signal, a cancel, a stop), if this runtime holds it."""
        actor = self.actors.get(run_id)
        if actor is not None:
            with self.lock:
                for event in events:
                    self._deliver(actor, event)

    def post(self, actor: Actor, event: Any) -> bool:
        with self.lock:
            return self._deliver(actor, event)

    def _deliver(self, actor: Actor, event: Any) -> bool:  # under the lock
        if actor.gone:
            return False
        if not (event is UNREAD and UNREAD in actor.mailbox):
            actor.mailbox += (event,)
        if not actor.scheduled:
            actor.scheduled = True
            self._ready.append(actor)
            self._wake.notify_all()
        if type(event) is Done:
            actor.running.discard(event.position)
        return True

    def forget(self, actor: Actor) -> None:
        """Let the run go: its life ends where it is (the store keeps what was committed)."""
        with self.lock:
            actor.gone = True
            if self.actors.get(actor.id) is actor:
                del self.actors[actor.id]
        self.steps.withdraw(actor)
        try:
            actor.gen.close()
        except BaseException:  # it may be executing on another thread; it stops after its turn
            pass
        with self.lock:
            if actor.left is not None:
                actor.left.set()

    def waiter(self, run_id: str) -> threading.Event | None:
        """An event set when this worker lets the run go; None if it does not hold it."""
        with self.lock:
            actor = self.actors.get(run_id)
            if actor is None:
                return None
            if actor.left is None:  # most runs are never waited for: no Event each
                actor.left = threading.Event()
            return actor.left

    # ---- the driver ----------------------------------------------------------------------------

    def _drive(self, me: object) -> None:
        """Turn ready lives until each waits for a write, then commit all their writes at
        once. One thread holds the role; the watchdog hands it to a new thread when a turn
        runs long (a slow step), and this one leaves once that turn is over."""
        try:
            while True:
                with self.lock:
                    while True:
                        timeout = self._alarms.ring(self.clock.now(), self._deliver) \
                            if self._alarms.heap else None
                        if self._driver is not me or self.stopped or self._ready or self._pending:
                            break
                        self._idle = True
                        self._wake.wait(timeout)
                    if self._driver is not me or self.stopped:
                        return
                    if self._idle:
                        self._idle = False
                        self._watchdog_cv.notify()
                    batch: list[tuple[Actor, Write]] = []
                    if self._ready:
                        actor = self._ready.popleft()
                        self._turns += 1
                        self._in_turn = True
                    else:
                        batch, self._pending = self._pending, []
                if batch:
                    self._committed(batch, self.group.commit([w for _, w in batch]))
                else:
                    self._run(me, actor)
        except BaseException:
            with self.lock:  # an interrupt ends this thread: let a new driver take over
                if self._driver is me:
                    self._promote()
            raise

    def _run(self, me: object, actor: Actor) -> None:
        write = self._turn(actor)
        # Nothing else to do (one run alone, as a sequential job is): commit, go on in place.
        while write is not None and not (self._ready or self._pending or self.stopped):
            with self.lock:
                if self._driver is not me:
                    break
                self._in_turn = False
            result = self.group.commit([write])[0]
            if write.notify is not None or write.spawn:
                self._notified(write, result)
            write = None
            if not self._answer(actor, result):
                break
            with self.lock:
                if self._alarms.heap:  # an alarm due makes its run ready: the loop then ends
                    self._alarms.ring(self.clock.now(), self._deliver)
                if self._driver is not me or self._ready:
                    self._ready.append(actor)
                    self._wake.notify_all()
                    break
                self._turns, self._in_turn = self._turns + 1, True
            write = self._turn(actor)
        with self.lock:
            if self._driver is me:
                self._in_turn = False
            if write is not None:
                self._pending.append((actor, write))
                self._wake.notify_all()  # a new driver may be idle

    def _committed(self, batch: list[tuple[Actor, Write]], results: list[Any]) -> None:
        for (_, write), result in zip(batch, results, strict=True):
            self._notified(write, result)
        ready = [actor for (actor, _), result in zip(batch, results, strict=True)
                 if self._answer(actor, result)]
        with self.lock:
            self._ready.extend(ready)
            self._wake.notify_all()  # for a new driver, if this one was replaced

    def _answer(self, actor: Actor, result: Any) -> bool:
        """Give a life its write's outcome (with the events that came meanwhile); False if
        the run is let go instead."""
        if result is True:
            if actor.limited and actor.state not in WORKING:  # it finished, parked or blocked
                self._freed()
            if actor.mailbox:
                with self.lock:
                    actor.reply, actor.mailbox = actor.mailbox, ()
            else:
                actor.reply = None
            return True
        if result is False:  # refused: the fence moved
            log.warning("run %s: %s; this worker stopped it here", actor.id, self._lost(actor.id))
        elif result is None:  # not admitted: it waits in the store for a claim with a free slot
            log.debug("run %s waits for a slot of its workflow", actor.id)
            self._unclaimed([(actor.id, "")])
        elif not isinstance(result, Abandoned):
            actor.reply = result  # an error the rules handle (they block the run)
            return True
        self.forget(actor)
        return False

    def _notified(self, write: Write, result: Any) -> None:
        """A committed write told another run something (a child's end): if that run is
        held here, it hears at once (other workers hear through the store). Children it made
        are passed on, to be claimed."""
        if result is True:
            if write.notify is not None:
                self.tell(write.notify.run_id, UNREAD)
            if write.spawn:
                self._unclaimed([(c.run_id, c.workflow) for c in write.spawn])

    def _lost(self, run_id: str) -> str:
        """Why a write of the run was refused, as the store tells it now."""
        try:
            record = self.store.get(run_id)
        except Exception as exc:
            return f"it was terminated or taken over (the store cannot tell which now: {exc})"
        if record is None:
            return "it is no longer in the store"
        if record.state == "cancelled" and '"Terminated"' in (record.error or ""):
            return "it was terminated"
        lapsed = "this worker's lease had lapsed"
        if record.owner is None:
            return f"it was taken over by another worker ({lapsed}), and is {record.state} now"
        return f"it was taken over by another worker, {record.owner} ({lapsed})"

    def _promote(self) -> None:
        """Make a new thread the driver (called under the lock)."""
        old, self._driver = self._driver, object()
        thread = threading.Thread(target=self._drive, args=(self._driver,), daemon=True,
                                  name="replaygen-driver")
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: the old driver goes on after its turn
            self._driver = old
            log.error("cannot start a thread for the engine (%s); runs wait for the current one", exc)
            return
        self._drivers = [t for t in self._drivers if t.is_alive()] + [thread]
        self._in_turn = self._idle = False
        self._watchdog_cv.notify()  # it may be waiting for an idle driver to get busy

    def _watch_turns(self) -> None:
        with self.lock:
            while not self.stopped:
                if self._idle:
                    self._watchdog_cv.wait()
                    continue
                turn = self._turns
                self._watchdog_cv.wait(_SLOW_TURN)
                if self._in_turn and self._turns == turn and not self.stopped:
                    self._promote()  # the driver is stuck in one turn (a slow step)

    def _turn(self, actor: Actor) -> Write | None:
        """Run the life until it asks for a write (returned) or has nothing left to do."""
        reply, actor.reply = actor.reply, None
        gen, perform = actor.gen, self._perform
        while True:
            try:
                effect: Effect = gen.throw(reply) if isinstance(reply, BaseException) \
                    else gen.send(reply)
            except StopIteration:
                self.forget(actor)
                return None
            except Exception:  # a bug of the engine's own: the rules let none through
                log.exception("internal error in run %s; this worker lets it go", actor.id)
                self.forget(actor)
                return None
            except BaseException:  # an interrupt: the run is released, the interrupt goes on
                with self.lock:
                    actor.scheduled = False
                self.forget(actor)
                raise
            kind = type(effect)
            if kind is Save:
                actor.state = effect.state  # type: ignore[union-attr]
                return Write(actor.id, self.owner, actor.fence, *effect)
            if kind is Idle:
                with self.lock:
                    if actor.gone or not actor.mailbox:
                        actor.scheduled = False
                        return None
                    reply, actor.mailbox = actor.mailbox, ()
            else:
                reply = perform[kind](actor, effect)

    # ---- effects -------------------------------------------------------------------------------

    def _alarm(self, actor: Actor, effect: Alarm, once: bool = False) -> None:
        with self.lock:
            self._alarms.set(actor, effect.at, once)
            if effect.at is not None:
                self._wake.notify_all()  # the driver may be waiting for a later one

    def _inbox(self, actor: Actor, effect: Inbox) -> Any:
        try:
            return self.store.signals(actor.id)
        except StoreUnavailable as exc:  # look again in a second
            log.warning("run %s waits for the store: %s", actor.id, exc)
            self._alarm(actor, Alarm(self.clock.now() + 1.0), once=True)
            return []

    def _lookup(self, actor: Actor, effect: Lookup) -> Any:
        delay = 0.05
        while True:  # a store that is down is waited for, as a commit waits
            try:
                return self.store.get(effect.run_id)
            except StoreUnavailable as exc:
                if self.group.stopped.wait(delay):
                    raise
                log.warning("run %s waits for the store: %s", actor.id, exc)
                delay = min(delay * 2, 5.0)

    # ---- stopping ------------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop every thread that touches the store; commit the writes in hand first (results
        that are in hand need not run again). Joins them, up to ``timeout`` s."""
        with self.lock:
            self.stopped = True
            self.group.stopped.set()
            self._wake.notify_all()
            self._watchdog_cv.notify()
            pending, self._pending = self._pending, []
        if pending:
            self.group.commit([w for _, w in pending])
        for actor in list(self.actors.values()):
            self.forget(actor)
        self.steps.stop()
        end = time.monotonic() + timeout
        for thread in [*self._drivers, self._watchdog]:
            if thread is not threading.current_thread():
                thread.join(max(0.0, end - time.monotonic()))


def _kick(runtime: weakref.ref[Runtime]) -> None:
    """A test clock moved: look for due alarms (held weakly: it keeps no stopped runtime)."""
    if (it := runtime()) is not None:
        it.kick()


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

