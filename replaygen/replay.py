"""The replay rules: a run's life as a generator that yields effects, one handler per command.

A ``Life`` drives one run's workflow generator: it answers each command from the journal or
asks for live work by yielding effects (``effects.py``) that its driver performs and answers,
as workflows yield commands: the runtime with threads and a store, the testing kit with a
fake. What happens from outside (a step's end, a signal, a cancel, an alarm) comes back as
events. Every rule lives here (matching, Version, retries, cancel, deadlines, ``All`` and
``Any``, children, crash loops, payload limits); this module never imports threading, asyncio
or a store, nor performs I/O. ``RULES`` is the one table of commands: a new command is one
``Rule`` and one handler method of ``Life``.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, NamedTuple

from .codec import Payloads
from .commands import RESERVED, All, Child, Command, Deadline, Do, Sleep, Version, Wait, child_id
from .commands import Any as AnyOf
from .errors import (
    Cancelled, CorruptRecord, DeadlineExceeded, NonDeterminismError, ReplaygenError, RunBlocked,
    UsageError, WaitTimeout, error_record, stored_error,
)
from .effects import (
    IDLE, INBOX, WITHDRAW, Acquire, Alarm, Call, Cancel, Done, Effect, Emit, Granted, Lookup,
    Notice, Outcome, Ring, Save, Signals, Spawn, Stop,
)
from .journal import Entry, Journal
from .observe import Event, StepInfo

log = logging.getLogger("replaygen")
Workflow = Callable[..., Generator[Any, Any, Any]]  # as registry.Workflow (which imports threading)
CHILD_SIGNAL = RESERVED + "child:"
"""A child's end reaches its parent as a signal of this name + the child's id."""


class Interrupted(Exception):
    """KeyboardInterrupt, SystemExit... from the workflow or a step: not a failure."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


class _Stopped(Exception):
    """A ``Stop`` arrived: the life ends where it is."""


@dataclass
class Settings(Payloads):
    """What every life of one interpreter shares: its codec and payload limit (``Payloads``:
    ``encode``, ``encode_error``), its clock and its other limits."""

    _: KW_ONLY
    now: Callable[[], float]
    max_resumes: int
    observed: bool = False
    closing: bool = False  # shutting down: no new live work
    verify: Callable[[Any], None] | None = None  # always_replay: shadow.compare after a step
    limits: Mapping[str, int] = field(default_factory=dict)  # slots per workflow, store-wide


class Member:
    """One command of the current yield (a lone command, or one member of an ``All``/``Any``)."""

    __slots__ = ("cmd", "index", "position", "done", "value", "error", "running", "queued",
                 "deadline", "label", "child")

    def __init__(self, cmd: Command, index: int, position: int) -> None:
        self.cmd, self.index, self.position = cmd, index, position
        self.done = self.running = self.queued = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.deadline: float | None = None  # when it needs looking at again
        self.label: str | None = None       # what it waits for (a signal, a child)
        self.child: str | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        self.done, self.value, self.error, self.deadline = True, value, error, None


_Gen = Generator[Effect, Any, Any]
LONE, ALL, ANY = 0, 1, 2  # how a yield's members make its answer
_NONE: list[Member] = []  # the members between yields (never changed)
_RUNNING = ("running", None, None)  # the run row of a run taking steps
_NO_IDS: frozenset[int] = frozenset()  # the signals a run took, until it takes one
_WORKING = ("pending", "running")  # store.WORKING: a run in these states holds a slot
_NOT_BEGUN = object()


class Life:
    """The rules applied to one run. ``life()`` is the generator a driver runs."""

    # Slots, not a dict: a worker holds one per parked run (a dict of 30+ keys costs 1.6 KB).
    __slots__ = ("settings", "id", "workflow", "fn", "args", "journal", "resumes", "parent",
                 "cancel", "written", "gen", "position", "kind", "members", "orphans", "live",
                 "slots", "alarm", "deadline_at", "inbox", "taken", "mail", "fresh", "staged",
                 "consumed", "spawned", "cancels", "after", "ended", "nonce", "passed")

    def __init__(self, settings: Settings, run_id: str, workflow: str, fn: Workflow | None,
                 args: str, journal: Journal, *, written: tuple[str, float | None, str | None] = (
                     "pending", None, None), resumes: int = 0, cancel: bool = False,
                 parent: str | None = None, broken: Exception | None = None) -> None:
        self.settings, self.id, self.workflow, self.fn, self.args = (
            settings, run_id, workflow, fn, args)
        self.journal, self.resumes, self.parent = journal, resumes, parent
        self.cancel = cancel and not journal.cancelled  # requested, not yet journaled
        self.written = written  # the run row as last written: (state, wake_at, waiting_for)
        self.gen: Generator[Any, Any, Any] | None = None
        self.position = 0                   # the replay cursor: first position of the current yield
        self.kind = LONE                    # the current yield's
        self.members: list[Member] = []
        self.orphans: dict[int, Member] = {}  # steps still running for an answered yield
        self.live = False                   # the current yield needed live work
        self.slots = False                  # it asked for a concurrency slot that may be kept
        self.alarm: float | None = None
        self.deadline_at: float | None = None  # when DeadlineExceeded strikes (None: never)
        self.passed: float | None = None    # the deadline that struck, once it has
        self.inbox: list[Any] | None = None  # the unconsumed signals as known (None: read them)
        self.taken = _NO_IDS                # signals consumed by this incarnation
        self.mail: list[Done] = []          # steps that ended, to journal
        self.fresh = False                  # events came since the current pass began
        # Tuples, not lists: a parked run (tens of thousands in a worker) keeps empty ones.
        self.staged: tuple[Entry, ...] = ()    # entries for the next Save, with what they imply:
        self.consumed: tuple[int, ...] = ()    # the signals they take,
        self.spawned: tuple[Spawn, ...] = ()   # the children they create,
        self.cancels: tuple[str, ...] = ()     # the children they cancel,
        self.after: tuple[Event, ...] = ()     # the observer events due once they are durable
        self.ended: BaseException | None = broken  # what failed, cancelled or blocked the run
        self.nonce = ""                     # this incarnation's, for idempotency keys

    # ---- the life --------------------------------------------------------------------------

    def life(self) -> _Gen:
        """Run the workflow to its end, a block, or an interrupt; then the life ends."""
        try:
            yield from self._main()
        except _Stopped:
            pass
        except Interrupted as it:
            self.settings.log.error("run %s interrupted; it stays resumable (recover() resumes "
                                    "it)", self.id)
            yield from self._save(self.written[0], release=True)
            raise it.exc from None
        except Exception as exc:
            if not isinstance(exc, ReplaygenError):
                self.settings.log.error("internal error while handling run %s", self.id,
                                        exc_info=exc)
            try:
                yield from self._block(exc)
            except _Stopped:
                pass
            except Exception:
                self.settings.log.exception("could not block run %s; it stays claimed until its "
                                            "lease lapses", self.id)
        finally:
            if self.gen is not None:
                try:  # yields in a `finally` are refused by Python and never executed
                    self.gen.close()
                except BaseException:
                    pass

    def _main(self) -> _Gen:
        if self.ended is not None:  # its journal could not be read
            raise self.ended
        if self.fn is None:
            raise RunBlocked(f"run {self.id!r} is of workflow {self.workflow!r}, which this "
                             f"interpreter does not know; register it and call recover()")
        try:
            payload = self.settings.codec.decode(self.args)
            args, kwargs = payload["args"], payload["kwargs"]
            self.nonce, self.deadline_at = str(payload.get("nonce", "")), payload.get("deadline")
        except Exception as exc:
            raise CorruptRecord(f"run {self.id!r}: its stored arguments cannot be read ({exc!r}); "
                                f"the run is blocked until the row is repaired") from None
        yield from self._emit("run_started")
        try:
            self.gen = gen = self.fn(*args, **kwargs)
        except Exception as exc:  # wrong arguments for the function
            return (yield from self._finish("failed", exc))
        at, decode = self.journal.at, self.journal.decode
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                cmd = gen.throw(error) if error is not None else gen.send(value)
            except StopIteration as stop:
                return (yield from self._finish("completed", stop.value))
            except Exception as exc:
                return (yield from self._finish(
                    "cancelled" if isinstance(exc, Cancelled) else "failed", exc))
            except BaseException as exc:
                raise Interrupted(exc) from None
            value = error = None
            if type(cmd) is Do:
                entries = at.get(self.position)
                if entries and len(entries) == 1 and entries[0].kind == "do" \
                        and entries[0].status == "ok" and entries[0].name == cmd.name:
                    self.position += 1  # the hot path of replay: a step with just its result
                    value = decode(entries[0])
                    continue
                if entries is None and self._lean():
                    value, error = yield from self.step(cmd)
                    continue
            rule = RULES.get(type(cmd))
            if rule is None:
                return (yield from self._finish("failed", UsageError(
                    f"the workflow yielded {cmd!r}, which is not a command; yield "
                    f"{', '.join(t.__name__ for t in RULES)}")))
            value, error = yield from rule.answer(self, cmd)

    # ---- a yield of commands that may wait ----------------------------------------------------

    # The handlers of yields that may wait return the generator of ``together`` itself: a
    # generator frame fewer for every effect to pass through.
    def lone(self, cmd: Command) -> _Gen:
        return self.together((cmd,), LONE)

    def all(self, cmd: All) -> _Gen:
        return self.together(cmd.commands, ALL)

    def any(self, cmd: AnyOf) -> _Gen:
        return self.together(cmd.commands, ANY)

    def _lean(self) -> bool:
        """The run is at a fresh position with nothing pending: a step may take the lean path."""
        return self.written == _RUNNING and self.position >= self.journal.end and not (
            self.staged or self.mail or self.cancel or self.resumes or self.settings.closing
            or self.deadline_at is not None or self.settings.observed)

    def step(self, cmd: Do[Any]) -> Generator[Effect, Any, tuple[Any, Any]]:
        """The common case, a step at a fresh position that ends at once and well: from the
        yield to its commit with no member and no pass. Anything else (it runs elsewhere, waits
        for a slot, fails) goes on as a yield of one member that has begun."""
        position = self.position
        outcome = yield Call(position, 1, cmd.fn, cmd.args, cmd.kwargs,
                             StepInfo(self.id, cmd.name, position, 1, self.nonce), True)
        if type(outcome) is Outcome and outcome.error is None and outcome.interrupt is None:
            try:
                text = self.settings.encode(outcome.value, "the result of step {!r}", cmd.name)
            except UsageError:
                text = None  # the general path stages the failure
            if text is not None:
                entry = self._entry(position, "do", cmd.name, "ok", text, outcome.started)
                yield from self._save("running", (entry,))
                answer = (self.journal.decode(entry), None) if not self.cancel else (
                    None, (yield from self._raise(deadline=False)))  # a cancel came meanwhile
                self.position = position + 1
                return answer
        answered: tuple[Any, Any] = yield from self.together((cmd,), LONE, outcome)
        return answered

    def together(self, cmds: Sequence[Command], kind: int, began: Any = _NOT_BEGUN) -> _Gen:
        """Answer the current yield once its members are done (the first of them, for an
        ``Any``); wait for events until then. ``began``: what the lean path's call answered."""
        self.members = [Member(cmds[0], 0, self.position)] if kind == LONE else [
            Member(c, i, self.position + i) for i, c in enumerate(cmds)]
        self.kind, self.live = kind, False
        if len(cmds) > 1 and self.position >= self.journal.end and \
                self.position not in self.journal.groups:  # a new group's extent, for fork()
            group = self._entry(self.position, "group", "any" if kind == ANY else "all", "ok",
                                self.settings.codec.encode(len(cmds)))
            self.journal.groups[self.position] = group
            self.staged += (group,)
        if began is not _NOT_BEGUN:
            self.live, m = True, self.members[0]
            if type(began) is Outcome:
                yield from self._ended(m, 1, began)
            else:
                m.queued, m.running = began is False, began is None
                self.slots = m.queued
        while True:
            self.fresh = False
            while self.mail:
                yield from self._on_done(self.mail.pop(0))
            answer = yield from self._settle()
            if answer is not None:
                if self.alarm is not None:
                    self.alarm = None
                    yield Alarm(None)
                if self.slots:  # slots kept or queued for steps it did not run
                    self.slots = False
                    yield WITHDRAW
                # Steps that still run: their ends are journaled later.
                self.orphans.update((m.position, m) for m in self.members if m.running)
                self.position += len(self.members)
                self.members = _NONE
                return answer
            if not (self.mail or self.fresh):  # else what came meanwhile is looked at first
                self._absorb((yield IDLE))

    def _settle(self) -> Generator[Effect, Any, tuple[Any, Any] | None]:
        """Answer the current yield from the journal or by live work; None: not yet."""
        members = self.members
        if self.journal.interrupts and self.position in self.journal.interrupts:
            return None, self._interrupt(self.journal.interrupts[self.position])
        if self.slots and self._halted() and any(m.queued for m in members):
            self.slots = False  # no step starts now: give their slots back
            yield WITHDRAW
            for m in members:
                m.queued = False
        winner = None
        if self.kind != ANY:
            for m in members:
                if not (m.done or m.running):
                    yield from RULES[type(m.cmd)].resolve(self, m)  # type: ignore[misc]
        elif (winner := self._winner()) is None:
            for m in members:
                if not (m.done or m.running):
                    yield from RULES[type(m.cmd)].resolve(self, m)  # type: ignore[misc]
                if m.done:  # decided now: the losing children are cancelled
                    winner = m
                    self.cancels += tuple(o.child for o in members if o.child and not o.done)
                    break
        done, busy = True, False
        for m in members:
            busy = busy or m.running or m.queued
            done = done and m.done
        if winner is not None or (done and not busy):
            if self.staged or self.after or self.cancels:  # the answer may bring a cancel
                yield from self._flush("running")
            if not (self.live and (self.cancel or self._struck())):
                return self._answer(winner)
        if self.live and self._struck():  # steps still running end unanswered
            return None, (yield from self._raise(deadline=True))
        if self.cancel and not busy:
            return None, (yield from self._raise(deadline=False))
        if busy:
            if self.staged:  # a sleep's deadline, say: durable before anything else happens
                yield from self._flush("running")
            yield from self._set_alarm()
            return None
        yield from self._park()
        return None

    def _answer(self, winner: Member | None) -> tuple[Any, Any]:
        if winner is not None:
            return None if winner.error else (winner.index, winner.value), winner.error
        if self.kind == ALL:
            failed = next((m.error for m in self.members if m.error is not None), None)
            return None if failed else [m.value for m in self.members], failed
        return self.members[0].value, self.members[0].error

    def _winner(self) -> Member | None:
        """The member of an ``Any`` whose end was journaled first, settled from its entries."""
        first: tuple[int, Member] | None = None
        for m in self.members:
            entries = self._match(m)
            if entries and entries[-1].kind == RULES[type(m.cmd)].end and (
                    first is None or entries[-1].seq < first[0]):
                first = entries[-1].seq, m
        if first is None:
            return None
        winner = first[1]
        for _ in RULES[type(winner.cmd)].resolve(self, winner):  # type: ignore[misc]
            raise AssertionError("a journaled end needed live work")  # settled from its entries
        return winner

    def _struck(self) -> bool:
        at = self.deadline_at
        return at is not None and self.settings.now() >= at

    def _interrupt(self, entry: Entry) -> Cancelled:
        self.cancel = False  # a strike spends the cancel requests too (raised once)
        if entry.status == "deadline":
            struck = DeadlineExceeded(f"run {self.id!r} passed its deadline")
            struck.deadline = self.passed = self.deadline_at
            self.deadline_at = None  # it strikes once
            return struck
        return Cancelled(f"run {self.id!r} was cancelled")

    def _raise(self, deadline: bool) -> _Gen:
        """Journal a cancel (or a passed deadline) at this yield, to be raised here."""
        entry = self._entry(self.position, "cancel", "", "deadline" if deadline else "", None)
        if deadline:  # its children are cancelled with it (one that struck too absorbs it)
            self.cancels += (*self.journal.open_children(), *(
                m.child for m in self.members if m.child and not m.done))
        yield from self._save("running", (entry,), cancel_seen=True)
        return self._interrupt(entry)

    def _set_alarm(self) -> _Gen:
        at = min((m.deadline for m in self.members if m.deadline is not None and not m.done),
                 default=None)
        if self.deadline_at is not None and self.live and (at is None or self.deadline_at < at):
            at = self.deadline_at
        if at != self.alarm:
            self.alarm = at
            yield Alarm(at)

    def _park(self) -> _Gen:
        if self.settings.closing:  # what was not started is not parked: the run row stays as is
            return
        pending = [m for m in self.members if not m.done]
        parks = {RULES[type(m.cmd)].parks for m in pending}
        state = "waiting" if "waiting" in parks else "sleeping" if "sleeping" in parks \
            else "running"
        labels = ",".join(m.label for m in pending if m.label) or None
        wake_at = min((m.deadline for m in pending if m.deadline is not None), default=None)
        if (state, wake_at, labels) != self.written or self.staged:
            yield from self._save(state, wake_at=wake_at, waiting_for=labels)
        yield from self._set_alarm()
        if state != "running":
            yield from self._emit("run_parked", state=state, position=self.position)

    def _halted(self) -> bool:
        """No new live work while shutting down, a cancel waits, or the deadline passed."""
        return self.settings.closing or self.cancel or (
            self.deadline_at is not None and self._struck())

    def _match(self, m: Member) -> list[Entry]:
        """The member's entries, journaled or staged."""
        found: list[Entry] = []
        if m.position < self.journal.end:  # else nothing journaled here yet: live
            rule = RULES[type(m.cmd)]
            found = self.journal.match(m.position, rule.kinds, rule.name(m.cmd), m.cmd)
        if self.staged:
            found += [e for e in self.staged if e.position == m.position
                      and e.kind not in ("version", "group")]
        return found

    # ---- events ------------------------------------------------------------------------------

    def _absorb(self, events: Any) -> None:
        """Take in what happened (the answer to ``Idle`` or ``Save``); the steps that ended
        are journaled by the yield's loop."""
        for event in events or ():
            self.fresh = True
            kind = type(event)
            if kind is Done:
                self.mail.append(event)
            elif kind is Cancel:
                self.cancel = not self.journal.cancelled
            elif kind is Ring:
                self.alarm = None
            elif kind is Signals:
                self._learn(event.items)
            elif kind is Granted:
                for m in self.members:
                    m.queued = False
            elif kind is Stop:
                raise _Stopped

    def _learn(self, items: tuple[Any, ...] | None) -> None:
        if items is None or self.inbox is None:
            self.inbox = None  # read it again when a Wait needs it
            return
        known = {s.id for s in self.inbox} | self.taken
        self.inbox += [s for s in items if s.id not in known]
        self.inbox.sort(key=lambda s: s.id)

    def _on_done(self, event: Done) -> _Gen:
        m = next((m for m in self.members if m.position == event.position), None)
        orphan = m is None
        m = self.orphans.pop(event.position, None) if orphan else m
        if m is not None:
            yield from self._ended(m, event.attempt, event.outcome, retry=not orphan)
            if orphan and self.staged:  # nothing else of its yield will write it
                yield from self._flush(self.written[0])

    def _peek(self, name: str) -> Generator[Effect, Any, Any]:
        """The oldest unconsumed signal of this name (None: there is none)."""
        if self.inbox is None:
            self.inbox = [s for s in (yield INBOX) if s.id not in self.taken]
        return next((s for s in self.inbox if s.name == name), None)

    def _take(self, signal: Any) -> None:
        assert self.inbox is not None
        self.inbox.remove(signal)
        self.consumed += (signal.id,)
        self.taken |= {signal.id}

    # ---- the handlers, one per command (see RULES) ------------------------------------------

    def version(self, cmd: Version) -> Generator[Effect, Any, tuple[Any, Any]]:
        marker = self.journal.versions.get(cmd.change_id)
        if marker is not None:
            value = self.journal.number(marker)
            if not value.is_integer() or not cmd.min <= value <= cmd.max:
                raise NonDeterminismError(self.id, self.position, f"Version({cmd.change_id!r}) = "
                                          f"{marker.value}", f"accepts only {cmd.min}..{cmd.max} "
                                          f"there")
            return int(value), None
        # Entries at or past this point mean the run was written by code without this call.
        chosen = cmd.min if self.journal.end > self.position else cmd.max
        self.staged += (self._entry(self.position, "version", cmd.change_id, "ok",
                                    self.settings.codec.encode(chosen)),)
        return chosen, None
        yield  # a generator, as every handler

    def deadline(self, cmd: Deadline) -> Generator[Effect, Any, tuple[Any, Any]]:
        """``Deadline``: the run's deadline, journaled; a later one only brings it closer."""
        entries = self.journal.match(self.position, ("deadline",), "", cmd) \
            if self.position < self.journal.end else []
        if entries:
            at = self.journal.number(entries[0])
        else:
            at = self.settings.now() + cmd.seconds
            at = at if self.deadline_at is None else min(at, self.deadline_at)
            self.staged += (self._entry(self.position, "deadline", "", "ok",
                                        self.settings.codec.encode(at)),)
        self.deadline_at = at
        self.position += 1
        return None, None
        yield  # a generator, as every handler

    def resolve_do(self, m: Member) -> _Gen:
        cmd = m.cmd
        assert isinstance(cmd, Do)
        entries = self._match(m) if m.position < self.journal.end or self.staged else []
        final = entries[-1] if entries and entries[-1].kind == "do" else None
        if final is None:
            self.live = True
            if entries:  # a retry's entry: its backoff may still run
                info = self.journal.decode(entries[-1])
                next_at = info.get("next_at", 0.0) if isinstance(info, dict) else 0.0
                if self.settings.now() < next_at:
                    m.deadline = next_at
                    return
            if self._halted():
                return
            if self.written[0] not in _WORKING and self.workflow in self.settings.limits:
                yield from self._save("running")  # a slot, or wait for a claim (see _save)
            final = yield from self._start(m, len(entries) + 1)
            if final is None:
                return None if m.running or m.queued else (yield from self.resolve_do(m))
        value = self.journal.decode(final)
        if final.status == "ok":
            return m.settle(value)
        m.settle(error=stored_error(value, step=cmd.name))

    def resolve_sleep(self, m: Member) -> _Gen:
        cmd = m.cmd
        assert isinstance(cmd, Sleep)
        entries = self._match(m)
        if entries and entries[-1].kind == "woke":  # it won an Any
            return m.settle()
        if not entries and self._halted():
            return
        now = self.settings.now()
        if entries:  # live again (the run's deadline may strike in it) unless it ended before
            deadline = self.journal.number(entries[0])
            self.live = self.live or now < deadline or (
                self.deadline_at is not None and self.deadline_at <= deadline)
        else:
            self.live = True
            deadline = now + cmd.seconds
            self.staged += (self._entry(m.position, "sleep", "", "ok",
                                        self.settings.codec.encode(deadline), now),)
        if now < deadline:
            m.deadline = deadline
            return
        if self.kind == ANY:  # its end decides the Any: journal it
            self.staged += (self._entry(m.position, "woke", "", "ok", None, now),)
        m.settle()
        yield from ()

    def resolve_wait(self, m: Member) -> _Gen:
        cmd, journal = m.cmd, self.journal
        assert isinstance(cmd, Wait)
        entries = self._match(m)
        final = entries[-1] if entries and entries[-1].kind == "wait" else None
        if final is not None:
            if final.status == "timeout":
                return m.settle(error=WaitTimeout(cmd.signal))
            return m.settle(journal.decode(final))
        self.live = True
        if self._halted():
            return
        now = self.settings.now()
        if entries:
            timeout_at = None if journal.decode(entries[0]) is None else journal.number(entries[0])
        else:  # journaled even without a timeout, so that inserting a command before it shows
            timeout_at = None if cmd.timeout is None else now + cmd.timeout
            self.staged += (self._entry(m.position, "timer", cmd.signal, "ok",
                                        self.settings.codec.encode(timeout_at), now),)
        signal = yield from self._peek(cmd.signal)
        if signal is not None:
            self._take(signal)
            entry = self._entry(m.position, "wait", cmd.signal, "ok", signal.payload, now)
            self.staged += (entry,)
            self.after += (self._event("signal_taken", step=cmd.signal, position=m.position),)
            return m.settle(journal.decode(entry))
        if timeout_at is not None and now >= timeout_at:
            self.staged += (self._entry(m.position, "wait", cmd.signal, "timeout", None),)
            return m.settle(error=WaitTimeout(cmd.signal))
        m.deadline, m.label = timeout_at, cmd.signal

    def resolve_child(self, m: Member) -> _Gen:
        cmd = m.cmd
        assert isinstance(cmd, Child)
        entries = self._match(m)
        m.child = str(self.journal.decode(entries[0])) if entries and entries[0].kind == "spawn" \
            else cmd.run_id or child_id(self.id, m.position)
        if entries and entries[-1].kind == "child":
            return self._child_ended(m, entries[-1].status, self.journal.decode(entries[-1]))
        self.live = True
        if not entries and (self._halted() or not (yield from self._spawn(m, cmd))):
            return
        notice = yield from self._peek(CHILD_SIGNAL + m.child)
        if notice is None:
            m.label = CHILD_SIGNAL + m.child  # the signal it waits for
            return
        told = self.settings.codec.decode(notice.payload)
        if self._same_deadline(told):  # the child ended by our deadline: ours strikes first
            m.deadline = self.deadline_at
            return
        self._take(notice)
        status = {"completed": "ok", "failed": "error"}.get(told.get("state"), "cancelled")
        value = told.get("result") if status == "ok" else told.get("error")
        self.staged += (self._entry(m.position, "child", cmd.workflow, status,
                                    self.settings.codec.encode(value)),)
        self._child_ended(m, status, value)

    # ---- children ----------------------------------------------------------------------------

    def _spawn(self, m: Member, cmd: Child) -> Generator[Effect, Any, bool]:
        """Stage the child's creation with its entry (one commit); False: it cannot start (its
        arguments cannot be stored, or a run of the id it was given exists already, as
        Temporal refuses it), and the member is settled with why."""
        assert m.child is not None
        try:
            text = self.settings.encode({"args": list(cmd.args), "kwargs": dict(cmd.kwargs),
                                         "nonce": _nonce(self.nonce, m.child), **(
                {} if self.deadline_at is None else {"deadline": self.deadline_at})},
                "the arguments of child run {!r}", m.child)
            if cmd.run_id is not None and (found := (yield Lookup(m.child))) is not None:
                raise UsageError(f"child run {m.child!r} cannot start: a run with that id "
                                 f"exists already ({found.workflow}, {found.state}); give the "
                                 f"child another run_id")
        except UsageError as exc:
            info = error_record(exc)
            self.staged += (self._entry(m.position, "child", cmd.workflow, "error",
                                        self.settings.encode_error(info)),)
            self._child_ended(m, "error", info)
            return False
        self.staged += (self._entry(m.position, "spawn", cmd.workflow, "ok",
                                    self.settings.codec.encode(m.child)),)
        self.spawned += (Spawn(m.child, cmd.workflow, text),)
        return True

    def _child_ended(self, m: Member, status: str, value: Any) -> None:
        assert m.child is not None
        if status == "ok":
            m.settle(value)
        else:
            m.settle(error=stored_error(value, child=m.child))

    def _same_deadline(self, told: dict[str, Any]) -> bool:
        """The child ended by the deadline it inherited from this run, which has not struck
        here yet (another machine's clock): this run's own DeadlineExceeded comes first."""
        error = told.get("error")
        return self.deadline_at is not None and isinstance(error, dict) and error.get(
            "type") == "DeadlineExceeded" and told.get("deadline") == self.deadline_at

    def _notice(self, state: str, outcome: Any) -> Notice | None:
        """What this run's end tells its parent (if it has one)."""
        if self.parent is None:
            return None
        told: dict[str, Any] = {"state": state}
        if state == "completed":
            told["result"] = outcome
        else:
            told["error"], told["deadline"] = error_record(outcome), self.deadline_at or self.passed
        return Notice(self.parent, CHILD_SIGNAL + self.id, self.settings.encode_error(told))

    # ---- steps ------------------------------------------------------------------------------

    def _start(self, m: Member, attempt: int) -> Generator[Effect, Any, Entry | None]:
        """Start try ``attempt`` of a Do member: its final entry if it ran at once, else None
        (it runs elsewhere, waits for a slot, or a retry was journaled)."""
        cmd = m.cmd
        assert isinstance(cmd, Do)
        if self.resumes > self.settings.max_resumes:
            raise RunBlocked(
                f"run {self.id!r} was resumed {self.resumes} times without progress; each time its "
                f"worker died in step {cmd.name!r} (position {m.position}). Blocked so that it "
                f"cannot take every worker down: fix the step, then resume the run")
        if self.written[0] != "running":  # say so first (a crash in the step then counts),
            self.slots = True
            if not (yield Acquire(m.position)):  # but not while the run waits for a slot
                m.queued = True
                return None
            yield from self._flush("running")
        elif self.staged:  # what the step may depend on is durable before it runs
            yield from self._flush("running")
        if self.cancel or (self.deadline_at is not None and self._struck()):  # the write's answer
            return None  # brought a cancel (a step said to be running at shutdown is in flight)
        info = StepInfo(self.id, cmd.name, m.position, attempt, self.nonce)
        if self.settings.observed:
            yield from self._emit("step_started", step=cmd.name, position=m.position,
                                  attempt=attempt)
        outcome: Outcome | bool | None = yield Call(m.position, attempt, cmd.fn, cmd.args,
                                                    cmd.kwargs, info, len(self.members) == 1)
        if type(outcome) is Outcome:  # it ran at once
            return (yield from self._ended(m, attempt, outcome))
        m.queued, m.running = outcome is False, outcome is None
        self.slots = self.slots or m.queued
        return None

    def _ended(self, m: Member, attempt: int, outcome: Outcome,
               retry: bool = True) -> Generator[Effect, Any, Entry | None]:
        """A try of a step ended: tell the observer (before it is durable), then stage the
        final entry (returned), or a retry entry when another try is due (None). ``retry``
        False: a step whose yield was answered without it."""
        cmd, settings = m.cmd, self.settings
        assert isinstance(cmd, Do)
        if settings.observed:
            yield from self._emit("step_returned", step=cmd.name, position=m.position,
                                  attempt=attempt, duration=settings.now() - outcome.started,
                                  error=outcome.error and repr(outcome.error))
        m.running = False
        if outcome.interrupt is not None:
            raise Interrupted(outcome.interrupt)
        error = outcome.error
        policy = cmd.retry if error is not None and retry else None
        if error is None:
            try:
                text = settings.encode(outcome.value, "the result of step {!r}", cmd.name)
            except UsageError as exc:
                error = exc
        if error is None:
            entry = self._entry(m.position, "do", cmd.name, "ok", text, outcome.started)
        elif policy and attempt < policy.attempts and policy.retries(error):
            now = settings.now()
            next_at = now + policy.delay(attempt, random.random())
            info = {**error_record(error), "attempt": attempt, "next_at": next_at}
            self.staged += (self._entry(m.position, "retry", cmd.name, "error",
                                        settings.encode_error(info), outcome.started),)
            settings.log.warning("run %s: step %r failed (try %d of %d), retrying in %.2fs: %r",
                                 self.id, cmd.name, attempt, policy.attempts, next_at - now, error)
            self.after += (self._event("step_retrying", step=cmd.name, position=m.position,
                                       attempt=attempt, error=repr(error)),)
            return None
        else:
            settings.log.warning("run %s: step %r failed: %r", self.id, cmd.name, error)
            entry = self._entry(m.position, "do", cmd.name, "error",
                                settings.encode_error(error_record(error)), outcome.started)
        self.staged += (entry,)
        if settings.observed:
            self.after += (self._event("step_committed", step=cmd.name, position=m.position,
                                       attempt=attempt, duration=entry.ended - outcome.started),)
        return entry

    # ---- writing and ending -----------------------------------------------------------------

    def _entry(self, position: int, kind: str, name: str, status: str, value: str | None,
               started: float | None = None) -> Entry:
        now = self.settings.now()  # ended: when the entry is made; seqs follow staged ones
        return Entry(self.journal.next_seq + len(self.staged), position, kind, name, status, value,
                     now if started is None else started, now)

    def _flush(self, state: str) -> _Gen:
        """Save what is staged, in ``state`` (a parked run's row otherwise as written)."""
        if state == self.written[0] != "running":
            return self._save(state, wake_at=self.written[1], waiting_for=self.written[2])
        return self._save(state)

    def _save(self, state: str, entries: tuple[Entry, ...] = (), *, wake_at: float | None = None,
              waiting_for: str | None = None, result: str | None = None,
              error: str | None = None, cancel_seen: bool = False, release: bool = False,
              notify: Notice | None = None) -> _Gen:
        """Write what is staged and ``entries``, with the run row; take in the events its
        answer brings. A write that puts a parked (or blocked) run of a limited workflow
        back to work admits it: whatever woke it (a signal, a child's end, a cancel) journals
        with it, and without a free slot it waits, pending, for a claim (the life ends here)."""
        admit = self.settings.limits.get(self.workflow, 0) \
            if state in _WORKING and self.written[0] not in _WORKING else 0
        entries, self.staged = self.staged + entries, ()
        consume, spawn, cancel = self.consumed, self.spawned, self.cancels
        self.consumed = self.spawned = self.cancels = ()
        # Most steps only append: then the run row need not be rewritten (a cheaper write).
        progress = bool(entries) and self.resumes > 0  # a crash loop's count starts afresh
        keep = bool(entries) and not (result or error or cancel_seen or release or notify or
                                      consume or spawn or progress) \
            and self.written == (state, wake_at, waiting_for)
        events = yield Save(state, entries, wake_at, waiting_for, result, error, consume,
                            cancel_seen, release, keep, spawn, cancel, notify, progress, admit)
        for e in entries:
            self.journal.append(e)
        self.written = (state, wake_at, waiting_for)
        if entries:
            self.resumes = 0
            if self.settings.verify is not None and any(e.kind == "do" for e in entries):
                self.settings.verify(self)
        if self.after:
            after, self.after = self.after, ()
            for event in after:
                yield Emit(event)
        if events:
            self._absorb(events)

    def _finish(self, state: str, outcome: Any) -> _Gen:
        if self.journal.end > self.position:
            held = self.journal.rest(self.position)
            verb = "returned" if state == "completed" else f"raised {type(outcome).__name__}"
            raise NonDeterminismError(self.id, self.position, f"{len(held)} more entries (next: "
                                      f"{held[0].kind} {held[0].name!r})", f"{verb} instead")
        result = error = None
        if state == "completed":
            try:
                result = self.settings.encode(outcome, "the workflow's return value")
            except UsageError as exc:
                state, outcome = "failed", exc
        if state != "completed":
            self.ended = outcome
            error = self.settings.encode_error(error_record(outcome))
        yield from self._save(state, result=result, error=error, release=not self.orphans,
                              notify=self._notice(state, outcome))
        while self.orphans:  # losing steps of an Any still run: their ends are journaled too
            self._absorb((yield IDLE))
            for done in self.mail:
                m = self.orphans.pop(done.position, None)
                if m is not None:
                    yield from self._ended(m, done.attempt, done.outcome, retry=False)
            self.mail = []
            if self.staged or not self.orphans:  # the run row as finished, each time
                yield from self._save(state, result=result, error=error,
                                      release=not self.orphans)
        if state == "failed":
            self.settings.log.warning("run %s failed: %r", self.id, outcome)
        else:
            self.settings.log.info("run %s %s", self.id, state)
        yield from self._emit("run_finished", state=state,
                              error=None if error is None else repr(outcome))

    def _block(self, exc: Exception) -> _Gen:
        self.ended, self.staged, self.consumed, self.spawned = exc, (), (), ()
        self.cancels, self.after = (), ()
        yield from self._save("blocked", error=self.settings.encode_error(error_record(exc)),
                              release=True)
        self.settings.log.warning("run %s blocked: %s", self.id, exc)
        yield from self._emit("run_blocked", error=str(exc))

    def _event(self, kind: str, **fields: Any) -> Event:
        return Event(kind, self.id, self.workflow, **fields)

    def _emit(self, kind: str, **fields: Any) -> _Gen:
        if self.settings.observed:
            yield Emit(self._event(kind, **fields))


def _nonce(parent: str, child: str) -> str:
    return hashlib.blake2b(f"{parent}\x00{child}".encode(), digest_size=16).hexdigest()


# ---- the one table of commands --------------------------------------------------------------

def _blank(cmd: Any) -> str:
    return ""


class Rule(NamedTuple):
    """How the engine treats one kind of command."""

    kinds: tuple[str, ...]
    """The journal entry kinds it owns at its position (replay matches kind and name)."""
    end: str
    """The kind of the entry that ends it as a member (the first journaled decides an Any)."""
    name: Callable[[Any], str]
    """The name its entries carry."""
    answer: Callable[[Life, Any], _Gen]
    """How its yield is answered: a ``Life`` handler, evaluating to (value, error)."""
    resolve: Callable[[Life, Member], _Gen] | None
    """How it is answered or advanced as one member of a yield (None: it is not one)."""
    parks: str
    """The state of a run that waits on it."""
    kit: str
    """How ``testing.replay`` answers it: ``step`` (one position of a list journal, or by
    name in a dict), ``child`` (as a step, by workflow name), ``signal`` (a position, or by
    signal name), ``sleep`` (passes by itself), ``version`` (``max`` unless told),
    ``deadline`` (takes no position), ``all`` and ``any`` (by their members)."""
    lint: str
    """What lint knows of a call making it: ``step`` (its second argument is a step, not
    workflow code) or ``command``."""




RULES: dict[type, Rule] = {
    Do: Rule(("do", "retry"), "do", lambda c: c.name, Life.lone, Life.resolve_do, "running",
             "step", "step"),
    Sleep: Rule(("sleep", "woke"), "woke", _blank, Life.lone, Life.resolve_sleep, "sleeping",
                "sleep", "command"),
    Wait: Rule(("timer", "wait"), "wait", lambda c: c.signal, Life.lone, Life.resolve_wait,
               "waiting", "signal", "command"),
    Child: Rule(("spawn", "child"), "child", lambda c: c.workflow, Life.lone, Life.resolve_child,
                "waiting", "child", "command"),
    All: Rule((), "", _blank, Life.all, None, "running", "all", "command"),
    AnyOf: Rule((), "", _blank, Life.any, None, "running", "any", "command"),
    Version: Rule(("version",), "", lambda c: c.change_id, Life.version, None, "running",
                  "version", "command"),
    Deadline: Rule(("deadline",), "", _blank, Life.deadline, None, "running", "deadline",
                   "command"),
}
"""Every command a workflow may yield, by type."""
