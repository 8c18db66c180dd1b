"""What outside testing broke in the engine (issue 15), each pinned by a test that failed before."""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from replaygen import (
    Do, Interpreter, MemoryStore, Sleep, StepFailed, Version, Wait, current_step,
)
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import FakeClock

from .conftest import PATIENCE

Make = Callable[..., Interpreter]


def echo(x: Any) -> Any:
    return x


class ReprCodec:
    """Not JSON: Python literals (a user's codec, e.g. for tuples), read back with eval."""

    def encode(self, value: Any) -> str:
        return "py:" + repr(value)

    def decode(self, text: str) -> Any:
        if not text.startswith("py:"):
            raise ValueError(f"not written by this codec: {text!r}")
        return eval(text[3:], {})  # noqa: S307 (test data only)


def test_a_custom_codec_recovers_runs_with_a_sleep_a_timed_wait_and_a_version(
        interp: Make, restart: Any, reach: Any, clock: FakeClock) -> None:
    def wf() -> Any:
        fee = yield Version("fee", 1, 2)
        yield Sleep(60)
        try:
            got = yield Wait("go", timeout=3600)
        except Exception:
            got = "timed out"
        return (fee, (yield Do("pair", echo, (1, 2))), got)

    first = interp([wf], codec=ReprCodec())
    run = first.start(wf)
    reach(first, run, "sleeping")
    second = restart(first, [wf], codec=ReprCodec())
    clock.advance(61)
    reach(second, run, "waiting")
    third = restart(second, [wf], codec=ReprCodec())
    third.deliver(run, "go", "yes")
    assert third.result(run, timeout=PATIENCE) == (2, (1, 2), "yes")


def test_a_step_failure_always_fits_a_small_payload_limit(interp: Make) -> None:
    def deep(n: int) -> None:
        if n:
            deep(n - 1)
        raise ValueError("x" * 5000)

    def wf() -> Any:
        try:
            yield Do("deep", deep, 150)
        except StepFailed as failure:
            return [failure.error_type, len(failure.error_message) < 5000,
                    "cut to fit max_payload" in (failure.traceback or "") + failure.error_message]

    assert interp([wf], max_payload=4096).run(wf) == ["ValueError", True, True]


def test_a_workflow_failure_always_fits_a_small_payload_limit(interp: Make) -> None:
    def wf() -> Any:
        yield Do("a", echo, 1)
        raise RuntimeError("y" * 100_000)

    i = interp([wf], max_payload=2048)
    run = i.start(wf)
    with pytest.raises(Exception, match="RuntimeError"):
        i.result(run, timeout=PATIENCE)
    assert i.status(run).state == "failed"


def test_idempotency_keys_differ_for_the_same_run_id_in_two_stores(interp: Make) -> None:
    def wf() -> Any:
        return (yield Do("charge", lambda: current_step().idempotency_key))

    one, two = (interp([wf], store=MemoryStore()) for _ in range(2))
    first = one.result(one.start(wf, run_id="order-42"), timeout=PATIENCE)
    second = two.result(two.start(wf, run_id="order-42"), timeout=PATIENCE)
    assert first != second


def test_an_idempotency_key_is_stable_across_a_restart(
        interp: Make, restart: Any, gate: Any) -> None:
    entered, keys = gate(), []

    def step() -> str:
        keys.append(current_step().idempotency_key)
        if len(keys) == 1:
            entered.set()
            threading.Event().wait(PATIENCE)  # stays in flight while its worker goes away
        return "done"

    def wf() -> Any:
        return (yield Do("pay", step))

    first = interp([wf])
    run = first.start(wf, run_id="order-7")
    assert entered.wait(PATIENCE)
    second = restart(first, [wf], timeout=0.01)
    assert second.result(run, timeout=PATIENCE) == "done"
    assert len(keys) == 2 and keys[0] == keys[1]


def test_shutdown_ends_every_thread_that_uses_the_store_so_it_can_be_closed_at_once(
        tmp_path: Path) -> None:
    def wf(n: int) -> Any:
        yield Do("a", echo, n)
        return (yield Wait("never", timeout=3600))

    for i in range(15):
        before = set(threading.enumerate())  # other tests' threads may still be ending
        store = SQLiteStore(str(tmp_path / f"r{i}.db"))
        interp = Interpreter(store, [wf])
        interp.recover()
        for n in range(5):
            interp.start(wf, n)
        interp.shutdown(timeout=5)
        store.close()
        alive = [t.name for t in set(threading.enumerate()) - before if t.name in (
            "replaygen-watch", "replaygen-driver", "replaygen-timers", "replaygen-watchdog")]
        assert alive == []


def test_a_run_stopped_by_shutdown_before_its_sleep_is_not_recorded_as_sleeping(
        interp: Make, store: MemoryStore, gate: Any) -> None:
    entered, release = gate(), gate()

    def held() -> str:
        entered.set()
        release.wait(PATIENCE)
        return "done"

    def wf() -> Any:
        yield Do("held", held)
        yield Sleep(3600)

    first = interp([wf])
    run = first.start(wf)
    assert entered.wait(PATIENCE)
    stopping = threading.Thread(target=first.shutdown, kwargs={"timeout": PATIENCE})
    stopping.start()
    release.set()  # the step ends while the worker shuts down: the Sleep is never reached
    stopping.join()
    record = store.get(run)
    assert record is not None and record.owner is None
    assert (record.state, record.wake_at) != ("sleeping", None)
    assert [e.kind for e in store.journal(run)] == ["do"]


def test_a_sleep_ends_on_time_while_another_run_takes_step_after_step(
        interp: Make, reach: Any, clock: FakeClock) -> None:
    # The busy run alone keeps the driver committing and going on in place; the sleeper's
    # alarm, kept by that driver, must still wake it.
    woke = threading.Event()

    def sleeper() -> Any:
        yield Sleep(60)
        yield Do("mark", woke.set)

    def busy() -> Any:
        looks = 0
        while not (yield Do("look", woke.is_set)):
            looks += 1
        return looks

    worker = interp([sleeper, busy])
    asleep = worker.start(sleeper)
    reach(worker, asleep, "sleeping")
    spinning = worker.start(busy)
    clock.advance(61)
    assert woke.wait(PATIENCE), "the sleep's alarm never fired while another run was busy"
    assert worker.result(spinning, timeout=PATIENCE) >= 0
    assert worker.status(asleep).state == "completed"


def test_a_finished_run_is_not_kept_in_memory_by_its_unexpired_timeout(
        interp: Make, reach: Any) -> None:
    def waits() -> Any:
        return (yield Wait("go", timeout=3600))

    def other() -> Any:
        return (yield Do("echo", echo, 2))

    worker = interp([waits, other])
    run = worker.start(waits)
    reach(worker, run, "waiting")
    life = weakref.ref(worker._runtime.actors[run].gen)  # the life, as the runtime holds it
    worker.deliver(run, "go", 1)
    assert worker.result(run, timeout=PATIENCE) == 1
    ended = worker._runtime.waiter(run)  # None once the worker has let the run go
    assert ended is None or ended.wait(PATIENCE)
    # Another run goes through the engine, so nothing but a leak still refers to the first.
    assert worker.run(other) == 2
    gc.collect()
    assert life() is None, "the run's life outlives it, held by a timer an hour away"


class SteppingClock:
    """The wall clock, stepped back half a second at the first reading past ``at`` (NTP)."""

    def __init__(self) -> None:
        self.offset, self.at = 0.0, float("inf")
        self.lock = threading.Lock()

    def now(self) -> float:
        with self.lock:
            t = time.time() + self.offset
            if t >= self.at:
                self.at, self.offset = float("inf"), self.offset - 0.5
            return t


def test_a_sleep_still_ends_when_the_clock_steps_back_as_its_alarm_rings(
        store: MemoryStore, reach: Any) -> None:
    # The alarm rings at the deadline; the run then reads a clock half a second earlier and
    # must ask for another alarm rather than sleep until a restart.
    clock = SteppingClock()

    def naps() -> Any:
        yield Sleep(0.3)
        return "woke"

    worker = Interpreter(store, [naps], clock=clock)
    try:
        run = worker.start(naps)
        reach(worker, run, "sleeping")
        [entry] = [e for e in store.journal(run) if e.kind == "sleep"]
        clock.at = json.loads(entry.value)  # the journaled deadline: where the alarm rings
        assert worker.result(run, timeout=PATIENCE) == "woke"
        assert clock.at == float("inf"), "the clock never stepped back: the test proved nothing"
    finally:
        worker.shutdown()


def test_alarms_replaced_again_and_again_do_not_pile_up(interp: Make) -> None:
    # Each pass parks with an hour's timeout and is answered at once: a dead alarm each time.
    parked = threading.Event()

    def ticks(n: int) -> Any:
        for _ in range(n):
            yield Wait("tick", timeout=3600)
        return n

    def observe(event: Any) -> None:
        if event.kind == "run_parked":
            parked.set()

    worker = interp([ticks], observer=observe)
    passes = 1500
    run = worker.start(ticks, passes)
    for _ in range(passes):
        assert parked.wait(PATIENCE)
        parked.clear()
        worker.deliver(run, "tick")
    assert worker.result(run, timeout=PATIENCE) == passes
    assert len(worker._runtime._alarms.heap) <= 1100, "every replaced alarm is still kept"


def test_a_test_clock_keeps_no_shut_down_worker_alive() -> None:
    clock = FakeClock()  # shared by many tests' workers, as a fixture may be
    worker = Interpreter(MemoryStore(), [], clock=clock)
    runtime = weakref.ref(worker._runtime)
    worker.shutdown()
    del worker
    gc.collect()
    assert runtime() is None, "the clock's listener keeps a stopped worker (and its store) alive"
    clock.advance(1)  # a listener whose worker is gone does nothing
