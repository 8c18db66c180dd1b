"""``Any``: the first of several commands to finish wins, deterministically on replay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any as AnyType

import pytest

from replaygen import (
    Any, Cancelled, Child, ChildFailed, Do, Interpreter, Sleep, StepFailed, UsageError, Wait,
    WaitTimeout,
)
from replaygen.testing import FakeClock

from .conftest import PATIENCE

Make = Callable[..., Interpreter]


def approval() -> AnyType:
    """The manager's answer, or an escalation after a day, whichever comes first."""
    index, value = yield Any(Wait("approved"), Sleep(86400))
    after = yield Wait("after")
    return [index, value, after]


def test_a_signal_that_comes_first_wins(interp: Make, reach: AnyType) -> None:
    i = interp([approval])
    run = i.start(approval)
    reach(i, run, "waiting")
    i.deliver(run, "approved", {"by": "ann"})
    reach(i, run, "waiting")  # now at Wait("after")
    i.deliver(run, "after", 1)
    assert i.result(run, timeout=PATIENCE) == [0, {"by": "ann"}, 1]


def test_a_sleep_that_ends_first_wins_and_the_signal_stays_queued(
        interp: Make, clock: FakeClock, reach: AnyType, eventually: AnyType) -> None:
    def wf() -> AnyType:
        index, _ = yield Any(Wait("approved"), Sleep(60))
        late = yield Wait("approved")  # the signal the Any did not take
        return [index, late]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    clock.advance(61)
    eventually(lambda: "woke" in [e.kind for e in i._store.journal(run)], "the sleep to win")  # noqa: SLF001
    i.deliver(run, "approved", "late")
    assert i.result(run, timeout=PATIENCE) == [1, "late"]


def test_the_winner_replays_identically_after_a_restart(
        interp: Make, restart: AnyType, clock: FakeClock, reach: AnyType,
        eventually: AnyType) -> None:
    i = interp([approval])
    run = i.start(approval)
    reach(i, run, "waiting")
    clock.advance(86401)  # the sleep wins
    eventually(lambda: "woke" in [e.kind for e in i._store.journal(run)], "the sleep to win")  # noqa: SLF001
    again = restart(i, [approval])
    again.deliver(run, "approved", "too late for the Any")  # queued, not taken on replay
    again.deliver(run, "after", 2)
    assert again.result(run, timeout=PATIENCE) == [1, None, 2]


def test_a_steps_result_wins_and_a_losing_steps_result_is_journaled_not_returned(
        interp: Make, gate: AnyType, eventually: AnyType) -> None:
    slow_may_end = gate()

    def slow() -> str:
        slow_may_end.wait(PATIENCE)
        return "slow"

    def wf() -> AnyType:
        return (yield Any(Do("slow", slow), Do("fast", lambda: "fast")))

    i = interp([wf])
    run = i.start(wf)
    assert i.result(run, timeout=PATIENCE) == [1, "fast"]  # (a tuple, stored as JSON)
    slow_may_end.set()
    journal = eventually(lambda: [e for e in i._store.journal(run) if e.name == "slow"],  # noqa: SLF001
                         "the losing step's result")
    assert [(e.kind, e.value) for e in journal] == [("do", '"slow"')]


def test_the_winner_is_returned_as_a_tuple_of_index_and_value(interp: Make) -> None:
    def wf() -> AnyType:
        pair = yield Any(Do("only", lambda: [1, 2]))
        return [type(pair).__name__, pair]

    i = interp([wf])
    assert i.result(i.start(wf), timeout=PATIENCE) == ["tuple", [0, [1, 2]]]


def test_a_winner_that_failed_raises_its_error(interp: Make) -> None:
    def wf() -> AnyType:
        try:
            yield Any(Do("boom", lambda: 1 / 0), Sleep(3600))
        except StepFailed as exc:
            return exc.step

    i = interp([wf])
    assert i.result(i.start(wf), timeout=PATIENCE) == "boom"


def test_a_wait_timeout_can_win(interp: Make, clock: FakeClock, reach: AnyType) -> None:
    def wf() -> AnyType:
        try:
            yield Any(Wait("a", timeout=10), Wait("b"))
        except WaitTimeout:
            return "timed out"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    clock.advance(11)
    assert i.result(run, timeout=PATIENCE) == "timed out"


def test_a_losing_child_is_cancelled(interp: Make, reach: AnyType) -> None:
    def child() -> AnyType:
        try:
            return (yield Wait("never"))
        except Cancelled:
            return "lost"

    def wf() -> AnyType:
        return (yield Any(Child(child), Wait("stop")))

    i = interp([child, wf])
    run = i.start(wf, run_id="p")
    reach(i, "p/0", "waiting")
    i.deliver(run, "stop", "now")
    assert i.result(run, timeout=PATIENCE) == [1, "now"]
    assert i.result("p/0", timeout=PATIENCE) == "lost"


def test_a_child_can_win(interp: Make) -> None:
    def child() -> AnyType:
        return (yield Do("work", lambda: 5))

    def wf() -> AnyType:
        return (yield Any(Wait("never"), Child(child)))

    i = interp([child, wf])
    assert i.result(i.start(wf), timeout=PATIENCE) == [1, 5]


def test_a_failed_child_that_wins_raises_child_failed(interp: Make) -> None:
    def child() -> AnyType:
        yield Do("boom", lambda: 1 / 0)

    def wf() -> AnyType:
        try:
            yield Any(Child(child), Sleep(3600))
        except ChildFailed as exc:
            return exc.run_id

    i = interp([child, wf])
    assert i.result(i.start(wf, run_id="p"), timeout=PATIENCE) == "p/0"


def test_a_cancel_reaches_a_run_waiting_in_any(interp: Make, reach: AnyType) -> None:
    def wf() -> AnyType:
        try:
            yield Any(Wait("a"), Sleep(3600))
        except Cancelled:
            return "cancelled"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.cancel(run)
    assert i.result(run, timeout=PATIENCE) == "cancelled"


def test_any_needs_a_command_and_takes_only_those_that_wait() -> None:
    with pytest.raises(UsageError):
        Any()
    with pytest.raises(UsageError, match="Do, Sleep, Wait and Child"):
        Any(Wait("a"), 42)  # type: ignore[arg-type]
