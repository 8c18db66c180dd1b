"""The replay cursor's index over one run's journal, and the matching rules.

Entry kinds, by the command they belong to (``slot`` is the command's position;
an ``All`` of n members takes n consecutive slots):

========  =======  ==========================================================
command   kind     meaning
========  =======  ==========================================================
Do        retry    a failed try; value holds the error and the next try's time
Do        do       the final outcome: status ``ok`` (value = result) or ``error``
Sleep     sleep    value = the deadline, written when the Sleep is first reached
Wait      timer    value = the timeout's deadline, written when first reached
Wait      wait     status ``ok`` (value = payload) or ``timeout``
Version   version  name = change id, value = the version; matched by name
(any)     cancel   Cancelled is raised at the yield whose first slot this is
========  =======  ==========================================================

This module must never touch a store or run anything: it only reads entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .codec import Codec
from .commands import Command, Do, Sleep, Wait
from .errors import CorruptRecord, NonDeterminismError
from .store import Entry

KINDS = {Do: ("do", "retry"), Sleep: ("sleep",), Wait: ("timer", "wait")}
FINAL = {"do", "sleep", "wait"}


def describe(cmd: object) -> str:
    """A short, readable form of a yielded value, for error messages."""
    if isinstance(cmd, Do):
        return f"Do({cmd.name!r})"
    if isinstance(cmd, Wait):
        return f"Wait({cmd.signal!r})"
    if isinstance(cmd, Sleep):
        return f"Sleep({cmd.seconds:g}s)"
    return repr(cmd)


def member_name(cmd: Command) -> str:
    return cmd.name if isinstance(cmd, Do) else cmd.signal if isinstance(cmd, Wait) else ""


class Journal:
    """A run's entries indexed by slot, with version markers by change id."""

    def __init__(self, run_id: str, entries: Sequence[Entry]) -> None:
        self.run_id = run_id
        self.slots: dict[int, list[Entry]] = {}
        self.versions: dict[str, Entry] = {}
        self.next_seq = 0
        self.end = 0  # the first slot past every positional entry
        self.cancelled = False  # a cancel request has been journaled (and so consumed)
        for e in entries:
            if e.seq != self.next_seq:
                raise CorruptRecord(
                    f"run {run_id!r}: journal row {e.seq} found where row {self.next_seq} was "
                    f"expected (a gap or duplicate); the run is blocked until the row is repaired"
                )
            if not (isinstance(e.kind, str) and isinstance(e.name, str) and isinstance(e.slot, int)
                    and isinstance(e.status, str) and (e.value is None or isinstance(e.value, str))):
                raise CorruptRecord(f"run {run_id!r}: journal row {e.seq} has missing or mistyped "
                                    f"columns ({e!r}); the run is blocked until it is repaired")
            self.append(e)

    def append(self, e: Entry) -> None:
        self.next_seq = e.seq + 1
        if e.kind == "version":
            self.versions[e.name] = e
        else:
            self.slots.setdefault(e.slot, []).append(e)
            self.end = max(self.end, e.slot + 1)
            self.cancelled = self.cancelled or e.kind == "cancel"

    def cancelled_at(self, slot: int) -> bool:
        return any(e.kind == "cancel" for e in self.slots.get(slot, ()))

    def match(self, slot: int, cmd: Command) -> list[Entry]:
        """The entries at ``slot`` for member ``cmd``; NonDeterminismError if they are another's."""
        kinds, name = KINDS[type(cmd)], member_name(cmd)
        found = [e for e in self.slots.get(slot, ()) if e.kind != "cancel"]
        for e in found:
            if e.kind not in kinds or e.name != name:
                held = f"{e.kind} {e.name!r}" if e.name else e.kind
                raise NonDeterminismError(self.run_id, slot, held, f"yielded {describe(cmd)}")
        return found

    def decode(self, e: Entry, codec: Codec) -> Any:
        """The entry's value, or CorruptRecord naming the run and row."""
        try:
            return None if e.value is None else codec.decode(e.value)
        except Exception as exc:
            raise CorruptRecord(
                f"run {self.run_id!r}: journal row {e.seq} ({e.kind} {e.name!r}) cannot be "
                f"decoded: {exc}; the run is blocked until the row is repaired"
            ) from None
