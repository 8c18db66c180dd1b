"""The stored format of a run's journal: entries, their kinds (ARCHITECTURE.md lists them),
the error record, and the index the replay rules read. Every value is text written by the
codec, the engine's own deadlines and versions included (rows written before that by
``repr()`` still read). It builds and reads entries; it never touches a store."""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

from .codec import Codec
from .errors import (
    Cancelled, ChildFailed, CorruptRecord, DeadlineExceeded, NonDeterminismError, StepFailed,
    WorkflowFailed,
)

TRACEBACK_LIMIT = 50_000
"""Characters of a traceback kept in an error record (its end: where it was raised)."""
MESSAGE_LIMIT = 10_000
"""Characters of an error message kept in an error record."""


_NO_VALUE = frozenset({"cancel", "woke"})
"""Entry kinds that hold no value (and a Wait's timeout); every other entry holds text."""


class Entry(NamedTuple):  # a tuple: replay builds thousands of these from rows
    """One journal entry. ``seq`` is its dense append index, ``position`` the place of the
    command it answers (an ``All`` or ``Any`` of n members takes n consecutive positions)."""

    seq: int
    position: int
    kind: str
    name: str
    status: str
    value: str | None
    started: float
    ended: float


class Spawn(NamedTuple):
    """A child run a write of its parent creates, in the same transaction."""

    run_id: str
    workflow: str
    args: str


class Notice(NamedTuple):
    """A signal a write delivers to another run (a child's end, to its parent), unless that
    run is finished or gone."""

    run_id: str
    name: str
    payload: str


def error_record(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error (cut further by the engine when it does not fit)."""
    return {"type": type(exc).__name__, "message": str(exc)[:MESSAGE_LIMIT],
            "traceback": "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]}


def read_error(text: str | None, codec: Codec) -> dict[str, Any]:
    """An error record back from its text; a damaged one still gives a readable message."""
    try:
        info = codec.decode(text or "{}")
        return info if isinstance(info, dict) else {"message": str(info)}
    except Exception:
        return {"type": "Error", "message": str(text)}


def stored_error(info: Any, *, step: str | None = None, child: str | None = None,
                 run: str | None = None) -> Exception:
    """The exception a stored error record stands for: a step's (``StepFailed``), a child's
    (``ChildFailed``; ``Cancelled`` for a cancelled child), a failed run's (``WorkflowFailed``),
    else a cancel (``DeadlineExceeded`` for a deadline). The one decoder of error records."""
    info = info if isinstance(info, dict) else {"message": str(info)}
    kind, message = str(info.get("type", "Error")), str(info.get("message", ""))
    if step is not None:
        return StepFailed(step, kind, message, info.get("traceback"))
    if child is not None:
        if kind in ("Cancelled", "DeadlineExceeded", "Terminated"):
            return Cancelled(f"child run {child!r} was cancelled: {message}")
        return ChildFailed(child, kind, message, info.get("traceback"))
    if run is not None:
        return WorkflowFailed(run, kind, message, info.get("traceback"))
    return (DeadlineExceeded if kind == "DeadlineExceeded" else Cancelled)(message)


def describe_error(info: dict[str, Any]) -> str:
    return f"{info.get('type', 'Error')}: {info.get('message', '')}"


class Journal:
    """A run's entries indexed by position, with version markers by change id."""

    def __init__(self, run_id: str, entries: Sequence[Entry], codec: Codec) -> None:
        self.run_id, self.codec = run_id, codec
        self.at: dict[int, list[Entry]] = {}
        self.versions: dict[str, Entry] = {}
        self.next_seq = 0
        self.end = 0  # the first position past every positional entry
        self.cancelled = False  # a cancel request has been journaled (and so consumed)
        self.interrupts: dict[int, Entry] = {}  # cancel (or deadline) entries, by position
        self.groups: set[int] = set()  # where an All or Any of 2+ members began (for fork)
        for e in entries:
            if e.seq != self.next_seq:
                raise CorruptRecord(
                    f"run {run_id!r}: journal row {e.seq} found where row {self.next_seq} was "
                    f"expected (a gap or duplicate); the run is blocked until the row is repaired"
                )
            if not (isinstance(e.kind, str) and isinstance(e.name, str) and isinstance(e.position, int)
                    and isinstance(e.status, str) and (e.value is None or isinstance(e.value, str))
                    and (e.value is not None or e.kind in _NO_VALUE or e.status == "timeout")):
                raise CorruptRecord(f"run {run_id!r}: journal row {e.seq} has missing or mistyped "
                                    f"columns ({e!r}); the run is blocked until it is repaired")
            self.append(e)

    def append(self, e: Entry) -> None:
        self.next_seq = e.seq + 1
        if e.kind == "version":
            self.versions[e.name] = e
        elif e.kind == "group":
            self.groups.add(e.position)
        else:
            self.at.setdefault(e.position, []).append(e)
            self.end = max(self.end, e.position + 1)
            if e.kind == "cancel":
                self.interrupts[e.position] = e
                # A cancel (not a deadline) journaled: the run's cancel request is consumed.
                self.cancelled = self.cancelled or e.status != "deadline"

    def match(self, position: int, kinds: tuple[str, ...], name: str, cmd: Any) -> list[Entry]:
        """The entries at ``position`` of command ``cmd``, owning ``kinds`` and named ``name``;
        a NonDeterminismError if they are another's."""
        found = [e for e in self.at.get(position, ()) if e.kind != "cancel"]
        for e in found:
            if e.kind not in kinds or e.name != name:
                held = f"{e.kind} {e.name!r}" if e.name else e.kind
                raise NonDeterminismError(self.run_id, position, held, f"yielded {cmd.describe()}")
        return found

    def rest(self, position: int) -> list[Entry]:
        """The positional entries at ``position`` and after: what the code has not consumed."""
        return [e for p in range(position, self.end) for e in self.at.get(p, ())]

    def open_children(self) -> list[str]:
        """Ids of the children this run started whose end it has not journaled."""
        return [str(self.decode(spawn)) for entries in self.at.values() for spawn in entries
                if spawn.kind == "spawn" and not any(e.kind == "child" for e in entries)]

    def decode(self, e: Entry) -> Any:
        """The entry's value, or CorruptRecord naming the run and row."""
        try:
            return None if e.value is None else self.codec.decode(e.value)
        except Exception as exc:
            raise CorruptRecord(
                f"run {self.run_id!r}: journal row {e.seq} ({e.kind} {e.name!r}) cannot be "
                f"decoded: {exc}; the run is blocked until the row is repaired"
            ) from None

    def number(self, e: Entry) -> float:
        """An engine value (a deadline, a version). Rows written before these went through
        the codec hold ``repr()`` text, which a custom codec may not read: fall back to it."""
        try:
            value = self.decode(e)
        except CorruptRecord:
            value = e.value
        try:
            return float(value)
        except (TypeError, ValueError):
            raise CorruptRecord(f"run {self.run_id!r}: journal row {e.seq} ({e.kind} {e.name!r}) "
                                f"holds {e.value!r}, not a number; the run is blocked until the "
                                f"row is repaired") from None
