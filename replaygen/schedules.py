"""Schedules: runs started at the ticks of a cron expression or of a fixed interval.

``Schedule`` is a value: what to start (a workflow and its arguments) and when (``cron`` in
the wall-clock time of a zone, or ``every`` so many seconds on a grid anchored at the Unix
epoch). An ``Interpreter`` given ``schedules=[...]`` checks them when it is built, and its
watcher thread calls ``Scheduler.fire_due`` on every turn (at least once a second): each due
tick starts the run ``sched:<name>:<tick>`` through the idempotent ``start``, so any number
of workers fire it once.

The store is the only memory: a tick fired if and only if its run exists. Catch-up after
downtime and the overlap policy are decided by looking at the runs of earlier ticks (a walk
back over the grid, bounded by ``CAP``). This module writes to the store only through
``start``, keeps no table of its own and starts no thread.
"""

from __future__ import annotations

import logging
import math
import re
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .commands import MAX_NAME, check_name
from .errors import UsageError
from .registry import name_of
from .store import ACTIVE, RunRecord, Store

__all__ = ["CAP", "LATE", "Schedule", "Scheduler", "describe", "seen", "tick_text"]

log = logging.getLogger("replaygen.schedules")

LATE = 60.0
"""Seconds after its time a tick is still fired as on time (as Quartz's misfire threshold):
a tick no worker looked at for longer was missed, and ``catchup`` decides what happens."""
CAP = 1000
"""The most missed ticks one catch-up fires (``catchup="all"``), and the most ticks a look
back over the grid visits."""
BATCH = 100
"""The most runs one turn of the watcher starts: a long catch-up is spread over turns, so
the worker's lease is renewed in between."""
PREFIX = "sched:"
TICK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
TICK_LENGTH = len("2026-12-05T13:00:00Z")
CATCHUPS = ("skip", "latest", "all")
OVERLAPS = ("skip", "allow")
MINUTE, ZERO = timedelta(minutes=1), timedelta(0)
HORIZON = timedelta(days=9 * 366)  # Feb 29 may be 8 years away (2096, then 2104)


@dataclass(frozen=True, init=False)
class Schedule:
    """``Schedule(name, workflow, *args, cron=None, every=None, tz="UTC", catchup="skip",
    overlap="skip", **kwargs)``: start ``workflow(*args, **kwargs)`` (a registered workflow
    function, or its name) at each tick of ``cron`` (5 fields, in the wall-clock time of
    ``tz``) or of ``every`` (whole seconds or a ``timedelta``, on a grid anchored at the Unix
    epoch). Each tick starts run ``sched:<name>:<tick>``, the tick in UTC as
    ``2026-12-05T13:00:00Z``.

    ``catchup`` says what a worker does with ticks missed while no worker ran: ``"skip"``
    them, fire the ``"latest"`` one, or fire ``"all"`` of them (at most ``CAP``). ``overlap``
    says what a tick does while the schedule's previous run is unfinished: ``"skip"`` it or
    ``"allow"`` the runs to overlap. The values are checked when an ``Interpreter`` is built
    (a ``UsageError`` saying what is wrong), or by ``next_ticks``.
    """

    name: str
    workflow: Any
    args: tuple[Any, ...] = field(hash=False)
    kwargs: Mapping[str, Any] = field(hash=False)
    cron: str | None
    every: float | timedelta | None
    tz: str
    catchup: str
    overlap: str

    def __init__(self, *args: Any, cron: str | None = None, every: float | timedelta | None = None,
                 tz: str = "UTC", catchup: str = "skip", overlap: str = "skip",
                 **kwargs: Any) -> None:
        # Schedule(name, workflow, *args, ..., **kwargs): name and workflow are the first two
        # positional arguments, or keywords when not given so (then the workflow's own
        # arguments cannot be called name or workflow; positionally, they can).
        head = {}
        for i, key in enumerate(("name", "workflow")):
            if len(args) > i:
                head[key] = args[i]
            elif key in kwargs:
                head[key] = kwargs.pop(key)
            else:
                raise UsageError(f"Schedule needs a name and a workflow, e.g. Schedule('nightly', "
                                 f"report, cron='0 3 * * *'); {key} is missing")
        values = {**head, "args": args[2:], "kwargs": kwargs, "cron": cron, "every": every,
                  "tz": tz, "catchup": catchup, "overlap": overlap}
        for key, value in values.items():
            object.__setattr__(self, key, value)  # frozen: set once, here

    def next_ticks(self, after: datetime | None = None, count: int = 1) -> list[datetime]:
        """The next ``count`` ticks after ``after`` (an aware datetime; default now), as aware
        UTC datetimes: what the schedule will fire, daylight-saving changes included."""
        if after is None:
            start = datetime.now(timezone.utc).timestamp()
        elif isinstance(after, datetime) and after.tzinfo is not None:
            start = after.timestamp()
        else:
            raise UsageError(f"after must be an aware datetime (e.g. datetime.now(timezone.utc)), "
                             f"got {after!r}")
        timing, found = _timing(self, f"schedule {self.name!r}"), list[datetime]()
        while len(found) < count and (tick := timing.next_tick(start)) is not None:
            found.append(datetime.fromtimestamp(tick, timezone.utc))
            start = tick
        return found


# ---- when: the grid of an interval, or a cron in a zone ----------------------------------

class _Timing(Protocol):
    def next_tick(self, x: float) -> int | None:
        """The first tick after the instant ``x`` (epoch seconds), or None."""

    def prev_tick(self, x: float) -> int | None:
        """The last tick at or before the instant ``x``, or None."""


@dataclass(frozen=True)
class _Every:
    """Ticks at the multiples of ``period`` seconds since the Unix epoch: every worker, in
    any zone, agrees on them."""

    period: int

    def next_tick(self, x: float) -> int | None:
        return (math.floor(x / self.period) + 1) * self.period

    def prev_tick(self, x: float) -> int | None:
        return math.floor(x / self.period) * self.period


_MONTHS = {n: i for i, n in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)}
_DAYS = {n: i for i, n in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day-of-week", 0, 7, _DAYS))
_LONGEST = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}
_NUMBER = re.compile(r"[0-9]{1,2}")


class _CronError(ValueError):
    """One field of a cron cannot be read; the caller says which schedule it belongs to."""


@dataclass(frozen=True)
class _Cron:
    """A parsed 5-field cron: the wall-clock minutes it matches. ``any_day`` and
    ``any_weekday`` are the usual cron rule: when both day fields are restricted (neither
    starts with ``*``), a day matches if either matches; otherwise both must."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    any_day: bool
    any_weekday: bool

    def day_ok(self, d: date) -> bool:
        dom, dow = d.day in self.days, d.isoweekday() % 7 in self.weekdays
        return dom and dow if self.any_day or self.any_weekday else dom or dow

    def next_wall(self, w: datetime, limit: datetime) -> datetime | None:
        """The first matching wall-clock minute at or after ``w`` (naive), up to ``limit``."""
        while w <= limit:
            midnight = datetime(w.year, w.month, w.day)
            if w.month not in self.months:
                w = datetime(w.year + w.month // 12, w.month % 12 + 1, 1)
            elif not self.day_ok(w.date()):
                w = midnight + timedelta(days=1)
            elif w.hour not in self.hours:
                i = bisect_right(self.hours, w.hour)
                w = w.replace(hour=self.hours[i], minute=0) if i < len(self.hours) else \
                    midnight + timedelta(days=1)
            elif w.minute not in self.minutes:
                i = bisect_right(self.minutes, w.minute)
                w = w.replace(minute=self.minutes[i]) if i < len(self.minutes) else \
                    w.replace(minute=0) + timedelta(hours=1)
            else:
                return w
        return None

    def prev_wall(self, w: datetime, limit: datetime) -> datetime | None:
        """The last matching wall-clock minute at or before ``w`` (naive), down to ``limit``."""
        while w >= limit:
            midnight = datetime(w.year, w.month, w.day)
            if w.month not in self.months:
                w = datetime(w.year, w.month, 1) - MINUTE
            elif not self.day_ok(w.date()):
                w = midnight - MINUTE
            elif w.hour not in self.hours:
                i = bisect_left(self.hours, w.hour)
                w = w.replace(hour=self.hours[i - 1], minute=59) if i > 0 else midnight - MINUTE
            elif w.minute not in self.minutes:
                i = bisect_left(self.minutes, w.minute)
                w = w.replace(minute=self.minutes[i - 1]) if i > 0 else \
                    w.replace(minute=0) - MINUTE
            else:
                return w
        return None


def _parse_cron(text: str) -> _Cron:
    """Read ``minute hour day-of-month month day-of-week``: ``*``, numbers, names (``jan``,
    ``mon``; day-of-week 7 is Sunday too), ranges ``a-b``, steps ``*/n`` and ``a-b/n``,
    lists ``a,b``. Raises _CronError naming the field and what is wrong with it."""
    parts = text.split()
    if len(parts) != 5:
        raise _CronError(f"it has {len(parts)} fields, not 5")
    sets = [_parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = sets
    cron = _Cron(tuple(sorted(minutes)), tuple(sorted(hours)), frozenset(days),
                 frozenset(months), frozenset(d % 7 for d in weekdays),
                 parts[2].startswith("*"), parts[4].startswith("*"))
    if not cron.any_day and cron.any_weekday and not any(
            min(days) <= _LONGEST[m] for m in months):
        raise _CronError(f"it never fires: no month it allows ({parts[3]}) has day {min(days)}")
    return cron


def _parse_field(text: str, what: str, lo: int, hi: int, names: dict[str, int]) -> set[int]:
    found: set[int] = set()
    for item in text.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) == 0:
                raise _CronError(f"{what} field {text!r}: the step in {item!r} must be a whole "
                                 f"number from 1")
            step = int(step_text)
        if span == "*":
            first, last = lo, hi
        elif "-" in span:
            left, _, right = span.partition("-")
            first, last = (_parse_value(v, item, what, lo, hi, names) for v in (left, right))
            if first > last:
                raise _CronError(f"{what} field {text!r}: the range {span!r} runs backwards; "
                                 f"write it as a list of two ranges")
        elif slash:
            raise _CronError(f"{what} field {text!r}: a step needs a range or *: write "
                             f"{span}-{hi}/{step} (or */{step})")
        else:
            first = last = _parse_value(span, item, what, lo, hi, names)
        found.update(range(first, last + 1, step))
    return found


def _parse_value(text: str, item: str, what: str, lo: int, hi: int, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    if not _NUMBER.fullmatch(text):
        known = f", or a name ({', '.join(names)})" if names else ""
        raise _CronError(f"{what} field: {text!r} in {item!r} is not a number from {lo} to "
                         f"{hi}{known}")
    if not lo <= int(text) <= hi:
        raise _CronError(f"{what} field: {text} in {item!r} is out of range {lo}-{hi}")
    return int(text)


@dataclass(frozen=True)
class _CronInZone:
    """A cron's ticks as instants. A wall time that does not exist (a daylight-saving gap)
    fires once, at the first instant after the gap; one that occurs twice (the hour repeated
    when clocks go back) fires once, at its first occurrence."""

    cron: _Cron
    zone: ZoneInfo

    def next_tick(self, x: float) -> int | None:
        local = datetime.fromtimestamp(x, self.zone)
        start = local.replace(tzinfo=None, second=0, microsecond=0, fold=0)
        limit = start + HORIZON
        wall = self.cron.next_wall(start, limit)
        while wall is not None:
            if (tick := self._instant(wall)) > x:  # in a repeated hour, a wall time after x's
                return tick                      # may fire before x (its first occurrence)
            wall = self.cron.next_wall(wall + MINUTE, limit)
        return None

    def prev_tick(self, x: float) -> int | None:
        local = datetime.fromtimestamp(x, self.zone)
        start = local.replace(tzinfo=None, second=0, microsecond=0, fold=0)
        if local.fold:  # x lies in the second pass of a repeated hour: the wall times up to the
            # end of the repeat fire at their first occurrence, before x
            start += (local.replace(fold=0).utcoffset() or ZERO) - (local.utcoffset() or ZERO)
        limit = start - HORIZON
        wall = self.cron.prev_wall(start, limit)
        while wall is not None:
            if (tick := self._instant(wall)) <= x:
                return tick
            wall = self.cron.prev_wall(wall - MINUTE, limit)
        return None

    def _instant(self, wall: datetime) -> int:
        """When the naive wall time ``wall`` fires: fold=0 is a repeated time's first
        occurrence; a time in a gap reads back as another, and fires when the gap ends."""
        tick = int(wall.replace(tzinfo=self.zone, fold=0).timestamp())
        if datetime.fromtimestamp(tick, self.zone).replace(tzinfo=None) == wall:
            return tick
        # In a gap, fold=0 reads the time with the offset before it: an instant after the
        # jump. The jump itself is the first instant whose wall time passes ``wall``.
        lo, hi = tick - 2 * 86400, tick
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self.zone).replace(tzinfo=None) > wall:
                hi = mid
            else:
                lo = mid
        return hi


# ---- checking a schedule -------------------------------------------------------------------

def _timing(s: Schedule, where: str) -> _Timing:
    """The ticks of ``s``, or a UsageError (``where`` names the schedule) saying what is wrong."""
    if not isinstance(s.tz, str):
        raise UsageError(f"{where}: tz must be a zone name such as 'Europe/Berlin', got {s.tz!r}")
    try:
        zone = ZoneInfo(s.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"{where}: unknown time zone {s.tz!r}; use an IANA name such as "
                         f"'Europe/Berlin' or 'UTC' (where the system has no zone database, "
                         f"pip install tzdata)") from None
    if (s.cron is None) == (s.every is None):
        raise UsageError(f"{where}: give exactly one of cron= (e.g. cron='0 6 * * *') and every= "
                         f"(seconds or a timedelta); it has "
                         f"{'neither' if s.cron is None else 'both'}")
    if s.every is not None:
        return _Every(_period(s.every, where))
    if not isinstance(s.cron, str):
        raise UsageError(f"{where}: cron must be a string such as '0 6 * * *', got {s.cron!r}")
    try:
        return _CronInZone(_parse_cron(s.cron), zone)
    except _CronError as exc:
        raise UsageError(f"{where}: bad cron {s.cron!r}: {exc}. A cron is 5 fields: minute hour "
                         f"day-of-month month day-of-week, e.g. '*/15 9-17 * * mon-fri'") from None


def _period(every: object, where: str) -> int:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
            math.isfinite(seconds) and seconds >= 1 and seconds == int(seconds)):
        raise UsageError(f"{where}: every must be a whole number of seconds from 1 (a number or a "
                         f"timedelta; tick ids have whole seconds), got {every!r}")
    return int(seconds)


@dataclass(frozen=True)
class _Plan:
    """A checked schedule: its ticks, and the name its workflow is stored under."""

    schedule: Schedule
    workflow: str
    timing: _Timing

    @property
    def name(self) -> str:
        return self.schedule.name

    def run_id(self, tick: int) -> str:
        return f"{PREFIX}{self.name}:{tick_text(tick)}"

    def tick_of(self, run_id: str) -> int | None:
        """The tick of ``run_id`` if it is a run of this schedule."""
        head = f"{PREFIX}{self.name}:"
        return _tick_value(run_id[len(head):]) if run_id.startswith(head) else None

    def when(self) -> str:
        s = self.schedule
        return f"cron {s.cron}" if s.cron is not None else f"every {_period(s.every, '')}s"


def tick_text(tick: float) -> str:
    """A tick as it appears in run ids: UTC, ISO 8601, whole seconds (``2026-12-05T13:00:00Z``)."""
    return datetime.fromtimestamp(tick, timezone.utc).strftime(TICK_FORMAT)


def _tick_value(text: str) -> int | None:
    try:
        tick = int(datetime.strptime(text, TICK_FORMAT).replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        return None
    return tick if tick_text(tick) == text else None


def _plans(schedules: Iterable[Schedule], known: Mapping[str, Any] | None) -> list[_Plan]:
    """Check ``schedules`` as ``Interpreter(schedules=...)`` does: each one's fields, that its
    workflow is one of ``known`` (None: not checked), and that no two share a name."""
    if isinstance(schedules, (Schedule, str, bytes)) or not isinstance(schedules, Iterable):
        raise UsageError(f"schedules must be a list of Schedule(...), got {schedules!r}; write "
                         f"schedules=[Schedule(...)]")
    plans: dict[str, _Plan] = {}
    for s in schedules:
        if not isinstance(s, Schedule):
            raise UsageError(f"schedules must hold Schedule(...) values, got {s!r}")
        longest = MAX_NAME - len(PREFIX) - 1 - TICK_LENGTH
        if len(check_name("schedule name", s.name)) > longest:
            raise UsageError(f"schedule name {s.name!r} is {len(s.name)} characters long; at most "
                             f"{longest} fit in a run id (sched:<name>:<tick>)")
        if s.name in plans:
            raise UsageError(f"two schedules are named {s.name!r}; give each its own name (it is "
                             f"part of its runs' ids, sched:<name>:<tick>)")
        where = f"schedule {s.name!r}"
        timing = _timing(s, where)
        for key, allowed in (("catchup", CATCHUPS), ("overlap", OVERLAPS)):
            if getattr(s, key) not in allowed:
                raise UsageError(f"{where}: {key} must be one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(s, key)!r}")
        if taken := {"run_id", "workflow"} & set(s.kwargs):
            raise UsageError(f"{where}: the workflow cannot take an argument named "
                             f"{', '.join(sorted(taken))} from a schedule (start() takes it itself)")
        plans[s.name] = _Plan(s, _workflow(s.workflow, known, where), timing)
    return list(plans.values())


def _workflow(workflow: Any, known: Mapping[str, Any] | None, where: str) -> str:
    """The name ``workflow`` is registered under in ``known``."""
    if known is None and (isinstance(workflow, str) or callable(workflow)):
        return workflow if isinstance(workflow, str) else name_of(workflow)
    for name, fn in (known or {}).items():
        if workflow == name or workflow is fn:
            return name
    raise UsageError(f"{where}: its workflow {workflow!r} is not registered with this Interpreter "
                     f"(registered: {sorted(known or {}) or 'none'}); pass it in workflows= or "
                     f"decorate it with @workflow before the Interpreter is built")


# ---- what the store says -------------------------------------------------------------------

def _unfinished(record: RunRecord) -> bool:
    return record.state in ACTIVE or record.state == "blocked"


def last_fired(plan: _Plan, store: Store, now: float) -> int | None:
    """The newest tick at or before ``now`` whose run exists, looking at the newest ``CAP``
    runs of the workflow (one query) and back over the grid from ``now`` (at most ``CAP``
    ticks); None if neither finds one (a new schedule, or one silent for longer)."""
    listed = store.runs(workflow=plan.workflow, limit=CAP)
    found = max((t for r in listed if (t := plan.tick_of(r.run_id)) is not None and t <= now),
                default=None)
    if found is None and len(listed) < CAP:
        return None  # every run of the workflow was listed (a purged one aside)
    tick = plan.timing.prev_tick(now)
    for _ in range(CAP):  # a newer tick, beyond the listed runs or purged, is found here
        if tick is None or found is not None and tick <= found:
            break
        if store.get(plan.run_id(tick)) is not None:
            return tick
        tick = plan.timing.prev_tick(tick - 1)
    return found


def describe(schedules: Iterable[Schedule], store: Store, now: float) -> list[dict[str, Any]]:
    """One row per schedule, for ``replaygen schedules``: its settings, its next tick (UTC
    and local) and the last tick found fired in ``store``. The schedules are checked as an
    Interpreter checks them, except that their workflows need not be registered here."""
    rows = []
    for plan in _plans(schedules, None):
        s, nxt, last = plan.schedule, plan.timing.next_tick(now), last_fired(plan, store, now)
        record = None if last is None else store.get(plan.run_id(last))
        rows.append({
            "name": s.name, "workflow": plan.workflow, "when": plan.when(), "tz": s.tz,
            "catchup": s.catchup, "overlap": s.overlap,
            "next": None if nxt is None else tick_text(nxt),
            "next_local": None if nxt is None else datetime.fromtimestamp(
                nxt, ZoneInfo(s.tz)).isoformat(),
            "last": None if last is None else tick_text(last),
            "last_run": None if last is None else plan.run_id(last),
            "last_state": None if record is None else record.state})
    return rows


def seen(store: Store, limit: int = 10 * CAP) -> list[dict[str, Any]]:
    """The schedules whose runs are among the newest ``limit`` runs of ``store``, by name:
    workflow, runs seen, last tick and its run's state. Needs no code (the settings do)."""
    found: dict[str, dict[str, Any]] = {}
    offset = 0
    while offset < limit and (page := store.runs(limit=min(CAP, limit - offset), offset=offset)):
        offset += len(page)
        for r in page:
            name, tick = r.run_id[len(PREFIX):-TICK_LENGTH - 1], r.run_id[-TICK_LENGTH:]
            if not (r.run_id.startswith(PREFIX) and name and r.run_id[-TICK_LENGTH - 1] == ":"
                    and _tick_value(tick) is not None):
                continue
            row = found.setdefault(name, {"name": name, "workflow": r.workflow, "runs": 0,
                                          "last": tick, "last_run": r.run_id,
                                          "last_state": r.state})
            row["runs"] += 1
            if tick > row["last"]:  # the ISO form sorts as time does
                row.update(workflow=r.workflow, last=tick, last_run=r.run_id, last_state=r.state)
    return [found[name] for name in sorted(found)]


# ---- firing --------------------------------------------------------------------------------

@dataclass
class _Progress:
    """What one worker knows of one schedule: owned by the watcher thread, rebuilt from the
    store after a restart."""

    since: float | None = None  # ticks up to here are decided (None: not looked yet)
    next: float = -math.inf     # the first tick after ``since``: nothing to do before it
    last: int | None = None     # the newest tick whose run this worker found or started
    ahead: deque[int] = field(default_factory=deque)  # decided to fire, not started yet
    failing: bool = False       # said so in the log already


class _Clock(Protocol):
    def now(self) -> float: ...


class Scheduler:
    """Fires the due ticks of checked schedules. Built by the Interpreter (which checks the
    schedules here: a UsageError says what is wrong) and called only by its watcher thread,
    which owns it; ``start`` is the Interpreter's idempotent start."""

    def __init__(self, schedules: Iterable[Schedule], known: Mapping[str, Any], store: Store,
                 start: Callable[..., str], clock: _Clock) -> None:
        self._plans = _plans(schedules, known)
        self._store, self._start, self._clock = store, start, clock
        self._progress = {plan.name: _Progress() for plan in self._plans}

    def fire_due(self) -> None:
        """Start the runs of the ticks due by now, at most ``BATCH`` in one call. Never
        raises: a store that fails is logged once per outage and tried again next call."""
        now, budget = self._clock.now(), BATCH
        for plan in self._plans:
            p = self._progress[plan.name]
            try:
                if not p.ahead and now >= p.next:
                    self._decide(plan, p, now)
                while p.ahead and budget > 0:
                    self._fire(plan, p, p.ahead[0])
                    p.ahead.popleft()
                    budget -= 1
            except Exception as exc:
                if not p.failing:
                    log.warning("schedule %r: cannot fire its due ticks (%s); trying again every "
                                "turn of the watcher until the store answers", plan.name, exc)
                p.failing = True
            else:
                if p.failing:
                    log.info("schedule %r: firing again", plan.name)
                p.failing = False

    def _decide(self, plan: _Plan, p: _Progress, now: float) -> None:
        """Which ticks in (since, now] to fire: the on-time ones, and missed ones as the
        schedule's catchup says. On a worker's first look ``since`` is the last fired tick
        found in the store; a schedule with none is new (nothing was missed) and starts from
        its newest tick, if that is on time."""
        since = p.since
        if since is None:
            p.last = since = last_fired(plan, self._store, now)
        if since is None:
            newest = plan.timing.prev_tick(now)
            since = newest - 1 if newest is not None and newest > now - LATE else now
        on_time = self._ticks(plan, max(since, now - LATE), now, CAP)
        p.ahead = deque(sorted({*on_time, *self._missed(plan, since, now, bool(on_time))}))
        nxt = plan.timing.next_tick(now)
        p.since, p.next = now, math.inf if nxt is None else nxt

    def _missed(self, plan: _Plan, since: float, now: float, on_time: bool) -> list[int]:
        """The missed ticks in (since, now - LATE] that the schedule's catchup fires."""
        newest = plan.timing.prev_tick(now - LATE)
        if newest is None or newest <= since:
            return []
        first = plan.timing.next_tick(since)
        catchup = plan.schedule.catchup
        if catchup == "all":
            missed = self._ticks(plan, since, now - LATE, CAP + 1)
            if len(missed) > CAP:
                log.warning("schedule %r: more than %d ticks were missed (from %s to %s); "
                            "catchup='all' fires the newest %d and drops the older ones",
                            plan.name, CAP, tick_text(first or newest), tick_text(newest), CAP)
            chosen = missed[-CAP:]
        else:  # "latest" fires the newest tick unless one is on time
            chosen = [newest] if catchup == "latest" and not on_time else []
        log.info("schedule %r: the ticks from %s to %s are more than %gs late (no worker "
                 "looked: down, suspended or the store out); catchup=%r starts %d of them, each "
                 "unless its run exists", plan.name, tick_text(first or newest),
                 tick_text(newest), LATE, catchup, len(chosen))
        return chosen

    @staticmethod
    def _ticks(plan: _Plan, after: float, until: float, most: int) -> list[int]:
        """The newest ``most`` ticks in (after, until], oldest first."""
        found: list[int] = []
        tick = plan.timing.prev_tick(until)
        while tick is not None and tick > after and len(found) < most:
            found.append(tick)
            tick = plan.timing.prev_tick(tick - 1)
        return found[::-1]

    def _fire(self, plan: _Plan, p: _Progress, tick: int) -> None:
        """Start the run of ``tick`` unless it exists (another worker fired it) or the
        overlap policy drops it. Raises if the store fails (the tick is tried again)."""
        run_id = plan.run_id(tick)
        if self._store.get(run_id) is None:
            busy = self._previous(plan, p, tick) if plan.schedule.overlap == "skip" else None
            if busy is not None:
                log.info("schedule %r: tick %s dropped: the previous run %r is still %s "
                         "(overlap='skip')", plan.name, tick_text(tick), busy.run_id, busy.state)
                return
            s = plan.schedule
            try:
                self._start(plan.workflow, *s.args, run_id=run_id, **s.kwargs)
            except UsageError as exc:  # the same start fails the same way: never retried
                if self._store.get(run_id) is None:
                    log.error("schedule %r: tick %s not fired: %s", plan.name, tick_text(tick), exc)
                    return
                log.info("schedule %r: tick %s was fired by a worker with other arguments: %s",
                         plan.name, tick_text(tick), exc)
            else:
                log.debug("schedule %r: tick %s fired (run %r)", plan.name, tick_text(tick), run_id)
        if p.last is None or tick > p.last:
            p.last = tick

    def _previous(self, plan: _Plan, p: _Progress, tick: int) -> RunRecord | None:
        """The schedule's previous run if it is unfinished (else None): the run of the newest
        earlier tick that has one. The last run this worker knows is looked at first; ticks
        after it (which another worker may have fired) only when that one has finished."""
        if p.last is None or p.last >= tick:
            return None
        known = self._store.get(plan.run_id(p.last))
        if known is not None and _unfinished(known):
            return known
        earlier = plan.timing.prev_tick(tick - 1)
        for _ in range(CAP):
            if earlier is None or earlier <= p.last:
                break
            if (record := self._store.get(plan.run_id(earlier))) is not None:
                p.last = earlier
                return record if _unfinished(record) else None
            earlier = plan.timing.prev_tick(earlier - 1)
        return None
