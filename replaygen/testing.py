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
from .commands import All, Command, Do, Sleep, Version, Wait
from .errors import Cancelled, RunNotFound, UsageError, WaitTimeout
from .interpreter import DEFAULT_MAX_PAYLOAD
from .journal import Entry, Journal
from .registry import registered, table
from .replay import Acquire, Alarm, Call, Idle, Inbox, Life, Outcome, Rules, Save, Wake, dry_run
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


class _Performer:
    """Answers a life's effects from the fake journal, with a clock that jumps to alarms."""

    def __init__(self, life: Life, answers: dict[int, Any], clock: list[float]) -> None:
        self.life, self.answers, self.clock = life, answers, clock
        self.alarm: float | None = None
        self.cancel_due = False

    def answer(self, slot: int) -> Any:
        found = self.answers.get(slot, _NONE)
        if isinstance(found, Cancelled) and not self.life.cancel:
            self.life.cancel = self.cancel_due = True
        return found

    def perform(self, effect: Any) -> Any:
        kind = type(effect)
        if kind is Acquire:  # a step answered with Cancelled() never starts
            return not isinstance(self.answer(self.life.members[effect.member].slot), Cancelled)
        if kind is Call:
            found = self.answer(effect.info.position)
            if isinstance(found, Cancelled):
                return False  # queued: the cancel is raised before the step runs
            if found is _NONE:
                raise _Stop
            if isinstance(found, Exception):
                return Outcome(self.clock[0], error=found)
            return Outcome(self.clock[0], found)
        if kind is Inbox:
            return self.inbox()
        if kind is Alarm:
            self.alarm = effect.at
        if kind is Idle:
            return self.idle()
        return None  # Save, Withdraw, Emit: nothing to perform

    def inbox(self) -> list[_Signal]:
        out = []
        for m in self.life.members:
            found = self.answer(m.slot) if isinstance(m.cmd, Wait) else _NONE
            if isinstance(m.cmd, Wait) and found is not _NONE and not isinstance(found, BaseException):
                self.answers.pop(m.slot)  # consumed, as a signal is
                out.append(_Signal(m.slot, m.cmd.signal, self.life.rules.codec.encode(found)))
        return out

    def idle(self) -> Wake:
        pending = [m for m in self.life.members if not m.done]
        for m in pending:
            self.answer(m.slot)  # a Cancelled() answer is due now
        if self.cancel_due:
            self.cancel_due = False
            return Wake()
        for m in pending:
            if isinstance(m.cmd, Wait) and not isinstance(self.answers.get(m.slot), WaitTimeout):
                raise _Stop  # a signal no answer gives
        if self.alarm is None:
            raise _Stop
        self.clock[0], self.alarm = max(self.clock[0], self.alarm), None  # time passes at once
        return Wake(alarm=True)


class _Stop(Exception):
    """The fake journal has no answer for the command the workflow waits on."""


def replay(
    workflow: Callable[..., Any], *args: Any, journal: Sequence[Any] | Mapping[str, Any] = (),
    signals: Mapping[str, Any] | None = None, sleeps: Sequence[Any] = (),
    versions: Mapping[str, int] | None = None, codec: Codec | None = None, **kwargs: Any,
) -> Trace:
    """Drive ``workflow(*args, **kwargs)`` with answers from a fake journal.

    ``journal`` is a list answering by position (each Do and Wait, and each
    member of an All, Sleeps included, takes one) or a dict answering Dos by step name.
    ``signals`` answers Waits by signal name, ``sleeps`` answers Sleeps in order
    (they pass by themselves when not given), ``versions`` gives Version values
    by change id (default: ``max``). An exception as an answer is raised:
    ``WaitTimeout()`` (for a Wait with a timeout) and ``Cancelled()`` as themselves, any
    other as the ``StepFailed`` the engine would raise for that step.
    """
    codec = codec or JSONCodec()
    trace, answers = Trace(), _Answers(journal, signals, sleeps)
    clock = [time.time()]
    markers = [Entry(i, 0, "version", name, "ok", codec.encode(v), 0.0, 0.0)
               for i, (name, v) in enumerate((versions or {}).items())]
    rules = Rules(codec, lambda: clock[0], DEFAULT_MAX_PAYLOAD, max_resumes=1 << 30, log=_QUIET)
    life = Life(rules, "replay", getattr(workflow, "__qualname__", "workflow"), lambda: _record(
        workflow(*args, **kwargs), trace, answers), '{"args":[],"kwargs":{}}',
        Journal("replay", markers, codec))
    performer = _Performer(life, answers.by_slot, clock)
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
    trace.unused = answers.unused() if trace.done else []
    if trace.unused:
        warnings.warn(f"replay(): these answers were never asked for: {trace.unused!r} (a "
                      f"misspelt step name?)", stacklevel=2)
    return trace


class _Answers:
    """The fake journal's answers, handed to each command's slots as it is yielded."""

    def __init__(self, journal: Sequence[Any] | Mapping[str, Any], signals: Mapping[str, Any] | None,
                 sleeps: Sequence[Any]) -> None:
        self.journal, self.signals, self.sleeps = journal, signals or {}, list(sleeps)
        self.by_position = not isinstance(journal, Mapping)
        self.position = self.slept = self.slot = 0
        self.asked: set[Any] = set()
        self.by_slot: dict[int, Any] = {}

    def command(self, cmd: Command) -> None:
        if isinstance(cmd, Version) or not isinstance(cmd, Command):
            return
        members = cmd.commands if isinstance(cmd, All) else (cmd,)
        for member in members:
            found = self.find(member, isinstance(cmd, All))
            if found is not _NONE:
                self.by_slot[self.slot] = found
            self.slot += 1

    def find(self, cmd: Command, member: bool) -> Any:
        if isinstance(cmd, Sleep) and not (member and self.by_position):
            self.slept += 1
            found = self.sleeps[self.slept - 1] if self.slept <= len(self.sleeps) else None
            return found if found is not None else _NONE
        if self.by_position and self.position < len(self.journal):
            self.asked.add(self.position)
            self.position += 1
            return self.journal[self.position - 1]  # type: ignore[index]
        if isinstance(cmd, Do) and not self.by_position:
            self.asked.add(cmd.name)
            return self.journal.get(cmd.name, _NONE)  # type: ignore[union-attr]
        if isinstance(cmd, Wait):
            return self.signals.get(cmd.signal, _NONE)
        return _NONE

    def unused(self) -> list[Any]:
        keys = range(len(self.journal)) if self.by_position else self.journal
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
    rules = Rules(codec, time.time, DEFAULT_MAX_PAYLOAD, max_resumes=1 << 30, log=_QUIET)
    life = Life(rules, r.run_id, r.workflow, fn, r.args, journal,
                written=(r.state, r.wake_at, r.waiting_for))
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
    life = Life(Rules(codec, time.time, DEFAULT_MAX_PAYLOAD, max_resumes=1 << 30, log=_QUIET),
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
