"""What a store checks in a run row it reads back before it hands the run to a worker.

Another program (a repair by hand, a migration, a tool with another text encoding) can
leave a row that does not hold what the store wrote: bytes that are not UTF-8, a number
where text belongs, text where a number belongs. Such a row must stop its own run only,
with a message naming the row; it must never make every read or claim fail. The engine
checks the journal entries and the content of the arguments itself; a store checks the
types of the run row, since a run whose row is damaged cannot be handed to a worker, and
blocks that run instead.

This module must never import the interpreter or a database driver.
"""

from __future__ import annotations

import json
from dataclasses import fields

from replaygen.store import RunRecord

_NONE = type(None)
_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,), "workflow": (str,), "args": (str,), "state": (str,), "owner": (str, _NONE),
    "fence": (int,), "created": (float, int), "updated": (float, int), "result": (str, _NONE),
    "error": (str, _NONE), "wake_at": (float, int, _NONE), "waiting_for": (str, _NONE),
    "cancel_requested": (bool,), "resumes": (int,), "parent": (str, _NONE),
    "forked_from": (str, _NONE),
}
assert set(_TYPES) == {f.name for f in fields(RunRecord)}, "a RunRecord field is not checked"


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        return f"{value[:40]!r}, bytes that are not UTF-8 text"
    return "NULL" if value is None else f"{value!r}, a {type(value).__name__}"


def damage(run: RunRecord) -> str | None:
    """What is wrong with the types of a run row, in words; None when nothing is."""
    for name, types in _TYPES.items():
        value = getattr(run, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"its column {name} holds {_shown(value)}"
    return None


def blocked_error(run: RunRecord, where: str, problem: str) -> str:
    """The stored error (the engine's form) of a run blocked because its row is damaged.
    ``where`` locates the row for someone repairing it by hand (e.g. ``rowid 7``)."""
    if isinstance(run.run_id, str):
        message = (f"run {run.run_id!r}: its row in the runs table ({where}) cannot be used: "
                   f"{problem}. The run is blocked until the row is repaired; recover() then "
                   f"retries it.")
    else:
        message = (f"a row of the runs table ({where}) cannot be used: {problem}. No worker can "
                   f"address it, so it is blocked: repair the row (or delete it).")
    return json.dumps({"type": "CorruptRecord", "message": message})


def workflow_names(value: object) -> list[str] | None:
    """Workflow names a worker advertised, as read back: a list of str, else None (a cell
    another program damaged says nothing about what the worker serves)."""
    if isinstance(value, list) and all(isinstance(n, str) for n in value):
        return list(value)
    return None
