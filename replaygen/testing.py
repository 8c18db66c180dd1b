"""Unit-testing workflows without a store, threads or real steps: feed a fake journal.

    t = replay(checkout, {"id": 42}, journal={"charge": "txn_1"})
    assert t.pending == Do("receipt", send_receipt, "txn_1")

Answers go through the codec exactly as in the engine (a tuple comes back as
a list), and an exception given as a step's answer is raised as the engine
would raise the step's failure: as ``StepFailed``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .codec import Codec, JSONCodec
from .commands import All, Command, Do, Sleep, Version, Wait
from .errors import Cancelled, StepFailed, UsageError, WaitTimeout
from .journal import describe

_NONE = object()


@dataclass
class Trace:
    """What a workflow did when replayed against a fake journal."""

    commands: list[Command] = field(default_factory=list)
    """Every command yielded, in order (Versions included)."""
    done: bool = False
    """True once the workflow returned or raised."""
    pending: Command | None = None
    """The first command the journal could not answer (when not done)."""
    result: Any = None
    error: BaseException | None = None


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
    ``WaitTimeout()`` and ``Cancelled()`` as themselves, any other as the
    ``StepFailed`` the engine would raise for that step.
    """
    codec = codec or JSONCodec()
    by_position = not isinstance(journal, Mapping)
    position, slept = 0, 0
    trace = Trace()

    def answer(cmd: Command, member: bool) -> Any:
        nonlocal position, slept
        found: Any = _NONE
        if isinstance(cmd, Sleep) and not (member and by_position):
            found = sleeps[slept] if slept < len(sleeps) else None
            slept += 1
        elif by_position and position < len(journal):
            found = journal[position]  # type: ignore[index]
            position += 1
        elif isinstance(cmd, Do) and not by_position:
            found = journal.get(cmd.name, _NONE)  # type: ignore[union-attr]
        if found is _NONE and isinstance(cmd, Sleep):  # a Sleep passes by itself
            found = None
        if found is _NONE and isinstance(cmd, Wait) and signals is not None:
            found = signals.get(cmd.signal, _NONE)
        if found is _NONE or isinstance(found, BaseException):
            return found
        try:
            return codec.decode(codec.encode(found))
        except (TypeError, ValueError) as exc:
            return UsageError(f"the answer for {describe(cmd)} cannot be stored: {exc}")

    def as_error(cmd: Command, exc: BaseException) -> BaseException:
        if isinstance(exc, (WaitTimeout, Cancelled, StepFailed)) or not isinstance(cmd, Do):
            return exc
        return StepFailed(cmd.name, type(exc).__name__, str(exc))

    gen = workflow(*args, **kwargs)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            cmd = gen.throw(error) if error is not None else gen.send(value)
        except StopIteration as stop:
            trace.done, trace.result = True, stop.value
            return trace
        except Exception as exc:
            trace.done, trace.error = True, exc
            return trace
        trace.commands.append(cmd)
        value, error = None, None
        if isinstance(cmd, Version):
            value = (versions or {}).get(cmd.change_id, cmd.max)
            continue
        if not isinstance(cmd, (Do, Sleep, Wait, All)):
            gen.close()
            trace.done = True
            trace.error = UsageError(f"the workflow yielded {describe(cmd)}, which is not a command")
            return trace
        members = cmd.commands if isinstance(cmd, All) else (cmd,)
        answers = [answer(m, isinstance(cmd, All)) for m in members]
        if any(a is _NONE for a in answers):
            trace.pending = cmd
            gen.close()
            return trace
        pairs = zip(members, answers, strict=True)
        failed = [as_error(m, a) for m, a in pairs if isinstance(a, BaseException)]
        if failed:
            error = failed[0]
        else:
            value = answers if isinstance(cmd, All) else answers[0]


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
