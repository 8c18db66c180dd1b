"""The replay rules: a run's life as a generator that yields effects, one handler per command.

A ``Life`` drives one run's workflow generator. It answers each command from the journal or
asks for live work, and says what must become durable, as workflows do: every effect (a
write, a step call, a timer, a read of the signal inbox) is a value yielded to whoever drives
the life, who performs it and sends back the answer. The runtime drives lives against a
store with threads; the testing kit drives the same lives with a fake performer.

This module holds every rule (matching, Version, retries and backoff, cancel, ``All``, the
end-of-run shape check, crash loops, payload limits) and must never import threading,
asyncio or a store, nor perform I/O of its own.

A new command is one entry in ``HANDLERS`` (a command answered at once, as ``Version``) or in
``MEMBERS`` (one that may wait, be journaled and sit in an ``All``, as ``Do``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .codec import Codec
from .commands import All, Command, Do, Sleep, Version, Wait
from .errors import (
    Cancelled, CorruptRecord, NonDeterminismError, ReplaygenError, RunBlocked, StepFailed,
    UsageError, WaitTimeout,
)
from .journal import Entry, Journal, error_record, shrink_error
from .observe import Event, StepInfo

log = logging.getLogger("replaygen")
Workflow = Callable[..., Generator[Any, Any, Any]]  # as registry.Workflow (which imports threading)


# ---- effects: what a life asks of its driver ----------------------------------------------

class Save(NamedTuple):
    """Make entries and the run row durable, fenced (the fields after ``run_id, owner, fence``
    of a store ``Write``). Answer: None; a refused write ends the life instead."""

    state: str
    entries: tuple[Entry, ...] = ()
    wake_at: float | None = None
    waiting_for: str | None = None
    result: str | None = None
    error: str | None = None
    consume: int | None = None
    cancel_seen: bool = False
    release: bool = False
    keep: bool = False


class Acquire(NamedTuple):
    """Hold one of ``concurrency`` slots for member ``member``'s next ``Call``. Answer: True,
    or False: queued, and a ``Wake`` follows once a slot is kept for it (ask again then)."""

    member: int


class Call(NamedTuple):
    """Run a step in a slot (kept for it by ``Acquire``, or free). Answer: its ``Outcome`` if
    it ran at once; None, and a ``Done`` follows; or False: queued for a slot, and a ``Wake``
    follows once one is kept for it (call again then). ``alone``: no other member waits on
    it (it may run inline)."""

    member: int
    attempt: int
    cmd: Do[Any]
    info: StepInfo
    alone: bool


class Withdraw(NamedTuple):
    """Give up every slot queued for or kept for this run (a cancel is due). Answer: None."""


class Alarm(NamedTuple):
    """Send a ``Wake`` at this wall-clock time (None: never), replacing the last alarm."""

    at: float | None


class Inbox(NamedTuple):
    """Answer: the run's unconsumed signals, oldest first (each with id, name, payload)."""


class Idle(NamedTuple):
    """Nothing to do until something happens. Answer: the next event (``Wake`` or ``Done``;
    None: look again)."""


class Emit(NamedTuple):
    """Report an event to the observer (yielded only when there is one)."""

    event: Event


Effect = Save | Acquire | Call | Withdraw | Alarm | Inbox | Idle | Emit
IDLE, INBOX, WITHDRAW = Idle(), Inbox(), Withdraw()


# ---- events: what happens to a life --------------------------------------------------------

class Wake(NamedTuple):
    """Look again: a signal, a slot or a cancel (``Life.cancel``) came, or (``alarm``) the
    alarm went off, and is gone: a deadline still ahead (the clock stepped back) needs another."""

    alarm: bool = False


class Outcome(NamedTuple):
    """How one try of a step ended: a value, an error, or an interrupt (not a failure)."""

    started: float
    value: Any = None
    error: Exception | None = None
    interrupt: BaseException | None = None


class Done(NamedTuple):
    """A step that ran off the driver has ended."""

    member: int
    attempt: int
    outcome: Outcome


class Interrupted(Exception):
    """KeyboardInterrupt, SystemExit... from the workflow or a step: not a failure."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


@dataclass
class Rules:
    """What every life of one interpreter shares: its codec, clock and limits."""

    codec: Codec
    now: Callable[[], float]
    max_payload: int
    max_resumes: int
    observed: bool = False
    closing: bool = False  # shutting down: no new live work
    log: logging.Logger = log  # the testing kit passes a quiet one
    always_replay: bool = False  # replay each run from the top after each step, and compare

    def encode(self, value: Any, what: str, *names: str) -> str:
        """Encode ``value`` within the payload limit, or a UsageError saying why not;
        ``what`` (formatted with ``names``, only on error) names it."""
        try:
            text = self.codec.encode(value)
            size = len(text) if text.isascii() else len(text.encode())
            if size <= self.max_payload:
                return text
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{what.format(*names)} cannot be stored: {exc}") from None
        what = what.format(*names)
        self.log.warning("%s is %d bytes encoded, over the limit of %d", what, size,
                         self.max_payload)
        raise UsageError(f"{what} is {size} bytes encoded, over the limit of {self.max_payload} "
                         f"bytes; keep large data elsewhere and pass a reference (or raise "
                         f"max_payload)")

    def encode_error(self, info: dict[str, Any]) -> str:
        for _ in range(64):
            text = self.codec.encode(info)
            if len(text.encode()) <= self.max_payload:
                break
            info = shrink_error(info)
        return text


class Member:
    """One command of the current yield (a lone command, or one member of an ``All``)."""

    __slots__ = ("cmd", "index", "slot", "done", "value", "error", "running", "queued", "deadline")

    def __init__(self, cmd: Command, index: int, slot: int) -> None:
        self.cmd, self.index, self.slot = cmd, index, slot
        self.done = self.running = self.queued = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.deadline: float | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        self.done, self.value, self.error, self.deadline = True, value, error, None


_Gen = Generator[Effect, Any, Any]


class Life:
    """The rules applied to one run. ``life()`` is the generator a driver runs."""

    def __init__(self, rules: Rules, run_id: str, workflow: str, fn: Workflow | None, args: str,
                 journal: Journal, *, written: tuple[str, float | None, str | None] = (
                     "pending", None, None), resumes: int = 0, cancel: bool = False,
                 broken: Exception | None = None) -> None:
        self.rules, self.id, self.workflow, self.fn, self.args = rules, run_id, workflow, fn, args
        self.journal, self.resumes, self.broken = journal, resumes, broken
        self.cancel = cancel  # set by the driver, from any thread, when a cancel is asked
        self.written = written  # the run row as last written: (state, wake_at, waiting_for)
        self.gen: Generator[Any, Any, Any] | None = None
        self.slot = 0                       # the replay cursor: first slot of the current yield
        self.members: list[Member] = []
        self.live = False                   # the current yield needed live work
        self.alarm: float | None = None
        self.finishing = False              # its last write is under way
        self.ended: BaseException | None = None  # what failed, cancelled or blocked the run
        self.nonce = ""                     # this incarnation's, for idempotency keys

    # ---- the life --------------------------------------------------------------------------

    def life(self) -> _Gen:
        """Run the workflow to its end, a block, or an interrupt; then the life ends."""
        try:
            yield from self._main()
        except Interrupted as it:
            self.rules.log.error("run %s interrupted; it stays resumable (recover() resumes it)",
                                 self.id)
            yield from self._save(self.written[0], release=True)
            raise it.exc from None
        except Exception as exc:
            if not isinstance(exc, ReplaygenError):
                self.rules.log.error("internal error while handling run %s", self.id, exc_info=exc)
            try:
                yield from self._block(exc)
            except Exception:
                self.rules.log.exception("could not block run %s; it stays claimed until its "
                                         "lease lapses", self.id)
        finally:
            if self.gen is not None:
                try:  # yields in a `finally` are refused by Python and never executed
                    self.gen.close()
                except BaseException:
                    pass

    def _main(self) -> _Gen:
        if self.broken is not None:
            raise self.broken
        if self.fn is None:
            raise RunBlocked(f"run {self.id!r} is of workflow {self.workflow!r}, which this "
                             f"interpreter does not know; register it and call recover()")
        try:
            payload = self.rules.codec.decode(self.args)
            args, kwargs = payload["args"], payload["kwargs"]
            self.nonce = str(payload.get("nonce", ""))
        except Exception as exc:
            raise CorruptRecord(f"run {self.id!r}: its stored arguments cannot be read ({exc!r}); "
                                f"the run is blocked until the row is repaired") from None
        yield from _emit(self, "run_started")
        try:
            self.gen = gen = self.fn(*args, **kwargs)
        except Exception as exc:  # wrong arguments for the function
            return (yield from self._finish("failed", exc))
        slots, decode = self.journal.slots, self.journal.decode
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
            if type(cmd) is Do:  # the hot path of replay: a lone step with just its result
                entries = slots.get(self.slot)
                if entries and len(entries) == 1 and entries[0].kind == "do" \
                        and entries[0].status == "ok" and entries[0].name == cmd.name:
                    self.slot += 1
                    value = decode(entries[0])
                    continue
            handler = HANDLERS.get(type(cmd))
            if handler is None:
                return (yield from self._finish("failed", UsageError(
                    f"the workflow yielded {cmd!r}, which is not a command; yield Do, Sleep, "
                    f"Wait, Version or All")))
            value, error = yield from handler(self, cmd)

    # ---- a yield of commands that may wait ----------------------------------------------------

    def together(self, cmds: Sequence[Command], is_all: bool) -> _Gen:
        """Answer the current yield once all its members are done; wait for events until then."""
        self.members = [Member(c, i, self.slot + i) for i, c in enumerate(cmds)]
        self.live = False
        while True:
            answer = yield from self._settle(is_all)
            if answer is not None:
                if self.alarm is not None:
                    self.alarm = None
                    yield Alarm(None)
                self.slot += len(self.members)
                self.members = []
                return answer
            event = yield IDLE
            if type(event) is Done:
                yield from self._step_done(self.members[event.member], event.attempt, event.outcome)
            elif type(event) is Wake and event.alarm:
                self.alarm = None

    def _settle(self, is_all: bool) -> Generator[Effect, Any, tuple[Any, Any] | None]:
        """Answer the current yield from the journal or by live work; None: not yet."""
        members, journal = self.members, self.journal
        if journal.cancelled and journal.cancelled_at(self.slot):
            return None, Cancelled(f"run {self.id!r} was cancelled")
        if self.cancel and not journal.cancelled and any(m.queued for m in members):
            yield WITHDRAW
            for m in members:
                m.queued = False
        done = True
        for m in members:
            if not m.done and not m.running:
                yield from MEMBERS[type(m.cmd)][2](self, m)
            done = done and m.done
        due = self.cancel and not journal.cancelled
        if done and not (due and self.live):
            if is_all:
                failed = next((m.error for m in members if m.error is not None), None)
                return None if failed else [m.value for m in members], failed
            return members[0].value, members[0].error
        if any(m.running or m.queued for m in members):
            yield from self._set_alarm()
            return None
        if due:
            yield from self._save("running", (self._entry(self.slot, "cancel", "", "", None),),
                                  cancel_seen=True)
            return None, Cancelled(f"run {self.id!r} was cancelled")
        yield from self._park()
        return None

    def _set_alarm(self) -> _Gen:
        at = min((m.deadline for m in self.members if m.deadline is not None and not m.done),
                 default=None)
        if at != self.alarm:
            self.alarm = at
            yield Alarm(at)

    def _park(self) -> _Gen:
        if self.rules.closing:  # what was not started is not parked: the run row stays as is
            return
        pending = [m for m in self.members if not m.done]
        waits = [m.cmd.signal for m in pending if isinstance(m.cmd, Wait)]
        state = "waiting" if waits else "sleeping" if any(
            isinstance(m.cmd, Sleep) for m in pending) else "running"
        wake_at = min((m.deadline for m in pending if m.deadline is not None), default=None)
        if (state, wake_at, ",".join(waits) or None) != self.written:
            yield from self._save(state, wake_at=wake_at, waiting_for=",".join(waits) or None)
        yield from self._set_alarm()
        if state != "running":
            yield from _emit(self, "run_parked", state=state, position=self.slot)

    @property
    def halted(self) -> bool:
        """No new live work while shutting down or while a cancel waits to be raised."""
        return self.rules.closing or (self.cancel and not self.journal.cancelled)

    def _match(self, m: Member) -> list[Entry]:
        if m.slot >= self.journal.end:  # nothing journaled here yet: live
            return []
        kinds, name, _ = MEMBERS[type(m.cmd)]
        return self.journal.match(m.slot, kinds, name(m.cmd), m.cmd)

    # ---- steps ------------------------------------------------------------------------------

    def _start(self, m: Member, attempt: int) -> Generator[Effect, Any, Entry | None]:
        """Start try ``attempt`` of a Do member: its final entry if it ran at once, else None
        (it runs elsewhere, waits for a slot, or a retry was journaled)."""
        cmd = m.cmd
        assert isinstance(cmd, Do)
        if self.resumes > self.rules.max_resumes:
            raise RunBlocked(
                f"run {self.id!r} was resumed {self.resumes} times without progress; each time its "
                f"worker died in step {cmd.name!r} (position {m.slot}). Blocked so that it cannot "
                f"take every worker down: fix the step, then resume the run")
        self.live = True
        if self.written[0] != "running":  # say so first (a crash in the step then counts),
            if not (yield Acquire(m.index)):  # but not while the run waits for a slot
                m.queued = True
                return None
            yield from self._save("running")
        info = StepInfo(self.id, cmd.name, m.slot, attempt, self.nonce)
        if self.rules.observed:
            yield from _emit(self, "step_started", step=cmd.name, position=m.slot, attempt=attempt)
        outcome: Outcome | bool | None = yield Call(m.index, attempt, cmd, info,
                                                    len(self.members) == 1)
        m.queued, m.running = outcome is False, outcome is None
        if not outcome:
            return None
        assert isinstance(outcome, Outcome)
        return (yield from self._step_done(m, attempt, outcome))

    def _step_done(self, m: Member, attempt: int,
                   outcome: Outcome) -> Generator[Effect, Any, Entry | None]:
        """Journal a try's outcome: the final entry (returned), or a retry entry when another
        try is due (None)."""
        cmd, rules = m.cmd, self.rules
        assert isinstance(cmd, Do)
        m.running = False
        if outcome.interrupt is not None:
            raise Interrupted(outcome.interrupt)
        error, retry = outcome.error, cmd.retry if outcome.error is not None else None
        if rules.observed:
            yield from _emit(self, "step_returned", step=cmd.name, position=m.slot, attempt=attempt,
                                  duration=rules.now() - outcome.started, error=error and repr(error))
        if error is None:
            try:
                text = rules.encode(outcome.value, "the result of step {!r}", cmd.name)
            except UsageError as exc:
                error = exc
        if error is None:
            entry = self._entry(m.slot, "do", cmd.name, "ok", text, outcome.started)
        elif retry and attempt < retry.attempts and retry.retries(error):
            now = rules.now()
            next_at = now + retry.delay(attempt, random.random())
            info = {**error_record(error), "attempt": attempt, "next_at": next_at}
            yield from self._save("running", (self._entry(
                m.slot, "retry", cmd.name, "error", rules.encode_error(info), outcome.started),))
            self.rules.log.warning("run %s: step %r failed (try %d of %d), retrying in %.2fs: %r",
                        self.id, cmd.name, attempt, retry.attempts, next_at - now, error)
            yield from _emit(self, "step_retrying", step=cmd.name, position=m.slot,
                                  attempt=attempt, error=repr(error))
            return None
        else:
            self.rules.log.warning("run %s: step %r failed: %r", self.id, cmd.name, error)
            entry = self._entry(m.slot, "do", cmd.name, "error",
                                rules.encode_error(error_record(error)), outcome.started)
        yield from self._save("running", (entry,))
        if rules.always_replay:
            compare(self)
        if rules.observed:
            yield from _emit(self, "step_committed", step=cmd.name, position=m.slot,
                                  attempt=attempt, duration=entry.ended - outcome.started)
        return entry

    # ---- writing and ending -----------------------------------------------------------------

    def _entry(self, slot: int, kind: str, name: str, status: str, value: str | None,
               started: float | None = None) -> Entry:
        now = self.rules.now()  # ended: when the entry is written; the next write appends it
        return Entry(self.journal.next_seq, slot, kind, name, status, value,
                     now if started is None else started, now)

    def _save(self, state: str, entries: tuple[Entry, ...] = (), *, wake_at: float | None = None,
              waiting_for: str | None = None, **fields: Any) -> _Gen:
        # Most steps only append: then the run row need not be rewritten (a cheaper write).
        keep = bool(entries) and not fields and not self.resumes and \
            self.written == (state, wake_at, waiting_for)
        yield Save(state, entries, wake_at, waiting_for, keep=keep, **fields)
        for e in entries:
            self.journal.append(e)
        self.written = (state, wake_at, waiting_for)
        self.resumes = 0 if entries else self.resumes

    def _keep_row(self) -> dict[str, Any]:
        """The run row as written: for an entry that does not change the run's state."""
        return {"wake_at": self.written[1], "waiting_for": self.written[2]}

    def _finish(self, state: str, outcome: Any) -> _Gen:
        if self.journal.end > self.slot:
            held = self.journal.rest(self.slot)
            verb = "returned" if state == "completed" else f"raised {type(outcome).__name__}"
            raise NonDeterminismError(self.id, self.slot, f"{len(held)} more entries (next: "
                                      f"{held[0].kind} {held[0].name!r})", f"{verb} instead")
        result = error = None
        if state == "completed":
            try:
                result = self.rules.encode(outcome, "the workflow's return value")
            except UsageError as exc:
                state, outcome = "failed", exc
        if state != "completed":
            self.ended = outcome
            error = self.rules.encode_error(error_record(outcome))
        self.finishing = True
        yield from self._save(state, result=result, error=error, release=True)
        if state == "failed":
            self.rules.log.warning("run %s failed: %r", self.id, outcome)
        else:
            self.rules.log.info("run %s %s", self.id, state)
        yield from _emit(self, "run_finished", state=state,
                              error=None if error is None else repr(outcome))

    def _block(self, exc: Exception) -> _Gen:
        self.finishing, self.ended = True, exc
        yield from self._save("blocked", error=self.rules.encode_error(error_record(exc)),
                              release=True)
        self.rules.log.warning("run %s blocked: %s", self.id, exc)
        yield from _emit(self, "run_blocked", error=str(exc))



def _emit(life: Life, kind: str, **fields: Any) -> _Gen:
    if life.rules.observed:
        yield Emit(Event(kind, life.id, life.workflow, **fields))


def compare(life: Life) -> None:
    """Replay the run from the top against its journal, as a recovery would, and raise
    where the code first disagrees (``always_replay``: non-determinism found at once)."""
    entries = [e for slot in life.journal.slots.values() for e in slot]
    entries += life.journal.versions.values()
    shadow = Life(life.rules, life.id, life.workflow, life.fn, life.args, Journal(
        life.id, sorted(entries, key=lambda e: e.seq), life.rules.codec))
    if dry_run(shadow)[0] == "blocked" and isinstance(shadow.ended, NonDeterminismError):
        raise shadow.ended


def dry_run(life: Life) -> tuple[str | None, list[Entry]]:
    """Replay ``life`` from its journal alone, performing nothing and writing nothing, until
    it needs live work (a step, a wait) or ends. Returns the state it would end in (None: it
    goes on live; ``life.ended`` says why it would fail or block) and the version markers it
    would record."""
    gen, reply = life.life(), None  # type: tuple[_Gen, Any]
    markers: list[Entry] = []
    try:
        while True:
            effect = gen.send(reply)
            if type(effect) is Save:
                markers += [e for e in effect.entries if e.kind == "version"]
                if effect.release:
                    return effect.state, markers  # ``ended`` is set before the last write
            elif type(effect) in (Acquire, Call, Idle):
                return None, markers
            reply = [] if type(effect) is Inbox else None
    except StopIteration:
        return None, markers
    finally:
        gen.close()


# ---- one handler per command --------------------------------------------------------------

def _version(life: Life, cmd: Version) -> Generator[Effect, Any, tuple[Any, Any]]:
    marker = life.journal.versions.get(cmd.change_id)
    if marker is not None:
        value = life.journal.number(marker)
        if not value.is_integer() or not cmd.min <= value <= cmd.max:
            raise NonDeterminismError(life.id, life.slot, f"Version({cmd.change_id!r}) = "
                                      f"{marker.value}", f"accepts only {cmd.min}..{cmd.max} there")
        return int(value), None
    # Entries at or past this point mean the run was written by code without this call.
    chosen = cmd.min if life.journal.end > life.slot else cmd.max
    yield from life._save(life.written[0], (life._entry(life.slot, "version", cmd.change_id, "ok",
                          life.rules.codec.encode(chosen)),), **life._keep_row())
    return chosen, None


def _together(life: Life, cmd: Command) -> _Gen:
    if isinstance(cmd, All):
        return (yield from life.together(cmd.commands, True))
    return (yield from life.together((cmd,), False))


def _do(life: Life, m: Member) -> _Gen:
    cmd, journal = m.cmd, life.journal
    assert isinstance(cmd, Do)
    entries = life._match(m)
    final = entries[-1] if entries and entries[-1].kind == "do" else None
    if final is None:
        if entries:  # a retry's entry: its backoff may still run
            info = journal.decode(entries[-1])
            next_at = info.get("next_at", 0.0) if isinstance(info, dict) else 0.0
            if life.rules.now() < next_at:
                m.deadline = next_at
                return
        if life.halted:
            return
        final = yield from life._start(m, len(entries) + 1)
        if final is None:
            return None if m.running or m.queued else (yield from _do(life, m))
    if final.status == "ok":
        return m.settle(journal.decode(final))
    info = journal.decode(final)
    info = info if isinstance(info, dict) else {"message": str(info)}
    m.settle(error=StepFailed(cmd.name, info.get("type", "Error"), info.get("message", ""),
                              info.get("traceback")))


def _sleep(life: Life, m: Member) -> _Gen:
    cmd = m.cmd
    assert isinstance(cmd, Sleep)
    entries = life._match(m)
    life.live = life.live or not entries
    if not entries and life.halted:
        return
    now = life.rules.now()
    if entries:
        deadline = life.journal.number(entries[-1])
    else:
        single = len(life.members) == 1
        deadline = now + cmd.seconds
        yield from life._save("sleeping" if single else life.written[0], (life._entry(
            m.slot, "sleep", "", "ok", life.rules.codec.encode(deadline), now),),
            wake_at=deadline if single else life.written[1])
    if now >= deadline:
        m.settle()
    else:
        m.deadline = deadline


def _wait(life: Life, m: Member) -> _Gen:
    cmd, journal, rules = m.cmd, life.journal, life.rules
    assert isinstance(cmd, Wait)
    entries = life._match(m)
    final = entries[-1] if entries and entries[-1].kind == "wait" else None
    if final is not None:
        if final.status == "timeout":
            return m.settle(error=WaitTimeout(cmd.signal))
        return m.settle(journal.decode(final))
    life.live = True
    if life.halted:
        return
    now = rules.now()
    timeout_at = journal.number(entries[0]) if entries else None
    if timeout_at is None and cmd.timeout is not None:
        timeout_at = now + cmd.timeout
        yield from life._save(life.written[0], (life._entry(
            m.slot, "timer", cmd.signal, "ok", rules.codec.encode(timeout_at), now),),
            **life._keep_row())
    signal = next((s for s in (yield INBOX) if s.name == cmd.signal), None)
    if signal is not None:
        yield from life._save("running", (life._entry(m.slot, "wait", cmd.signal, "ok",
                              signal.payload, now),), consume=signal.id)
        yield from _emit(life, "signal_taken", step=cmd.signal, position=m.slot)
        return m.settle(journal.decode(journal.slots[m.slot][-1]))
    if timeout_at is not None and now >= timeout_at:
        yield from life._save("running", (life._entry(m.slot, "wait", cmd.signal, "timeout", None),))
        return m.settle(error=WaitTimeout(cmd.signal))
    m.deadline = timeout_at


HANDLERS: dict[type, Callable[[Life, Any], _Gen]] = {
    Do: _together, Sleep: _together, Wait: _together, All: _together, Version: _version,
}
"""Every command a workflow may yield, by type: how its yield is answered."""

MEMBERS: dict[type, tuple[tuple[str, ...], Callable[[Any], str], Callable[[Life, Member], _Gen]]] = {
    Do: (("do", "retry"), lambda c: c.name, _do),
    Sleep: (("sleep",), lambda c: "", _sleep),
    Wait: (("timer", "wait"), lambda c: c.signal, _wait),
}
"""Commands that may wait and sit in an ``All``: the entry kinds they own, the name their
entries carry, and how one member is answered or advanced."""
