"""The crash harness's operation invariants (purge, fork, limits), in process.

Each check of ``crash.check`` passes on a store the engine left uncrashed and fires on one
tampered to break it; the SIGKILL rows themselves run in ``python -m crash`` (tests/test_crash.py).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from crash import check, plans  # noqa: E402
from crash.operations import DONE, GATED, PLAIN, WAITS  # noqa: E402

FORKS: list[tuple[str, str, str | int, list[Any]]] = [
    ("gated~c", "gated", "c", GATED), ("plain~3", "plain", 3, PLAIN)]


def invariants(bad: list[check.Violation]) -> list[str]:
    return sorted({v.invariant for v in bad})


def change(store: MemoryStore, run_id: str, journal: list[Any] | None = None,
           **fields: Any) -> None:
    rec = store.get(run_id)
    assert rec is not None
    store.put(dataclasses.replace(rec, **fields),
              store.journal(run_id) if journal is None else journal)


@pytest.fixture
def purgeable() -> Iterator[tuple[Interpreter, MemoryStore, check.Snapshot]]:
    """Two completed runs with a queued signal each, and one waiting for good."""
    store = MemoryStore()
    with Interpreter(store, {plans.WORKFLOW: plans.plan}) as interp:
        for run_id, ops in (("d0", DONE), ("d1", DONE), ("w0", WAITS)):
            interp.start(plans.WORKFLOW, run_id, ops, run_id=run_id)
            interp.deliver(run_id, "go", plans.payload(run_id, "go", 0))
            interp.deliver(run_id, "x", "extra")
        interp.result("d0", timeout=10)
        interp.result("d1", timeout=10)
        yield interp, store, check.snapshot(store, ["d0", "d1", "w0"])


def test_a_whole_purge_passes_and_a_partial_one_is_caught(
        purgeable: tuple[Interpreter, MemoryStore, check.Snapshot]) -> None:
    interp, store, snap = purgeable
    eligible = {"d0", "d1"}
    assert check.check_purge(store, snap, eligible, final=False) == []
    assert invariants(check.check_purge(store, snap, eligible, final=True)) == [check.PURGE_ALL]
    change(store, "d0", journal=store.journal("d0")[:2])  # the run row kept, entries gone
    assert invariants(check.check_purge(store, snap, eligible, final=False)) == [
        check.PURGE_WHOLE]
    store.put(snap["d0"][0], snap["d0"][1])
    assert interp.purge(0) == 2
    assert check.check_purge(store, snap, eligible, final=True) == []
    change(store, "d1", journal=snap["d1"][1][:1])  # a tombstone that kept an entry
    change(store, "w0", updated=1.0)                  # an unfinished run touched
    assert invariants(check.check_purge(store, snap, eligible, final=True)) == sorted([
        check.PURGE_SPARED, check.PURGE_WHOLE])


def test_starting_a_purged_id_again_is_checked(
        purgeable: tuple[Interpreter, MemoryStore, check.Snapshot]) -> None:
    interp, store, _ = purgeable
    interp.purge(0)
    at = 1e12  # later than any step of the setup
    good = [{"run": "d0", "same": True, "error": None, "at": at},
            {"run": "d0", "same": False, "error": "UsageError: ...", "at": at}]
    assert check.check_restarts(store, good, [], {"d0", "d1"}) == []
    ran = [{"run": "d0", "step": "a", "pos": 0, "attempt": 1, "pid": 1, "t": at + 1}]
    assert invariants(check.check_restarts(store, good, ran, {"d0", "d1"})) == [
        check.PURGED_START]
    refused = [{**good[0], "error": "UsageError: ..."}, {**good[1], "error": None}]
    assert len(check.check_restarts(store, refused, [], {"d0", "d1"})) == 2


@pytest.fixture
def forked(tmp_path: Path) -> Iterator[tuple[MemoryStore, check.Snapshot, list[Any]]]:
    """A source failed by a closed gate and a completed one, each forked once the gate is
    open, every step in the side-effect log."""
    log = tmp_path / "effects.log"
    plans.configure(str(log))
    store = MemoryStore()
    try:
        with Interpreter(store, {plans.WORKFLOW: plans.plan}) as interp:
            for run_id, ops in (("gated", GATED), ("plain", PLAIN)):
                interp.start(plans.WORKFLOW, run_id, ops, run_id=run_id)
            interp.deliver("gated", "go", plans.payload("gated", "go", 0))
            with pytest.raises(Exception, match="gate is closed"):
                interp.result("gated", timeout=10)
            interp.result("plain", timeout=10)
            snap = check.snapshot(store, ["gated", "plain"])
            (tmp_path / plans.GATE).touch()
            for new, src, at, _ in FORKS:
                interp.fork(src, at, run_id=new)
                interp.result(new, timeout=10)
    finally:
        plans.configure(None)
    yield store, snap, check.read_lines(str(log))


def fork_invariants(store: MemoryStore, snap: check.Snapshot, effects: list[Any],
                    final: bool = True) -> list[str]:
    return invariants([v for f in FORKS for v in check.check_fork(
        store, f, snap, effects, crashed=set(), final=final).violations])


def test_a_whole_fork_passes_and_its_result_is_its_plans(
        forked: tuple[MemoryStore, check.Snapshot, list[Any]]) -> None:
    store, snap, effects = forked
    assert fork_invariants(store, snap, effects) == []
    at, prefix = check.fork_prefix(snap["gated"][1], "c")
    assert at == 3 and [e.kind for e in prefix if e.kind != "timer"] == ["do", "wait", "do"]
    assert json.loads(store.get("gated~c").result) == plans.expected("gated", GATED)


def test_a_partial_or_misplaced_fork_is_caught(
        forked: tuple[MemoryStore, check.Snapshot, list[Any]]) -> None:
    store, snap, effects = forked
    journal = store.journal("gated~c")
    change(store, "gated~c", journal=[e._replace(seq=i) for i, e in enumerate(journal[1:])])
    assert check.FORK_WHOLE in fork_invariants(store, snap, effects)
    change(store, "gated~c", journal=journal, forked_from=None)
    assert fork_invariants(store, snap, effects) == [check.FORK_WHOLE]
    change(store, "gated~c", forked_from="gated")
    again = {"run": "gated~c", "step": "a", "pos": 0, "attempt": 1, "pid": 9, "t": 1e12}
    assert fork_invariants(store, snap, [*effects, again]) == [check.FORK_PREFIX]
    change(store, "plain", updated=1.0)  # the source changed
    assert fork_invariants(store, snap, effects) == [check.FORK_WHOLE]


def test_a_fork_not_made_is_fine_until_the_end(
        forked: tuple[MemoryStore, check.Snapshot, list[Any]]) -> None:
    _, snap, effects = forked
    empty = MemoryStore()
    for rec, journal, _ in snap.values():
        empty.put(rec, journal)
    assert fork_invariants(empty, snap, effects, final=False) == []
    assert fork_invariants(empty, snap, effects) == [check.FORK_WHOLE]


def test_more_runs_inside_a_step_than_the_limit_is_caught() -> None:
    runs = [(f"r{i}", [["do", "a", 100]]) for i in range(3)]
    effects = [{"run": f"r{i}", "step": "a", "pos": 0, "attempt": 1, "pid": 10 + i,
                "t": 1.0 + i * 0.03} for i in range(3)]
    bad, most = check.check_limit(2, runs, effects, [])
    assert most == 3 and invariants(bad) == [check.LIMIT]
    # the first one's process died at 1.05: it was inside its step no longer
    died = {"pid": 10, "t": 1.05, "at": "in_step", "run": "r0"}
    assert check.check_limit(2, runs, effects, [died]) == ([], 2)
    assert check.check_limit(3, runs, effects, []) == ([], 3)
    back_to_back = [{**x, "t": 1.0 + i * 0.125} for i, x in enumerate(effects)]
    assert check.check_limit(1, runs, back_to_back, []) == ([], 1)


def test_a_dead_holders_run_or_slot_taken_while_its_lease_lasts_is_caught() -> None:
    runs = [(f"r{i}", [["do", "a", 100], ["do", "b", 100]]) for i in range(3)]
    x = lambda run, step, pos, pid, t: {  # noqa: E731
        "run": run, "step": step, "pos": pos, "attempt": 1, "pid": pid, "t": t}
    killed = {"pid": 10, "t": 1.05, "at": "in_step", "run": "r0", "lease_until": 2.0}
    before = [x("r0", "a", 0, 10, 1.0), x("r1", "a", 0, 11, 1.0)]
    # r0's step again at 2.1, after the lease; r2 got r1's slot (r1 ended): fine
    fine = before + [x("r2", "a", 0, 11, 1.2), x("r0", "a", 0, 11, 2.1)]
    assert check.check_limit(2, runs, fine, [killed]) == ([], 2)
    early = before + [x("r0", "a", 0, 11, 1.5)]  # r0 taken while its lease lasted
    assert invariants(check.check_limit(2, runs, early, [killed])[0]) == [check.LIMIT]
    slot = before + [x("r2", "a", 0, 12, 1.06)]  # r1 and r2 inside: r0's slot given away
    bad, most = check.check_limit(2, runs, slot, [killed])
    assert most == 2 and "slot was given away" in bad[0].detail
