"""The store conformance suite: every store must pass these tests unchanged.

Use it from a test module with one fixture::

    from replaygen.stores.conformance import *  # noqa: F403

    @pytest.fixture
    def store_factory(tmp_path):
        return lambda: MyStore(tmp_path / "db")   # each call: a new handle on ONE fresh database

The suite checks the protocol directly (atomicity, fencing, claims, leases,
signals, cancels, hostile identifiers) and then runs real workflows through an
Interpreter on the store, including restarts. Needs pytest.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from replaygen import (
    All, Cancelled, Child, ChildFailed, Deadline, DeadlineExceeded, Do, Interpreter,
    NonDeterminismError, ReplaygenError, RunFinished, RunNotFound, Sleep, StepFailed, Store,
    Version, Wait,
)
from replaygen import Any as AnyOf
from replaygen.store import ACTIVE, Entry, Notice, RunRecord, Spawn, Write
from replaygen.testing import FakeClock

StoreFactory = Callable[[], Store]
BLOCKED_TOO = (*ACTIVE, "blocked")
Tamper = Callable[[str, "int | None", str, Any], None]
"""``tamper(run_id, seq, column, value)``: set one column of a run's row (``seq`` None) or of
its journal row ``seq`` behind the store's back, as another program damaging it would."""
HOSTILE = ["o'brien \"quoted\"", "'; DROP TABLE runs; --", "ünïcödé ✓ 漢字 🚀", "a\\b%_*?", " ", "x" * 255]


def create(store: Store, run_id: str, workflow: str, args: str, owner: str) -> RunRecord | None:
    """Insert a pending run owned by ``owner`` (a start's write); None, or the existing run,
    unchanged."""
    if store.commit([Write(run_id, owner, 1, "pending", create=(workflow, args))])[0]:
        return None
    return store.get(run_id)


def _entry(seq: int, position: int | None = None, kind: str = "do", name: str = "s",
           value: str | None = '{"v":1}') -> Entry:
    return Entry(seq, seq if position is None else position, kind, name, "ok", value, 1.0, 2.0)


@pytest.fixture
def store(store_factory: StoreFactory) -> Iterator[Store]:
    s = store_factory()
    yield s
    s.close()


@pytest.fixture
def tamper() -> Tamper:
    """Override it to run the tests of damaged rows (see ``Tamper``)."""
    pytest.skip("this store's test module gives the suite no way to damage a row")


# ---- the protocol -----------------------------------------------------------------


def test_create_is_idempotent_and_returns_the_existing_run(store: Store) -> None:
    assert create(store, "r1", "wf", '{"args":[1]}', "A") is None
    old = create(store, "r1", "other", '{"args":[2]}', "B")
    assert old is not None and (old.workflow, old.args, old.owner) == ("wf", '{"args":[1]}', "A")
    r = store.get("r1")
    assert r is not None and (r.state, r.fence, r.cancel_requested, r.resumes) == ("pending", 1, False, 0)
    assert store.get("nope") is None


def test_many_creates_in_one_commit_each_get_their_own_outcome(store: Store) -> None:
    create(store, "old", "wf", '{"args":[0]}', "A")
    made = store.commit([
        Write(r, "A", 1, "pending", release=True, create=("wf", f'{{"args":[{i}]}}'))
        for i, r in enumerate(["a", "old", "b", "a", "c"])])
    assert made == [True, False, True, False, True]  # a second create of "a" finds it taken
    for i, r in [(0, "a"), (2, "b"), (4, "c")]:
        rec = store.get(r)
        assert rec is not None and (rec.args, rec.owner, rec.state) == (
            f'{{"args":[{i}]}}', None, "pending")
    old = store.get("old")
    assert old is not None and old.args == '{"args":[0]}'


def test_commit_appends_entries_and_updates_the_run_atomically(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    assert store.commit([Write("r", "A", 1, "running", (_entry(0), _entry(1)))]) == [True]
    assert [e.seq for e in store.journal("r")] == [0, 1]
    assert store.journal("r")[0] == _entry(0)
    assert store.commit([Write("r", "A", 1, "completed", result='"done"', release=True)]) == [True]
    r = store.get("r")
    assert r is not None and (r.state, r.result, r.owner) == ("completed", '"done"', None)


def test_a_write_with_a_stale_fence_or_owner_is_refused_and_leaves_no_trace(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    assert store.commit([Write("r", "A", 2, "running", (_entry(0),)),
                         Write("r", "B", 1, "running", (_entry(0),))]) == [False, False]
    assert store.journal("r") == []
    assert store.commit([Write("missing", "A", 1, "running")]) == [False]


def test_an_append_only_write_is_still_fenced(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "running", (_entry(0),))])
    assert store.commit([Write("r", "A", 1, "running", (_entry(1), _entry(2)), keep=True),
                         Write("r", "B", 1, "running", (_entry(3),), keep=True)]) == [True, False]
    assert [e.seq for e in store.journal("r")] == [0, 1, 2]
    [claim] = store.claim("C", dead=["A"])
    assert store.commit([Write("r", "A", 1, "running", (_entry(3),), keep=True)]) == [False]
    assert claim.journal == store.journal("r") and store.get("r").state == "running"  # type: ignore[union-attr]


def test_a_duplicate_journal_position_is_impossible(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "running", (_entry(0),))])
    with pytest.raises(Exception):  # noqa: B017 (each store raises its own type)
        store.commit([Write("r", "A", 1, "running", (_entry(0, value='"again"'),))])
    assert store.journal("r") == [_entry(0)]


def test_group_commit_applies_each_write_on_its_own_fence(store: Store) -> None:
    for rid in ("a", "b", "c"):
        create(store, rid, "wf", "{}", "A")
    out = store.commit([Write("a", "A", 1, "running", (_entry(0),)),
                        Write("b", "A", 9, "running", (_entry(0),)),
                        Write("c", "A", 1, "running", (_entry(0),))])
    assert out == [True, False, True]
    assert [len(store.journal(r)) for r in "abc"] == [1, 0, 1]


def test_a_mixed_batch_applies_every_write_or_refuses_it_alone(store: Store) -> None:
    for rid in ("a", "b", "c"):
        create(store, rid, "wf", "{}", "A")
    store.commit([Write("a", "A", 1, "running", (_entry(0),))])
    # A start, a step, a finish with its last entry and a park, all at once.
    assert store.commit([
        Write("new", "A", 1, "pending", create=("wf", "[1]")),
        Write("a", "A", 1, "running", (_entry(1),), keep=True),
        Write("b", "A", 1, "completed", (_entry(0),), result="7", release=True),
        Write("c", "A", 1, "sleeping", wake_at=5.0),
    ]) == [True] * 4
    assert [len(store.journal(r)) for r in ("a", "b", "c", "new")] == [2, 1, 0, 0]
    b, c, new = store.get("b"), store.get("c"), store.get("new")
    assert b is not None and (b.state, b.result, b.owner) == ("completed", "7", None)
    assert c is not None and (c.state, c.wake_at) == ("sleeping", 5.0)
    assert new is not None and (new.workflow, new.args, new.owner) == ("wf", "[1]", "A")
    # A start of an existing run and a stale step are refused; the rest of the batch lands.
    assert store.commit([
        Write("a", "A", 1, "running", (_entry(2),), keep=True),
        Write("new", "B", 1, "pending", create=("wf", "[2]")),
        Write("c", "A", 7, "running", (_entry(0),), keep=True),
        Write("c", "A", 1, "running", (_entry(0),)),
    ]) == [True, False, False, True]
    assert [len(store.journal(r)) for r in ("a", "c")] == [3, 1]
    new = store.get("new")
    assert new is not None and (new.args, new.owner) == ("[1]", "A")


def test_runs_of_a_live_worker_are_not_claimed(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["wf"])
    create(store, "r", "wf", "{}", "A")
    assert store.claim("B") == []


def test_a_dead_owner_s_runs_are_claimed_with_a_new_fence(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["wf"])
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "running", (_entry(0),))])
    [claim] = store.claim("B", dead=["A"])
    assert (claim.run.owner, claim.run.fence, claim.run.resumes) == ("B", 2, 1)
    assert claim.journal == [_entry(0)]
    assert store.commit([Write("r", "A", 1, "running", (_entry(1),))]) == [False]
    assert store.commit([Write("r", "B", 2, "running", (_entry(1),))]) == [True]


def test_a_lapsed_lease_frees_the_runs(store: Store) -> None:
    store.heartbeat("A", 0.2, workflows=["wf"])
    create(store, "r", "wf", "{}", "A")
    assert store.claim("B") == []
    time.sleep(0.35)
    assert [c.run.run_id for c in store.claim("B")] == ["r"]


def test_resumes_count_only_deaths_while_working(store: Store) -> None:
    for rid, state in (("working", "running"), ("parked", "sleeping")):
        create(store, rid, "wf", "{}", "A")
        store.commit([Write(rid, "A", 1, state)])
    store.release("A")  # a graceful release is not a death
    claims = {c.run.run_id: c.run for c in store.claim("B")}
    assert claims["working"].resumes == 0 and claims["parked"].resumes == 0
    claims = {c.run.run_id: c.run for c in store.claim("C", dead=["B"])}
    assert (claims["working"].resumes, claims["parked"].resumes) == (1, 0)
    store.commit([Write("working", "C", claims["working"].fence, "running", (_entry(0),))])
    assert store.get("working").resumes == 1  # type: ignore[union-attr]  # the engine says when
    store.commit([Write("working", "C", claims["working"].fence, "running", (_entry(1),),
                        progress=True)])
    assert store.get("working").resumes == 0  # type: ignore[union-attr]


def test_retrying_a_blocked_run_starts_its_crash_loop_count_afresh(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "running")])
    for i, owner in enumerate("BCD"):  # three deaths in a row without progress
        [claim] = store.claim(owner, dead=["A", "B", "C"][: i + 1])
    assert claim.run.resumes == 3
    store.commit([Write("r", "D", claim.run.fence, "blocked", error="{}", release=True)])
    [claim] = store.claim("E", states=BLOCKED_TOO, reset=True)
    assert claim.run.resumes == 0


def test_claim_filters_by_state_workflow_ids_and_limit(store: Store) -> None:
    for i in range(5):
        create(store, f"r{i}", "wf" if i < 4 else "other", "{}", "A")
    store.commit([Write("r0", "A", 1, "blocked", error='{"message":"x"}', release=True),
                  Write("r1", "A", 1, "completed", result="1", release=True)])
    store.release("A")
    claimed = store.claim("B", workflows=["wf"], run_ids=["r0", "r1", "r2"])
    assert {c.run.run_id for c in claimed} == {"r2"}
    assert len(store.claim("B", limit=1)) == 1
    assert {c.run.run_id for c in store.claim("C", dead=["B"], states=BLOCKED_TOO, reset=True)} >= {"r0"}
    assert "r1" not in {c.run.run_id for c in store.claim("D", dead=["B", "C"], states=BLOCKED_TOO)}


def test_release_frees_every_run_and_owners_lists_the_holders(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["wf"])
    create(store, "r", "wf", "{}", "A")
    assert store.owners() == ["A"]
    store.release("A")
    assert store.owners() == []
    assert store.get("r").owner is None  # type: ignore[union-attr]
    assert [c.run.fence for c in store.claim("B")] == [2]


def _served(store: Store) -> dict[str, list[str] | None]:
    return {owner: w.workflows for owner, w in store.workers().items()}


def _until(ready: Callable[[], object], what: str, cap: float = 30.0) -> None:
    """Poll until ``ready()``; fail naming ``what`` after ``cap`` seconds."""
    end = time.monotonic() + cap
    while not ready():
        assert time.monotonic() < end, f"gave up after {cap}s waiting for {what}"
        time.sleep(0.01)


def test_workers_lists_what_each_live_worker_advertised(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["shipping", "billing", HOSTILE[1], "billing"])
    store.heartbeat("B", 30.0, workflows=[])
    assert _served(store) == {"A": sorted(["billing", "shipping", HOSTILE[1]]), "B": []}


def test_a_heartbeat_replaces_the_advertised_names_and_tells_the_lease(
        store_factory: StoreFactory, store: Store) -> None:
    before = time.time()
    store.heartbeat("A", 30.0, workflows=["billing"])
    create(store, "r", "billing", "{}", "A")  # a store that makes its file on a write: now
    assert _served(store) == {"A": ["billing"]}
    assert before + 29 <= store.workers()["A"].lease_until <= time.time() + 31
    store.heartbeat("A", 30.0, workflows=["shipping", "billing"])
    other = store_factory()  # another handle on the same database
    try:
        assert _served(other) == {"A": ["billing", "shipping"]}
    finally:
        other.close()


def test_release_withdraws_a_worker_s_workflows(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["billing"])
    store.heartbeat("B", 30.0, workflows=["shipping"])
    create(store, "r", "billing", "{}", "A")
    store.release("A")
    assert _served(store) == {"B": ["shipping"]}


def test_a_worker_whose_lease_lapsed_is_no_longer_listed(store: Store) -> None:
    store.heartbeat("A", 0.5, workflows=["billing"])
    store.heartbeat("B", 60.0, workflows=["shipping"])
    create(store, "r", "billing", "{}", "A")
    _until(lambda: "A" not in store.workers(), "the lease of 0.5s of worker A to lapse")
    assert _served(store) == {"B": ["shipping"]}
    assert [c.run.run_id for c in store.claim("C")] == ["r"]  # claims judge it lapsed too


def test_signals_are_kept_in_order_and_consumed_once(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    store.deliver("r", "go", '"first"')
    store.deliver("r", "other", '"x"')
    store.deliver("r", "go", '"second"')
    sigs = store.signals("r")
    assert [(s.name, s.payload) for s in sigs] == [("go", '"first"'), ("other", '"x"'), ("go", '"second"')]
    assert store.commit([Write("r", "A", 1, "running", (_entry(0, kind="wait", name="go"),),
                               consume=(sigs[0].id,))]) == [True]
    assert [s.payload for s in store.signals("r")] == ['"x"', '"second"']
    with pytest.raises(Exception):  # noqa: B017 (each store raises its own type)  # consuming a signal twice is impossible
        store.commit([Write("r", "A", 1, "running", (_entry(1, kind="wait", name="go"),),
                            consume=(sigs[0].id,))])
    assert len(store.journal("r")) == 1


def test_deliver_to_an_unknown_or_finished_run_raises(store: Store) -> None:
    with pytest.raises(RunNotFound, match="nope"):
        store.deliver("nope", "go", "null")
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "failed", error="{}", release=True)])
    with pytest.raises(RunFinished, match="failed"):
        store.deliver("r", "go", "null")
    assert store.signals("r") == []


def test_cancel_is_idempotent_and_never_touches_a_finished_run(store: Store) -> None:
    with pytest.raises(RunNotFound):
        store.cancel("nope")
    create(store, "r", "wf", "{}", "A")
    assert store.cancel("r").cancel_requested
    assert store.cancel("r").cancel_requested
    create(store, "done", "wf", "{}", "A")
    store.commit([Write("done", "A", 1, "completed", result="1", release=True)])
    assert store.cancel("done").state == "completed"
    assert not store.cancel("done").cancel_requested


def test_terminate_ends_an_unfinished_run_and_fences_out_its_owner(store: Store) -> None:
    with pytest.raises(RunNotFound):
        store.terminate("nope", "{}")
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "sleeping", wake_at=5.0)])
    ended = store.terminate("r", '{"message":"abandoned"}')
    assert (ended.state, ended.owner, ended.error, ended.wake_at) == (
        "cancelled", None, '{"message":"abandoned"}', None)
    assert store.commit([Write("r", "A", 1, "running", (_entry(0),))]) == [False]
    assert store.journal("r") == []
    assert store.claim("B", states=BLOCKED_TOO, reset=True) == []
    again = store.terminate("r", '{"message":"twice"}')
    assert (again.state, again.error) == ("cancelled", '{"message":"abandoned"}')


def test_terminate_leaves_a_finished_run_as_it_is(store: Store) -> None:
    create(store, "done", "wf", "{}", "A")
    store.commit([Write("done", "A", 1, "completed", result="1", release=True)])
    assert (store.terminate("done", "{}").state, store.get("done").result) == (  # type: ignore[union-attr]
        "completed", "1")


def test_wakeups_report_signals_and_unseen_cancels_of_the_owner(store: Store) -> None:
    create(store, "a", "wf", "{}", "A")
    create(store, "b", "wf", "{}", "A")
    create(store, "c", "wf", "{}", "B")
    store.deliver("a", "go", "1")
    store.cancel("b")
    store.cancel("c")
    assert sorted(store.wakeups("A")) == [("a", False), ("b", True)]
    store.commit([Write("b", "A", 1, "running", (_entry(0, kind="cancel", name=""),), cancel_seen=True)])
    assert store.wakeups("A") == [("a", False)]


def test_a_write_makes_children_that_name_their_parent(store: Store) -> None:
    create(store, "p", "wf", "{}", "A")
    kids = (Spawn("p/0", "kid", '{"args":[1]}'), Spawn("p/1", "kid", '{"args":[2]}'))
    assert store.commit([Write("p", "A", 1, "waiting", (_entry(0, kind="spawn"),),
                               spawn=kids)]) == [True]
    for kid in kids:
        r = store.get(kid.run_id)
        assert r is not None and (r.workflow, r.args, r.state, r.owner, r.parent) == (
            "kid", kid.args, "pending", None, "p")
    assert [r.run_id for r in store.runs(parent="p")] == ["p/1", "p/0"]  # newest first
    assert store.runs(parent="nobody") == []
    # Unowned: any worker may claim them.
    assert {c.run.run_id for c in store.claim("B", run_ids=["p/0", "p/1"])} == {"p/0", "p/1"}


def test_a_refused_write_makes_no_children(store: Store) -> None:
    create(store, "p", "wf", "{}", "A")
    assert store.commit([Write("p", "A", 9, "running", spawn=(Spawn("p/0", "kid", "{}"),))]) \
        == [False]
    assert store.get("p/0") is None


def test_a_child_whose_id_exists_fails_the_whole_write(store: Store) -> None:
    create(store, "p", "wf", "{}", "A")
    create(store, "taken", "other", "{}", "B")
    with pytest.raises(Exception, match="taken"):  # noqa: B017 - each store its own type
        store.commit([Write("p", "A", 1, "running", (_entry(0, kind="spawn"),),
                            spawn=(Spawn("taken", "kid", "{}"),))])
    assert store.journal("p") == [] and store.get("taken").workflow == "other"  # type: ignore[union-attr]


def test_a_child_is_born_cancelled_while_its_parents_cancel_is_unseen(store: Store) -> None:
    create(store, "p", "wf", "{}", "A")
    store.cancel("p")
    assert store.commit([Write("p", "A", 1, "running", spawn=(Spawn("p/0", "kid", "{}"),))]) \
        == [True]
    assert store.get("p/0").cancel_requested  # type: ignore[union-attr]
    assert store.commit([Write("p", "A", 1, "running", cancel_seen=True,
                               spawn=(Spawn("p/1", "kid", "{}"),))]) == [True]
    assert not store.get("p/1").cancel_requested  # type: ignore[union-attr]  # compensation


def _family(store: Store) -> None:
    """g -> g/0 -> g/0/0, and a finished g/1."""
    create(store, "g", "wf", "{}", "A")
    store.commit([Write("g", "A", 1, "running", spawn=(Spawn("g/0", "wf", "{}"),
                                                        Spawn("g/1", "wf", "{}")))])
    store.claim("B", run_ids=["g/0", "g/1"])
    store.commit([Write("g/0", "B", 2, "running", spawn=(Spawn("g/0/0", "wf", "{}"),))])
    store.commit([Write("g/1", "B", 2, "completed", result="1", release=True)])


def test_cancel_reaches_every_unfinished_descendant(store: Store) -> None:
    _family(store)
    assert store.cancel("g").cancel_requested
    assert [store.get(r).cancel_requested for r in ("g/0", "g/0/0", "g/1")] == [  # type: ignore[union-attr]
        True, True, False]
    assert {r for r, cancel in store.wakeups("B") if cancel} == {"g/0"}
    assert store.cancel("g").cancel_requested  # twice is once


def test_a_write_cancels_runs_and_their_descendants(store: Store) -> None:
    _family(store)
    assert store.commit([Write("g", "A", 1, "running", cancel=("g/0",))]) == [True]
    assert store.get("g/0/0").cancel_requested and not store.get("g").cancel_requested  # type: ignore[union-attr]


def test_terminate_ends_every_unfinished_descendant_and_tells_the_parent(store: Store) -> None:
    _family(store)
    told = Notice("g", "replaygen:child:g/0", '{"state":"cancelled"}')
    r = store.terminate("g/0", '{"type":"Terminated","message":"x"}', told)
    assert r.state == "cancelled"
    assert [store.get(x).state for x in ("g/0", "g/0/0", "g/1", "g")] == [  # type: ignore[union-attr]
        "cancelled", "cancelled", "completed", "running"]
    assert store.get("g/0/0").fence == 2 and store.get("g/0/0").owner is None  # type: ignore[union-attr]
    assert [(s.name, s.payload) for s in store.signals("g")] == [(told.name, told.payload)]


def test_a_notice_reaches_an_unfinished_run_only(store: Store) -> None:
    _family(store)
    store.claim("C", run_ids=["g/0/0"])
    done = Notice("g/0", "replaygen:child:g/0/0", '{"state":"completed","result":1}')
    assert store.commit([Write("g/0/0", "C", 2, "completed", result="1", release=True,
                               notify=done)]) == [True]
    assert [s.payload for s in store.signals("g/0")] == [done.payload]
    store.commit([Write("g", "A", 1, "completed", result="1", release=True)])
    late = Notice("g", "replaygen:child:x", "{}")
    store.claim("C", run_ids=["g/0"])
    store.commit([Write("g/0", "C", 3, "completed", result="1", release=True, notify=late)])
    assert store.signals("g") == []  # a finished run takes no notice


def test_a_write_consumes_several_signals_at_once(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    ids = [store.deliver("r", name, '"x"') for name in ("a", "b", "c")]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == 3
    assert store.commit([Write("r", "A", 1, "running", consume=tuple(ids[:2]))]) == [True]
    assert [s.name for s in store.signals("r")] == ["c"]


def test_watch_wakes_when_another_thread_delivers(store_factory: StoreFactory, store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    token = store.watch(None, 0.5)
    assert store.watch(token, 0.05) == token  # nothing happened

    other = store_factory()
    threading.Timer(0.1, other.deliver, ("r", "go", "1")).start()
    started = time.monotonic()
    assert store.watch(token, 5.0) != token
    assert time.monotonic() - started < 2.0
    time.sleep(0.05)
    other.close()


def test_runs_lists_newest_first_with_filters(store: Store) -> None:
    for i in range(4):
        create(store, f"r{i}", "wf" if i % 2 else "other", "{}", "A")
        time.sleep(0.002)
    assert [r.run_id for r in store.runs()] == ["r3", "r2", "r1", "r0"]
    assert [r.run_id for r in store.runs(workflow="wf")] == ["r3", "r1"]
    assert [r.run_id for r in store.runs(limit=2, offset=1)] == ["r2", "r1"]
    assert store.runs(states=["completed"]) == []


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_identifiers_are_stored_byte_exact(store: Store, name: str) -> None:
    assert create(store, name, name, '{"a":"\\u0000"}', name) is None
    store.deliver(name, name, '"p"')
    store.commit([Write(name, name, 1, "running", (_entry(0, name=name),))])
    r = store.get(name)
    assert r is not None and (r.run_id, r.workflow, r.owner, r.args) == (name, name, name, '{"a":"\\u0000"}')
    assert store.journal(name)[0].name == name
    assert store.signals(name)[0].name == name
    assert [x.run_id for x in store.runs(workflow=name)] == [name]


def test_large_values_round_trip(store: Store) -> None:
    big = '"' + "é" * 500_000 + '"'
    create(store, "r", "wf", big, "A")
    store.commit([Write("r", "A", 1, "running", (_entry(0, value=big),))])
    assert store.get("r").args == big  # type: ignore[union-attr]
    assert store.journal("r")[0].value == big


# ---- operations: purge, fork, limits (the store's part) ----------------------------------


def _tomb(run: RunRecord) -> tuple[str, str]:
    return f"hash-of:{run.args}", json.dumps({"type": "Purged", "state": run.state})


def _finish(store: Store, run_id: str, state: str, owner: str = "A", **row: Any) -> None:
    create(store, run_id, "wf", '{"args":[1]}', owner)
    store.commit([Write(run_id, owner, 1, "running", (_entry(0),))])
    if state in ("completed", "failed", "cancelled", "blocked"):
        store.commit([Write(run_id, owner, 1, state, (_entry(1),), release=True, **row)])
    elif state != "running":
        store.commit([Write(run_id, owner, 1, state, wake_at=row.get("wake_at"))])


def test_purge_leaves_a_tombstone_of_each_old_finished_run_and_nothing_else(
        store: Store) -> None:
    _finish(store, "done", "completed", result='"ok"')
    _finish(store, "broke", "failed", error='{"type":"X"}')
    for rid, state in (("blocked", "blocked"), ("asleep", "sleeping"), ("busy", "running"),
                       ("fresh", "pending")):
        _finish(store, rid, state, error='{"type":"Y"}' if state == "blocked" else None)
    store.deliver("asleep", "s", "1")
    everything = ("completed", "failed", "cancelled", "blocked", "sleeping", "running", "pending")
    gone = store.purge(time.time() + 60, states=everything, limit=100, tombstone=_tomb)
    assert sorted(gone) == ["broke", "done"]  # never an unfinished or blocked run
    for rid, state in (("done", "completed"), ("broke", "failed")):
        r = store.get(rid)
        assert r is not None and (r.state, r.args, r.result, r.owner) == (
            "purged", 'hash-of:{"args":[1]}', None, None)
        assert json.loads(r.error or "") == {"type": "Purged", "state": state}
        assert store.journal(rid) == [] and store.signals(rid) == []
    for rid in ("blocked", "asleep", "busy", "fresh"):
        assert len(store.journal(rid)) >= 1 and store.get(rid).state != "purged"  # type: ignore[union-attr]
    assert len(store.signals("asleep")) == 1


def test_purge_takes_only_runs_finished_before_the_cutoff_oldest_first_within_limit(
        store: Store) -> None:
    for i in range(5):
        _finish(store, f"r{i}", "completed", result="1")
    cutoff = time.time() + 60
    assert store.purge(time.time() - 3600, states=("completed",), limit=10, tombstone=_tomb) == []
    assert store.purge(cutoff, states=("failed",), limit=10, tombstone=_tomb) == []
    assert store.purge(cutoff, states=("completed",), limit=2, tombstone=_tomb) == ["r0", "r1"]
    assert store.purge(cutoff, states=("completed",), limit=10, tombstone=_tomb) == [
        "r2", "r3", "r4"]
    assert store.purge(cutoff, states=("completed",), limit=10, tombstone=_tomb) == []


def test_a_tombstone_is_listed_only_when_asked_for_and_takes_no_signal_or_cancel(
        store: Store) -> None:
    _finish(store, "old", "completed", result="1")
    _finish(store, "kept", "completed", result="1")
    store.purge(time.time() + 60, states=("completed",), limit=1, tombstone=_tomb)
    assert [r.run_id for r in store.runs()] == ["kept"]
    assert [r.run_id for r in store.runs(states=("purged",))] == ["old"]
    assert store.counts().get(("wf", "purged")) == 1
    with pytest.raises(RunFinished):
        store.deliver("old", "s", "1")
    assert store.cancel("old").state == "purged"
    assert store.terminate("old", '{"type":"Terminated"}').state == "purged"
    create(store, "p", "wf", "{}", "A")
    store.commit([Write("p", "A", 1, "running", notify=Notice("old", "n", "1"))])
    assert store.signals("old") == []
    assert store.get("old").state == "purged"  # type: ignore[union-attr]


def test_a_created_run_may_start_with_a_copied_journal_and_its_source(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["wf"])
    prefix = (_entry(0), _entry(1, kind="sleep", value="5.0"))
    fork = Write("f", "A", 1, "pending", prefix, create=("wf", "{}", "src"))
    assert store.commit([fork]) == [True]
    r = store.get("f")
    assert r is not None and (r.owner, r.forked_from, r.parent) == ("A", "src", None)
    assert store.journal("f") == list(prefix)
    assert store.commit([Write("f", "A", 1, "running", (_entry(2),))]) == [True]
    released = Write("g", "client", 1, "pending", prefix, release=True,
                     create=("wf", "{}", "src"))
    assert store.commit([released, fork._replace(entries=())]) == [True, False]
    g = store.get("g")
    assert g is not None and (g.owner, g.forked_from, g.state) == (None, "src", "pending")
    assert store.journal("g") == list(prefix) and store.journal("f")[-1] == _entry(2)
    assert [c.run.run_id for c in store.claim("B")] == ["g"]


def _working(store: Store, run_id: str, owner: str, state: str = "running") -> None:
    create(store, run_id, "lim", "{}", owner)
    store.commit([Write(run_id, owner, 1, state)])


def test_an_admitting_write_goes_to_work_only_with_a_free_slot(store: Store) -> None:
    store.heartbeat("A", 30.0, workflows=["lim"])
    store.heartbeat("gone", -1.0, workflows=["lim"])  # its lease has lapsed
    _working(store, "a", "A")
    _working(store, "lost", "gone")  # holds no slot: its owner's lease lapsed
    _working(store, "w", "A", "sleeping")
    _working(store, "x", "A", "sleeping")
    assert store.commit([Write("w", "A", 1, "running", (_entry(0),), admit=2)]) == [True]
    w = store.get("w")
    assert w is not None and (w.state, w.owner) == ("running", "A")
    assert store.commit([Write("x", "A", 1, "running", (_entry(0, kind="woke"),), admit=2)]) == [None]
    x = store.get("x")
    assert x is not None and (x.state, x.owner, x.wake_at) == ("pending", None, None)
    assert store.journal("x") == [_entry(0, kind="woke")]  # its entries are kept either way
    assert store.commit([Write("x", "A", 1, "running", admit=2)]) == [False]  # released: fenced


def test_a_claim_with_limits_takes_working_runs_only_into_free_slots(store: Store) -> None:
    for owner in "ABCD":  # claimers are live workers: what they take is working
        store.heartbeat(owner, 30.0, workflows=["lim", "free"])
    _working(store, "a", "A")
    for i in range(4):
        create(store, f"p{i}", "lim", "{}", "A")
    _working(store, "nap", "A", "sleeping")
    create(store, "other", "free", "{}", "A")
    store.release("A")
    store.heartbeat("A", 30.0, workflows=["lim", "free"])
    store.commit([Write("a", "A", 1, "running")])  # "a" was released too: not working now
    [a] = store.claim("A", run_ids=["a"])  # ...until claimed again: it takes a slot
    took = {c.run.run_id for c in store.claim("B", limits={"lim": 2})}
    assert took == {"p0", "nap", "other"}  # one slot was free; a sleeping run takes none
    assert store.claim("C", limits={"lim": 2}) == []
    store.commit([Write("a", "A", a.run.fence, "completed", result="1", release=True)])
    assert {c.run.run_id for c in store.claim("C", limits={"lim": 2})} == {"p1"}
    assert {c.run.run_id for c in store.claim("D", limits={"lim": 3})} == {"p2"}


def test_claims_with_limits_on_two_handles_at_once_never_overfill(
        store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(4)]
    try:
        for i in range(40):
            create(stores[0], f"r{i}", "lim", "{}", "seed")
        stores[0].release("seed")
        taken: list[str] = []
        barrier = threading.Barrier(len(stores))

        def claim(k: int) -> None:
            stores[k].heartbeat(f"w{k}", 30.0, workflows=["lim"])
            barrier.wait()
            for _ in range(5):
                taken.extend(c.run.run_id for c in stores[k].claim(f"w{k}", limits={"lim": 3}))
        threads = [threading.Thread(target=claim, args=(k,)) for k in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(taken) == 3 and len(set(taken)) == 3
    finally:
        for s in stores:
            s.close()


# ---- workflows through an Interpreter on this store ---------------------------------

_calls: list[str] = []


def _step(name: str) -> dict[str, Any]:
    _calls.append(name)
    return {"step": name, "pair": (1, 2)}


def _failing() -> None:
    raise ValueError("card declined")


def _order(n: int) -> Any:
    first = yield Do("first", _step, "first")
    yield Sleep(3600)
    got = yield Wait("approve")
    both = yield All(Do("left", _step, "left"), Do("right", _step, "right"))
    try:
        yield Do("charge", _failing)
    except StepFailed as exc:
        failure = str(exc)
    return [n, first, got, both, failure]


def _poll(interp: Interpreter, run_id: str, state: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while interp.status(run_id).state != state:
        assert time.monotonic() < end, f"run stayed {interp.status(run_id).state}, not {state}"
        time.sleep(0.01)


def test_a_workflow_runs_across_a_restart(store_factory: StoreFactory) -> None:
    _calls.clear()
    clock = FakeClock()
    first = Interpreter(store_factory(), [_order], clock=clock)
    run_id = first.start(_order, 7, run_id="order-7")
    _poll(first, run_id, "sleeping")
    first.shutdown()

    second = Interpreter(store_factory(), [_order], clock=clock)
    assert second.recover() == [run_id]
    _poll(second, run_id, "sleeping")
    clock.advance(3600)
    _poll(second, run_id, "waiting")
    second.deliver(run_id, "approve", {"by": "ann"})
    result = second.result(run_id, timeout=10)
    second.shutdown()
    assert result[:4] == [7, {"step": "first", "pair": [1, 2]}, {"by": "ann"},
                          [{"step": "left", "pair": [1, 2]}, {"step": "right", "pair": [1, 2]}]]
    assert "charge" in result[4] and "ValueError" in result[4] and "card declined" in result[4]
    assert sorted(_calls) == ["first", "left", "right"]  # 'first' was replayed, not re-run


def _changed(n: int) -> Any:
    yield Do("second", _step, "second")  # was "first"
    return n


def _versioned(n: int) -> Any:
    v = yield Version("extra-step", 1, 2)
    if v == 2:
        yield Do("extra", _step, "extra")
    yield Do("first", _step, "first")
    yield Sleep(3600)
    return v


def test_changed_code_blocks_the_run_and_fixed_code_resumes_it(store_factory: StoreFactory) -> None:
    clock = FakeClock()
    old = Interpreter(store_factory(), {"wf": _order}, clock=clock)
    run_id = old.start("wf", 1)
    _poll(old, run_id, "sleeping")
    old.shutdown()

    broken = Interpreter(store_factory(), {"wf": _changed}, clock=clock)
    broken.recover()
    _poll(broken, run_id, "blocked")
    error = broken.status(run_id).error or ""
    assert "NonDeterminismError" in error and "'first'" in error and "'second'" in error
    broken.shutdown()

    fixed = Interpreter(store_factory(), {"wf": _order}, clock=clock)
    assert fixed.recover() == [run_id]
    _poll(fixed, run_id, "sleeping")
    fixed.shutdown()


def test_a_version_added_later_keeps_old_runs_on_the_old_path(store_factory: StoreFactory) -> None:
    clock = FakeClock()

    def before(n: int) -> Any:
        yield Do("first", _step, "first")
        yield Sleep(3600)
        return 0

    old = Interpreter(store_factory(), {"wf": before}, clock=clock)
    old_run = old.start("wf", 1)
    _poll(old, old_run, "sleeping")
    old.shutdown()

    new = Interpreter(store_factory(), {"wf": _versioned}, clock=clock)
    new.recover()
    new_run = new.start("wf", 2)
    _poll(new, new_run, "sleeping")
    clock.advance(3600)
    assert (new.result(old_run, timeout=10), new.result(new_run, timeout=10)) == (1, 2)
    new.shutdown()


def _cancellable(n: int) -> Any:
    try:
        yield Wait("never")
    except Cancelled:
        yield Do("undo", _step, "undo")
        raise


def test_cancel_reaches_a_waiting_run_on_this_store(store_factory: StoreFactory) -> None:
    interp = Interpreter(store_factory(), [_cancellable])
    run_id = interp.start(_cancellable, 1)
    _poll(interp, run_id, "waiting")
    interp.cancel(run_id)
    with pytest.raises(Cancelled):
        interp.result(run_id, timeout=10)
    assert interp.status(run_id).state == "cancelled"
    kinds = [e.kind for e in interp._store.journal(run_id)]  # noqa: SLF001
    assert kinds == ["timer", "cancel", "do"]  # the Wait as first reached, the cancel there
    interp.shutdown()


_GATE = threading.Event()


def _stuck() -> Any:
    yield Do("hold", _GATE.wait, 30)
    yield Do("after", _step, "after")


def _sleeper() -> Any:
    yield Sleep(3600)
    yield Do("after", _step, "after")


def test_terminate_ends_a_sleeping_and_a_running_run_on_this_store(
        store_factory: StoreFactory) -> None:
    gate = _GATE
    gate.clear()
    store = store_factory()
    interp = Interpreter(store, {"stuck": _stuck, "sleeper": _sleeper})
    try:
        sleeping, running = interp.start("sleeper"), interp.start("stuck")
        _poll(interp, sleeping, "sleeping")
        _poll(interp, running, "running")
        for run_id in (sleeping, running):
            assert interp.terminate(run_id, "abandoned by the operator").state == "cancelled"
            with pytest.raises(Cancelled, match="abandoned by the operator"):
                interp.result(run_id, timeout=10)
    finally:
        gate.set()  # the running step ends now: its result is refused by the fence
        interp.shutdown()  # waits for that step
    assert [e.kind for e in store.journal(sleeping)] == ["sleep"]
    assert store.journal(running) == []
    assert [store.get(r).state for r in (sleeping, running)] == ["cancelled"] * 2  # type: ignore[union-attr]


def test_terminate_ends_a_blocked_run(store: Store) -> None:
    create(store, "r", "wf", "{}", "A")
    store.commit([Write("r", "A", 1, "blocked", error='{"message":"bad"}', release=True)])
    assert store.terminate("r", '{"message":"gone"}').state == "cancelled"
    assert store.claim("B", states=BLOCKED_TOO, reset=True) == []

class _Price(float):
    """A float subclass, as numpy.float64 is."""


def _priced(n: int) -> Any:
    price = yield Do("price", _Price, 1.5)
    try:
        yield Do("nan", _Price, "nan")
    except StepFailed as exc:
        return [price, type(price).__name__, str(exc)]


def test_a_float_subclass_is_stored_as_its_float_and_a_nan_one_fails_its_step(
        store_factory: StoreFactory) -> None:
    store = store_factory()
    interp = Interpreter(store, [_priced])
    result = interp.result(interp.start(_priced, 1), timeout=10)
    interp.shutdown()
    store.close()
    assert result[:2] == [1.5, "float"]  # live equals replayed: the decoded value
    assert "'nan'" in result[2] and "JSON has no NaN or infinity" in result[2]


# ---- rows damaged by another program: only their own run suffers -------------------


def _stepper(n: int) -> Any:
    total = 0
    for i in range(3):
        total += yield Do(f"s{i}", int, n + i)
    got = yield Wait("go")
    return total + got


def _parked(store_factory: StoreFactory, *run_ids: str) -> None:
    """Runs of _stepper, three steps in and parked at their Wait by a worker that stopped."""
    store = store_factory()
    interp = Interpreter(store, {"stepper": _stepper})
    for run_id in run_ids:
        interp.start("stepper", 1, run_id=run_id)
    for run_id in run_ids:
        _poll(interp, run_id, "waiting")
    interp.shutdown()
    store.close()


def _only_bad_is_blocked(store_factory: StoreFactory) -> str:
    """Recover after the damage: 'good' still completes; return the blocked 'bad' run's error."""
    store = store_factory()
    interp = Interpreter(store, {"stepper": _stepper})
    assert "good" in interp.recover()
    interp.deliver("good", "go", 10)
    assert interp.result("good", timeout=10) == 1 + 2 + 3 + 10
    _poll(interp, "bad", "blocked")
    error = interp.status("bad").error or ""
    interp.shutdown()
    store.close()
    return error


@pytest.mark.parametrize("column, value, says", [
    ("value", "{truncated", "journal row 1"), ("value", "", "journal row 1"),
    ("kind", "bogus", "position 1"), ("name", "renamed", "'renamed'"),
    ("seq", 7, "where row 1 was expected"),
])
def test_a_damaged_journal_row_blocks_its_run_only(
        store_factory: StoreFactory, tamper: Tamper, column: str, value: Any, says: str) -> None:
    _parked(store_factory, "bad", "good")
    tamper("bad", 1, column, value)
    error = _only_bad_is_blocked(store_factory)
    assert "'bad'" in error and says in error


@pytest.mark.parametrize("args", ["{truncated", "[1, 2]", '{"args": 5}', ""])
def test_damaged_arguments_block_their_run_only(
        store_factory: StoreFactory, tamper: Tamper, args: str) -> None:
    _parked(store_factory, "bad", "good")
    tamper("bad", None, "args", args)
    error = _only_bad_is_blocked(store_factory)
    assert "'bad'" in error and "arguments" in error


def _ends(n: int) -> Any:
    yield Do("s", int, n)
    if n < 0:
        raise ValueError("negative")
    return n


def test_a_damaged_result_or_error_spoils_that_run_s_answer_only(
        store_factory: StoreFactory, tamper: Tamper) -> None:
    store = store_factory()
    first = Interpreter(store, {"ends": _ends})
    for run_id, n in (("ok", 1), ("bad-result", 2), ("bad-error", -1)):
        first.start("ends", n, run_id=run_id)
        _poll(first, run_id, "failed" if n < 0 else "completed")
    first.shutdown()
    store.close()
    tamper("bad-result", None, "result", "{truncated")
    tamper("bad-error", None, "error", "{truncated")

    store = store_factory()
    interp = Interpreter(store, {"ends": _ends})
    interp.recover()
    assert interp.result("ok", timeout=10) == 1
    with pytest.raises(ReplaygenError, match="'bad-result'.*cannot be decoded"):
        interp.result("bad-result", timeout=10)
    assert interp.status("bad-error").state == "failed"
    assert "{truncated" in (interp.status("bad-error").error or "")
    assert {r.run_id for r in store.runs()} == {"ok", "bad-result", "bad-error"}
    interp.shutdown()
    store.close()


def _kid(n: int) -> Any:
    return (yield Do("kid", _step, f"kid-{n}"))


def _kid_fails() -> Any:
    yield Do("kid-fails", _failing)


def _kid_waits() -> Any:
    try:
        return (yield Wait("never"))
    except Cancelled:
        yield Do("kid-undo", _step, "kid-undo")
        raise


def _parent(n: int) -> Any:
    both = yield All(Child(_kid, n), Child(_kid, n + 1))
    try:
        yield Child(_kid_fails)
    except ChildFailed as failure:
        undone = yield Do("compensate", _step, "compensate")
        return [both, failure.run_id, undone]


def _grandparent() -> Any:
    return (yield Child(_middle))


def _middle() -> Any:
    return (yield Child(_kid_waits))


_FAMILY: list[Callable[..., Any]] = [_kid, _kid_fails, _kid_waits, _parent, _grandparent, _middle]


def test_a_parent_awaits_children_and_compensates_a_failed_one_on_this_store(
        store_factory: StoreFactory) -> None:
    interp = Interpreter(store_factory(), _FAMILY)
    try:
        result = interp.result(interp.start(_parent, 1, run_id="p"), timeout=20)
        assert result[0] == [{"step": "kid-1", "pair": [1, 2]}, {"step": "kid-2", "pair": [1, 2]}]
        assert result[1:] == ["p/2", {"step": "compensate", "pair": [1, 2]}]
        assert interp.status("p").children == ("p/0", "p/1", "p/2")
        assert interp.status("p/2").state == "failed" and interp.status("p/2").parent == "p"
    finally:
        interp.shutdown()


def test_cancel_of_a_grandparent_reaches_its_grandchildren_on_this_store(
        store_factory: StoreFactory) -> None:
    interp = Interpreter(store_factory(), _FAMILY)
    try:
        interp.start(_grandparent, run_id="g")
        _until(lambda: interp.runs(parent="g/0") and interp.status("g/0/0").state == "waiting",
               "the grandchild to wait")
        interp.cancel("g")
        for run_id in ("g", "g/0", "g/0/0"):
            with pytest.raises(Cancelled):
                interp.result(run_id, timeout=20)
        assert "kid-undo" in [e.name for e in interp._store.journal("g/0/0")]  # noqa: SLF001
    finally:
        interp.shutdown()


def _deadline_parent() -> Any:
    yield Deadline(0.5)
    try:
        yield All(Child(_kid_waits), Sleep(3600))
    except DeadlineExceeded:
        return "struck"


def test_a_deadline_wakes_a_sleeping_run_and_cancels_its_children_on_this_store(
        store_factory: StoreFactory) -> None:
    interp = Interpreter(store_factory(), [*_FAMILY, _deadline_parent])
    try:
        started = time.time()
        assert interp.result(interp.start(_deadline_parent, run_id="d"), timeout=20) == "struck"
        assert time.time() - started >= 0.5  # never early
        with pytest.raises(Cancelled):
            interp.result("d/1", timeout=20)
        assert "kid-undo" in [e.name for e in interp._store.journal("d/1")]  # noqa: SLF001
    finally:
        interp.shutdown()


def _race() -> Any:
    first = yield AnyOf(Wait("approve"), Sleep(3600))
    second = yield AnyOf(Wait("approve"), Sleep(3600))
    last = yield Wait("last")
    return [first, second, last]


def test_any_of_a_wait_and_a_sleep_takes_the_first_and_replays_it_after_a_restart(
        store_factory: StoreFactory) -> None:
    clock = FakeClock()
    first = Interpreter(store_factory(), [_race], clock=clock)
    run_id = first.start(_race, run_id="race")
    _poll(first, run_id, "waiting")
    first.deliver(run_id, "approve", "yes")  # the Wait wins the first race
    _until(lambda: [e.kind for e in first._store.journal(run_id)].count("wait") == 1,  # noqa: SLF001
           "the signal to win")
    clock.advance(3601)  # the Sleep wins the second
    _until(lambda: "woke" in [e.kind for e in first._store.journal(run_id)],  # noqa: SLF001
           "the sleep to win")
    first.shutdown()
    second = Interpreter(store_factory(), [_race], clock=clock)
    second.recover()
    second.deliver(run_id, "approve", "late")  # stays queued: both races are decided
    second.deliver(run_id, "last", 1)
    try:
        assert second.result(run_id, timeout=20) == [[0, "yes"], [1, None], 1]
        assert [s.payload for s in second._store.signals(run_id)] == ['"late"']  # noqa: SLF001
    finally:
        second.shutdown()


def test_a_non_deterministic_error_names_both_sides() -> None:
    err = NonDeterminismError("r", 3, "do 'a'", "yielded Do('b')")
    assert "position 3" in str(err) and "'a'" in str(err) and "'b'" in str(err)
