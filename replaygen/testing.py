"""Unit-testing workflows without a store, threads or real steps: feed a fake journal.

    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1"})
    assert t.pending == Do("receipt", send_receipt, "txn_1")

``replay`` drives the engine's own replay rules (``replaygen.replay``) with a fake
performer in place of the runtime: answers go through the codec exactly as in the engine
(a tuple comes back as a list), an exception given as a step's answer fails the step as
the engine would (``StepFailed``), and retries, cancels and timeouts follow the same rules.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .codec import Codec, JSONCodec
from .commands import Command
from .errors import Cancelled, DeadlineExceeded, RunNotFound, UsageError, WaitTimeout
from .client import DEFAULT_MAX_PAYLOAD
from .journal import Entry, Journal
from .registry import registered, table
from .effects import CANCEL, RING, Acquire, Alarm, Call, Idle, Inbox, Outcome, Save, Signals
from .replay import CHILD_SIGNAL, RULES, Life, Settings
from .shadow import dry_run
from .store import ACTIVE, MemoryStore, RunRecord, Store

_NONE = object()
_QUIET = logging.getLogger("replaygen.testing")
"""What the rules log about fake runs (a step failing as the test asked) goes nowhere."""
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@dataclass
class Trace:
    """What a workflow did when replayed against a fake journal."""

    commands: list[Command] = field(default_factory=list)
    """Every command yielded, in order (Versions included)."""
    done: bool = False
    """True once the workflow returned or raised (or the run would be blocked)."""
    pending: Command | None = None
    """The first command the journal could not answer (when not done)."""
    result: Any = None
    """The workflow's return value, once done."""
    error: BaseException | None = None
    """The exception that ended the run, once done: raised by the workflow, or why the
    engine would block it (a ``NonDeterminismError``, for instance)."""
    unused: list[Any] = field(default_factory=list)
    """Answers never asked for: step names of a dict journal, or list positions. A typo'd
    step name shows up here (and as a warning)."""


class _Signal(NamedTuple):
    id: int
    name: str
    payload: str




_NEVER = object()
"""The answer of a member of an ``Any`` that another member's answer beats: it never ends."""


class _Performer:
    """Answers a life's effects from the fake journal, as the world outside a run would: a
    step ends with its answer, a signal or a child's end arrives, a cancel comes, and time
    jumps to the next alarm when nothing else can happen."""

    def __init__(self, life: Life, answers: dict[int, Any], clock: list[float]) -> None:
        self.life, self.answers, self.clock = life, answers, clock
        self.alarm: float | None = None
        self.sent: list[_Signal] = []  # delivered to the run, not yet consumed
        self.told: set[int] = set()    # positions whose signal or end was sent
        self.cancelled = False

    def perform(self, effect: Any) -> Any:
        kind = type(effect)
        if kind is Acquire:  # a step answered with Cancelled() never starts
            return not isinstance(self.answers.get(effect.position), Cancelled)
        if kind is Call:
            return self.call(effect.position)
        if kind is Inbox:
            return list(self.sent)
        if kind is Alarm:
            self.alarm = effect.at
        elif kind is Save:
            self.sent = [s for s in self.sent if s.id not in effect.consume]
        elif kind is Idle:
            return self.idle()
        return None  # Withdraw, Emit, Lookup (no other runs here): nothing to perform

    def call(self, position: int) -> Any:
        found = self.answers.get(position, _NONE)
        if found is _NEVER or isinstance(found, Cancelled):
            return None if found is _NEVER else False  # Cancelled: raised before the step runs
        if found is _NONE:
            raise _Stop
        if isinstance(found, Exception):
            return Outcome(self.clock[0], error=found)
        return Outcome(self.clock[0], found)

    def idle(self) -> tuple[Any, ...]:
        pending = [m for m in self.life.members if not m.done]
        answers = [self.answers.get(m.position, _NONE) for m in pending]
        if not self.cancelled and any(isinstance(a, Cancelled) and not isinstance(
                a, DeadlineExceeded) for a in answers):
            self.cancelled = True
            return (CANCEL,)
        news = tuple(s for m in pending if (s := self.news(m)) is not None)
        if news:
            self.sent += news
            return (Signals(news),)
        if self.alarm is None or any(RULES[type(m.cmd)].kit in ("signal", "child") and a is _NONE
                                     for m, a in zip(pending, answers, strict=True)):
            raise _Stop  # a signal (or a child's end) no answer gives: time does not pass
        self.clock[0], self.alarm = max(self.clock[0], self.alarm), None  # time passes at once
        return (RING,)

    def news(self, m: Any) -> _Signal | None:
        """The signal (or child's end) the answer at the member's position sends, once."""
        found = self.answers.get(m.position, _NONE)
        kit = RULES[type(m.cmd)].kit
        if m.position in self.told or found is _NONE or found is _NEVER or kit not in (
                "signal", "child") or isinstance(found, (Cancelled, WaitTimeout)):
            return None
        self.told.add(m.position)
        codec = self.life.settings.codec
        if kit == "signal":
            return _Signal(-1 - m.position, m.cmd.signal, codec.encode(found))
        told = {"state": "failed", "error": {"type": type(found).__name__, "message": str(
            found)}} if isinstance(found, Exception) else {"state": "completed", "result": found}
        return _Signal(-1 - m.position, CHILD_SIGNAL + str(m.child), codec.encode(told))


class _Stop(Exception):
    """The fake journal has no answer for the command the workflow waits on."""


class _BadAnswer(UsageError):
    """An answer of the fake journal that cannot answer its command: the test's mistake,
    raised to it (never into the workflow)."""


def replay(
    workflow: Callable[..., Any], *args: Any, journal: Sequence[Any] | Mapping[str, Any] = (),
    signals: Mapping[str, Any] | None = None, sleeps: Sequence[Any] = (),
    versions: Mapping[str, int] | None = None, codec: Codec | None = None, **kwargs: Any,
) -> Trace:
    """Drive ``workflow(*args, **kwargs)`` with answers from a fake journal.

    ``journal`` is a list answering by position (each Do, Wait and Child takes one, each
    member of an All too, Sleeps included, and an Any one for the whole race, answered with
    ``(index, value)``) or a dict answering Dos by step name and Children by workflow name.
    ``signals`` answers Waits by signal name (inside an Any too: that Wait wins), ``sleeps``
    answers Sleeps in order (they pass by themselves when not given), ``versions`` gives
    Version values by change id (default: ``max``); a Deadline takes no position. An
    exception as an answer is raised: ``WaitTimeout()`` (for a Wait with a timeout),
    ``Cancelled()`` and ``DeadlineExceeded()`` (the run's deadline strikes there) as
    themselves, any other as the ``StepFailed`` (for a Child: ``ChildFailed``, naming its
    derived id) the engine would raise.
    """
    codec = codec or JSONCodec()
    clock = [time.time()]
    trace, answers = Trace(), _Answers(journal, signals, sleeps)
    markers = [Entry(i, 0, "version", name, "ok", codec.encode(v), 0.0, 0.0)
               for i, (name, v) in enumerate((versions or {}).items())]
    settings = Settings(codec, DEFAULT_MAX_PAYLOAD, _QUIET, now=lambda: clock[0],
                        max_resumes=1 << 30)
    life = Life(settings, "replay", getattr(workflow, "__qualname__", "workflow"), lambda: _record(
        workflow(*args, **kwargs), trace, answers), '{"args":[],"kwargs":{}}',
        Journal("replay", markers, codec))
    answers.strike = lambda: setattr(life, "deadline_at", clock[0])
    performer = _Performer(life, answers.by_position, clock)
    gen = life.life()
    reply: Any = None
    try:
        while True:
            effect = gen.send(reply)
            if type(effect) is Save and effect.release:
                trace.done = True
            reply = performer.perform(effect)
    except StopIteration:
        trace.error = trace.error or life.ended
    except _Stop:
        trace.pending = trace.commands[-1]
        gen.close()
    if isinstance(trace.error, _BadAnswer):
        raise UsageError(str(trace.error)) from None
    trace.unused = answers.unused() if trace.done else []
    if trace.unused:
        warnings.warn(f"replay(): these answers were never asked for: {trace.unused!r} (a "
                      f"misspelt step name?)", stacklevel=2)
    return trace


class _Answers:
    """The fake journal's answers, handed to the positions of each command as it is
    yielded (how, ``RULES[type(cmd)].kit`` says)."""

    def __init__(self, journal: Sequence[Any] | Mapping[str, Any], signals: Mapping[str, Any] | None,
                 sleeps: Sequence[Any]) -> None:
        self.journal, self.signals, self.sleeps = journal, signals or {}, list(sleeps)
        self.listed = not isinstance(journal, Mapping)
        self.cursor = self.slept = self.position = 0  # in the list; sleeps; in the run
        self.asked: set[Any] = set()
        self.by_position: dict[int, Any] = {}
        self.strike: Callable[[], None] = lambda: None

    def command(self, cmd: Any) -> None:
        rule = RULES.get(type(cmd))
        if rule is None or rule.kit == "version":
            return
        if rule.kit == "deadline":
            self.position += 1
        elif rule.kit == "any":
            self.race(cmd.commands)
        else:
            for member in cmd.commands if rule.kit == "all" else (cmd,):
                self.place(self.position, self.find(member, rule.kit == "all"))
                self.position += 1

    def place(self, position: int, found: Any) -> None:
        if isinstance(found, DeadlineExceeded):
            self.strike()
        if found is not _NONE:
            self.by_position[position] = found

    def race(self, members: Sequence[Command]) -> None:
        """An Any: one list position answers ``(index, value)``; else its members' answers
        (a signal by name, a step by name) decide, and the others never end."""
        if self.listed and self.cursor < len(self.journal):
            found = self.next()
            if isinstance(found, Cancelled):
                self.place(self.position, found)
                found = _NONE
            elif not (isinstance(found, (tuple, list)) and len(found) == 2 and isinstance(
                    found[0], int) and 0 <= found[0] < len(members)):
                raise _BadAnswer(f"the answer of Any at list position {self.cursor - 1} must be "
                                 f"(index, value) with 0 <= index < {len(members)}, got {found!r}")
            found = {} if found is _NONE else {found[0]: found[1]}
        else:
            found = {i: a for i, m in enumerate(members) if (a := self.find(m, True)) is not _NONE}
        for i in range(len(members)):
            if found:
                self.place(self.position + i, found.get(i, _NEVER))
        self.position += len(members)

    def next(self) -> Any:
        self.asked.add(self.cursor)
        self.cursor += 1
        return self.journal[self.cursor - 1]  # type: ignore[index]

    def find(self, cmd: Command, member: bool) -> Any:
        kit = RULES[type(cmd)].kit
        if kit == "sleep" and not (member and self.listed):
            self.slept += 1
            found = self.sleeps[self.slept - 1] if self.slept <= len(self.sleeps) else None
            return found if found is not None else _NONE
        if self.listed and self.cursor < len(self.journal):
            return self.next()
        if kit in ("step", "child") and not self.listed:
            name = cmd.name if kit == "step" else cmd.workflow  # type: ignore[attr-defined]
            self.asked.add(name)
            return self.journal.get(name, _NONE)  # type: ignore[union-attr]
        if kit == "signal":
            return self.signals.get(cmd.signal, _NONE)  # type: ignore[attr-defined]
        return _NONE

    def unused(self) -> list[Any]:
        keys = range(len(self.journal)) if self.listed else self.journal
        return [k for k in keys if k not in self.asked]


def _record(gen: Generator[Any, Any, Any], trace: Trace, answers: _Answers) -> Generator[Any, Any, Any]:
    """Forward a workflow generator, noting each command it yields and what it returns."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            cmd = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            trace.result = stop.value
            return stop.value
        except BaseException as exc:
            trace.error = exc
            raise
        trace.commands.append(cmd)
        answers.command(cmd)
        try:
            value, error = (yield cmd), None
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            value, error = None, exc


# ---- checking stored runs against code -------------------------------------------------------

EXPORT_FORMAT = "replaygen-run/1"


@dataclass(frozen=True)
class Check:
    """One run checked against code: ``ok`` unless the run would block (``message`` then says
    where, what the journal holds and what the code yields) or cannot be read."""

    run_id: str
    workflow: str
    state: str
    ok: bool
    message: str
    position: int | None = None
    versions: tuple[tuple[str, int], ...] = ()
    """The Version markers this replay would record (change id, branch) for a run that
    reaches the Version call now."""


def check(store: Store, workflows: Any = None, *, states: Collection[str] | None = None,
          run_ids: Collection[str] | None = None, codec: Codec | None = None) -> list[Check]:
    """Replay stored runs in memory against ``workflows`` (default: the ``@workflow``
    registry; a list or dict as for ``Interpreter``), as a worker would on recovery, without
    performing a step, writing anything or taking a lease. Default: every unfinished run,
    blocked included. Runs of workflows not in ``workflows`` are left out."""
    known = registered() if workflows is None else table(workflows)
    codec = codec or JSONCodec()
    records = [r for r in map(store.get, run_ids) if r is not None] if run_ids is not None \
        else _runs(store, tuple(states or (*ACTIVE, "blocked")))
    return [_check_one(store, r, known[r.workflow], codec) for r in records if r.workflow in known]


def _check_one(store: Store, r: RunRecord, fn: Any, codec: Codec) -> Check:
    try:
        journal = Journal(r.run_id, store.journal(r.run_id), codec)
    except Exception as exc:
        return Check(r.run_id, r.workflow, r.state, False, f"unreadable: {exc}")
    settings = Settings(codec, DEFAULT_MAX_PAYLOAD, _QUIET, now=time.time, max_resumes=1 << 30)
    life = Life(settings, r.run_id, r.workflow, fn, r.args, journal,
                written=(r.state, r.wake_at, r.waiting_for), parent=r.parent)
    state, markers = dry_run(life)
    versions = tuple((e.name, int(journal.number(e))) for e in markers)
    if state != "blocked":
        return Check(r.run_id, r.workflow, r.state, True, "replays", versions=versions)
    return Check(r.run_id, r.workflow, r.state, False, str(life.ended),
                 getattr(life.ended, "position", None), versions)


def _runs(store: Store, states: tuple[str, ...]) -> list[RunRecord]:
    """Every run in these states, a page at a time."""
    runs: list[RunRecord] = []
    while page := store.runs(states=states, limit=1000, offset=len(runs)):
        runs += page
    return runs


def census(store: Store, change: str | None = None,
           codec: Codec | None = None) -> dict[str, dict[int | None, int]]:
    """For each Version change id (only ``change``, if given), how many unfinished runs
    recorded each branch; the key None counts those with no marker yet (they predate the
    change, or have not reached it). A branch no unfinished run took can be deleted.

    Only runs of workflows that use the change are counted. The store tells which those
    are: the workflows of which some unfinished run recorded a marker for it. (A workflow
    none of whose unfinished runs reached the change yet is not counted.)"""
    codec = codec or JSONCodec()
    taken: list[tuple[str, dict[str, int]]] = []
    for r in _runs(store, (*ACTIVE, "blocked")):
        journal = Journal(r.run_id, [], codec)
        taken.append((r.workflow, {e.name: int(journal.number(e)) for e in store.journal(
            r.run_id) if e.kind == "version" and change in (None, e.name)}))
    users: dict[str, set[str]] = {}  # change id -> the workflows that use it
    for workflow, markers in taken:
        for name in markers:
            users.setdefault(name, set()).add(workflow)
    counts: dict[str, dict[int | None, int]] = {name: {} for name in sorted(users)}
    for workflow, markers in taken:
        for name, branches in counts.items():
            if workflow in users[name]:
                branch = markers.get(name)
                branches[branch] = branches.get(branch, 0) + 1
    return counts


def export_run(store: Store, run_id: str) -> dict[str, Any]:
    """A run as plain data, ready for ``json.dump``, that ``load_run`` and ``replay_run`` take
    back: ``{"format": "replaygen-run/1", "run": {...}, "journal": [...]}``.

    ``run`` is the run's record as the store holds it (``RunRecord``'s fields: ``run_id``,
    ``workflow``, ``args``, ``state``, ``created`` and ``updated`` in epoch seconds,
    ``result`` or ``error``, ...); ``journal`` its entries in order (``Entry``'s fields:
    ``seq``, ``slot``, ``kind``, ``name``, ``status``, ``value``, ``started``, ``ended``).
    ``args``, ``result``, ``error`` and each ``value`` are the stored text, not decoded;
    ``args`` holds ``{"args": [...], "kwargs": {...}}``, without the nonce the engine keeps
    with a run to make its idempotency keys (nothing that replays it needs the nonce)."""
    r = store.get(run_id)
    if r is None:
        raise RunNotFound(f"no run {run_id!r} in this store")
    return {"format": EXPORT_FORMAT, "run": {**asdict(r), "args": _without_nonce(r.args)},
            "journal": [e._asdict() for e in store.journal(run_id)]}


def _without_nonce(args: str) -> str:
    """Stored arguments without the engine's nonce; as they are if they are not JSON (a codec
    of another format) or hold none."""
    try:
        value = json.loads(args)
    except ValueError:
        return args
    if not isinstance(value, dict) or "nonce" not in value:
        return args
    return json.dumps({k: v for k, v in value.items() if k != "nonce"}, separators=(",", ":"))


def load_run(source: str | os.PathLike[str] | Mapping[str, Any]) -> MemoryStore:
    """A MemoryStore holding an exported run (a file path or the data), for ``check`` and
    ``replay_run``: a production run becomes a regression test with no store."""
    data = source if isinstance(source, Mapping) else json.loads(Path(source).read_text())
    if data.get("format") != EXPORT_FORMAT:
        raise UsageError(f"not a replaygen run export (format {data.get('format')!r}, "
                         f"expected {EXPORT_FORMAT!r}); write one with `replaygen export`")
    store = MemoryStore()
    store.put(RunRecord(**data["run"]), [Entry(**e) for e in data["journal"]])
    return store


def replay_run(workflow: Callable[..., Any], source: Any, codec: Codec | None = None) -> Trace:
    """Replay an exported run (see ``load_run``) against ``workflow`` as recovery would:
    ``done`` and ``result`` once the journal takes it to its end, else ``pending`` is where
    it would go on live; ``error`` is why it failed or would block."""
    store = load_run(source)
    record = store.runs()[0]
    codec = codec or JSONCodec()
    trace = Trace()
    life = Life(Settings(codec, DEFAULT_MAX_PAYLOAD, _QUIET, now=time.time, max_resumes=1 << 30),
                record.run_id, record.workflow, lambda *a, **k: _record(
                    workflow(*a, **k), trace, _Answers((), None, ())), record.args,
                Journal(record.run_id, store.journal(record.run_id), codec))
    state, _ = dry_run(life)
    trace.done = state is not None
    trace.error = trace.error or life.ended
    if not trace.done and trace.commands:
        trace.pending = trace.commands[-1]
    return trace


class FakeClock:
    """A clock the test moves: ``advance(seconds)`` wakes any interpreter timers now due."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    def now(self) -> float:
        return self._now

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
        for listener in self._listeners:
            listener()


__all__ = ["Check", "FakeClock", "Trace", "census", "check", "export_run", "load_run", "replay",
           "replay_run"]
