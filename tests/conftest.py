"""Shared fixtures for the engine tests.

Every test gets its own ``MemoryStore`` and ``FakeClock``. ``interp`` builds
Interpreters over them and shuts each one down at teardown; building a second
one over the same store after ``shutdown()`` is a restart. Time passes only
when a test calls ``clock.advance``; the only real waiting is the short
polling of ``eventually`` for background threads to catch up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from replaygen import Interpreter, MemoryStore, RunNotFound, RunStatus
from replaygen.testing import FakeClock

EPOCH = 1_700_000_000.0
"""Where every test's FakeClock starts."""

PATIENCE = 5.0
"""Longest a test waits for background threads before it fails."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("REPLAYGEN_ALWAYS_REPLAY") == "1":
        skip = pytest.mark.skip(reason="counts how often the body runs, which always_replay "
                                       "changes by design")
        for item in items:
            if "counts_replays" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(EPOCH)


@pytest.fixture
def interp(store: MemoryStore, clock: FakeClock) -> Iterator[Callable[..., Interpreter]]:
    """``interp(workflows, **options)``: an Interpreter over this test's store and clock."""
    made: list[Interpreter] = []

    def make(workflows: Any, **options: Any) -> Interpreter:
        options.setdefault("clock", clock)
        # CI runs the engine tests once more with every run replayed after each step.
        options.setdefault("always_replay", os.environ.get("REPLAYGEN_ALWAYS_REPLAY") == "1")
        interpreter = Interpreter(options.pop("store", store), workflows, **options)
        made.append(interpreter)
        return interpreter

    yield make
    for interpreter in made:
        interpreter.shutdown(timeout=1.0)


@pytest.fixture
def restart(interp: Callable[..., Interpreter]) -> Callable[..., Interpreter]:
    """``restart(old, workflows, **options)``: shut ``old`` down, boot a new Interpreter over
    the same store and call ``recover()`` on it, as a process does on every boot."""

    def again(old: Interpreter, workflows: Any, *, timeout: float = 1.0, **options: Any) -> Interpreter:
        old.shutdown(timeout=timeout)
        new = interp(workflows, **options)
        new.recover()
        return new

    return again


@pytest.fixture
def eventually() -> Callable[..., Any]:
    """``eventually(predicate, what)``: poll until ``predicate()`` is truthy and return it."""

    def poll(predicate: Callable[[], Any], what: str = "the condition") -> Any:
        deadline = time.monotonic() + PATIENCE
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up after {PATIENCE}s waiting for {what}")
            time.sleep(0.002)

    return poll


@pytest.fixture
def reach(eventually: Callable[..., Any]) -> Callable[..., RunStatus]:
    """``reach(interpreter, run_id, *states)``: wait until the run is in one of ``states``."""

    def wait(interpreter: Interpreter, run_id: str, *states: str) -> RunStatus:
        def check() -> RunStatus | None:
            try:
                status = interpreter.status(run_id)
            except RunNotFound:  # not made yet (a child)
                return None
            return status if status.state in states else None

        return eventually(check, f"run {run_id!r} to be {' or '.join(states)}")  # type: ignore[no-any-return]

    return wait


@pytest.fixture
def gate(interp: Callable[..., Interpreter]) -> Iterator[Callable[[], threading.Event]]:
    """``gate()``: an Event a step can block on. Every gate opens at teardown, before the
    interpreters shut down (this fixture depends on ``interp``, so it is torn down first)."""
    made: list[threading.Event] = []

    def make() -> threading.Event:
        made.append(threading.Event())
        return made[-1]

    yield make
    for event in made:
        event.set()
