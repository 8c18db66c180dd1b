"""Group commit: the one way writes reach the store. Whoever has writes (the runtime's driver,
a thread in ``start()``) commits them together with everything else being written at that
moment, so that many runs share one transaction, and one fsync, on the disk."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .errors import StoreUnavailable
from .store import Store, Write

log = logging.getLogger("replaygen")


class Abandoned(Exception):
    """Shutdown gave up on a write during a store outage."""


class _Pending:
    """Writes waiting in the queue; ``wake`` is released when they are done."""

    __slots__ = ("writes", "results", "wake")

    def __init__(self, writes: list[Write]) -> None:
        self.writes, self.wake = writes, threading.Lock()
        self.results: Any = None
        self.wake.acquire()


_LEAD = object()  # a follower woken to lead the next group commit


class GroupCommit:
    """Commits writes of many threads together. ``commit`` retries with backoff while the
    store is unavailable (nothing is failed or lost) until ``stopped`` is set; ``grouped``
    tries once."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.stopped = threading.Event()  # set: give up retrying, shutdown is due
        self._lock = threading.Lock()  # guards the queue and the count of leaders
        self._queue: list[_Pending] = []
        # A store whose transactions run side by side (a server's) takes this many commits at
        # once: a start need not wait for the steps' commit in flight. SQLite has one writer.
        self._parallel = max(1, int(getattr(store, "parallel_commits", 1)))
        self._leaders = 0  # commits in progress
        self._outage_since: float | None = None

    def queued(self) -> int:
        """How many writes wait for the commit in progress to end (they go in the next)."""
        with self._lock:
            return sum(len(p.writes) for p in self._queue)

    def commit(self, writes: list[Write]) -> list[Any]:
        """Each write's outcome: True, False (fence lost), None (applied unadmitted), or the
        error it met (``Abandoned`` if shutdown came during an outage)."""
        results = self.grouped(writes)
        delay = 0.05
        while again := [i for i, r in enumerate(results) if isinstance(r, StoreUnavailable)]:
            if self.stopped.is_set():
                return [Abandoned() if isinstance(r, StoreUnavailable) else r for r in results]
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                log.error("store unavailable (%s); runs wait and retry until it is back",
                          results[again[0]])
            if self.stopped.wait(delay):  # a shutdown need not wait out the backoff
                continue
            delay = min(delay * 2, 5.0)
            for i, result in zip(again, self.grouped([writes[i] for i in again]), strict=True):
                results[i] = result
        if self._outage_since is not None:
            self._outage_since = None
            log.warning("store available again; runs resume")
        return results

    def grouped(self, writes: list[Write]) -> list[Any]:
        """Commit ``writes`` with whatever else is being written now, once: each write's
        outcome, or the error it met."""
        # Leader-follower: a writer that finds no commit in progress commits at once; the
        # others queue and sleep on their own lock (no thundering herd), and when a commit
        # ends the first of them is woken to lead the next, taking all queued by then.
        with self._lock:
            me = _Pending(writes) if self._leaders >= self._parallel else None
            if me is not None:
                self._queue.append(me)
            else:
                self._leaders += 1
        batch: list[_Pending] = []
        if me is not None:
            try:
                me.wake.acquire()
            except BaseException:  # interrupted while queued: leave, and pass on a lead given
                self._leave(me)
                raise
            if me.results is not _LEAD:
                return me.results  # type: ignore[no-any-return]
            with self._lock:
                batch, self._queue = [me, *self._queue], []
        try:
            results = self._apply([w for p in batch for w in p.writes] if batch else writes)
        except BaseException as exc:  # an interrupt: its own goes on; the writes grouped with
            # it met an outage of unknown outcome (a commit retries them; the store tells a
            # write applied before from a new one)
            lost = StoreUnavailable(f"a commit grouped with this write was interrupted: {exc!r}")
            self._hand_on(batch, me, [lost] * (sum(len(p.writes) for p in batch) or len(writes)))
            raise
        self._hand_on(batch, me, results)
        return results if me is None else me.results

    def _hand_on(self, batch: list[_Pending], me: _Pending | None, results: list[Any]) -> None:
        """Give each queued writer its outcome, and the lead to the first queued since."""
        at = 0
        for item in batch:
            item.results, at = results[at:at + len(item.writes)], at + len(item.writes)
        with self._lock:
            if self._queue:  # the lead passes on: as many leaders as before
                lead = self._queue.pop(0)
                lead.results = _LEAD
                lead.wake.release()
            else:
                self._leaders -= 1
        for item in batch:
            if item is not me:
                item.wake.release()

    def _leave(self, me: _Pending) -> None:
        """A queued writer stops waiting: out of the queue, or, if the lead reached it
        meanwhile, the lead goes to the next (or the commit in progress ends)."""
        with self._lock:
            if me in self._queue:
                self._queue.remove(me)
            led = me.results is _LEAD
        if led:
            self._hand_on([], None, [])

    def _apply(self, writes: list[Write]) -> list[Any]:
        try:
            return list(self._store.commit(writes))
        except StoreUnavailable as exc:
            return [exc] * len(writes)
        except Exception as exc:
            if len(writes) == 1:
                return [exc]
            # One bad write must not sink the others grouped with it: commit them one by one.
            return [self._apply([w])[0] for w in writes]
