"""Deadlines across restarts: what the crash harness's deadline scenarios rely on.

Each test stops a run's worker at a point a SIGKILL can hit (in process: an interpreter
shut down, or a commit that never lands), lets the deadline pass or not, and restarts.
A run must then take the path an uncrashed run takes (SPEC section 12: the deadline strikes
at the yield where the run stands, "durable across restarts").

Three of them were engine bugs the crash harness found: a run resumed into its Sleep was
never struck there, and a child struck by the deadline it inherited told its parent no
deadline, so a kill between two of the parent's commits replayed the wrong exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


from replaygen import (
    Cancelled, Child, Deadline, DeadlineExceeded, Interpreter, MemoryStore, Sleep, StoreUnavailable,
    Wait,
)
from replaygen.store import Write
from replaygen.testing import FakeClock

from .conftest import PATIENCE
from .test_deadlines import sleeps_past

Make = Callable[..., Interpreter]

def waits_past(deadline: float) -> Any:
    yield Deadline(deadline)
    try:
        yield Wait("never")
    except DeadlineExceeded:
        return "deadline"


def test_a_deadline_strikes_a_run_resumed_into_its_sleep(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    first = interp([sleeps_past])
    run = first.start(sleeps_past, 10, 3600)
    reach(first, run, "sleeping")
    again = restart(first, [sleeps_past])  # a worker restarted while the run sleeps
    reach(again, run, "sleeping")
    clock.advance(11)
    assert again.result(run, timeout=2) == "deadline"


def test_a_deadline_that_passed_while_no_worker_ran_strikes_a_run_resumed_into_its_sleep(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    first = interp([sleeps_past])
    run = first.start(sleeps_past, 10, 3600)
    reach(first, run, "sleeping")
    first.shutdown()
    clock.advance(11)  # while no worker runs it
    again = restart(first, [sleeps_past])
    assert again.result(run, timeout=2) == "deadline"


def test_a_deadline_strikes_a_run_resumed_into_its_wait(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    first = interp([waits_past])
    run = first.start(waits_past, 10)
    reach(first, run, "waiting")
    again = restart(first, [waits_past])
    reach(again, run, "waiting")
    clock.advance(11)
    assert again.result(run, timeout=PATIENCE) == "deadline"


def child_sleeps() -> Any:
    yield Sleep(600)  # struck by the deadline it inherits; DeadlineExceeded escapes


def parent_catches_its_own() -> Any:
    yield Deadline(10)
    try:
        yield Child(child_sleeps)
    except DeadlineExceeded:
        return "parent's own deadline"
    except Cancelled:
        return "only the child's"


class DiesBeforeTheStrike:
    """A store whose worker 'dies' (its commits stop landing) at the first write journaling
    a strike or a cancel: what a SIGKILL between two commits leaves behind."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner, self.died = inner, threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def commit(self, writes: Sequence[Write]) -> list[bool]:
        if any(e.kind == "cancel" for w in writes for e in w.entries):
            self.died.set()
            raise StoreUnavailable("the worker is killed before this commit")
        return self.inner.commit(writes)


def test_a_parent_killed_before_journaling_its_strike_still_gets_its_own_deadline_exceeded(
        interp: Make, store: MemoryStore, clock: FakeClock, reach: Any,
        eventually: Any) -> None:
    parents = interp([parent_catches_its_own])
    children = interp([child_sleeps])
    children.recover()
    run = parents.start(parent_catches_its_own, run_id="p")
    reach(children, "p/1", "sleeping")
    reach(parents, "p", "waiting")
    parents.shutdown()
    clock.advance(11)  # the child strikes and ends first, while the parent's worker is down
    reach(children, "p/1", "cancelled")
    doomed = DiesBeforeTheStrike(store)
    dying = interp([parent_catches_its_own], store=doomed)
    dying.recover()
    eventually(doomed.died.is_set, "the parent's worker to die at its strike's commit")
    dying.shutdown(timeout=0.5)
    assert not any(e.kind == "child" for e in store.journal("p"))  # its own strike comes first
    again = interp([parent_catches_its_own])
    again.recover()
    assert again.result(run, timeout=PATIENCE) == "parent's own deadline"
