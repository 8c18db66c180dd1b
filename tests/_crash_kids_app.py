"""Workflows of tests/test_crash_children.py: parents, their children, and trees of runs.

Every step records itself in ``BOX/effects`` (``tests._effects``: ``B <run id> <step> <pid>``),
fsynced before it does its work, so a test can tell which process executed which step of which
run, however often. The workflows are given to each worker by name (``WORKFLOWS``), so a
process can be made to know some of them only.
"""

from __future__ import annotations

import time
from typing import Any

from replaygen import All, Cancelled, Child, Do, Wait, current_step

from . import _effects


def _step(box: str, name: str, value: Any, work: float) -> Any:
    _effects.record(box, current_step().run_id, name)
    time.sleep(work)  # the work itself: a kill may land while it runs
    return value


def family(box: str, n: int, work: float) -> Any:
    """A step, ``n`` children in an ``All``, a step: ``{"children": [...], "total": ...}``."""
    yield Do("before", _step, box, "before", n, work)
    got = yield All(*[Child("leaf", box, i, work) for i in range(n)])
    total = yield Do("after", _step, box, "after", sum(got), work)
    return {"children": got, "total": total}


def leaf(box: str, i: int, work: float) -> Any:
    """Two steps; ends with ``10 * i + 1``."""
    tens = yield Do("one", _step, box, "one", 10 * i, work)
    return (yield Do("two", _step, box, "two", tens + 1, work))


def family_result(n: int) -> dict[str, Any]:
    """What ``family(box, n, work)`` returns."""
    got = [10 * i + 1 for i in range(n)]
    return {"children": got, "total": sum(got)}


def node(box: str, depth: int, fanout: int) -> Any:
    """A tree: ``fanout`` children of depth - 1 each; a leaf (depth 0) waits for a signal
    nobody sends and, when cancelled, compensates with a step before it lets go."""
    if depth > 0:
        return (yield All(*[Child("node", box, depth - 1, fanout) for _ in range(fanout)]))
    try:
        return (yield Wait("go"))
    except Cancelled:
        yield Do("compensate", _step, box, "compensate", "undone", 0.02)
        raise


WORKFLOWS = {"family": family, "leaf": leaf, "node": node}
