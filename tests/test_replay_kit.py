"""The testing kit (SPEC 8): unit-test a workflow by feeding it a fake journal.

No store, no threads, no real steps: the step functions below raise if they
are ever called, which proves the kit answers every command itself.
"""

from __future__ import annotations

from typing import Any


import pytest

from replaygen import (
    All, Cancelled, Child, ChildFailed, Deadline, DeadlineExceeded, Do, Sleep, StepFailed,
    UsageError, Version, Wait, WaitTimeout,
)
from replaygen import Any as AnyOf
from replaygen.testing import replay


def charge_card(order: Any) -> str:
    raise AssertionError("the kit must never run a step")


def send_receipt(txn: Any) -> None:
    raise AssertionError("the kit must never run a step")


def refund(txn: Any) -> None:
    raise AssertionError("the kit must never run a step")


def checkout(order: Any) -> Any:
    txn = yield Do("charge", charge_card, order)
    yield Sleep(86400)
    yield Do("receipt", send_receipt, txn)
    return txn


def saga(order: Any) -> Any:
    txn = yield Do("charge", charge_card, order)
    try:
        yield Do("ship", send_receipt, txn)
    except StepFailed as failure:
        yield Do("refund", refund, txn)
        return f"refunded after {failure.step}: {failure.error_type}: {failure.error_message}"
    return "shipped"


def approval() -> Any:
    try:
        answer = yield Wait("approved", timeout=3600)
    except WaitTimeout:
        return "expired"
    except Cancelled:
        return "withdrawn"
    return answer


# ---- the fixed example ----------------------------------------------------------------------


def test_it_stops_at_the_first_command_the_journal_cannot_answer() -> None:
    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1"})
    assert not t.done
    assert t.pending == Do("receipt", send_receipt, "txn_1")


def test_it_records_every_command_in_order_and_they_compare_by_value() -> None:
    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1"})
    assert t.commands == [
        Do("charge", charge_card, {"id": 42}), Sleep(86400), Do("receipt", send_receipt, "txn_1"),
    ]


def test_a_sleep_passes_by_itself() -> None:
    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1", "receipt": None})
    assert t.done
    assert t.result == "txn_1"


def test_a_finished_workflow_has_no_pending_command() -> None:
    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1", "receipt": None})
    assert t.pending is None
    assert t.error is None


def test_an_unfinished_workflow_has_no_result_yet() -> None:
    t = replay(checkout, {"id": 42}, journal={})
    assert (t.done, t.result, t.error) == (False, None, None)
    assert t.pending == Do("charge", charge_card, {"id": 42})


def test_arguments_and_keyword_arguments_reach_the_workflow() -> None:
    def greet(name: str, *, punctuation: str) -> Any:
        yield Sleep(1)
        return f"hello {name}{punctuation}"

    assert replay(greet, "ada", punctuation="!").result == "hello ada!"


# ---- list journals answer by position ---------------------------------------------------------


def test_a_list_journal_answers_dos_by_position() -> None:
    t = replay(checkout, {"id": 42}, journal=["txn_9", None])
    assert t.result == "txn_9"


def test_a_list_journal_answers_waits_by_position_too() -> None:
    def wf() -> Any:
        a = yield Do("a", charge_card, 1)
        b = yield Wait("go")
        c = yield Do("c", charge_card, 2)
        return [a, b, c]

    assert replay(wf, journal=["A", "B", "C"]).result == ["A", "B", "C"]


def test_every_member_of_an_all_takes_one_list_position() -> None:
    def wf() -> Any:
        first = yield All(Do("a", charge_card, 1), Do("b", charge_card, 2), Wait("go"))
        last = yield Do("c", charge_card, 3)
        return [first, last]

    assert replay(wf, journal=["A", "B", "signal", "C"]).result == [["A", "B", "signal"], "C"]


def test_a_sleep_member_of_an_all_takes_a_list_position_like_every_member() -> None:
    def wf() -> Any:
        first = yield All(Do("a", charge_card, 1), Sleep(60), Do("b", charge_card, 2))
        last = yield Do("c", charge_card, 3)
        return [first, last]

    assert replay(wf, journal=["A", None, "B", "C"]).result == [["A", None, "B"], "C"]


def test_an_all_with_an_unanswered_member_is_pending_as_a_whole() -> None:
    def wf() -> Any:
        return (yield All(Do("a", charge_card, 1), Do("b", charge_card, 2)))

    t = replay(wf, journal=["A"])
    assert not t.done
    assert t.pending == All(Do("a", charge_card, 1), Do("b", charge_card, 2))


def test_an_all_is_one_command_in_the_trace() -> None:
    def wf() -> Any:
        return (yield All(Do("a", charge_card, 1), Do("b", charge_card, 2)))

    t = replay(wf, journal=["A", "B"])
    assert t.commands == [All(Do("a", charge_card, 1), Do("b", charge_card, 2))]
    assert t.result == ["A", "B"]


def test_a_list_journal_that_runs_out_leaves_the_next_command_pending() -> None:
    t = replay(checkout, {"id": 42}, journal=["txn_1"])
    assert t.pending == Do("receipt", send_receipt, "txn_1")


# ---- dict journals answer dos by step name ----------------------------------------------------


def test_a_dict_journal_answers_dos_by_step_name_whatever_their_order() -> None:
    def wf() -> Any:
        a = yield Do("a", charge_card, 1)
        b = yield Do("b", charge_card, 2)
        return a + b

    assert replay(wf, journal={"b": "B", "a": "A"}).result == "AB"


def test_a_dict_journal_does_not_answer_waits() -> None:
    def wf() -> Any:
        return (yield Wait("a"))

    t = replay(wf, journal={"a": "step answer"})
    assert t.pending == Wait("a")


# ---- answers are decoded as the engine would decode them --------------------------------------


def test_a_tuple_answer_comes_back_as_a_list_as_from_the_engine() -> None:
    def wf() -> Any:
        return (yield Do("pair", charge_card, 1))

    assert replay(wf, journal={"pair": (1, 2)}).result == [1, 2]


def test_an_unencodable_answer_fails_the_step_as_the_engine_would() -> None:
    def wf() -> Any:
        return (yield Do("ratio", charge_card, 1))

    t = replay(wf, journal={"ratio": float("nan")})
    assert isinstance(t.error, StepFailed)
    assert t.error.step == "ratio"


# ---- exceptions as answers --------------------------------------------------------------------


def test_an_exception_as_a_step_answer_is_raised_as_step_failed() -> None:
    t = replay(saga, {"id": 1}, journal={"charge": "txn_1", "ship": RuntimeError("no stock"),
                                         "refund": None})
    assert t.result == "refunded after ship: RuntimeError: no stock"


def test_the_step_failed_from_an_answer_has_the_engines_message() -> None:
    def wf() -> Any:
        yield Do("ship", send_receipt, 1)

    error = replay(wf, journal={"ship": KeyError("sku")}).error
    assert isinstance(error, StepFailed)
    assert str(error) == str(StepFailed("ship", "KeyError", str(KeyError("sku"))))


def test_an_unhandled_step_failure_is_the_traces_error() -> None:
    t = replay(checkout, {"id": 42}, journal={"charge": ValueError("declined")})
    assert t.done
    assert isinstance(t.error, StepFailed)
    assert (t.error.step, t.error.error_type, t.error.error_message) == (
        "charge", "ValueError", "declined")


def test_an_exception_escaping_the_workflow_is_the_traces_error() -> None:
    def wf() -> Any:
        yield Sleep(1)
        raise LookupError("gone")

    t = replay(wf)
    assert t.done
    assert isinstance(t.error, LookupError)


def test_wait_timeout_as_an_answer_is_raised_as_itself() -> None:
    assert replay(approval, journal=[WaitTimeout()]).result == "expired"


def test_cancelled_as_an_answer_is_raised_as_itself() -> None:
    assert replay(approval, journal=[Cancelled()]).result == "withdrawn"


def test_cancelled_as_a_step_answer_is_raised_as_itself_not_as_step_failed() -> None:
    def wf() -> Any:
        try:
            yield Do("charge", charge_card, 1)
        except Cancelled:
            return "compensated"

    assert replay(wf, journal={"charge": Cancelled()}).result == "compensated"


def test_the_first_failed_member_of_an_all_in_member_order_is_raised() -> None:
    def wf() -> Any:
        yield All(Do("a", charge_card, 1), Do("b", charge_card, 2), Do("c", charge_card, 3))

    error = replay(wf, journal=["A", KeyError("b"), ValueError("c")]).error
    assert isinstance(error, StepFailed)
    assert error.step == "b"


# ---- signals, sleeps and versions -------------------------------------------------------------


def test_signals_answer_waits_by_signal_name() -> None:
    assert replay(approval, signals={"approved": {"by": "ada"}}).result == {"by": "ada"}


def test_a_wait_without_an_answer_is_pending() -> None:
    t = replay(approval)
    assert t.pending == Wait("approved", timeout=3600)


def test_a_sleep_can_be_answered_with_cancelled() -> None:
    def wf() -> Any:
        try:
            yield Sleep(3600)
        except Cancelled:
            return "woken"
        return "slept"

    assert replay(wf, sleeps=[Cancelled()]).result == "woken"


def test_sleeps_are_answered_in_order() -> None:
    def wf() -> Any:
        yield Sleep(1)
        try:
            yield Sleep(2)
        except Cancelled:
            return "second cancelled"
        return "both slept"

    assert replay(wf, sleeps=[None, Cancelled()]).result == "second cancelled"


def versioned() -> Any:
    fee = yield Version("fee", 1, 2)
    if fee == 1:
        yield Do("old fee", charge_card, 1)
    else:
        yield Do("new fee", charge_card, 2)
    return fee


def test_a_version_evaluates_to_max_by_default() -> None:
    t = replay(versioned, journal={"new fee": None})
    assert t.result == 2


def test_a_version_can_be_answered_by_change_id() -> None:
    t = replay(versioned, journal={"old fee": None}, versions={"fee": 1})
    assert t.result == 1


def test_a_version_takes_no_list_position() -> None:
    assert replay(versioned, journal=["fee paid"]).result == 2


def test_versions_appear_in_the_trace() -> None:
    t = replay(versioned, journal={"new fee": None})
    assert t.commands == [Version("fee", 1, 2), Do("new fee", charge_card, 2)]


# ---- misuse -----------------------------------------------------------------------------------


def test_yielding_something_that_is_not_a_command_ends_with_an_error() -> None:
    def wf() -> Any:
        yield "charge"

    t = replay(wf)
    assert t.done
    assert "not a command" in str(t.error)


def test_yield_from_a_command_evaluates_to_its_answer() -> None:
    def wf() -> Any:
        txn = yield from Do("charge", charge_card, 1)
        yield from Sleep(5)
        approved = yield from Wait("approved")
        fee = yield from Version("fee", 1, 3)
        both = yield from All(Do("x", charge_card, 2), Do("y", charge_card, 3))
        return [txn, approved, fee, both]

    t = replay(wf, journal=["txn", "yes", "X", "Y"])
    assert t.result == ["txn", "yes", 3, ["X", "Y"]]


def test_an_answer_never_asked_for_is_reported_when_the_run_ends() -> None:
    import pytest

    with pytest.warns(UserWarning, match="never asked for"):
        t = replay(checkout, {"id": 42}, journal={"charge": "txn_1", "recipt": None,
                                                  "receipt": None})
    assert t.done and t.unused == ["recipt"]


def test_unused_answers_of_a_run_that_stops_early_are_not_reported() -> None:
    t = replay(checkout, {"id": 42}, journal={"receipt": None})
    assert not t.done and t.unused == []


# ---- Child and Deadline ---------------------------------------------------------------------

def pay(order: Any) -> Any:
    return (yield Do("charge", charge_card, order))


def ship(order: Any) -> Any:
    return (yield Do("send", send_receipt, order))


def order_flow(order: Any) -> Any:
    yield Deadline(3600)
    paid = yield Child(pay, order)
    try:
        shipped = yield Child(ship, order)
    except ChildFailed as failure:
        yield Do("refund", refund, paid)
        return ["refunded", failure.run_id, failure.error_message]
    return [paid, shipped]


def test_a_child_is_answered_like_a_step_and_a_deadline_takes_no_position() -> None:
    t = replay(order_flow, 1, journal=["txn", "parcel"])
    assert t.result == ["txn", "parcel"]
    assert t.commands == [Deadline(3600), Child(pay, 1), Child(ship, 1)]


def test_a_dict_journal_answers_children_by_workflow_name() -> None:
    assert replay(order_flow, 1, journal={"ship": "parcel", "pay": "txn"}).result == ["txn", "parcel"]


def test_an_exception_as_a_childs_answer_is_raised_as_child_failed_with_the_derived_id() -> None:
    t = replay(order_flow, 1, journal=["txn", ValueError("no stock"), None])
    assert t.result == ["refunded", "replay/2", "no stock"]


def test_a_child_without_an_answer_is_pending() -> None:
    t = replay(order_flow, 1, journal=["txn"])
    assert not t.done and t.pending == Child(ship, 1)


def test_deadline_exceeded_as_an_answer_strikes_at_that_command() -> None:
    def wf() -> Any:
        yield Deadline(60)
        try:
            yield Do("slow", charge_card, 1)
        except DeadlineExceeded:
            return "struck"

    assert replay(wf, journal=[DeadlineExceeded()]).result == "struck"


def test_a_deadline_that_is_not_caught_ends_the_trace_with_it() -> None:
    t = replay(order_flow, 1, journal=[DeadlineExceeded()])
    assert t.done and isinstance(t.error, DeadlineExceeded)


def test_children_compare_by_value() -> None:
    assert Child(pay, 1, run_id="p") == Child("pay", 1, run_id="p") != Child(pay, 2)


# ---- Any ------------------------------------------------------------------------------------

def race() -> Any:
    index, value = yield AnyOf(Wait("approved"), Sleep(86400))
    return [index, value]


def test_an_any_takes_one_list_position_answered_with_index_and_value() -> None:
    assert replay(race, journal=[(0, "yes")]).result == [0, "yes"]
    assert replay(race, journal=[[1, None]]).result == [1, None]


def test_an_any_is_answered_by_the_signal_of_one_of_its_waits() -> None:
    assert replay(race, signals={"approved": "yes"}).result == [0, "yes"]


def test_an_any_with_no_answer_is_pending() -> None:
    t = replay(race)
    assert not t.done and t.pending == AnyOf(Wait("approved"), Sleep(86400))


def test_a_bad_any_answer_says_what_is_expected() -> None:
    with pytest.raises(UsageError, match=r"\(index, value\)"):
        replay(race, journal=["yes"])


def test_an_any_of_steps_answered_by_name_lets_the_answered_one_win() -> None:
    def wf() -> Any:
        return (yield AnyOf(Do("a", charge_card, 1), Do("b", charge_card, 2)))

    assert replay(wf, journal={"b": "second"}).result == (1, "second")
