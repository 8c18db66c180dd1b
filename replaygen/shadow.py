"""A third driver of lives, beside the runtime and the testing kit: it replays a run from its
journal alone, performing nothing and writing nothing. ``dry_run`` is behind ``check`` and
the testing kit's replays, ``compare`` behind ``Interpreter(always_replay=True)``."""

from __future__ import annotations

from typing import Any

from .effects import Acquire, Call, Idle, Inbox, Lookup, Save
from .errors import NonDeterminismError
from .journal import Entry, Journal
from .replay import Life


def compare(life: Life) -> None:
    """Replay the run from the top against its journal, as a recovery would, and raise
    where the code first disagrees (``always_replay``: non-determinism found at once)."""
    entries = [e for at in life.journal.at.values() for e in at]
    entries += [*life.journal.versions.values(), *life.journal.groups.values()]
    shadow = Life(life.settings, life.id, life.workflow, life.fn, life.args, Journal(
        life.id, sorted(entries, key=lambda e: e.seq), life.settings.codec), parent=life.parent)
    if dry_run(shadow)[0] == "blocked" and isinstance(shadow.ended, NonDeterminismError):
        raise shadow.ended


def dry_run(life: Life) -> tuple[str | None, list[Entry]]:
    """Replay ``life`` from its journal alone, performing nothing and writing nothing, until
    it needs live work (a step, a wait) or ends. Returns the state it would end in (None: it
    goes on live; ``life.ended`` says why it would fail or block) and the version markers it
    would record."""
    gen = life.life()
    reply: Any = None
    markers: list[Entry] = []
    try:
        while True:
            effect = gen.send(reply)
            if type(effect) is Save:
                markers += [e for e in effect.entries if e.kind == "version"]
                if effect.release:
                    return effect.state, markers  # ``ended`` is set before the last write
            elif type(effect) in (Acquire, Call, Idle, Lookup):
                return None, markers + [e for e in life.staged if e.kind == "version"]
            reply = [] if type(effect) is Inbox else None
    except StopIteration:
        return None, markers
    finally:
        gen.close()
