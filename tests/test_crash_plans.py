"""The crash harness's plan language and checker for child runs and deadlines, in process.

``crash.plans`` computes a plan's uncrashed outcome (its children's too) without any engine;
these tests hold it to the engine's, and show that each new invariant of ``crash.check``
fires on a store that breaks it (a clean uncrashed run, then tampered with).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter, MemoryStore
from replaygen.store import Entry, RunRecord

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from crash import check, plans  # noqa: E402
from crash.scenarios import CHILD_OPS, STRIKE_OPS, random_plan  # noqa: E402

RUNS = [("kids", CHILD_OPS), ("strikes", STRIKE_OPS)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemoryStore, list[Any]]]:
    """The plans run to their end, uncrashed, with every step in the side-effect log."""
    log = tmp_path_factory.mktemp("effects") / "effects.log"
    plans.configure(str(log))
    store = MemoryStore()
    try:
        with Interpreter(store, {plans.WORKFLOW: plans.plan}) as interp:
            for run_id, ops in RUNS:
                interp.start(plans.WORKFLOW, run_id, ops, run_id=run_id)
            for run_id, _ in RUNS:
                interp.result(run_id, timeout=30)
            # struck by its inherited deadline, it goes on to its end: a child whose end
            # its parent did not wait for (its own strike came first)
            assert interp.result("strikes/6", timeout=30) == plans.tree(
                "strikes", STRIKE_OPS)["strikes/6"].result
    finally:
        plans.configure(None)
    yield store, check.read_lines(str(log))


def copy(store: MemoryStore) -> MemoryStore:
    out = MemoryStore()
    todo = [run_id for run_id, _ in RUNS]
    for run_id in todo:
        todo += [k.run_id for k in store.runs(parent=run_id, limit=1000)]
        out.put(store.get(run_id), store.journal(run_id))  # type: ignore[arg-type]
    return out


def violations(store: Any, effects: list[Any], final: bool = True) -> list[str]:
    rep = check.check(store, RUNS, effects, crashed=set(), stalled=set(), final=final)
    return sorted({v.invariant for v in rep.violations})


def change(store: MemoryStore, run_id: str, journal: list[Entry] | None = None,
           **fields: Any) -> None:
    rec = store.get(run_id)
    assert rec is not None
    store.put(dataclasses.replace(rec, **fields), store.journal(run_id) if journal is None
              else journal)


def test_an_uncrashed_run_passes_every_invariant_children_and_deadlines_included(
        clean: tuple[MemoryStore, list[Any]]) -> None:
    store, effects = clean
    assert violations(store, effects) == []
    expect = {k: v for run_id, ops in RUNS for k, v in plans.tree(run_id, ops).items()}
    assert set(expect) == {"kids", "kids/1", "kids/2", "kids/3", "kids/3/1", "kids/5",
                           "strikes", "strikes/6"}
    for run_id, e in expect.items():
        rec = store.get(run_id)
        assert rec is not None and rec.state == e.state
        assert rec.parent == e.parent
        if e.state == "completed":
            assert json.loads(rec.result or "") == e.result
    assert expect["strikes"].result["signals"] == ["deadline"] * 3


def test_a_second_spawn_entry_at_a_childs_position_is_caught(
        clean: tuple[MemoryStore, list[Any]]) -> None:
    store, effects = copy(clean[0]), clean[1]
    journal = store.journal("kids")
    spawn = next(e for e in journal if e.kind == "spawn")
    change(store, "kids", journal + [spawn._replace(seq=len(journal))])
    assert check.SPAWN in violations(store, effects)


def test_a_child_that_is_missing_or_has_other_arguments_is_caught(
        clean: tuple[MemoryStore, list[Any]]) -> None:
    store, effects = copy(clean[0]), clean[1]
    change(store, "kids/2", args=json.dumps({"args": ["kids/2", [["do", "x", 5]]], "kwargs": {}}))
    assert violations(store, effects) == [check.CHILDREN]

    class Hiding:  # a store that lost a child run, though its parent journaled the spawn
        def __getattr__(self, name: str) -> Any:
            return getattr(clean[0], name)

        def runs(self, **where: Any) -> list[RunRecord]:
            return [r for r in clean[0].runs(**where) if r.run_id != "kids/3"]

    assert check.CHILDREN in violations(Hiding(), effects)


def test_an_unfinished_descendant_of_a_finished_run_is_caught_unless_being_cancelled(
        clean: tuple[MemoryStore, list[Any]]) -> None:
    store, effects = copy(clean[0]), clean[1]
    change(store, "kids/3/1", state="waiting")
    assert check.TREE in violations(store, effects, final=False)
    change(store, "kids/3/1", cancel_requested=True)
    assert check.TREE not in violations(store, effects, final=False)
    assert check.TREE in violations(store, effects, final=True)


def test_an_early_strike_or_a_wrong_inherited_deadline_is_caught(
        clean: tuple[MemoryStore, list[Any]]) -> None:
    store, effects = copy(clean[0]), clean[1]
    journal = store.journal("strikes")
    first = next(i for i, e in enumerate(journal) if e.kind == "cancel")
    deadline = float(json.loads(journal[first - 2].value or ""))
    journal[first] = journal[first]._replace(started=deadline - 0.01)
    change(store, "strikes", journal)
    assert violations(store, effects) == [check.DEADLINE]

    store = copy(clean[0])
    args = json.loads(store.get("kids/5").args)  # type: ignore[union-attr]
    change(store, "kids/5", args=json.dumps({**args, "deadline": args["deadline"] + 60}))
    assert violations(store, effects) == [check.DEADLINE]


@pytest.mark.parametrize("ops, why", [
    ([["deadline", 0.3], ["do", "a", 5]], "comes between a near deadline"),
    ([["child", "c", [["wait", "go"]]]], "the signaler addresses top-level runs only"),
    ([["child", "c", [["park"]]]], "under a None deadline"),
    ([["hold", "wait"]], "parks for good"),
    ([["strike_child", 0.3, "c", [["hold", "wait"], ["park"]]]], "races the clock"),
])
def test_a_plan_whose_outcome_would_depend_on_timing_is_refused(ops: list[Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        plans.tree("r", ops)


def test_random_plans_are_all_well_formed() -> None:
    import random

    for seed in range(40):
        rng = random.Random(seed)
        for j in range(16):
            plans.tree(f"r{j}", random_plan(rng, f"r{j}"))  # raises if not
