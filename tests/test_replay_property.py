"""Property: any sequence of commands, run live and then replayed after a restart, gives the
workflow the same values both times and runs each step once (SPEC 4, 9 "live equals replayed").

Needs hypothesis; skipped without it.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from replaygen import Do, Interpreter, MemoryStore, Sleep, Wait
from replaygen.testing import FakeClock

from .conftest import EPOCH, PATIENCE

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
PLAN = st.lists(st.one_of(st.tuples(st.just("do"), JSON), st.tuples(st.just("wait"), JSON),
                          st.tuples(st.just("sleep"), st.just(None))), max_size=6)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(plan=PLAN)
def test_any_sequence_of_commands_replays_to_what_it_did_live(plan: list[tuple[str, Any]]) -> None:
    store, clock = MemoryStore(), FakeClock(EPOCH)
    calls: list[int] = []
    seen: list[list[Any]] = []

    def step(n: int, value: Any) -> Any:
        calls.append(n)
        return value

    def wf() -> Any:
        got = []
        for n, (kind, value) in enumerate(plan):
            if kind == "do":
                got.append((yield Do(f"step {n}", step, n, value)))
            elif kind == "wait":
                got.append((yield Wait(f"signal {n}")))
            else:
                got.append((yield Sleep(0)))
        seen.append(got)
        yield Wait("end")
        return got

    first = Interpreter(store, [wf], clock=clock)
    second = None
    try:
        run = first.start(wf)
        for n, (kind, value) in enumerate(plan):
            if kind == "wait":
                first.deliver(run, f"signal {n}", value)
        deadline = threading.Event()
        while first.status(run).waiting_for != "end" and not deadline.wait(0.002):
            pass
        first.shutdown()
        second = Interpreter(store, [wf], clock=clock)
        second.recover()
        second.deliver(run, "end")
        expected = [json.loads(json.dumps(value)) for _, value in plan]
        assert second.result(run, timeout=PATIENCE) == expected
        assert seen == [expected, expected]
        assert sorted(calls) == [n for n, (kind, _) in enumerate(plan) if kind == "do"]
    finally:
        first.shutdown()
        if second is not None:
            second.shutdown()
