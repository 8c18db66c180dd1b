"""Deadlines: ``Deadline(seconds)`` bounds the rest of a run (``DeadlineExceeded``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from replaygen import (
    All, Cancelled, Child, Deadline, DeadlineExceeded, Do, Interpreter, Sleep, UsageError, Wait,
)
from replaygen.testing import FakeClock

from .conftest import PATIENCE

Make = Callable[..., Interpreter]


def sleeps_past(deadline: float, sleep: float) -> Any:
    yield Deadline(deadline)
    try:
        yield Sleep(sleep)
    except DeadlineExceeded:
        return "deadline"
    return "slept"


def test_a_deadline_wakes_a_sleeping_run_on_time_and_never_early(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    i = interp([sleeps_past])
    run = i.start(sleeps_past, 10, 3600)
    reach(i, run, "sleeping")
    clock.advance(9.9)
    assert i.status(run).state == "sleeping"
    with pytest.raises(TimeoutError):
        i.result(run, timeout=0.2)  # not before the deadline
    clock.advance(0.2)
    assert i.result(run, timeout=PATIENCE) == "deadline"


def test_a_deadline_wakes_a_waiting_run(interp: Make, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        yield Deadline(timedelta(minutes=5))
        try:
            return (yield Wait("approval"))
        except DeadlineExceeded as exc:
            return str(exc)

    i = interp([wf])
    run = i.start(wf, run_id="w")
    reach(i, run, "waiting")
    clock.advance(301)
    assert i.result(run, timeout=PATIENCE) == "run 'w' passed its deadline"


def test_a_run_whose_deadline_passes_after_it_ends_is_untouched(interp: Make) -> None:
    i = interp([sleeps_past])
    assert i.result(i.start(sleeps_past, 10, 0), timeout=PATIENCE) == "slept"


def test_a_later_deadline_only_brings_it_closer(interp: Make, clock: FakeClock,
                                               reach: Any) -> None:
    def wf() -> Any:
        yield Deadline(10)
        yield Deadline(100)  # further: changes nothing
        yield Deadline(5)    # closer: now 5 s
        try:
            yield Sleep(60)
        except DeadlineExceeded:
            return "at 5"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "sleeping")
    clock.advance(5.5)
    assert i.result(run, timeout=PATIENCE) == "at 5"


def test_deadline_exceeded_is_raised_once_and_what_follows_runs_unhindered(
        interp: Make, clock: FakeClock, reach: Any, eventually: Any) -> None:
    def wf() -> Any:
        yield Deadline(1)
        try:
            yield Sleep(60)
        except DeadlineExceeded:
            yield Sleep(30)  # compensation takes its time: no second strike
            return (yield Do("undo", lambda: "undone"))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "sleeping")
    clock.advance(2)
    eventually(lambda: [e.kind for e in i._store.journal(run)].count("sleep") == 2,  # noqa: SLF001
               "the compensation to sleep")
    clock.advance(31)
    assert i.result(run, timeout=PATIENCE) == "undone"


def test_a_deadline_that_escapes_cancels_the_run(interp: Make, clock: FakeClock,
                                                reach: Any) -> None:
    def wf() -> Any:
        yield Deadline(1)
        yield Sleep(60)

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "sleeping")
    clock.advance(2)
    with pytest.raises(Cancelled):
        i.result(run, timeout=PATIENCE)
    assert i.status(run).state == "cancelled"
    assert "DeadlineExceeded" in (i.status(run).error or "")


def test_deadline_exceeded_is_a_cancelled() -> None:
    assert issubclass(DeadlineExceeded, Cancelled)


def test_a_deadline_needs_seconds_or_a_timedelta() -> None:
    for bad in (-1, float("nan"), "soon", None):
        with pytest.raises(UsageError):
            Deadline(bad)  # type: ignore[arg-type]


def test_a_deadline_that_passed_while_no_worker_ran_strikes_when_the_run_resumes(
        interp: Make, restart: Any, clock: FakeClock, reach: Any, eventually: Any) -> None:
    def wf() -> Any:
        yield Deadline(10)
        first = yield Wait("go")
        try:
            yield Wait("again")
        except DeadlineExceeded:
            return ["deadline", first]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "go", 1)
    eventually(lambda: [e.kind for e in i._store.journal(run)].count("timer") == 2,  # noqa: SLF001
               "the run to wait again")
    i.shutdown()
    clock.advance(60)  # while no worker runs it
    again = restart(i, [wf])
    assert again.result(run, timeout=PATIENCE) == ["deadline", 1]


def test_a_deadline_strikes_at_the_yield_where_a_long_step_runs(
        interp: Make, clock: FakeClock, gate: Any) -> None:
    entered, release = gate(), gate()

    def slow() -> str:
        entered.set()
        release.wait(PATIENCE)
        return "late"

    def wf() -> Any:
        yield Deadline(5)
        try:
            yield All(Do("slow", slow), Sleep(0))  # off the driver (in an All)
        except DeadlineExceeded:
            return "struck"

    i = interp([wf])
    run = i.start(wf)
    assert entered.wait(PATIENCE)
    clock.advance(6)
    assert i.result(run, timeout=PATIENCE) == "struck"
    release.set()


def test_a_child_inherits_its_parents_earlier_deadline(interp: Make, clock: FakeClock,
                                                       reach: Any) -> None:
    def child() -> Any:
        yield Deadline(3600)  # its own is later: the parent's 10 s hold
        try:
            yield Sleep(600)
        except DeadlineExceeded:
            return "child struck"

    def parent() -> Any:
        yield Deadline(10)
        return (yield Child(child))

    i = interp([parent, child])
    run = i.start(parent, run_id="p")
    reach(i, "p/1", "sleeping")
    clock.advance(11)
    reach(i, "p/1", "completed")
    assert i.result("p/1", timeout=PATIENCE) == "child struck"
    with pytest.raises(Cancelled):  # the parent's own deadline too (and it let it escape)
        i.result(run, timeout=PATIENCE)


def test_a_parent_whose_deadline_passed_gets_deadline_exceeded_even_if_the_child_ended_first(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    def child() -> Any:
        yield Sleep(600)  # strikes at the inherited deadline, and lets it escape

    def parent() -> Any:
        yield Deadline(10)
        try:
            yield Child(child)
        except DeadlineExceeded:
            return "parent's own deadline"
        except Cancelled:
            return "only the child's"

    i = interp([parent, child])
    run = i.start(parent, run_id="p")
    reach(i, "p/1", "sleeping")
    clock.advance(11)
    assert i.result(run, timeout=PATIENCE) == "parent's own deadline"


def test_a_child_given_the_deadline_strikes_on_its_own_and_is_not_cancelled_again(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    # The child got its parent's deadline: it strikes there, and its handler runs to the end.
    # A cancel from the parent's strike as well would interrupt that handler, or not,
    # depending on which process got there first.
    def stubborn() -> Any:
        try:
            yield Wait("never")
        except DeadlineExceeded:  # its own (inherited) deadline: it carries on regardless
            try:
                return (yield Wait("go on"))
            except Cancelled:
                return "cancelled by the parent"

    def parent() -> Any:
        yield Deadline(10)
        try:
            yield Child(stubborn)
        except DeadlineExceeded:
            return "parent struck"

    i = interp([parent, stubborn])
    run = i.start(parent, run_id="p")
    reach(i, "p/1", "waiting")
    clock.advance(11)
    assert i.result(run, timeout=PATIENCE) == "parent struck"
    reach(i, "p/1", "waiting")
    assert i.status("p/1").waiting_for == "go on"
    i.deliver("p/1", "go on", "its own way")
    assert i.result("p/1", timeout=PATIENCE) == "its own way"


def test_a_deadline_alone_holds_no_thread(interp: Make, reach: Any) -> None:
    i = interp([sleeps_past])
    i.start(sleeps_past, 3600, 7200, run_id="r0")
    reach(i, "r0", "sleeping")
    before = threading.active_count()
    for k in range(1, 30):
        reach(i, i.start(sleeps_past, 3600, 7200, run_id=f"r{k}"), "sleeping")
    assert threading.active_count() <= before + 1
