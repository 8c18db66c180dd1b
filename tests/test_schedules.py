"""Schedules (SPEC section 13): ticks, cron, daylight saving, catch-up, overlap, refusals.

Most tests drive the scheduler an Interpreter's watcher calls (``Scheduler.fire_due``) by
hand with a ``FakeClock``: time passes only when the test says so, and nothing waits. The
runs are started by a ``Client`` (they stay pending: unfinished) unless a test needs them
executed. Every test that takes the ``store`` fixture runs on memory, SQLite and Postgres.
Tests that go through an Interpreter's own watcher wait for events (``eventually``).
The multi-process and SIGKILL tests are in tests/test_schedules_services.py.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replaygen import (
    Client, Do, Interpreter, MemoryStore, Schedule, Store, StoreUnavailable, UsageError, Wait,
)
from replaygen.schedules import CAP, Scheduler, tick_text
from replaygen.store import RunRecord
from replaygen.testing import FakeClock

UTC = timezone.utc


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """This module's store (it replaces conftest's): a MemoryStore, a fresh SQLite file, or a
    fresh schema in the test PostgreSQL database."""
    if request.param == "memory":
        yield MemoryStore()
        return
    if request.param == "sqlite":
        from replaygen.stores.sqlite import SQLiteStore

        sqlite = SQLiteStore(str(tmp_path / "runs.db"))
        yield sqlite
        sqlite.close()
        return
    from replaygen.stores.postgres import PostgresStore

    from .pg import postgres_dsn

    dsn, schema = postgres_dsn(), f"rgsched_{uuid.uuid4().hex[:12]}"
    postgres = PostgresStore(dsn, schema=schema)
    try:
        yield postgres
    finally:
        postgres.close()
        PostgresStore.drop_schema(dsn, schema)


def at(text: str) -> float:
    """An instant written as ISO 8601 in UTC (``2026-12-05T13:00:00Z``)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def echo(value: Any) -> Any:
    return value


def job(tag: str, key: Any = None) -> Any:
    return (yield Do("note", echo, [tag, key]))


def gated(tag: str) -> Any:
    yield Wait("go")
    return tag


WORKFLOWS = {"job": job, "gated": gated}


class Worker:
    """What one worker's watcher does for its schedules, turned by the test (no thread, no
    real time): ``turn()`` is one turn of the watcher."""

    def __init__(self, store: Store, clock: FakeClock, *schedules: Schedule,
                 start: Callable[..., str] | None = None) -> None:
        self.scheduler = Scheduler(schedules, WORKFLOWS, store, start or Client(store).start, clock)

    def turn(self, times: int = 1) -> None:
        for _ in range(times):
            self.scheduler.fire_due()


def fired(store: Store, name: str = "s") -> list[str]:
    """The ticks of schedule ``name`` whose runs exist, oldest first."""
    head = f"sched:{name}:"
    return sorted(r.run_id[len(head):] for r in store.runs(limit=100_000)
                  if r.run_id.startswith(head))


def sweep(worker: Worker, clock: FakeClock, until: float, step: float = 60.0) -> None:
    """Move time on to ``until`` in steps, the watcher turning after each."""
    while clock.now() < until:
        clock.advance(min(step, until - clock.now()))
        worker.turn()


# ---- the tick and its run ------------------------------------------------------------------


def test_a_tick_starts_run_sched_name_tick_with_the_tick_in_utc_iso_form(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T13:59:59.5Z"))
    worker = Worker(store, clock, Schedule("report", "job", "r", cron="0 15 * * *",
                                           tz="Europe/Berlin"))
    worker.turn()
    assert fired(store, "report") == []
    clock.advance(0.5)
    worker.turn()
    [run] = store.runs()
    assert run.run_id == "sched:report:2026-12-05T14:00:00Z"  # 15:00 in Berlin is 14:00 UTC
    assert re.fullmatch(r"sched:report:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run.run_id)


def test_every_ticks_on_a_grid_anchored_at_the_unix_epoch() -> None:
    for every in (timedelta(minutes=7), 90, 86400.0):
        ticks = Schedule("s", job, every=every).next_ticks(datetime(2026, 12, 5, 13, 1, 2, tzinfo=UTC), 4)
        period = every.total_seconds() if isinstance(every, timedelta) else every
        assert all(t.timestamp() % period == 0 for t in ticks)
        assert [b - a for a, b in zip(ticks, ticks[1:], strict=False)] == [timedelta(seconds=period)] * 3
        assert ticks[0] - timedelta(seconds=period) <= datetime(2026, 12, 5, 13, 1, 2, tzinfo=UTC)


def test_an_interpreter_fires_due_ticks_without_recover_and_passes_the_arguments(
        interp: Callable[..., Interpreter], store: Store, clock: FakeClock,
        eventually: Callable[..., Any]) -> None:
    tick = clock.now() // 60 * 60  # the conftest clock starts 20 s after a tick: on time
    worker = interp([job], schedules=[Schedule("s", job, "a", key=3, every=60)])
    for t in (tick, tick + 60):
        clock.advance(max(0.0, t - clock.now()))
        run_id = f"sched:s:{tick_text(t)}"
        eventually(lambda run_id=run_id: store.get(run_id), f"run {run_id}")
        assert worker.result(run_id, timeout=5) == ["a", 3]


def test_three_interpreters_on_one_store_fire_each_tick_exactly_once(
        interp: Callable[..., Interpreter], store: Store, clock: FakeClock,
        eventually: Callable[..., Any]) -> None:
    seen: list[str] = []
    lock = threading.Lock()

    def note() -> str:
        from replaygen import current_step
        with lock:
            seen.append(current_step().run_id)
        return "ok"

    def beat() -> Any:
        return (yield Do("note", note))

    workers = [interp([beat], schedules=[Schedule("beat", beat, every=1, overlap="allow")])
               for _ in range(3)]
    ticks = [datetime.fromtimestamp(clock.now() + k, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
             for k in range(6)]
    for k, tick in enumerate(ticks):
        if k:
            clock.advance(1)
        run_id = f"sched:beat:{tick}"
        eventually(lambda run_id=run_id: (r := store.get(run_id)) and r.state == "completed",
                   f"run {run_id} to complete")
    assert sorted(r.run_id for r in workers[0].runs()) == [f"sched:beat:{t}" for t in ticks]
    assert sorted(seen) == [f"sched:beat:{t}" for t in ticks]  # each step ran once


# ---- cron ----------------------------------------------------------------------------------

CRONS = [
    # names, any case; day-of-week 7 is Sunday, as 0 and sun
    ("0 9 * JAN,jul Mon", "2026-01-01T00:00Z", ["2026-01-05T09:00Z", "2026-01-12T09:00Z"]),
    ("0 9 * * 7", "2026-01-01T00:00Z", ["2026-01-04T09:00Z", "2026-01-11T09:00Z"]),
    ("0 9 * * sun", "2026-01-01T00:00Z", ["2026-01-04T09:00Z", "2026-01-11T09:00Z"]),
    ("0 9 * * mon-fri", "2026-01-02T10:00Z", ["2026-01-05T09:00Z", "2026-01-06T09:00Z"]),
    # steps over * and over a range; ranges; lists
    ("*/15 * * * *", "2026-01-01T00:07Z", ["2026-01-01T00:15Z", "2026-01-01T00:30Z",
                                          "2026-01-01T00:45Z", "2026-01-01T01:00Z"]),
    ("10-50/20 * * * *", "2026-01-01T00:00Z", ["2026-01-01T00:10Z", "2026-01-01T00:30Z",
                                              "2026-01-01T00:50Z", "2026-01-01T01:10Z"]),
    ("0 9-11 * * *", "2026-01-01T10:30Z", ["2026-01-01T11:00Z", "2026-01-02T09:00Z"]),
    ("5,10 * * * *", "2026-01-01T00:05Z", ["2026-01-01T00:10Z", "2026-01-01T01:05Z"]),
    ("0 0 1-3,20 * *", "2026-01-02T12:00Z", ["2026-01-03T00:00Z", "2026-01-20T00:00Z"]),
    # both day fields restricted: either matches (Fridays, and the 13th)
    ("0 0 13 * fri", "2026-01-01T00:00Z", ["2026-01-02T00:00Z", "2026-01-09T00:00Z",
                                          "2026-01-13T00:00Z", "2026-01-16T00:00Z"]),
    # a day field starting with * is unrestricted: both must match (odd days that are Fridays)
    ("0 0 */2 * fri", "2026-01-01T00:00Z", ["2026-01-09T00:00Z", "2026-01-23T00:00Z"]),
    ("0 0 * * fri", "2026-01-01T00:00Z", ["2026-01-02T00:00Z", "2026-01-09T00:00Z"]),
    # Feb 29: every fourth year, and not in 2100
    ("0 0 29 2 *", "2026-01-01T00:00Z", ["2028-02-29T00:00Z", "2032-02-29T00:00Z"]),
    ("0 0 29 2 *", "2097-01-01T00:00Z", ["2104-02-29T00:00Z"]),
    ("0 0 29 2 mon", "2027-01-31T00:00Z", ["2027-02-01T00:00Z", "2027-02-08T00:00Z"]),
    ("59 23 31 12 *", "2026-12-31T23:59Z", ["2027-12-31T23:59Z"]),
]


@pytest.mark.parametrize("cron, after, expected", CRONS)
def test_cron_fields(cron: str, after: str, expected: list[str]) -> None:
    start = datetime.fromisoformat(after.replace("Z", "+00:00"))
    ticks = Schedule("s", job, cron=cron).next_ticks(start, len(expected))
    assert [t.strftime("%Y-%m-%dT%H:%MZ") for t in ticks] == expected


BAD_CRONS = [
    ("* * * *", "4 fields, not 5"),
    ("* * * * * *", "6 fields, not 5"),
    ("", "0 fields, not 5"),
    ("60 * * * *", "minute field: 60 in '60' is out of range 0-59"),
    ("* 24 * * *", "hour field: 24 in '24' is out of range 0-23"),
    ("* * 0 * *", "day-of-month field: 0 in '0' is out of range 1-31"),
    ("* * * 13 *", "month field: 13 in '13' is out of range 1-12"),
    ("* * * * 8", "day-of-week field: 8 in '8' is out of range 0-7"),
    ("*/0 * * * *", "the step in '\\*/0' must be a whole number from 1"),
    ("*/x * * * *", "the step in '\\*/x' must be a whole number from 1"),
    ("5/15 * * * *", "a step needs a range or \\*: write 5-59/15"),
    ("10-5 * * * *", "the range '10-5' runs backwards"),
    ("fri-mon * * * *", "'fri' in 'fri-mon' is not a number from 0 to 59"),
    ("* * * * fri-mon", "the range 'fri-mon' runs backwards"),
    ("abc * * * *", "'abc' in 'abc' is not a number"),
    ("* * * jan-foo *", "'foo' in 'jan-foo' is not a number from 1 to 12, or a name"),
    ("1,,2 * * * *", "'' in '' is not a number"),
    ("-1 * * * *", "'' in '-1' is not a number"),
    ("0 0 30 2 *", "never fires: no month it allows \\(2\\) has day 30"),
    ("0 0 31 4,6,9,11 *", "never fires"),
]


@pytest.mark.parametrize("cron, problem", BAD_CRONS)
def test_a_bad_cron_is_refused_when_the_interpreter_is_built(
        store: Store, cron: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem) as caught:
        Interpreter(store, [job], schedules=[Schedule("nightly", job, cron=cron)])
    assert "schedule 'nightly': bad cron" in str(caught.value)
    assert "minute hour day-of-month month day-of-week" in str(caught.value)  # what to write


# ---- daylight saving -----------------------------------------------------------------------

def test_a_cron_in_berlin_fires_once_per_wall_clock_tick_across_both_daylight_saving_changes(
        store: Store) -> None:
    berlin = [Schedule("hourly", "job", "h", cron="30 * * * *", tz="Europe/Berlin",
                       overlap="allow"),
              Schedule("daily", "job", "d", cron="0 2 * * *", tz="Europe/Berlin", overlap="allow")]
    clock = FakeClock(at("2026-03-28T22:00:00Z"))
    worker = Worker(store, clock, *berlin)
    worker.turn()
    # Spring, 29 March: at 02:00 CET clocks jump to 03:00 CEST. 02:30 and 02:00 do not exist:
    # each fires once, at the first instant after the gap (03:00 CEST, 01:00 UTC).
    sweep(worker, clock, at("2026-03-29T04:00:00Z"))
    assert fired(store, "hourly") == [
        "2026-03-28T22:30:00Z",  # 23:30 CET
        "2026-03-28T23:30:00Z",  # 00:30 CET
        "2026-03-29T00:30:00Z",  # 01:30 CET
        "2026-03-29T01:00:00Z",  # 02:30 does not exist: 03:00 CEST
        "2026-03-29T01:30:00Z",  # 03:30 CEST
        "2026-03-29T02:30:00Z",  # 04:30 CEST
        "2026-03-29T03:30:00Z",  # 05:30 CEST
    ]
    assert fired(store, "daily") == ["2026-03-29T01:00:00Z"]
    # Autumn, 25 October: at 03:00 CEST clocks go back to 02:00 CET. 02:00 to 02:59 happen
    # twice: each fires once, at its first occurrence (CEST).
    sweep(worker, clock, at("2026-10-24T22:00:00Z"), step=3600)
    before = len(fired(store, "hourly"))
    sweep(worker, clock, at("2026-10-25T04:00:00Z"))
    assert fired(store, "hourly")[before:] == [
        "2026-10-24T22:30:00Z",  # 00:30 CEST
        "2026-10-24T23:30:00Z",  # 01:30 CEST
        "2026-10-25T00:30:00Z",  # 02:30 CEST, the first 02:30
        "2026-10-25T02:30:00Z",  # 03:30 CET (02:30 CET, at 01:30 UTC, is the repeat: skipped)
        "2026-10-25T03:30:00Z",  # 04:30 CET
    ]
    assert fired(store, "daily")[-2:] == ["2026-10-24T00:00:00Z",  # 02:00 CEST on the 24th
                                          "2026-10-25T00:00:00Z"]  # 02:00 CEST, not 02:00 CET


# ---- catch-up ------------------------------------------------------------------------------

@pytest.mark.parametrize("catchup, expected", [
    ("skip", ["10", "14"]),
    ("latest", ["10", "13", "14"]),
    ("all", ["10", "11", "12", "13", "14"]),
])
def test_catchup_after_downtime(store: Store, catchup: str, expected: list[str],
                                caplog: pytest.LogCaptureFixture) -> None:
    hourly = Schedule("s", "job", "x", every=3600, catchup=catchup, overlap="allow")
    clock = FakeClock(at("2026-12-05T10:00:00Z"))
    Worker(store, clock, hourly).turn()  # fires 10:00, then every worker is down
    clock.advance(at("2026-12-05T13:20:00Z") - clock.now())
    with caplog.at_level(logging.INFO, "replaygen.schedules"):
        worker = Worker(store, clock, hourly)  # boots at 13:20
        worker.turn()
    assert "the ticks from 2026-12-05T11:00:00Z to 2026-12-05T13:00:00Z are more than 60s late" \
        in caplog.text
    sweep(worker, clock, at("2026-12-05T14:00:00Z"))
    assert [t[11:13] for t in fired(store)] == expected


def test_catchup_all_fires_at_most_the_cap_and_says_so(store: Store,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    minutely = Schedule("s", "job", "x", every=60, catchup="all", overlap="allow")
    start = at("2026-12-05T00:00:00Z")
    clock = FakeClock(start)
    Worker(store, clock, minutely).turn()
    clock.advance(2000 * 60 + 30)  # 1,999 ticks missed, and one on time
    worker = Worker(store, clock, minutely)
    with caplog.at_level(logging.WARNING, "replaygen.schedules"):
        worker.turn(30)  # the watcher starts at most 100 runs a turn
    assert f"more than {CAP} ticks were missed" in caplog.text
    ticks = [at(t) for t in fired(store)]
    assert len(ticks) == 1 + CAP + 1
    assert ticks[1] == start + 1000 * 60 and ticks[-1] == start + 2000 * 60  # the newest


def test_a_new_schedule_starts_from_its_newest_tick(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T13:00:05Z"))
    worker = Worker(store, clock, Schedule("s", "job", "x", every=10, overlap="allow"))
    worker.turn()
    assert fired(store) == ["2026-12-05T13:00:00Z"]  # not the five before it in the minute
    sweep(worker, clock, at("2026-12-05T13:00:30Z"), step=1)
    assert fired(store) == ["2026-12-05T13:00:00Z", "2026-12-05T13:00:10Z",
                            "2026-12-05T13:00:20Z", "2026-12-05T13:00:30Z"]


def test_a_worker_that_boots_within_a_minute_of_a_tick_fires_it(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    hourly = Schedule("s", "job", "x", every=3600, overlap="allow")
    Worker(store, clock, hourly).turn()
    clock.advance(3600 + 45)  # down across 13:00, back 45 s later: late, not missed
    Worker(store, clock, hourly).turn()
    assert fired(store) == ["2026-12-05T12:00:00Z", "2026-12-05T13:00:00Z"]


def test_a_suspended_worker_does_not_fire_a_burst_with_catchup_skip(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    worker = Worker(store, clock, Schedule("s", "job", "x", every=60, overlap="allow"))
    worker.turn()
    clock.advance(30 * 60)  # the host sleeps half an hour: its watcher does not turn
    worker.turn()
    assert fired(store) == ["2026-12-05T12:00:00Z", "2026-12-05T12:30:00Z"]


# ---- overlap -------------------------------------------------------------------------------

def _minutely(overlap: str) -> Schedule:
    return Schedule("s", "job", "x", every=60, overlap=overlap)


def test_overlap_skip_drops_ticks_while_the_previous_run_is_unfinished(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    worker = Worker(store, clock, _minutely("skip"))
    worker.turn()
    with caplog.at_level(logging.INFO, "replaygen.schedules"):
        sweep(worker, clock, at("2026-12-05T12:02:00Z"))  # the 12:00 run is still pending
    assert fired(store) == ["2026-12-05T12:00:00Z"]
    assert "tick 2026-12-05T12:01:00Z dropped: the previous run 'sched:s:2026-12-05T12:00:00Z' " \
           "is still pending (overlap='skip')" in caplog.text
    Client(store).terminate("sched:s:2026-12-05T12:00:00Z")  # finished (cancelled)
    sweep(worker, clock, at("2026-12-05T12:03:00Z"))
    assert fired(store) == ["2026-12-05T12:00:00Z", "2026-12-05T12:03:00Z"]


def test_overlap_allow_starts_every_tick(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    worker = Worker(store, clock, _minutely("allow"))
    worker.turn()
    sweep(worker, clock, at("2026-12-05T12:03:00Z"))
    assert fired(store) == [f"2026-12-05T12:0{m}:00Z" for m in range(4)]
    assert all(r.state == "pending" for r in store.runs())  # four at once


def test_overlap_skip_waits_for_an_executed_run_to_complete(
        interp: Callable[..., Interpreter], store: Store,
        reach: Callable[..., Any]) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    executing = interp([job, gated], clock=clock)
    worker = Worker(store, clock, Schedule("s", "gated", "g", every=60), start=executing.start)
    worker.turn()
    first = "sched:s:2026-12-05T12:00:00Z"
    reach(executing, first, "waiting")
    sweep(worker, clock, at("2026-12-05T12:01:00Z"))
    assert fired(store) == ["2026-12-05T12:00:00Z"]  # dropped: the first run waits
    executing.deliver(first, "go")
    reach(executing, first, "completed")
    sweep(worker, clock, at("2026-12-05T12:02:00Z"))
    assert fired(store) == ["2026-12-05T12:00:00Z", "2026-12-05T12:02:00Z"]


def test_overlap_is_judged_by_the_store_so_a_worker_booted_later_drops_too(
        store: Store) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    Worker(store, clock, _minutely("skip")).turn()  # worker A fires 12:00 (still pending)
    clock.advance(60)
    Worker(store, clock, _minutely("skip")).turn()  # worker B, new, at 12:01
    assert fired(store) == ["2026-12-05T12:00:00Z"]


def test_two_workers_at_one_tick_start_one_run(store: Store) -> None:
    clock = FakeClock(at("2026-12-05T12:00:00Z"))
    a, b = Worker(store, clock, _minutely("allow")), Worker(store, clock, _minutely("allow"))
    a.turn()
    b.turn()
    clock.advance(60)
    b.turn()
    a.turn()
    assert fired(store) == ["2026-12-05T12:00:00Z", "2026-12-05T12:01:00Z"]


# ---- the store down ------------------------------------------------------------------------

class FlakyStore(MemoryStore):
    """A MemoryStore whose reads fail while ``down`` is set."""

    down = False

    def get(self, run_id: str) -> RunRecord | None:
        if self.down:
            raise StoreUnavailable("database is locked")
        return super().get(run_id)


def test_a_store_outage_is_logged_once_and_the_tick_fires_when_it_is_back(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    clock = FakeClock(at("2026-12-05T11:59:59Z"))
    worker = Worker(store, clock, _minutely("allow"))
    worker.turn()
    assert fired(store) == ["2026-12-05T11:59:00Z"]  # 59 s late: on time
    store.down = True
    clock.advance(1)
    with caplog.at_level(logging.INFO, "replaygen.schedules"):
        worker.turn(3)
        assert fired(store) == ["2026-12-05T11:59:00Z"]
        store.down = False
        clock.advance(20)
        worker.turn()
    assert fired(store) == ["2026-12-05T11:59:00Z", "2026-12-05T12:00:00Z"]
    assert caplog.text.count("cannot fire its due ticks (database is locked)") == 1
    assert "schedule 's': firing again" in caplog.text


# ---- refusals ------------------------------------------------------------------------------

def other() -> Any:
    yield Do("x", echo, 1)


REFUSED: list[tuple[Any, str]] = [
    (lambda: [Schedule("s", job)], "give exactly one of cron= .* and every= .*; it has neither"),
    (lambda: [Schedule("s", job, cron="* * * * *", every=60)], "it has both"),
    (lambda: [Schedule("s", job, every=60, tz="Europe/Berln")],
     "unknown time zone 'Europe/Berln'; use an IANA name such as 'Europe/Berlin'"),
    (lambda: [Schedule("s", job, every=60, tz="../etc/passwd")], "unknown time zone"),
    (lambda: [Schedule("s", other, every=60)],
     "its workflow <function other .*> is not registered with this Interpreter .*; pass it in "
     "workflows="),
    (lambda: [Schedule("s", "nope", every=60)], "its workflow 'nope' is not registered"),
    (lambda: [Schedule("s", job, every=60, catchup="none")],
     "catchup must be one of 'skip', 'latest', 'all', got 'none'"),
    (lambda: [Schedule("s", job, every=60, overlap="queue")],
     "overlap must be one of 'skip', 'allow', got 'queue'"),
    (lambda: [Schedule("s", job, every=60), Schedule("s", job, cron="0 * * * *")],
     "two schedules are named 's'; give each its own name"),
    (lambda: [Schedule("s", job, every=0.5)], "every must be a whole number of seconds from 1"),
    (lambda: [Schedule("s", job, every=0)], "every must be a whole number of seconds"),
    (lambda: [Schedule("s", job, every=90.5)], "got 90.5"),
    (lambda: [Schedule("s", job, every=True)], "got True"),
    (lambda: [Schedule("s", job, every="60")], "got '60'"),  # type: ignore[arg-type]
    (lambda: [Schedule("s", job, every=timedelta(milliseconds=1500))], "every must be"),
    (lambda: Schedule("s", job, every=60), "schedules must be a list of Schedule"),
    (lambda: ["s"], "schedules must hold Schedule"),
    (lambda: [Schedule("s", job, every=60, run_id="x")],
     "cannot take an argument named run_id from a schedule"),
    (lambda: [Schedule("", job, every=60)], "schedule name must be 1 to 255 characters"),
    (lambda: [Schedule("n" * 229, job, every=60)], "at most 228 fit in a run id"),
    (lambda: [Schedule("s", job, cron=5)], "cron must be a string"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("schedules, message", REFUSED)
def test_refusals_when_the_interpreter_is_built(store: Store, schedules: Any,
                                                message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Interpreter(store, [job], schedules=schedules())
    assert store.runs() == []


def test_a_workflow_given_by_name_or_registered_under_another_name_is_found(
        interp: Callable[..., Interpreter]) -> None:
    interp({"daily-job": job}, schedules=[Schedule("a", "daily-job", every=60),
                                          Schedule("b", job, every=60)])


def test_name_and_workflow_may_be_keywords_and_the_workflows_arguments_may_share_their_names(
        ) -> None:
    assert Schedule(name="s", workflow=job, every=60) == Schedule("s", job, every=60)
    named = Schedule("s", job, "x", name="bob", every=60)
    assert (named.name, named.args, named.kwargs) == ("s", ("x",), {"name": "bob"})
    with pytest.raises(UsageError, match="Schedule needs a name and a workflow.*workflow is missing"):
        Schedule("s", every=60)


def test_next_ticks_wants_an_aware_datetime() -> None:
    with pytest.raises(UsageError, match="after must be an aware datetime"):
        Schedule("s", job, every=60).next_ticks(datetime(2026, 1, 1))
    assert len(Schedule("s", job, every=60).next_ticks(count=3)) == 3  # from now

