"""Commands are frozen values with validation (SPEC 3), and the error hierarchy (SPEC 7)."""

from __future__ import annotations

import dataclasses
import math
from datetime import timedelta

import pytest

import replaygen
from replaygen import (
    All, Cancelled, Do, NonDeterminismError, ReplaygenError, Retry, Sleep, StepFailed, Version,
    Wait, WaitTimeout, WorkflowFailed,
)


def charge(order: object) -> str:
    return "txn"


def refund(txn: object) -> None:
    pass


# ---- fixed names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "Do", "Sleep", "Wait", "Version", "All", "Retry", "Interpreter", "MemoryStore",
    "ReplaygenError", "StepFailed", "NonDeterminismError", "WaitTimeout", "Cancelled",
    "WorkflowFailed",
])
def test_fixed_names_are_importable_from_the_package(name: str) -> None:
    assert name in replaygen.__all__
    assert getattr(replaygen, name) is not None


@pytest.mark.parametrize("error", [StepFailed, NonDeterminismError, WaitTimeout, Cancelled,
                                   WorkflowFailed])
def test_every_error_is_a_replaygen_error(error: type[Exception]) -> None:
    assert issubclass(error, ReplaygenError)


# ---- commands compare by value and cannot change ---------------------------------------------


def test_do_commands_with_the_same_name_function_and_arguments_are_equal() -> None:
    assert Do("charge", charge, {"id": 1}, retry=Retry(2)) == Do("charge", charge, {"id": 1},
                                                                    retry=Retry(2))


@pytest.mark.parametrize("other", [
    Do("refund", charge, {"id": 1}),
    Do("charge", refund, {"id": 1}),
    Do("charge", charge, {"id": 2}),
    Do("charge", charge, {"id": 1}, note="x"),
    Do("charge", charge, {"id": 1}, retry=Retry(2)),
])
def test_do_commands_differing_in_anything_are_not_equal(other: Do[object]) -> None:
    assert Do("charge", charge, {"id": 1}) != other


def test_do_keeps_positional_and_keyword_arguments_for_the_call() -> None:
    cmd = Do("charge", charge, 1, 2, currency="EUR")
    assert cmd.args == (1, 2)
    assert dict(cmd.kwargs) == {"currency": "EUR"}
    assert cmd.retry is None


def test_sleep_of_seconds_equals_sleep_of_the_same_timedelta() -> None:
    assert Sleep(90) == Sleep(timedelta(minutes=1, seconds=30))


def test_sleep_of_a_day_is_86400_seconds() -> None:
    assert Sleep(timedelta(hours=24)).seconds == 86400.0


def test_wait_timeout_may_be_a_timedelta() -> None:
    assert Wait("approved", timeout=timedelta(minutes=5)) == Wait("approved", timeout=300)


def test_wait_without_timeout_has_none() -> None:
    assert Wait("approved").timeout is None


def test_all_compares_its_members_in_order() -> None:
    a, b = Do("a", charge, 1), Wait("b")
    assert All(a, b) == All(Do("a", charge, 1), Wait("b"))
    assert All(a, b) != All(b, a)


def test_version_compares_by_change_id_and_range() -> None:
    assert Version("fee", 1, 2) == Version("fee", 1, 2)
    assert Version("fee", 1, 2) != Version("fee", 1, 3)


@pytest.mark.parametrize("cmd, field", [
    (Do("a", charge), "name"), (Sleep(1), "seconds"), (Wait("s"), "signal"),
    (Version("c", 1, 2), "max"), (All(Sleep(1)), "commands"),
])
def test_commands_are_frozen(cmd: object, field: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cmd, field, None)


def test_do_kwargs_cannot_be_changed_after_construction() -> None:
    cmd = Do("a", charge, x=1)
    with pytest.raises(TypeError):
        cmd.kwargs["x"] = 2  # type: ignore[index]


# ---- validation: bad input is refused up front with a message saying what was wrong -----------


@pytest.mark.parametrize("name", ["", "x" * 256, "a\x00b", 42, None])
def test_do_refuses_an_unusable_step_name(name: object) -> None:
    with pytest.raises(ReplaygenError, match="step name"):
        Do(name, charge)  # type: ignore[arg-type]


def test_do_accepts_a_step_name_of_255_characters() -> None:
    assert Do("x" * 255, charge).name == "x" * 255


def test_do_refuses_a_function_that_is_not_callable() -> None:
    with pytest.raises(ReplaygenError, match="callable"):
        Do("charge", "charge_card")  # type: ignore[call-overload]


def test_do_refuses_a_retry_that_is_not_a_retry() -> None:
    with pytest.raises(ReplaygenError, match="Retry"):
        Do("charge", charge, retry=3)  # type: ignore[call-overload]


@pytest.mark.parametrize("duration", [-1, math.nan, math.inf, "5", True, None,
                                      timedelta(seconds=-1)])
def test_sleep_refuses_a_duration_that_is_not_finite_non_negative_seconds(duration: object) -> None:
    with pytest.raises(ReplaygenError, match="Sleep duration"):
        Sleep(duration)  # type: ignore[arg-type]


def test_sleep_of_zero_is_allowed() -> None:
    assert Sleep(0).seconds == 0.0


@pytest.mark.parametrize("signal", ["", "s" * 256, "a\x00b", 7])
def test_wait_refuses_an_unusable_signal_name(signal: object) -> None:
    with pytest.raises(ReplaygenError, match="signal name"):
        Wait(signal)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-5, math.nan, "soon"])
def test_wait_refuses_a_bad_timeout(timeout: object) -> None:
    with pytest.raises(ReplaygenError, match="Wait timeout"):
        Wait("s", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("low, high", [(2, 1), (1.0, 2), (True, 2), (1, "2")])
def test_version_refuses_a_range_that_is_not_ints_with_min_at_most_max(low: object,
                                                                      high: object) -> None:
    with pytest.raises(ReplaygenError, match="Version"):
        Version("fee", low, high)  # type: ignore[arg-type]


def test_version_refuses_an_empty_change_id() -> None:
    with pytest.raises(ReplaygenError, match="change_id"):
        Version("", 1, 2)


@pytest.mark.parametrize("member", [Version("c", 1, 1), All(Sleep(1)), "Do", None])
def test_all_takes_only_do_sleep_and_wait(member: object) -> None:
    with pytest.raises(ReplaygenError, match="All"):
        All(Sleep(1), member)  # type: ignore[arg-type]


def test_bad_input_errors_are_also_type_or_value_errors() -> None:
    with pytest.raises(TypeError):
        Do("a", "not callable")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        Sleep(-1)


# ---- Retry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [0, -1, 1.5, True])
def test_retry_needs_at_least_one_attempt(attempts: object) -> None:
    with pytest.raises(ReplaygenError, match="attempts"):
        Retry(attempts)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"jitter": 1.5}, {"jitter": -0.1}, {"multiplier": 0.5},
                                     {"backoff": -1}, {"max_backoff": math.inf}])
def test_retry_refuses_bad_backoff_settings(options: dict[str, object]) -> None:
    with pytest.raises(ReplaygenError):
        Retry(3, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("option", ["retry_on", "never_retry"])
def test_retry_refuses_exception_filters_that_are_not_exception_classes(option: str) -> None:
    with pytest.raises(ReplaygenError, match=option):
        Retry(3, **{option: "ValueError"})  # type: ignore[arg-type]


def test_retry_retries_exceptions_by_default() -> None:
    assert Retry(3).retries(RuntimeError("flaky"))


def test_retry_never_retries_what_never_retry_names() -> None:
    policy = Retry(3, never_retry=ValueError)
    assert not policy.retries(ValueError("bad card"))
    assert policy.retries(ConnectionError("reset"))


def test_retry_retries_only_what_retry_on_names() -> None:
    policy = Retry(3, retry_on=(ConnectionError, TimeoutError))
    assert policy.retries(TimeoutError())
    assert not policy.retries(KeyError("x"))


def test_retry_never_retry_wins_over_retry_on() -> None:
    policy = Retry(3, retry_on=OSError, never_retry=PermissionError)
    assert not policy.retries(PermissionError())


def test_retry_backoff_grows_by_the_multiplier() -> None:
    policy = Retry(5, backoff=2, multiplier=3, jitter=0)
    assert [policy.delay(n, 0.0) for n in (1, 2, 3)] == [2.0, 6.0, 18.0]


def test_retry_backoff_is_capped() -> None:
    policy = Retry(10, backoff=1, multiplier=10, max_backoff=timedelta(seconds=30), jitter=0)
    assert policy.delay(5, 0.0) == 30.0


def test_retry_jitter_only_shortens_the_delay() -> None:
    policy = Retry(3, backoff=10, jitter=0.5)
    assert 5.0 <= policy.delay(1, 0.999) <= policy.delay(1, 0.0) == 10.0


# ---- error messages and attributes ------------------------------------------------------------


def test_step_failed_names_the_step_the_error_type_and_its_message() -> None:
    error = StepFailed("charge", "CardDeclined", "insufficient funds")
    assert "charge" in str(error)
    assert "CardDeclined" in str(error)
    assert "insufficient funds" in str(error)
    assert (error.step, error.error_type, error.error_message) == (
        "charge", "CardDeclined", "insufficient funds")


def test_non_determinism_error_names_the_run_the_position_and_both_sides() -> None:
    error = NonDeterminismError("order-42", 3, "do 'charge'", "yielded Do('refund')")
    message = str(error)
    assert "order-42" in message and "3" in message
    assert "charge" in message and "refund" in message
    assert (error.run_id, error.position) == ("order-42", 3)


def test_workflow_failed_names_the_run_and_the_error() -> None:
    error = WorkflowFailed("order-42", "KeyError", "'sku'")
    assert "order-42" in str(error) and "KeyError" in str(error)
    assert error.error_type == "KeyError"
