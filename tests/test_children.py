"""Child runs: a workflow that starts workflows and awaits them (``Child``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from .conftest import PATIENCE
from replaygen import (
    All, Cancelled, Child, ChildFailed, Client, Do, Interpreter, MemoryStore, StepFailed, UsageError,
    Wait, WorkflowFailed,
)
from replaygen.commands import child_id
from replaygen.store import Write
from replaygen.stores.conformance import create  # noqa: E402

Make = Callable[..., Interpreter]


def double(n: int) -> Any:
    return (yield Do("double", lambda: n * 2))


def fails() -> Any:
    yield Do("boom", lambda: 1 / 0)


def waits() -> Any:
    return (yield Wait("go"))


def undoes() -> Any:
    try:
        return (yield Wait("never"))
    except Cancelled:
        yield Do("undo", lambda: "undone")
        raise


def two_children(n: int) -> Any:
    return (yield All(Child(double, n), Child(double, n + 1)))


def saga() -> Any:
    try:
        yield Child(fails)
    except ChildFailed as failure:
        undone = yield Do("compensate", lambda: "refunded")
        return [failure.run_id, failure.error_type, undone]


WORKFLOWS = [double, fails, waits, undoes, two_children, saga]


def test_a_parent_awaits_two_children_in_all_and_gets_their_results_in_order(
        interp: Make) -> None:
    i = interp(WORKFLOWS)
    assert i.result(i.start(two_children, 5, run_id="p"), timeout=PATIENCE) == [10, 12]
    assert i.status("p").children == ("p/0", "p/1")
    for child in ("p/0", "p/1"):
        assert i.status(child).parent == "p" and i.status(child).state == "completed"
    assert i.status("p").parent is None


def test_a_failed_child_raises_child_failed_naming_it_and_the_parent_compensates(
        interp: Make) -> None:
    i = interp(WORKFLOWS)
    run = i.start(saga, run_id="order")
    assert i.result(run, timeout=PATIENCE) == ["order/0", "StepFailed", "refunded"]
    assert i.status("order/0").state == "failed"


def test_child_failed_carries_the_child_id_and_its_errors_message(interp: Make) -> None:
    def parent() -> Any:
        yield Child(fails)

    i = interp([*WORKFLOWS, parent])
    with pytest.raises(WorkflowFailed) as failed:
        i.result(i.start(parent, run_id="x"), timeout=PATIENCE)
    assert "ChildFailed" in str(failed.value) and "'x/0'" in str(failed.value)
    assert "ZeroDivisionError" in str(failed.value)


def test_a_cancelled_child_raises_cancelled_in_its_parent(interp: Make, reach: Any) -> None:
    def parent() -> Any:
        try:
            yield Child(waits)
        except Cancelled as exc:
            return f"child cancelled: {exc}"

    i = interp([*WORKFLOWS, parent])
    run = i.start(parent, run_id="p")
    reach(i, "p/0", "waiting")
    i.cancel("p/0")
    assert i.result(run, timeout=PATIENCE).startswith("child cancelled: child run 'p/0'")


def test_a_terminated_child_raises_cancelled_in_its_parent(interp: Make, reach: Any) -> None:
    def parent() -> Any:
        try:
            yield Child(waits)
        except Cancelled:
            return "gone"

    i = interp([*WORKFLOWS, parent])
    run = i.start(parent, run_id="p")
    reach(i, "p/0", "waiting")
    i.terminate("p/0", "not needed")
    assert i.result(run, timeout=PATIENCE) == "gone"


def test_a_given_child_id_is_used(interp: Make) -> None:
    def parent() -> Any:
        return (yield Child(double, 3, run_id="payment-42"))

    i = interp([*WORKFLOWS, parent])
    assert i.result(i.start(parent, run_id="p"), timeout=PATIENCE) == 6
    assert i.status("payment-42").parent == "p" and i.status("p").children == ("payment-42",)


def test_a_given_child_id_that_exists_is_an_error_raised_into_the_parent(
        interp: Make, reach: Any) -> None:
    def parent(key: str) -> Any:
        try:
            yield Child(double, 3, run_id=key)
        except ChildFailed as exc:
            return exc.error_message

    i = interp([*WORKFLOWS, parent])
    i.result(i.start(double, 1, run_id="other-args"), timeout=PATIENCE)
    i.result(i.start(double, 3, run_id="same-args"), timeout=PATIENCE)  # ended, same start
    i.start(waits, run_id="running")
    reach(i, "running", "waiting")
    for key in ("other-args", "same-args", "running"):  # never attached, as Temporal refuses
        message = i.result(i.start(parent, key, run_id=f"p-{key}"), timeout=PATIENCE)
        assert f"child run {key!r} cannot start: a run with that id exists" in message
        assert i.status(key).parent is None and i.status(f"p-{key}").children == ()


def test_child_arguments_that_cannot_be_stored_fail_the_child_clearly(interp: Make) -> None:
    def parent() -> Any:
        try:
            yield Child(double, object())
        except ChildFailed as exc:
            return exc.error_message

    i = interp([*WORKFLOWS, parent])
    message = i.result(i.start(parent, run_id="p"), timeout=PATIENCE)
    assert "the arguments of child run 'p/0' cannot be stored" in message
    assert i.status("p").children == ()


def test_a_derived_child_id_stays_within_the_id_limit_and_is_stable() -> None:
    long = "x" * 255
    made = child_id(long, 12)
    assert len(made) <= 255 and made == child_id(long, 12) != child_id(long, 13)
    assert child_id("order-42", 3) == "order-42/3"


def test_a_parent_replayed_after_a_restart_never_starts_a_finished_child_again(
        interp: Make, restart: Any, reach: Any) -> None:
    calls: list[int] = []

    def counted(n: int) -> Any:
        return (yield Do("count", lambda: calls.append(n) or n))

    def parent() -> Any:
        first = yield Child(counted, 1)
        go = yield Wait("go")
        return [first, go]

    i = interp([counted, parent])
    run = i.start(parent, run_id="p")
    reach(i, run, "waiting")
    again = restart(i, [counted, parent])
    again.deliver(run, "go", 2)
    assert again.result(run, timeout=PATIENCE) == [1, 2]
    assert calls == [1]
    assert again.status("p").children == ("p/0",)


def test_a_parent_resumes_with_the_result_of_a_child_that_ended_while_it_was_down(
        interp: Make, store: MemoryStore, reach: Any) -> None:
    def parent() -> Any:
        return (yield Child(waits))

    first = interp([parent, waits])
    run = first.start(parent, run_id="p")
    reach(first, "p/0", "waiting")
    first.shutdown()
    children = interp([waits])  # knows only the child
    children.recover()
    children.deliver("p/0", "go", "done")
    reach(children, "p/0", "completed")
    children.shutdown()
    parents = interp([parent])
    parents.recover()
    assert parents.result(run, timeout=PATIENCE) == "done"


def test_a_worker_that_does_not_know_the_childs_workflow_leaves_it_to_one_that_does(
        interp: Make, store: MemoryStore) -> None:
    def parent() -> Any:
        return (yield Child("double", 21))

    parents = interp([parent])
    parents.recover()
    run = parents.start(parent, run_id="p")
    children = interp({"double": double})
    children.recover()
    assert parents.result(run, timeout=PATIENCE) == 42
    assert store.get("p/0").workflow == "double"  # type: ignore[union-attr]


def test_a_parent_holds_no_thread_while_its_children_wait(interp: Make, reach: Any) -> None:
    def parent(k: int) -> Any:
        return (yield Child(waits))

    i = interp([parent, waits])
    i.start(parent, 0, run_id="p0")
    reach(i, "p0/0", "waiting")
    before = threading.active_count()
    for k in range(1, 50):
        i.start(parent, k, run_id=f"p{k}")
    for k in range(1, 50):
        reach(i, f"p{k}/0", "waiting")
        reach(i, f"p{k}", "waiting")
    assert threading.active_count() <= before + 1  # at most a new driver, never one per run


def test_cancel_of_a_grandparent_reaches_every_descendant(interp: Make, reach: Any) -> None:
    def mid() -> Any:
        return (yield Child(undoes))

    def top() -> Any:
        return (yield Child(mid))

    i = interp([top, mid, undoes])
    run = i.start(top, run_id="g")
    reach(i, "g/0/0", "waiting")
    i.cancel(run)
    for rid in ("g", "g/0", "g/0/0"):
        with pytest.raises(Cancelled):
            i.result(rid, timeout=PATIENCE)
        assert i.status(rid).state == "cancelled"
    undo = [e for e in i._store.journal("g/0/0") if e.name == "undo"]  # noqa: SLF001
    assert len(undo) == 1  # the leaf compensated


def test_terminate_of_a_parent_ends_every_descendant(interp: Make, reach: Any) -> None:
    def mid() -> Any:
        return (yield Child(waits))

    def top() -> Any:
        return (yield Child(mid))

    i = interp([top, mid, waits])
    i.start(top, run_id="t")
    reach(i, "t/0/0", "waiting")
    i.terminate("t", "withdrawn")
    for rid in ("t", "t/0", "t/0/0"):
        assert i.status(rid).state == "cancelled"
        assert "withdrawn" in (i.status(rid).error or "")


def test_a_child_made_while_its_parents_cancel_is_pending_is_born_cancelled(
        store: MemoryStore) -> None:
    create(store, "p", "wf", '{"args":[],"kwargs":{}}', "A")
    store.cancel("p")  # requested, not yet seen by the parent's code
    from replaygen.store import Spawn

    assert store.commit([Write("p", "A", 1, "running", spawn=(Spawn("p/0", "wf", "{}"),))]) == [True]
    assert store.get("p/0").cancel_requested  # type: ignore[union-attr]
    # Once the parent has journaled its cancel, a compensating child is not cancelled.
    assert store.commit([Write("p", "A", 1, "running", cancel_seen=True,
                               spawn=(Spawn("p/1", "wf", "{}"),))]) == [True]
    assert not store.get("p/1").cancel_requested  # type: ignore[union-attr]


def test_a_parent_that_absorbs_cancelled_can_start_and_await_compensation_children(
        interp: Make, reach: Any) -> None:
    def parent() -> Any:
        try:
            yield Child(waits)
        except Cancelled:
            return (yield Child(double, 4))

    i = interp([*WORKFLOWS, parent])
    run = i.start(parent, run_id="p")
    reach(i, "p/0", "waiting")
    i.cancel(run)
    assert i.result(run, timeout=PATIENCE) == 8
    assert i.status("p").state == "completed" and i.status("p/1").state == "completed"


def test_a_child_may_run_beside_steps_in_all(interp: Make) -> None:
    def parent() -> Any:
        return (yield All(Do("local", lambda: 1), Child(double, 2)))

    i = interp([*WORKFLOWS, parent])
    assert i.result(i.start(parent), timeout=PATIENCE) == [1, 4]


def test_a_failed_child_in_all_raises_after_every_member_ended(interp: Make) -> None:
    def parent() -> Any:
        try:
            yield All(Child(double, 1), Child(fails))
        except ChildFailed as exc:
            return exc.run_id

    i = interp([*WORKFLOWS, parent])
    assert i.result(i.start(parent, run_id="p"), timeout=PATIENCE) == "p/1"
    assert i.status("p/0").state == "completed"


def test_the_engines_signal_names_are_reserved(interp: Make, reach: Any) -> None:
    with pytest.raises(UsageError, match="reserved"):
        Wait("replaygen:child:x")
    i = interp(WORKFLOWS)
    run = i.start(waits)
    with pytest.raises(UsageError, match="reserved"):
        Client(i._store).deliver(run, "replaygen:child:x", 1)  # noqa: SLF001


def test_a_child_of_a_workflow_given_by_a_plain_function_is_refused_at_once() -> None:
    with pytest.raises(UsageError, match="generator function"):
        Child(lambda: 1)


def test_children_are_listed_by_their_parent(interp: Make) -> None:
    i = interp(WORKFLOWS)
    i.result(i.start(two_children, 1, run_id="p"), timeout=PATIENCE)
    assert [s.run_id for s in i.runs(parent="p")] == ["p/1", "p/0"]  # newest first


def test_a_child_failure_replays_as_the_same_child_failed(interp: Make, restart: Any,
                                                        reach: Any) -> None:
    def parent() -> Any:
        try:
            yield Child(fails)
        except ChildFailed as exc:
            seen = yield Wait("go")
            return [exc.run_id, exc.error_type, seen]

    i = interp([*WORKFLOWS, parent])
    run = i.start(parent, run_id="p")
    reach(i, run, "waiting")
    again = restart(i, [*WORKFLOWS, parent])
    again.deliver(run, "go", 1)
    assert again.result(run, timeout=PATIENCE) == ["p/0", "StepFailed", 1]


def test_step_failed_inside_a_child_does_not_escape_as_step_failed(interp: Make) -> None:
    def parent() -> Any:
        try:
            yield Child(fails)
        except StepFailed:
            return "wrong"
        except ChildFailed:
            return "right"

    i = interp([*WORKFLOWS, parent])
    assert i.result(i.start(parent), timeout=PATIENCE) == "right"
