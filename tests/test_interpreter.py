"""The interpreter against MemoryStore: SPEC 3-5 and 7, and the edge cases of SPEC 9 that
hold without a durable store.

A restart is a new Interpreter over the same MemoryStore after ``shutdown()``,
followed by ``recover()`` (the ``restart`` fixture). Time moves only through
the FakeClock; ``reach`` and ``eventually`` poll for background threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from replaygen import (
    All, Cancelled, Client, Do, Event, Interpreter, MemoryStore, ReplaygenError, Retry, RunFinished,
    RunNotFound, Sleep, StepFailed, StoreUnavailable, Version, Wait, WaitTimeout, WorkflowFailed,
    current_step,
)
from replaygen.store import Claim
from replaygen.testing import FakeClock

from .conftest import EPOCH, PATIENCE

Make = Callable[..., Interpreter]


def echo(value: Any) -> Any:
    return value


def counter() -> tuple[list[Any], Callable[..., Any]]:
    """A step function that records every call and returns its argument."""
    calls: list[Any] = []

    def step(value: Any = None) -> Any:
        calls.append(value)
        return value

    return calls, step


def waiting_for(i: Interpreter, run: str, signal: str) -> Callable[[], bool]:
    """True once the run waits for ``signal`` (and so has taken every signal before it)."""
    return lambda: i.status(run).waiting_for == signal


def damaged(row: Any, **changes: Any) -> Any:
    """A copy of journal row ``row`` with some columns changed."""
    if hasattr(row, "_replace"):
        return row._replace(**changes)
    return dataclasses.replace(row, **changes)


def parked_for_backoff(i: Interpreter, run: str, clock: FakeClock) -> Callable[[], bool]:
    """True once a failed try is journaled and the run waits for its backoff deadline."""

    def check() -> bool:
        wake_at = i.status(run).wake_at
        return wake_at is not None and wake_at > clock.now()

    return check


# ==== registration ============================================================================


def test_a_function_that_is_not_a_generator_function_is_refused_at_once(interp: Make) -> None:
    def plain(order: Any) -> str:
        return "done"

    with pytest.raises(ReplaygenError, match="not a generator function"):
        interp([plain])


def test_an_async_function_is_refused_as_a_workflow(interp: Make) -> None:
    async def coroutine() -> None:
        pass

    with pytest.raises(ReplaygenError, match="not a generator function"):
        interp({"coroutine": coroutine})


def test_two_workflows_registered_under_one_name_are_refused_naming_both(interp: Make) -> None:
    def first() -> Any:
        yield Sleep(1)

    def second() -> Any:
        yield Sleep(2)

    first.__module__, first.__qualname__ = "orders", "checkout"
    second.__module__, second.__qualname__ = "billing", "checkout"
    with pytest.raises(ReplaygenError) as refused:
        interp([first, second])
    assert "orders.checkout" in str(refused.value)
    assert "billing.checkout" in str(refused.value)


def test_a_workflow_in_a_list_is_named_by_its_qualname(interp: Make) -> None:
    def checkout() -> Any:
        return (yield Do("a", echo, 1))

    i = interp([checkout])
    run = i.start(checkout)
    assert i.status(run).workflow == checkout.__qualname__


def test_a_dict_chooses_the_names_the_store_keeps(interp: Make) -> None:
    def checkout() -> Any:
        return (yield Do("a", echo, 1))

    i = interp({"orders.checkout.v1": checkout})
    run = i.start(checkout)
    assert i.status(run).workflow == "orders.checkout.v1"
    assert i.result(run, timeout=PATIENCE) == 1


def test_a_workflow_can_be_started_by_its_registered_name(interp: Make) -> None:
    def checkout(order: Any) -> Any:
        return (yield Do("a", echo, order))

    i = interp({"checkout": checkout})
    assert i.result(i.start("checkout", 7), timeout=PATIENCE) == 7


@pytest.mark.parametrize("name", ["", "a\x00b", "w" * 256])
def test_an_unusable_workflow_name_is_refused_at_registration(interp: Make, name: str) -> None:
    def checkout() -> Any:
        yield Sleep(1)

    with pytest.raises(ReplaygenError, match="workflow name"):
        interp({name: checkout})


# ==== start ===================================================================================


def test_start_of_an_unregistered_workflow_lists_the_registered_names(interp: Make,
                                                                     store: MemoryStore) -> None:
    def checkout() -> Any:
        yield Sleep(1)

    def refund() -> Any:
        yield Sleep(1)

    def stranger() -> Any:
        yield Sleep(1)

    i = interp({"checkout": checkout, "refund": refund})
    for unknown in (stranger, "stranger"):
        with pytest.raises(ReplaygenError) as refused:
            i.start(unknown, run_id="r")
        assert "checkout" in str(refused.value) and "refund" in str(refused.value)
    assert store.runs() == []


def test_start_without_a_run_id_makes_a_fresh_one_each_time(interp: Make) -> None:
    def wf() -> Any:
        yield Wait("never")

    i = interp([wf])
    assert i.start(wf) != i.start(wf)


def test_a_run_is_durable_before_start_returns(interp: Make, store: MemoryStore) -> None:
    def wf() -> Any:
        yield Wait("never")

    run = interp([wf]).start(wf, run_id="order-1")
    assert store.get(run) is not None


def test_starting_an_existing_run_with_the_same_arguments_returns_its_id_and_runs_nothing_new(
        interp: Make) -> None:
    calls, step = counter()

    def wf(order: Any) -> Any:
        return (yield Do("charge", step, order))

    i = interp([wf])
    assert i.start(wf, {"id": 1, "sku": "x"}, run_id="order-1") == "order-1"
    assert i.result("order-1", timeout=PATIENCE) == {"id": 1, "sku": "x"}
    assert i.start(wf, {"sku": "x", "id": 1}, run_id="order-1") == "order-1"
    assert i.result("order-1", timeout=PATIENCE) == {"id": 1, "sku": "x"}
    assert len(calls) == 1


def test_starting_an_existing_run_with_other_arguments_names_the_run_and_both_calls(
        interp: Make) -> None:
    def wf(order: Any) -> Any:
        yield Wait("never")

    i = interp([wf])
    i.start(wf, "first-order", run_id="order-1")
    with pytest.raises(ReplaygenError) as refused:
        i.start(wf, "second-order", run_id="order-1")
    message = str(refused.value)
    assert "order-1" in message and "first-order" in message and "second-order" in message
    # Users see the calls as they wrote them, not the engine's stored form (its nonce).
    assert "wf('first-order')" in message and "wf('second-order')" in message
    assert "nonce" not in message


def test_starting_an_existing_run_as_another_workflow_names_both_workflows(interp: Make) -> None:
    def checkout(order: Any) -> Any:
        yield Wait("never")

    def refund(order: Any) -> Any:
        yield Wait("never")

    i = interp({"checkout": checkout, "refund": refund})
    i.start(checkout, 1, run_id="order-1")
    with pytest.raises(ReplaygenError) as refused:
        i.start(refund, 1, run_id="order-1")
    assert "checkout" in str(refused.value) and "refund" in str(refused.value)


def test_starting_an_existing_run_with_true_instead_of_1_is_other_arguments(interp: Make) -> None:
    def wf(flag: Any) -> Any:
        yield Wait("never")

    i = interp([wf])
    i.start(wf, 1, run_id="order-1")
    with pytest.raises(ReplaygenError):
        i.start(wf, True, run_id="order-1")


@pytest.mark.parametrize("args", [(float("nan"),), ({1: "int key"},), (object(),), ({"s": {1}},)])
def test_arguments_that_cannot_be_encoded_raise_from_start_and_store_nothing(
        interp: Make, store: MemoryStore, args: tuple[Any, ...]) -> None:
    def wf(value: Any) -> Any:
        yield Sleep(1)

    i = interp([wf])
    with pytest.raises(ReplaygenError, match="arguments"):
        i.start(wf, *args, run_id="order-1")
    assert store.runs() == []
    with pytest.raises(RunNotFound):
        i.status("order-1")


def test_arguments_over_the_payload_limit_raise_from_start_and_store_nothing(
        interp: Make, store: MemoryStore) -> None:
    def wf(blob: str) -> Any:
        yield Sleep(1)

    i = interp([wf], max_payload=1000)
    with pytest.raises(ReplaygenError, match="1000"):
        i.start(wf, "x" * 2000)
    assert store.runs() == []


def test_start_after_shutdown_raises_saying_the_interpreter_is_shut_down(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    i = interp([wf])
    i.shutdown()
    with pytest.raises(ReplaygenError, match="shut down"):
        i.start(wf)


# ==== result, run and status ==================================================================


def test_run_starts_a_workflow_and_returns_its_result(interp: Make) -> None:
    def wf(a: int, b: int) -> Any:
        total = yield Do("add", lambda: a + b)
        return {"total": total}

    assert interp([wf]).run(wf, 2, b=3) == {"total": 5}


def test_result_of_a_failed_run_raises_workflow_failed_with_the_error(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(0)
        raise KeyError("sku")

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(WorkflowFailed) as failed:
        i.result(run, timeout=PATIENCE)
    assert failed.value.error_type == "KeyError"
    assert run in str(failed.value) and "sku" in str(failed.value)


def test_result_of_a_cancelled_run_raises_cancelled(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("never")

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.cancel(run)
    with pytest.raises(Cancelled):
        i.result(run, timeout=PATIENCE)


def test_result_timeout_is_both_a_replaygen_error_and_a_timeout_error(interp: Make) -> None:
    def wf() -> Any:
        yield Wait("never")

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(ReplaygenError) as timed_out:
        i.result(run, timeout=0.05)
    assert isinstance(timed_out.value, TimeoutError)


def test_result_of_an_unknown_run_names_it_and_is_not_a_timeout(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(ReplaygenError, match="no-such-run") as unknown:
        interp([wf]).result("no-such-run", timeout=0.05)
    assert not isinstance(unknown.value, TimeoutError)


def test_status_of_an_unknown_run_raises_naming_it(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(RunNotFound, match="no-such-run"):
        interp([wf]).status("no-such-run")


def test_status_is_pending_until_a_worker_picks_the_run_up(interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()

    def busy() -> None:
        entered.set()
        release.wait(PATIENCE)

    def wf() -> Any:
        yield Do("busy", busy)

    i = interp([wf], concurrency=1)
    i.start(wf)
    assert entered.wait(PATIENCE)
    second = i.start(wf)
    assert i.status(second).state == "pending"
    release.set()
    assert i.result(second, timeout=PATIENCE) is None


def test_status_is_running_while_a_step_runs(interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()

    def busy() -> None:
        entered.set()
        release.wait(PATIENCE)

    def wf() -> Any:
        yield Do("busy", busy)

    i = interp([wf])
    run = i.start(wf)
    assert entered.wait(PATIENCE)
    assert i.status(run).state == "running"


def test_status_is_sleeping_with_the_deadline_during_a_sleep(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Sleep(3600)

    i = interp([wf])
    run = i.start(wf)
    status = reach(i, run, "sleeping")
    assert status.wake_at == EPOCH + 3600
    assert status.error is None


def test_status_is_waiting_naming_the_signal_during_a_wait(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("approved")

    i = interp([wf])
    run = i.start(wf)
    assert reach(i, run, "waiting").waiting_for == "approved"


def test_status_is_completed_without_an_error(interp: Make) -> None:
    def wf() -> Any:
        return (yield Do("a", echo, 1))

    i = interp([wf])
    run = i.start(wf)
    i.result(run, timeout=PATIENCE)
    assert (i.status(run).state, i.status(run).error) == ("completed", None)


def test_status_of_a_failed_run_says_why(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(0)
        raise ValueError("bad order")

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(WorkflowFailed):
        i.result(run, timeout=PATIENCE)
    status = i.status(run)
    assert status.state == "failed"
    assert "ValueError" in status.error and "bad order" in status.error


def test_result_and_status_work_from_another_interpreter_over_the_store(interp: Make,
                                                                        reach: Any) -> None:
    def wf() -> Any:
        return (yield Wait("go"))

    worker, client = interp([wf]), interp([wf])
    run = worker.start(wf)
    reach(client, run, "waiting")
    client.deliver(run, "go", "payload")
    assert client.result(run, timeout=PATIENCE) == "payload"


def test_runs_proceed_at_once(interp: Make) -> None:
    meet = threading.Barrier(3, timeout=PATIENCE)

    def rendezvous() -> str:
        meet.wait()
        return "met"

    def wf() -> Any:
        return (yield Do("meet", rendezvous))

    i = interp([wf])
    runs = [i.start(wf) for _ in range(3)]
    assert [i.result(run, timeout=PATIENCE) for run in runs] == ["met"] * 3


def test_a_slow_step_does_not_hold_up_other_runs(interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()

    def slow() -> str:
        entered.set()
        release.wait(PATIENCE)
        return "slow"

    def stuck() -> Any:
        return (yield Do("slow", slow))

    def quick(n: int) -> Any:
        for k in range(n):
            yield Do(f"step {k}", echo, k)
        return "quick"

    i = interp([stuck, quick])
    blocked = i.start(stuck)
    assert entered.wait(PATIENCE)
    assert i.result(i.start(quick, 20), timeout=PATIENCE) == "quick"  # while `slow` still runs
    assert i.status(blocked).state == "running"
    release.set()
    assert i.result(blocked, timeout=PATIENCE) == "slow"


def test_a_step_that_proved_slow_runs_off_the_driver_thread(interp: Make) -> None:
    threads: list[str] = []

    def slow() -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.03)

    def quick() -> None:
        threads.append(threading.current_thread().name)

    def wf() -> Any:
        yield Do("quick", quick)
        yield Do("slow", slow)
        yield Do("slow again", slow)
        yield Do("quick again", quick)

    interp([wf]).run(wf)
    # Quick steps run inline on the driver; once `slow` has taken 30 ms, it runs on the pool.
    assert threads[0].startswith("replaygen-driver"), threads
    assert threads[2].startswith("replaygen-step"), threads
    assert threads[3].startswith("replaygen-driver"), threads


def test_a_cancelled_run_stops_waiting_for_a_slot_and_the_slot_goes_to_the_next(
        interp: Make, gate: Any, eventually: Any) -> None:
    entered, release = gate(), gate()
    calls: list[str] = []

    def busy() -> None:
        entered.set()
        release.wait(PATIENCE)

    def work(name: str) -> str:
        calls.append(name)
        return name

    def holder() -> Any:
        yield Do("busy", busy)

    def wf(name: str) -> Any:
        return (yield Do("work", work, name))

    started: set[str | None] = set()
    i = interp([holder, wf], concurrency=1,
               observer=lambda e: started.add(e.run_id) if e.kind == "run_started" else None)
    first = i.start(holder)
    assert entered.wait(PATIENCE)
    b, c = i.start(wf, "b"), i.start(wf, "c")
    # Once a run has started, the turn that started it ends with its step queued for the slot.
    eventually(lambda: {b, c} <= started, "both runs to queue for the slot")
    i.cancel(b)
    with pytest.raises(Cancelled):  # at once, not when the slot frees
        i.result(b, timeout=PATIENCE)
    assert i.status(c).state == "pending"
    release.set()
    assert i.result(c, timeout=PATIENCE) == "c"
    assert i.result(first, timeout=PATIENCE) is None
    assert calls == ["c"]


def test_a_step_may_start_a_run_and_wait_for_its_result(interp: Make) -> None:
    engine: list[Interpreter] = []

    def child(x: int) -> Any:
        return (yield Do("double", echo, 2 * x))

    def spawn(x: int) -> Any:
        return engine[0].run(child, x)

    def parent() -> Any:
        return (yield Do("spawn", spawn, 21))

    engine.append(interp([parent, child]))
    assert engine[0].run(parent) == 42


class CountingStore(MemoryStore):
    """A MemoryStore that takes 2 ms per commit (a disk's fsync) and records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def commit(self, writes: Any) -> list[bool]:
        time.sleep(0.002)
        self.batches.append(len(writes))
        return super().commit(writes)


def test_writes_of_concurrent_runs_share_commits(interp: Make) -> None:
    store = CountingStore()

    def wf() -> Any:
        for k in range(5):
            yield Do(f"step {k}", echo, k)
        return "done"

    i = interp([wf], store=store)
    runs = [i.start(wf) for _ in range(40)]
    assert [i.result(run, timeout=PATIENCE) for run in runs] == ["done"] * 40
    writes = sum(store.batches)  # 40 starts, 40 x 5 steps, 40 "running", 40 finishes
    assert writes == 40 * 8
    assert len(store.batches) < writes / 2, store.batches  # one by one, it would be 320


# ==== replay after a restart ==================================================================


def test_completed_steps_are_replayed_not_re_executed_after_a_restart(
        interp: Make, restart: Any, reach: Any) -> None:
    calls, step = counter()

    def wf() -> Any:
        txn = yield Do("charge", step, "txn_1")
        yield Wait("shipped")
        receipt = yield Do("receipt", step, "receipt_1")
        return [txn, receipt]

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    second = restart(first, [wf])
    second.deliver(run, "shipped")
    assert second.result(run, timeout=PATIENCE) == ["txn_1", "receipt_1"]
    assert calls == ["txn_1", "receipt_1"]


def test_recover_returns_the_ids_of_the_runs_it_resumed(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("go")

    first = interp([wf])
    runs = {first.start(wf) for _ in range(3)}
    for run in runs:
        reach(first, run, "waiting")
    first.shutdown()
    assert set(interp([wf]).recover()) == runs


@pytest.mark.counts_replays
def test_a_tuple_result_is_a_list_on_the_first_run_and_on_replay(
        interp: Make, restart: Any, reach: Any) -> None:
    seen: list[Any] = []

    def wf() -> Any:
        pair = yield Do("pair", lambda: (1, ("nested", 2)))
        seen.append(pair)
        yield Wait("go")
        return pair

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    second = restart(first, [wf])
    second.deliver(run, "go")
    assert second.result(run, timeout=PATIENCE) == [1, ["nested", 2]]
    assert seen == [[1, ["nested", 2]], [1, ["nested", 2]]]


def test_a_workflows_tuple_return_value_comes_back_as_a_list(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(0)
        return ("a", 1)

    assert interp([wf]).run(wf) == ["a", 1]


def test_a_sleep_ends_when_the_clock_reaches_its_deadline(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        yield Sleep(86400)
        return "woke"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "sleeping")
    clock.advance(86400)
    assert i.result(run, timeout=PATIENCE) == "woke"


def test_a_sleeps_deadline_is_journaled_so_a_restart_does_not_restart_the_timer(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        yield Sleep(100)
        return "woke"

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "sleeping")
    clock.advance(60)
    second = restart(first, [wf])
    assert reach(second, run, "sleeping").wake_at == EPOCH + 100
    clock.advance(40)
    assert second.result(run, timeout=PATIENCE) == "woke"


def test_a_sleep_whose_deadline_passed_while_no_worker_ran_ends_on_recovery(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        yield Sleep(100)
        return "woke"

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "sleeping")
    first.shutdown()
    clock.advance(500)
    second = interp([wf])
    second.recover()
    assert second.result(run, timeout=PATIENCE) == "woke"


def test_an_interpreter_used_as_a_context_manager_parks_its_runs_for_the_next_one(
        interp: Make, store: MemoryStore, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        return (yield Wait("go"))

    with Interpreter(store, [wf], clock=clock) as first:
        run = first.start(wf)
        reach(first, run, "waiting")
    with pytest.raises(ReplaygenError, match="shut down"):
        first.start(wf)
    second = interp([wf])
    assert run in second.recover()
    second.deliver(run, "go", 1)
    assert second.result(run, timeout=PATIENCE) == 1


def test_shutdown_does_not_close_the_store(interp: Make) -> None:
    class ClosingStore(MemoryStore):
        closed = False

        def close(self) -> None:
            self.closed = True

    def wf() -> Any:
        yield Sleep(1)

    store = ClosingStore()
    interp([wf], store=store).shutdown()
    assert not store.closed


def test_shutdown_lets_a_running_step_finish_and_journals_it(interp: Make, restart: Any) -> None:
    calls: list[int] = []
    entered, shutting_down = threading.Event(), threading.Event()

    def step() -> str:
        calls.append(1)
        entered.set()
        shutting_down.wait(PATIENCE)
        return "finished"

    def wf() -> Any:
        value = yield Do("slow", step)
        yield Wait("go")
        return value

    def observe(event: Event) -> None:
        if event.kind == "shutdown":
            shutting_down.set()

    first = interp([wf], observer=observe)
    run = first.start(wf)
    assert entered.wait(PATIENCE)
    second = restart(first, [wf], timeout=PATIENCE)
    second.deliver(run, "go")
    assert second.result(run, timeout=PATIENCE) == "finished"
    assert calls == [1]


def test_recover_after_shutdown_raises(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    i = interp([wf])
    i.shutdown()
    with pytest.raises(ReplaygenError, match="shut down"):
        i.recover()


def test_commands_yielded_while_the_engine_closes_a_workflow_are_never_executed(
        interp: Make, reach: Any) -> None:
    calls, cleanup = counter()

    def wf() -> Any:
        try:
            yield Wait("go")
        finally:
            yield Do("cleanup", cleanup, "ran")

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.shutdown()
    assert calls == []
    assert i.status(run).state == "waiting"


# ==== non-determinism =========================================================================


def charge_then_wait() -> Any:
    yield Do("charge", echo, "txn")
    return (yield Wait("go"))


def refund_then_wait() -> Any:
    yield Do("refund", echo, "txn")
    return (yield Wait("go"))


def test_a_mismatch_on_replay_blocks_the_run_naming_run_position_and_both_sides(
        interp: Make, restart: Any, reach: Any) -> None:
    first = interp({"checkout": charge_then_wait})
    run = first.start("checkout", run_id="order-7")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": refund_then_wait})
    status = reach(second, run, "blocked")
    assert "NonDeterminismError" in status.error
    assert "order-7" in status.error and "position 0" in status.error
    assert "'charge'" in status.error and "'refund'" in status.error


def test_a_mismatch_of_command_kind_blocks_the_run(interp: Make, restart: Any, reach: Any) -> None:
    def sleeps_instead() -> Any:
        yield Sleep(1)
        return (yield Wait("go"))

    first = interp({"checkout": charge_then_wait})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": sleeps_instead})
    assert "position 0" in reach(second, run, "blocked").error


def test_a_blocked_run_is_resumed_by_recover_with_fixed_code(
        interp: Make, restart: Any, reach: Any) -> None:
    calls, step = counter()

    def fixed() -> Any:
        yield Do("charge", step, "txn")
        return (yield Wait("go"))

    first = interp({"checkout": charge_then_wait})
    run = first.start("checkout")
    reach(first, run, "waiting")
    broken = restart(first, {"checkout": refund_then_wait})
    reach(broken, run, "blocked")
    mended = restart(broken, {"checkout": fixed})
    reach(mended, run, "waiting")
    mended.deliver(run, "go", "shipped")
    assert mended.result(run, timeout=PATIENCE) == "shipped"
    assert calls == []


def test_result_keeps_waiting_while_a_run_is_blocked(interp: Make, restart: Any,
                                                     reach: Any) -> None:
    first = interp({"checkout": charge_then_wait})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": refund_then_wait})
    reach(second, run, "blocked")
    with pytest.raises(TimeoutError):
        second.result(run, timeout=0.05)


def test_returning_with_unconsumed_journal_entries_blocks_the_run(
        interp: Make, restart: Any, reach: Any) -> None:
    def two_steps() -> Any:
        yield Do("a", echo, 1)
        yield Do("b", echo, 2)
        return (yield Wait("go"))

    def one_step() -> Any:
        yield Do("a", echo, 1)
        return "done early"

    first = interp({"checkout": two_steps})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": one_step})
    status = reach(second, run, "blocked")
    assert "NonDeterminismError" in status.error and "'b'" in status.error


def test_raising_with_unconsumed_journal_entries_blocks_the_run(
        interp: Make, restart: Any, reach: Any) -> None:
    def longer() -> Any:
        yield Do("a", echo, 1)
        yield Do("b", echo, 2)
        return (yield Wait("go"))

    def raises_after_a() -> Any:
        yield Do("a", echo, 1)
        raise RuntimeError("new validation")

    second = interp({"longer": longer})
    run = second.start("longer")
    reach(second, run, "waiting")
    third = restart(second, {"longer": raises_after_a})
    assert "NonDeterminismError" in reach(third, run, "blocked").error


def test_a_non_deterministic_run_does_not_stop_its_neighbours(
        interp: Make, restart: Any, reach: Any) -> None:
    def other() -> Any:
        return (yield Wait("go"))

    first = interp({"checkout": charge_then_wait, "other": other})
    broken = first.start("checkout")
    healthy = first.start("other")
    reach(first, broken, "waiting")
    reach(first, healthy, "waiting")
    second = restart(first, {"checkout": refund_then_wait, "other": other})
    reach(second, broken, "blocked")
    second.deliver(healthy, "go", "fine")
    assert second.result(healthy, timeout=PATIENCE) == "fine"


# ==== Version =================================================================================


def test_a_new_run_gets_the_versions_max(interp: Make) -> None:
    def wf() -> Any:
        return (yield Version("fee", 1, 3))

    assert interp([wf]).run(wf) == 3


def test_a_run_older_than_a_version_call_gets_its_min(interp: Make, restart: Any,
                                                      reach: Any) -> None:
    def before() -> Any:
        yield Do("charge", echo, 10)
        return (yield Wait("go"))

    def after() -> Any:
        fee = yield Version("fee", 1, 2)
        yield Do("charge", echo, 10)
        yield Wait("go")
        return fee

    first = interp({"checkout": before})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": after})
    reach(second, run, "waiting")
    second.deliver(run, "go")
    assert second.result(run, timeout=PATIENCE) == 1


def test_adding_a_version_call_keeps_old_runs_on_the_old_branch(
        interp: Make, restart: Any, reach: Any) -> None:
    def before() -> Any:
        yield Do("charge", echo, 10)
        yield Wait("go")
        return (yield Do("receipt", echo, "old receipt"))

    def after() -> Any:
        if (yield Version("receipt format", 1, 2)) == 1:
            yield Do("charge", echo, 10)
            yield Wait("go")
            return (yield Do("receipt", echo, "old receipt"))
        yield Do("charge and mail", echo, 10)
        return "new receipt"

    first = interp({"checkout": before})
    old = first.start("checkout")
    reach(first, old, "waiting")
    second = restart(first, {"checkout": after})
    new = second.start("checkout")
    second.deliver(old, "go")
    assert second.result(old, timeout=PATIENCE) == "old receipt"
    assert second.result(new, timeout=PATIENCE) == "new receipt"


def test_a_version_is_recorded_and_stays_stable_when_the_call_moves(
        interp: Make, restart: Any, reach: Any) -> None:
    def first_code() -> Any:
        fee = yield Version("fee", 1, 2)
        yield Do("a", echo, 1)
        yield Do("b", echo, 2)
        yield Wait("go")
        return fee

    def moved() -> Any:
        # Here the journal already holds entries past this point: without the recorded
        # marker, the run would count as older than the change and get min.
        yield Do("a", echo, 1)
        fee = yield Version("fee", 1, 2)
        yield Do("b", echo, 2)
        yield Wait("go")
        return fee

    first = interp({"checkout": first_code})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": moved})
    reach(second, run, "waiting")
    second.deliver(run, "go")
    assert second.result(run, timeout=PATIENCE) == 2


def test_an_old_runs_min_is_recorded_and_stays_stable_across_restarts(
        interp: Make, restart: Any, reach: Any, eventually: Any) -> None:
    def before() -> Any:
        yield Do("a", echo, 1)
        yield Wait("one")
        return (yield Wait("two"))

    def after() -> Any:
        yield Do("a", echo, 1)
        fee = yield Version("fee", 1, 2)
        yield Wait("one")
        yield Wait("two")
        return fee

    first = interp({"checkout": before})
    run = first.start("checkout")
    reach(first, run, "waiting")
    first.deliver(run, "one")
    eventually(waiting_for(first, run, "two"), "the run to take 'one'")
    first.shutdown()
    # "one" is consumed and journaled before "two" is awaited, so the run predates the change.
    second = interp({"checkout": after})
    second.recover()
    reach(second, run, "waiting")
    third = restart(second, {"checkout": after})
    reach(third, run, "waiting")
    third.deliver(run, "two")
    assert third.result(run, timeout=PATIENCE) == 1


def test_a_recorded_version_outside_the_codes_range_blocks_the_run(
        interp: Make, restart: Any, reach: Any) -> None:
    def v1() -> Any:
        fee = yield Version("fee", 1, 1)
        yield Wait("go")
        return fee

    def v3() -> Any:
        fee = yield Version("fee", 2, 3)
        yield Wait("go")
        return fee

    first = interp({"checkout": v1})
    run = first.start("checkout")
    reach(first, run, "waiting")
    second = restart(first, {"checkout": v3})
    status = reach(second, run, "blocked")
    assert "'fee'" in status.error and "2..3" in status.error


# ==== step failures and encoding ==============================================================


def test_a_failed_step_raises_step_failed_naming_step_type_and_message(interp: Make) -> None:
    def decline(order: Any) -> None:
        raise ValueError("card declined")

    def wf() -> Any:
        try:
            yield Do("charge", decline, 1)
        except StepFailed as failure:
            return [str(failure), failure.step, failure.error_type, failure.error_message]

    message, step, error_type, error_message = interp([wf]).run(wf)
    assert (step, error_type, error_message) == ("charge", "ValueError", "card declined")
    assert "charge" in message and "ValueError" in message and "card declined" in message


@pytest.mark.counts_replays
def test_a_step_failure_is_the_same_exception_live_and_replayed(
        interp: Make, restart: Any, reach: Any, eventually: Any) -> None:
    seen: list[tuple[str, str, str, str]] = []
    calls: list[int] = []

    def decline() -> None:
        calls.append(1)
        raise ValueError("card declined")

    def saga() -> Any:
        try:
            yield Do("charge", decline)
        except StepFailed as failure:
            seen.append((type(failure).__name__, str(failure), failure.error_type,
                         failure.error_message))
            yield Do("compensate", echo, "refunded")
        return (yield Wait("go"))

    first = interp([saga])
    run = first.start(saga)
    reach(first, run, "waiting")
    restart(first, [saga])
    eventually(lambda: len(seen) == 2, "the replay")  # the state was "waiting" all along
    assert seen[0] == seen[1]
    assert calls == [1]


def test_an_uncaught_step_failure_fails_the_run(interp: Make) -> None:
    def decline() -> None:
        raise ValueError("card declined")

    def wf() -> Any:
        yield Do("charge", decline)

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(WorkflowFailed) as failed:
        i.result(run, timeout=PATIENCE)
    assert failed.value.error_type == "StepFailed"
    assert "card declined" in i.status(run).error


@pytest.mark.parametrize("value, reason", [
    (float("nan"), "NaN"),
    (float("inf"), "infinity"),
    ({1: "one"}, "key"),
    ({"nested": [{2: "two"}]}, "key"),
    (object(), "object"),
    ({"a", "b"}, "set"),
    (b"bytes", "bytes"),
])
def test_an_unencodable_result_fails_the_step_saying_why(interp: Make, value: Any,
                                                         reason: str) -> None:
    def wf() -> Any:
        try:
            yield Do("compute", lambda: value)
        except StepFailed as failure:
            yield Do("after", echo, "the run goes on")
            return [failure.step, str(failure)]

    step, message = interp([wf]).run(wf)
    assert step == "compute"
    assert reason in message


def test_a_result_over_the_payload_limit_fails_the_step_with_size_and_limit(
        interp: Make) -> None:
    def wf() -> Any:
        try:
            yield Do("download", lambda: "x" * 5000)
        except StepFailed as failure:
            return str(failure)

    message = interp([wf], max_payload=1000).run(wf)
    assert "download" in message and "1000" in message and "500" in message


def test_a_workflow_that_raises_fails_and_stores_the_error(interp: Make) -> None:
    def wf() -> Any:
        yield Do("a", echo, 1)
        raise LookupError("no such customer")

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(WorkflowFailed, match="no such customer"):
        i.result(run, timeout=PATIENCE)
    assert i.status(run).state == "failed"


def test_a_step_may_be_an_async_function(interp: Make, restart: Any, reach: Any) -> None:
    calls: list[int] = []

    async def fetch(n: int) -> dict[str, int]:
        calls.append(n)
        await asyncio.sleep(0)
        return {"n": n}

    def wf() -> Any:
        value = yield Do("fetch", fetch, 5)
        yield Wait("go")
        return value

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    second = restart(first, [wf])
    second.deliver(run, "go")
    assert second.result(run, timeout=PATIENCE) == {"n": 5}
    assert calls == [5]


def test_an_async_step_awaiting_what_nothing_else_holds_survives_a_collection(interp: Make) -> None:
    # asyncio's loop holds its tasks weakly. A step awaiting something only it references
    # (a future that never resolves) formed garbage with its task: the collector destroyed it
    # mid-await and ran its cleanup, which gave the step's slot back from whatever thread was
    # allocating, even one holding the slots' lock (a deadlock, seen with 10,000 such runs).
    started, closed = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            closed.set()

    def wf() -> Any:
        yield Do("forever", forever)

    i = interp([wf])
    run = i.start(wf)
    assert started.wait(PATIENCE)
    gc.collect()
    assert not closed.is_set()  # still awaiting, as a sync step that never returns runs on
    assert i.status(run).state == "running"


def test_a_failing_async_step_raises_step_failed(interp: Make) -> None:
    async def fetch() -> None:
        raise ConnectionError("reset")

    def wf() -> Any:
        try:
            yield Do("fetch", fetch)
        except StepFailed as failure:
            return failure.error_type

    assert interp([wf]).run(wf) == "ConnectionError"


# ==== retries =================================================================================


def flaky(failures: int) -> tuple[list[int], Callable[[], str]]:
    """A step that fails ``failures`` times, then succeeds."""
    calls: list[int] = []

    def step() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise ConnectionError(f"try {len(calls)} failed")
        return f"ok after {len(calls)} tries"

    return calls, step


def test_without_retry_a_step_runs_once(interp: Make) -> None:
    calls, step = flaky(1)

    def wf() -> Any:
        yield Do("call", step)

    i = interp([wf])
    with pytest.raises(WorkflowFailed):
        i.result(i.start(wf), timeout=PATIENCE)
    assert calls == [1]


def test_a_retried_step_waits_out_its_backoff_on_the_clock(
        interp: Make, clock: FakeClock, eventually: Any) -> None:
    calls, step = flaky(2)

    def wf() -> Any:
        return (yield Do("call", step, retry=Retry(3, backoff=10, multiplier=2, jitter=0)))

    i = interp([wf])
    run = i.start(wf)
    eventually(parked_for_backoff(i, run, clock), "the first backoff")
    assert i.status(run).wake_at == EPOCH + 10
    assert calls == [1]
    clock.advance(10)
    eventually(parked_for_backoff(i, run, clock), "the second backoff")
    assert i.status(run).wake_at == EPOCH + 10 + 20
    assert calls == [1, 1]
    clock.advance(20)
    assert i.result(run, timeout=PATIENCE) == "ok after 3 tries"


def test_a_step_that_fails_every_attempt_raises_its_last_error(interp: Make) -> None:
    calls, step = flaky(10)

    def wf() -> Any:
        yield Do("call", step, retry=Retry(3, backoff=0))

    i = interp([wf])
    with pytest.raises(WorkflowFailed, match="try 3 failed"):
        i.result(i.start(wf), timeout=PATIENCE)
    assert len(calls) == 3


def test_a_never_retry_exception_is_not_retried(interp: Make) -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        raise ValueError("invalid card number")

    def wf() -> Any:
        try:
            yield Do("charge", step, retry=Retry(5, backoff=0, never_retry=ValueError))
        except StepFailed as failure:
            return failure.error_type

    assert interp([wf]).run(wf) == "ValueError"
    assert calls == [1]


def test_an_exception_outside_retry_on_is_not_retried(interp: Make) -> None:
    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        raise KeyError("sku")

    def wf() -> Any:
        try:
            yield Do("charge", step, retry=Retry(5, backoff=0, retry_on=ConnectionError))
        except StepFailed:
            return "gave up"

    assert interp([wf]).run(wf) == "gave up"
    assert calls == [1]


def test_an_unencodable_result_is_not_retried(interp: Make) -> None:
    calls: list[int] = []

    def step() -> float:
        calls.append(1)
        return float("nan")

    def wf() -> Any:
        try:
            yield Do("ratio", step, retry=Retry(5, backoff=0))
        except StepFailed:
            return "refused"

    assert interp([wf]).run(wf) == "refused"
    assert calls == [1]


def test_a_restart_does_not_skip_the_journaled_backoff_wait(
        interp: Make, restart: Any, clock: FakeClock, eventually: Any, reach: Any) -> None:
    calls, step = flaky(1)

    def wf() -> Any:
        return (yield Do("call", step, retry=Retry(3, backoff=100, max_backoff=100, jitter=0)))

    first = interp([wf])
    run = first.start(wf)
    eventually(parked_for_backoff(first, run, clock), "the backoff")
    second = restart(first, [wf])
    assert eventually(parked_for_backoff(second, run, clock), "the backoff after the restart")
    assert second.status(run).wake_at == EPOCH + 100
    assert calls == [1]
    clock.advance(100)
    assert second.result(run, timeout=PATIENCE) == "ok after 2 tries"


def test_a_restart_does_not_restart_the_attempt_count(
        interp: Make, restart: Any, clock: FakeClock, eventually: Any) -> None:
    calls, step = flaky(10)

    def wf() -> Any:
        yield Do("call", step, retry=Retry(2, backoff=100, max_backoff=100, jitter=0))

    first = interp([wf])
    run = first.start(wf)
    eventually(parked_for_backoff(first, run, clock), "the backoff")
    second = restart(first, [wf])
    eventually(parked_for_backoff(second, run, clock), "the backoff after the restart")
    clock.advance(100)
    with pytest.raises(WorkflowFailed, match="try 2 failed"):
        second.result(run, timeout=PATIENCE)
    assert len(calls) == 2


# ==== current_step and idempotency keys =======================================================


def test_current_step_tells_a_step_its_run_name_position_and_attempt(interp: Make) -> None:
    def step() -> list[Any]:
        info = current_step()
        return [info.run_id, info.step, info.position, info.attempt]

    def wf() -> Any:
        yield Do("first", echo, None)
        return (yield Do("second", step))

    i = interp([wf])
    assert i.result(i.start(wf, run_id="order-1"), timeout=PATIENCE) == ["order-1", "second", 1, 1]


def test_current_step_works_inside_an_async_step(interp: Make) -> None:
    async def step() -> str:
        return current_step().step

    def wf() -> Any:
        return (yield Do("async one", step))

    assert interp([wf]).run(wf) == "async one"


def test_current_step_outside_a_step_raises(interp: Make) -> None:
    with pytest.raises(ReplaygenError, match="current_step"):
        current_step()


def test_the_idempotency_key_is_the_same_across_retries(interp: Make) -> None:
    keys: list[tuple[str, int]] = []

    def step() -> Any:
        info = current_step()
        keys.append((info.idempotency_key, info.attempt))
        if len(keys) < 3:
            raise ConnectionError("flaky")
        return "paid"

    def wf() -> Any:
        return (yield Do("charge", step, retry=Retry(3, backoff=0)))

    assert interp([wf]).run(wf) == "paid"
    assert [attempt for _, attempt in keys] == [1, 2, 3]
    assert len({key for key, _ in keys}) == 1


def test_the_idempotency_key_is_the_same_when_a_step_is_executed_again_after_a_restart(
        interp: Make, restart: Any, gate: Any) -> None:
    keys: list[str] = []
    entered, stuck = gate(), gate()

    def step() -> str:
        keys.append(current_step().idempotency_key)
        if len(keys) == 1:  # the first worker never finishes this step
            entered.set()
            stuck.wait(PATIENCE)
        return "paid"

    def wf() -> Any:
        return (yield Do("charge", step))

    first = interp([wf])
    run = first.start(wf)
    assert entered.wait(PATIENCE)
    second = restart(first, [wf], timeout=0.05)
    assert second.result(run, timeout=PATIENCE) == "paid"
    assert len(keys) == 2 and keys[0] == keys[1]


def test_different_steps_have_different_idempotency_keys(interp: Make) -> None:
    def key() -> str:
        return current_step().idempotency_key

    def wf() -> Any:
        return [(yield Do("a", key)), (yield Do("a", key))]

    a, b = interp([wf]).run(wf)
    assert a != b


# ==== signals =================================================================================


def test_a_signal_delivered_while_waiting_is_the_waits_value(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        return (yield Wait("approved"))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "approved", {"by": "ada"})
    assert i.result(run, timeout=PATIENCE) == {"by": "ada"}


def test_a_signal_delivered_before_the_wait_is_kept(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("first")
        return (yield Wait("early"))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "early", "kept")
    i.deliver(run, "first")
    assert i.result(run, timeout=PATIENCE) == "kept"


def test_signals_of_one_name_are_taken_in_delivery_order(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("start")
        return [(yield Wait("item")), (yield Wait("item")), (yield Wait("item"))]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    for payload in ("one", "two", "three"):
        i.deliver(run, "item", payload)
    i.deliver(run, "start")
    assert i.result(run, timeout=PATIENCE) == ["one", "two", "three"]


def test_signals_of_other_names_do_not_satisfy_a_wait(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("start")
        return [(yield Wait("b")), (yield Wait("a"))]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "a", "A")
    i.deliver(run, "b", "B")
    i.deliver(run, "start")
    assert i.result(run, timeout=PATIENCE) == ["B", "A"]


def test_each_signal_is_consumed_by_exactly_one_wait(interp: Make, clock: FakeClock,
                                                     reach: Any, eventually: Any) -> None:
    def wf() -> Any:
        first = yield Wait("item")
        try:
            second = yield Wait("item", timeout=10)
        except WaitTimeout:
            second = "none left"
        return [first, second]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "item", "only")
    eventually(lambda: i.status(run).wake_at is not None, "the second Wait")
    clock.advance(10)
    assert i.result(run, timeout=PATIENCE) == ["only", "none left"]


def test_a_signal_payload_tuple_is_a_list_in_the_workflow(interp: Make) -> None:
    def wf() -> Any:
        return (yield Wait("pair"))

    i = interp([wf])
    run = i.start(wf)
    i.deliver(run, "pair", (1, 2))
    assert i.result(run, timeout=PATIENCE) == [1, 2]


def test_a_wait_times_out_with_wait_timeout_on_the_clock(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved", timeout=3600)
        except WaitTimeout:
            return "expired"

    i = interp([wf])
    run = i.start(wf)
    assert reach(i, run, "waiting").wake_at == EPOCH + 3600
    clock.advance(3600)
    assert i.result(run, timeout=PATIENCE) == "expired"


def test_a_wait_timeouts_deadline_survives_a_restart(
        interp: Make, restart: Any, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved", timeout=100)
        except WaitTimeout:
            return "expired"

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    clock.advance(70)
    second = restart(first, [wf])
    assert reach(second, run, "waiting").wake_at == EPOCH + 100
    clock.advance(30)
    assert second.result(run, timeout=PATIENCE) == "expired"


def test_a_signal_arriving_after_a_timeout_stays_queued_for_the_next_wait(
        interp: Make, clock: FakeClock, reach: Any, eventually: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved", timeout=10)
        except WaitTimeout:
            pass
        yield Wait("retry")
        return (yield Wait("approved"))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    clock.advance(10)
    eventually(waiting_for(i, run, "retry"), "the first Wait to time out")
    i.deliver(run, "approved", "late")
    i.deliver(run, "retry")
    assert i.result(run, timeout=PATIENCE) == "late"


def test_a_timeout_racing_a_signal_journals_exactly_one_outcome(
        interp: Make, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        try:
            first = yield Wait("go", timeout=10)
        except WaitTimeout:
            first = "timeout"
        return [first, (yield Wait("go"))]

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    clock.advance(10)
    i.deliver(run, "go", "p")
    i.deliver(run, "go", "q")
    assert i.result(run, timeout=PATIENCE) in (["p", "q"], ["timeout", "p"])


def test_a_signal_delivered_while_no_worker_runs_the_run_is_kept(
        interp: Make, restart: Any, reach: Any) -> None:
    def wf() -> Any:
        return (yield Wait("approved"))

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    first.shutdown()
    client = interp([wf])
    client.deliver(run, "approved", "while down")
    second = interp([wf])
    second.recover()
    assert second.result(run, timeout=PATIENCE) == "while down"


def test_a_signal_delivered_by_another_interpreter_wakes_the_run(interp: Make,
                                                                 reach: Any) -> None:
    def wf() -> Any:
        return (yield Wait("approved"))

    worker, client = interp([wf]), interp([wf])
    run = worker.start(wf)
    reach(worker, run, "waiting")
    client.deliver(run, "approved", "from afar")
    assert worker.result(run, timeout=PATIENCE) == "from afar"


def test_deliver_to_an_unknown_run_raises_run_not_found(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(RunNotFound, match="ghost"):
        interp([wf]).deliver("ghost", "approved")


@pytest.mark.parametrize("ending", ["completed", "failed", "cancelled"])
def test_deliver_to_a_finished_run_raises_stating_its_state(interp: Make, reach: Any,
                                                            ending: str) -> None:
    def wf(ending: str) -> Any:
        yield Wait("go")
        if ending == "failed":
            raise RuntimeError("boom")
        return "done"

    i = interp([wf])
    run = i.start(wf, ending)
    reach(i, run, "waiting")
    if ending == "cancelled":
        i.cancel(run)
    else:
        i.deliver(run, "go")
    reach(i, run, ending)
    with pytest.raises(RunFinished, match=ending):
        i.deliver(run, "go")
    assert i.status(run).state == ending


def test_deliver_of_an_unencodable_payload_raises_and_queues_nothing(
        interp: Make, reach: Any) -> None:
    def wf() -> Any:
        yield Wait("first")
        return (yield Wait("data"))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    with pytest.raises(ReplaygenError, match="data"):
        i.deliver(run, "data", {1: "int key"})
    with pytest.raises(ReplaygenError, match="1000"):
        interp([wf], max_payload=1000).deliver(run, "data", "x" * 2000)
    i.deliver(run, "data", "good")
    i.deliver(run, "first")
    assert i.result(run, timeout=PATIENCE) == "good"


# ==== cancel ==================================================================================


def test_cancelling_a_sleeping_run_raises_cancelled_inside_so_it_can_compensate(
        interp: Make, reach: Any) -> None:
    calls, refund = counter()

    def wf() -> Any:
        yield Do("charge", echo, "txn")
        try:
            yield Sleep(86400)
        except Cancelled:
            yield Do("refund", refund, "txn")
            raise

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "sleeping")
    i.cancel(run)
    with pytest.raises(Cancelled):
        i.result(run, timeout=PATIENCE)
    assert calls == ["txn"]
    assert i.status(run).state == "cancelled"


def test_cancelling_a_waiting_run_raises_cancelled_inside(interp: Make, reach: Any) -> None:
    calls, refund = counter()

    def wf() -> Any:
        try:
            yield Wait("approved")
        except Cancelled:
            yield Do("undo", refund, "undone")
            raise

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.cancel(run)
    reach(i, run, "cancelled")
    assert calls == ["undone"]


def test_a_workflow_that_absorbs_cancelled_completes_with_its_return_value(
        interp: Make, reach: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved")
        except Cancelled:
            return "withdrawn politely"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.cancel(run)
    assert i.result(run, timeout=PATIENCE) == "withdrawn politely"
    assert i.status(run).state == "completed"


def test_a_cancel_during_a_running_step_is_raised_after_the_steps_result_is_journaled(
        interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()
    events: list[tuple[str, str | None]] = []
    calls: list[int] = []

    def last_step() -> str:
        calls.append(1)
        entered.set()
        release.wait(PATIENCE)
        return "charged"

    def wf() -> Any:
        yield Do("last", last_step)
        return "done"

    i = interp([wf], observer=lambda e: events.append((e.kind, e.step)))
    run = i.start(wf)
    assert entered.wait(PATIENCE)
    i.cancel(run)
    release.set()
    with pytest.raises(Cancelled):
        i.result(run, timeout=PATIENCE)
    assert events.index(("step_committed", "last")) < events.index(("run_finished", None))
    assert calls == [1]


def test_a_run_cancelled_during_its_last_step_that_absorbs_it_completes(
        interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()

    def last_step() -> str:
        entered.set()
        release.wait(PATIENCE)
        return "charged"

    def wf() -> Any:
        try:
            return (yield Do("last", last_step))
        except Cancelled:
            return "cancelled after charging"

    i = interp([wf])
    run = i.start(wf)
    assert entered.wait(PATIENCE)
    i.cancel(run)
    release.set()
    assert i.result(run, timeout=PATIENCE) == "cancelled after charging"


def test_a_cancel_during_a_later_step_is_raised_at_its_yield_after_its_result_is_journaled(
        interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()

    def second() -> str:
        entered.set()
        release.wait(PATIENCE)
        return "charged"

    def wf() -> Any:
        yield Do("first", lambda: 1)  # the run is running: the next step takes the lean path
        try:
            yield Do("second", second)
        except Cancelled:
            return "cancelled at the second step"
        return "not cancelled"

    i = interp([wf])
    run = i.start(wf)
    assert entered.wait(PATIENCE)
    i.cancel(run)
    release.set()
    assert i.result(run, timeout=PATIENCE) == "cancelled at the second step"
    kinds = [(e.kind, e.name, e.position) for e in i._store.journal(run)]  # noqa: SLF001
    assert kinds == [("do", "first", 0), ("do", "second", 1), ("cancel", "", 1)]


@pytest.mark.counts_replays
def test_a_journaled_cancel_is_replayed_at_the_same_point(
        interp: Make, restart: Any, gate: Any, reach: Any) -> None:
    entered, release = gate(), gate()
    seen: list[str] = []
    calls: list[int] = []

    def charge() -> str:
        calls.append(1)
        entered.set()
        release.wait(PATIENCE)
        return "txn"

    def wf() -> Any:
        try:
            yield Do("charge", charge)
        except Cancelled:
            seen.append("cancelled at charge")
            return (yield Wait("refund done"))
        seen.append("charged")
        return (yield Wait("shipped"))

    first = interp([wf])
    run = first.start(wf)
    assert entered.wait(PATIENCE)
    first.cancel(run)
    release.set()
    reach(first, run, "waiting")
    second = restart(first, [wf])
    reach(second, run, "waiting")
    second.deliver(run, "refund done", "refunded")
    assert second.result(run, timeout=PATIENCE) == "refunded"
    assert seen == ["cancelled at charge", "cancelled at charge"]
    assert calls == [1]


def test_cancel_twice_is_the_same_as_once(interp: Make, reach: Any) -> None:
    calls, undo = counter()

    def wf() -> Any:
        try:
            yield Wait("approved")
        except Cancelled:
            yield Do("undo", undo, "undone")
            try:
                yield Wait("confirm")
            except Cancelled:
                return "cancelled twice"
            return "cancelled once"

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.cancel(run)
    reach(i, run, "waiting")
    i.cancel(run)
    i.deliver(run, "confirm")
    assert i.result(run, timeout=PATIENCE) == "cancelled once"
    assert calls == ["undone"]


def test_cancelling_a_finished_run_changes_nothing(interp: Make) -> None:
    def wf() -> Any:
        return (yield Do("a", echo, "result"))

    i = interp([wf])
    run = i.start(wf)
    assert i.result(run, timeout=PATIENCE) == "result"
    i.cancel(run)
    assert i.status(run).state == "completed"
    assert i.result(run, timeout=PATIENCE) == "result"


def test_cancelling_an_unknown_run_raises(interp: Make) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(RunNotFound, match="ghost"):
        interp([wf]).cancel("ghost")


def test_cancel_interrupts_a_retrys_backoff_wait(interp: Make, clock: FakeClock,
                                                 eventually: Any) -> None:
    calls, step = flaky(10)

    def wf() -> Any:
        yield Do("call", step, retry=Retry(5, backoff=3600, jitter=0))

    i = interp([wf])
    run = i.start(wf)
    eventually(parked_for_backoff(i, run, clock), "the backoff")
    i.cancel(run)
    with pytest.raises(Cancelled):
        i.result(run, timeout=PATIENCE)
    assert calls == [1]


def test_a_cancel_is_durable_across_restarts(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved")
        except Cancelled:
            return "cancelled while down"

    first = interp([wf])
    run = first.start(wf)
    reach(first, run, "waiting")
    first.shutdown()
    interp([wf]).cancel(run)
    second = interp([wf])
    second.recover()
    assert second.result(run, timeout=PATIENCE) == "cancelled while down"


def test_a_cancel_of_a_run_that_has_not_reached_a_command_is_raised_at_its_first(
        interp: Make, gate: Any) -> None:
    entered, release = gate(), gate()
    calls, step = counter()

    def busy() -> None:
        entered.set()
        release.wait(PATIENCE)

    def blocker() -> Any:
        yield Do("busy", busy)

    def wf() -> Any:
        try:
            yield Do("never", step, 1)
        except Cancelled:
            return "cancelled before the first step"

    i = interp([blocker, wf], concurrency=1)
    i.start(blocker)
    assert entered.wait(PATIENCE)
    run = i.start(wf)
    i.cancel(run)
    release.set()
    assert i.result(run, timeout=PATIENCE) == "cancelled before the first step"
    assert calls == []


# ==== All =====================================================================================


def test_all_evaluates_to_its_members_results_in_order(interp: Make) -> None:
    def wf() -> Any:
        return (yield All(Do("a", echo, "A"), Do("b", echo, "B"), Do("c", echo, "C")))

    assert interp([wf]).run(wf) == ["A", "B", "C"]


def test_all_runs_its_members_concurrently(interp: Make) -> None:
    meet = threading.Barrier(3, timeout=PATIENCE)

    def rendezvous(name: str) -> str:
        meet.wait()
        return name

    async def rendezvous_async(name: str) -> str:
        await asyncio.get_running_loop().run_in_executor(None, meet.wait)
        return name

    def wf() -> Any:
        return (yield All(Do("a", rendezvous, "a"), Do("b", rendezvous, "b"),
                          Do("c", rendezvous_async, "c")))

    assert interp([wf]).run(wf) == ["a", "b", "c"]


def test_all_of_no_commands_is_an_empty_list(interp: Make) -> None:
    def wf() -> Any:
        return (yield All())

    assert interp([wf]).run(wf) == []


def test_all_mixes_steps_sleeps_and_waits(interp: Make, clock: FakeClock, reach: Any) -> None:
    def wf() -> Any:
        return (yield All(Do("a", echo, "A"), Sleep(60), Wait("approved")))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "approved", "yes")
    reach(i, run, "sleeping")
    clock.advance(60)
    assert i.result(run, timeout=PATIENCE) == ["A", None, "yes"]


def test_all_raises_the_first_failure_in_member_order_after_every_member_ends(
        interp: Make) -> None:
    b_failed = threading.Event()
    finished: list[str] = []

    def fail_a() -> None:
        b_failed.wait(PATIENCE)  # fails last, but comes first in member order
        finished.append("a")
        raise KeyError("a")

    def fail_b() -> None:
        finished.append("b")
        b_failed.set()
        raise ValueError("b")

    def slow_ok() -> str:
        b_failed.wait(PATIENCE)
        finished.append("c")
        return "c"

    def wf() -> Any:
        try:
            yield All(Do("a", fail_a), Do("b", fail_b), Do("c", slow_ok))
        except StepFailed as failure:
            return failure.step

    assert interp([wf]).run(wf) == "a"
    assert sorted(finished) == ["a", "b", "c"]


def test_on_recovery_only_the_unfinished_members_of_an_all_run_again(
        interp: Make, restart: Any, store: MemoryStore, gate: Any, eventually: Any) -> None:
    stuck = gate()
    calls: list[str] = []

    def quick() -> str:
        calls.append("quick")
        return "Q"

    def slow() -> str:
        calls.append("slow")
        if calls.count("slow") == 1:  # the first worker never finishes it
            stuck.wait(PATIENCE)
        return "S"

    def wf() -> Any:
        return (yield All(Do("quick", quick), Do("slow", slow)))

    first = interp([wf])
    run = first.start(wf)
    eventually(lambda: any(e.name == "quick" for e in store.journal(run)), "quick's entry")
    second = restart(first, [wf], timeout=0.05)
    assert second.result(run, timeout=PATIENCE) == ["Q", "S"]
    assert sorted(calls) == ["quick", "slow", "slow"]


# ==== poisoned runs are contained =============================================================


def test_a_workflow_that_raises_fails_while_its_neighbours_go_on(interp: Make) -> None:
    def poisoned() -> Any:
        yield Do("a", echo, 1)
        raise ZeroDivisionError("bug")

    def healthy() -> Any:
        return (yield Do("a", echo, "fine"))

    i = interp([poisoned, healthy])
    runs = [i.start(poisoned), i.start(healthy), i.start(poisoned), i.start(healthy)]
    for bad in runs[0::2]:
        with pytest.raises(WorkflowFailed, match="bug"):
            i.result(bad, timeout=PATIENCE)
    for good in runs[1::2]:
        assert i.result(good, timeout=PATIENCE) == "fine"


@pytest.mark.parametrize("junk", ["Do", 42, None, Do, [Sleep(1)]])
def test_a_workflow_that_yields_something_that_is_not_a_command_fails_clearly(
        interp: Make, junk: Any) -> None:
    def poisoned() -> Any:
        yield junk

    def healthy() -> Any:
        return (yield Do("a", echo, "fine"))

    i = interp([poisoned, healthy])
    bad, good = i.start(poisoned), i.start(healthy)
    with pytest.raises(WorkflowFailed, match="not a command"):
        i.result(bad, timeout=PATIENCE)
    assert i.status(bad).state == "failed"
    assert i.result(good, timeout=PATIENCE) == "fine"


def test_a_workflow_started_with_the_wrong_arguments_fails(interp: Make) -> None:
    def wf(a: int) -> Any:
        yield Sleep(0)

    i = interp([wf])
    run = i.start(wf, 1, 2, 3)
    with pytest.raises(WorkflowFailed, match="TypeError"):
        i.result(run, timeout=PATIENCE)


class DamagingStore(MemoryStore):
    """A MemoryStore whose claims hand back one run's journal damaged, as a bad disk would."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: str | None = None
        self.damage: Callable[[list[Any]], list[Any]] = lambda rows: rows

    def claim(self, owner: str, **options: Any) -> list[Claim]:
        return [Claim(c.run, self.damage(c.journal)) if c.run.run_id == self.victim else c
                for c in super().claim(owner, **options)]


@pytest.mark.parametrize("damage", [
    pytest.param(lambda rows: [damaged(rows[0], value="{not json")], id="undecodable"),
    pytest.param(lambda rows: [damaged(rows[0], seq=3)], id="gap"),
    pytest.param(lambda rows: [damaged(rows[0], position="zero")], id="mistyped"),
])
def test_a_corrupt_journal_row_blocks_the_run_and_spares_its_neighbours(
        interp: Make, reach: Any,
        damage: Callable[[list[Any]], list[Any]]) -> None:
    def wf(n: int) -> Any:
        value = yield Do("work", echo, n)
        yield Wait("go")
        return value

    store = DamagingStore()
    first = interp([wf], store=store)
    bad, good = first.start(wf, 1), first.start(wf, 2)
    reach(first, bad, "waiting")
    reach(first, good, "waiting")
    first.shutdown()
    store.victim, store.damage = bad, damage
    second = interp([wf], store=store)
    second.recover()
    status = reach(second, bad, "blocked")
    assert bad in status.error and "CorruptRecord" in status.error
    second.deliver(good, "go")
    assert second.result(good, timeout=PATIENCE) == 2


def test_a_worker_never_claims_a_run_of_a_workflow_it_does_not_know(
        interp: Make, restart: Any, reach: Any, store: MemoryStore) -> None:
    def checkout() -> Any:
        return (yield Wait("go"))

    def other() -> Any:
        yield Sleep(1)

    first = interp({"checkout": checkout})
    run = first.start("checkout")
    reach(first, run, "waiting")
    stranger = restart(first, {"other": other})
    assert stranger.recover() == []
    record = store.get(run)
    assert record is not None and (record.state, record.owner, record.error) == ("waiting", None, None)
    knower = restart(stranger, {"checkout": checkout})
    knower.deliver(run, "go", "resumed")
    assert knower.result(run, timeout=PATIENCE) == "resumed"


# ==== crash loops and interrupts ==============================================================


def crash_loop(store: MemoryStore, run: str, first_owner: str, deaths: int) -> None:
    """Make the run look as if ``deaths`` workers in a row died while it was running."""
    owner = first_owner
    for n in range(deaths):
        claimed = store.claim(f"dead-worker-{n}", dead=[owner], run_ids=[run])
        assert [c.run.run_id for c in claimed] == [run]
        owner = f"dead-worker-{n}"


def crash_looped(interp: Make, store: MemoryStore, gate: Any, result: str,
                 prepare: bool = False) -> tuple[Any, str, Any]:
    """A run whose step 'explode' is in flight (until ``release`` is set, then it returns
    ``result``), made to look as if three workers in a row died in it: (wf, run, release)."""
    entered, release = gate(), gate()

    def explode() -> str:
        entered.set()
        release.wait(PATIENCE)
        return result

    def wf() -> Any:
        if prepare:
            yield Do("prepare", echo, 1)
        return (yield Do("explode", explode))

    doomed = interp([wf])
    run = doomed.start(wf)
    assert entered.wait(PATIENCE)
    crash_loop(store, run, doomed.worker_id, deaths=3)
    return wf, run, release


def test_a_run_resumed_too_often_without_progress_is_blocked_naming_the_step(
        interp: Make, store: MemoryStore, gate: Any, reach: Any) -> None:
    wf, run, _ = crash_looped(interp, store, gate, "survived", prepare=True)
    survivor = interp([wf], max_resumes=2)
    survivor.recover()
    status = reach(survivor, run, "blocked")
    assert "'explode'" in status.error and run in status.error
    assert status.error.startswith("RunBlocked: ")  # a public name, never a private class


def test_a_run_resumed_within_the_limit_goes_on(interp: Make, store: MemoryStore, gate: Any,
                                                reach: Any) -> None:
    wf, run, release = crash_looped(interp, store, gate, "survived")
    survivor = interp([wf], max_resumes=5)
    survivor.recover()
    release.set()
    assert survivor.result(run, timeout=PATIENCE) == "survived"


def test_graceful_restarts_do_not_count_as_a_crash_loop(interp: Make, restart: Any,
                                                        gate: Any, eventually: Any) -> None:
    stuck = gate()
    calls: list[int] = []

    def step() -> str:
        calls.append(1)
        if len(calls) <= 4:
            stuck.wait(PATIENCE)
        return "done"

    def wf() -> Any:
        return (yield Do("slow", step))

    current = interp([wf], max_resumes=1)
    run = current.start(wf)
    for n in range(1, 5):  # each worker is shut down while the step runs
        eventually(lambda: len(calls) >= n, f"try {n} of the step")  # noqa: B023
        current = restart(current, [wf], timeout=0.01, max_resumes=1)
    assert current.result(run, timeout=PATIENCE) == "done"


def test_a_crash_looped_run_is_not_retried_by_recover_only_by_resume(
        interp: Make, restart: Any, store: MemoryStore, gate: Any, reach: Any) -> None:
    wf, run, release = crash_looped(interp, store, gate, "fixed")
    survivor = interp([wf], max_resumes=2)
    survivor.recover()
    reach(survivor, run, "blocked")
    release.set()
    later = restart(survivor, [wf], max_resumes=2)  # every boot calls recover()
    assert later.status(run).state == "blocked"
    assert store.get(run).owner is None  # type: ignore[union-attr]
    assert later.resume(run, timeout=PATIENCE).state == "completed"
    assert later.result(run, timeout=PATIENCE) == "fixed"


def test_a_run_blocked_for_non_determinism_is_retried_by_recover(
        interp: Make, restart: Any, reach: Any) -> None:
    def before() -> Any:
        yield Do("a", echo, 1)
        return (yield Wait("go"))

    def changed() -> Any:
        yield Do("b", echo, 1)
        return (yield Wait("go"))

    first = interp({"flow": before})
    run = first.start("flow")
    reach(first, run, "waiting")
    broken = restart(first, {"flow": changed})
    reach(broken, run, "blocked")
    fixed = restart(broken, {"flow": before})
    reach(fixed, run, "waiting")
    fixed.deliver(run, "go", "on")
    assert fixed.result(run, timeout=PATIENCE) == "on"


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_an_interrupt_from_a_step_propagates_and_the_run_stays_resumable(
        interp: Make, eventually: Any, monkeypatch: pytest.MonkeyPatch, store: MemoryStore,
        interrupt: type[BaseException]) -> None:
    propagated: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: propagated.append(args.exc_type))
    calls: list[int] = []

    def step() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise interrupt()
        return "second try"

    def wf() -> Any:
        return (yield Do("fragile", step))

    first = interp([wf])
    run = first.start(wf)
    # Wait for the release itself: polling recover() raced the watcher's own adoption.
    eventually(lambda: store.get(run).owner is None, "the interrupted run to be released")
    second = interp([wf])
    assert second.recover() == [run]
    assert second.result(run, timeout=PATIENCE) == "second try"
    assert calls == [1, 1]
    eventually(lambda: propagated == [interrupt], "the interrupt to leave the worker thread")


# ==== hostile identifiers =====================================================================


HOSTILE = [
    "order'42", 'say "cheese"', "'; DROP TABLE runs; --", "Robert'); DELETE FROM journal;--",
    "Ünïcødé ✓ 注文 🧾", "back\\slash%_*?", "tab\tnew\nline", " padded ", "x" * 255,
    "$1 :name ?",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_identifiers_are_kept_byte_exact(interp: Make, restart: Any, reach: Any,
                                                 name: str) -> None:
    def wf(arg: str) -> Any:
        version = yield Version(name, 1, 1)
        value = yield Do(name, echo, arg)
        signal = yield Wait(name)
        return [version, value, signal]

    first = interp({name: wf})
    run = first.start(name, name, run_id=name)
    assert run == name
    reach(first, run, "waiting")
    second = restart(first, {name: wf})
    status = reach(second, name, "waiting")
    assert (status.run_id, status.workflow, status.waiting_for) == (name, name, name)
    second.deliver(name, name, name)
    assert second.result(name, timeout=PATIENCE) == [1, name, name]


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 256, "\ud800"])
def test_an_unusable_run_id_is_refused_up_front(interp: Make, store: MemoryStore,
                                                bad: str) -> None:
    def wf() -> Any:
        yield Sleep(1)

    i = interp([wf])
    with pytest.raises(ReplaygenError, match="run_id"):
        i.start(wf, run_id=bad)
    assert store.runs() == []
    for call in (i.status, i.cancel, lambda r: i.deliver(r, "s"), i.result):
        with pytest.raises(ReplaygenError, match="run_id"):
            call(bad)


@pytest.mark.parametrize("bad", ["", "a\x00b", "s" * 256])
def test_an_unusable_signal_name_is_refused_by_deliver(interp: Make, bad: str) -> None:
    def wf() -> Any:
        yield Wait("go")

    i = interp([wf])
    run = i.start(wf)
    with pytest.raises(ReplaygenError, match="signal name"):
        i.deliver(run, bad, "payload")


# ==== more of SPEC 3-5 ========================================================================


def test_do_calls_its_function_with_the_given_arguments_and_keyword_arguments(
        interp: Make) -> None:
    def price(amount: int, *, currency: str, discount: int = 0) -> str:
        return f"{amount - discount} {currency}"

    def wf() -> Any:
        return (yield Do("price", price, 100, currency="EUR", discount=5))

    assert interp([wf]).run(wf) == "95 EUR"


def test_parked_runs_hold_no_thread(interp: Make, reach: Any) -> None:
    def sleeper() -> Any:
        yield Sleep(3600)

    def waiter() -> Any:
        yield Wait("never")

    def worker() -> Any:
        return (yield Do("work", echo, "done"))

    i = interp([sleeper, waiter, worker], concurrency=1)
    parked = [i.start(sleeper) for _ in range(3)] + [i.start(waiter) for _ in range(3)]
    for run in parked:
        reach(i, run, "sleeping", "waiting")
    assert i.result(i.start(worker), timeout=PATIENCE) == "done"


def test_two_waits_of_one_signal_in_an_all_take_signals_in_delivery_order(
        interp: Make, reach: Any) -> None:
    def wf() -> Any:
        return (yield All(Wait("vote"), Wait("vote")))

    i = interp([wf])
    run = i.start(wf)
    reach(i, run, "waiting")
    i.deliver(run, "vote", "first")
    i.deliver(run, "vote", "second")
    assert i.result(run, timeout=PATIENCE) == ["first", "second"]


def test_a_signal_delivered_to_a_blocked_run_is_kept_for_the_fixed_code(
        interp: Make, restart: Any, reach: Any) -> None:
    def fixed() -> Any:
        yield Do("charge", echo, "txn")
        return (yield Wait("go"))

    first = interp({"checkout": charge_then_wait})
    run = first.start("checkout")
    reach(first, run, "waiting")
    broken = restart(first, {"checkout": refund_then_wait})
    reach(broken, run, "blocked")
    broken.deliver(run, "go", "kept while blocked")
    mended = restart(broken, {"checkout": fixed})
    assert mended.result(run, timeout=PATIENCE) == "kept while blocked"


def test_a_cancel_from_another_interpreter_wakes_the_run(interp: Make, reach: Any) -> None:
    def wf() -> Any:
        try:
            yield Wait("approved")
        except Cancelled:
            return "cancelled from afar"

    worker, client = interp([wf]), interp([wf])
    run = worker.start(wf)
    reach(worker, run, "waiting")
    client.cancel(run)
    assert worker.result(run, timeout=PATIENCE) == "cancelled from afar"


def test_a_payload_over_the_limit_is_logged_with_its_size_and_the_limit(
        interp: Make, caplog: pytest.LogCaptureFixture) -> None:
    def wf() -> Any:
        try:
            yield Do("download", lambda: "x" * 5000)
        except StepFailed:
            return "refused"

    with caplog.at_level(logging.WARNING, logger="replaygen"):
        assert interp([wf], max_payload=1000).run(wf) == "refused"
    assert any("5002" in r.getMessage() and "1000" in r.getMessage() for r in caplog.records)


class FlakyStore(MemoryStore):
    """A MemoryStore whose commits fail as a full disk would, while ``down`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.down = threading.Event()
        self.refused = 0

    def commit(self, writes: Any) -> list[bool]:
        if self.down.is_set():
            self.refused += 1
            raise StoreUnavailable("disk full")
        return super().commit(writes)


def test_a_store_outage_leaves_the_run_resumable_and_work_resumes_with_the_store(
        interp: Make, eventually: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    calls: list[int] = []

    def charge() -> str:
        calls.append(1)
        store.down.set()  # the disk fills up just as the result is to be committed
        return "paid"

    def wf() -> Any:
        return (yield Do("charge", charge))

    i = interp([wf], store=store)
    with caplog.at_level(logging.WARNING, logger="replaygen"):
        run = i.start(wf)
        eventually(lambda: store.refused >= 2, "the engine to retry the commit")
        assert i.status(run).state == "running"
        store.down.clear()
        assert i.result(run, timeout=PATIENCE) == "paid"
    assert calls == [1]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_shutdown_during_a_store_outage_does_not_wait_out_the_retry_backoff(
        interp: Make, eventually: Any) -> None:
    store = FlakyStore()

    def wf() -> Any:
        store.down.set()  # the outage begins as the step's result is to be committed
        return (yield Do("one", lambda: 1))

    i = interp([wf], store=store)
    i.start(wf)
    # Six refusals: the engine now backs off 1.6 s before its next try.
    eventually(lambda: store.refused >= 6, "the engine to retry the commit with backoff")
    tried = store.refused
    i.shutdown(timeout=0.1)
    # shutdown() promises that every thread touching the store has ended when it returns.
    assert not any(t.is_alive() for t in i._runtime._drivers), "the driver still sleeps in backoff"
    assert store.refused == tried, "the store was tried again after shutdown"


@pytest.mark.parametrize("option", [{"concurrency": 0}, {"concurrency": -1}, {"lease": 0},
                                    {"lease": -5}, {"max_resumes": -1}])
def test_interpreter_options_out_of_range_are_refused(interp: Make,
                                                      option: dict[str, Any]) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(ReplaygenError, match=next(iter(option))):
        interp([wf], **option)


@pytest.mark.parametrize("store", ["runs.db", None])
def test_something_that_is_not_a_store_is_refused_clearly(clock: FakeClock, store: Any) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(ReplaygenError, match="store"):
        Interpreter(store, [wf], clock=clock).shutdown()


def test_a_lone_workflow_instead_of_a_list_is_refused_clearly(store: MemoryStore,
                                                              clock: FakeClock) -> None:
    def wf() -> Any:
        yield Sleep(1)

    with pytest.raises(ReplaygenError, match="list"):
        Interpreter(store, wf, clock=clock).shutdown()  # type: ignore[arg-type]


# ---- resume(): retry one run with the current code -----------------------------------------


def _shape_a(n: int) -> Any:
    yield Do("a", int, n)
    yield Wait("go")
    return n


def _shape_b(n: int) -> Any:
    yield Do("b", int, n)
    return n


def test_resume_retries_one_blocked_run_with_fixed_code(interp: Make, reach: Any) -> None:
    first = interp({"wf": _shape_a})
    run_id = first.start("wf", 1)
    reach(first, run_id, "waiting")
    first.shutdown()
    broken = interp({"wf": _shape_b})
    assert broken.resume(run_id).state == "blocked"
    broken.shutdown()
    fixed = interp({"wf": _shape_a})
    assert fixed.resume(run_id).state == "waiting"
    fixed.deliver(run_id, "go")
    assert fixed.result(run_id, timeout=5) == 1


def test_resume_refuses_a_run_a_live_worker_holds(interp: Make, reach: Any) -> None:
    owner = interp({"wf": _shape_a})
    run_id = owner.start("wf", 1)
    reach(owner, run_id, "waiting")
    with pytest.raises(ReplaygenError, match="live worker"):
        interp({"wf": _shape_a}).resume(run_id)
    with pytest.raises(RunNotFound):
        owner.resume("no-such-run")


def test_a_failing_store_read_leaves_a_waiting_run_resumable(interp: Make, reach: Any,
                                                              store: MemoryStore) -> None:
    def wf() -> Any:
        return (yield Wait("go"))

    worker = interp([wf])
    run_id = worker.start(wf)
    reach(worker, run_id, "waiting")
    real = store.signals
    failing = {"on": True}

    def signals(rid: str) -> Any:
        if failing["on"]:
            raise StoreUnavailable("disk I/O error")
        return real(rid)

    store.signals = signals  # type: ignore[method-assign]
    Client(store).deliver(run_id, "go", 5)  # from elsewhere: the worker must read its inbox
    time.sleep(0.2)
    assert worker.status(run_id).state == "waiting"  # neither blocked nor failed
    failing["on"] = False
    assert worker.result(run_id, timeout=5) == 5
