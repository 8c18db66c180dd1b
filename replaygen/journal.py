"""The stored format of a run's journal: entries, their kinds (ARCHITECTURE.md lists them),
and the index the replay rules read (error records are in ``errors``). Every value is text
written by the codec, the engine's own deadlines and versions included (rows written before
that by ``repr()`` still read). It builds and reads entries; it never touches a store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from .codec import Codec
from .errors import CorruptRecord, NonDeterminismError

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


class Journal:
    """A run's entries indexed by position, with version markers by change id."""

    def __init__(self, run_id: str, entries: Sequence[Entry], codec: Codec) -> None:
        self.run_id, self.codec = run_id, codec
        self.at: dict[int, list[Entry]] = {}
        self.versions: dict[str, Entry] = {}
        self.next_seq = 0
        self.end = 0  # the first position past every positional entry
        self.cancelled = False  # a cancel or a deadline's strike journaled: requests are spent
        self.interrupts: dict[int, Entry] = {}  # cancel (or deadline) entries, by position
        self.groups: dict[int, Entry] = {}  # where an All or Any of 2+ members began (fork)
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
            self.groups[e.position] = e
        else:
            self.at.setdefault(e.position, []).append(e)
            self.end = max(self.end, e.position + 1)
            if e.kind == "cancel":
                self.interrupts[e.position] = e
                # Cancelled is raised once: a cancel, or the deadline's strike, spends every
                # cancel request (a parent's strike cascading to a child that struck too).
                self.cancelled = True

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
