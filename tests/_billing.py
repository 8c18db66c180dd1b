"""Service "billing" of the two-service tests: it knows only the workflow ``billing``."""

from __future__ import annotations

from typing import Any

from replaygen import Do, Wait, workflow

from . import _effects


@workflow
def billing(box: str, key: str, park: bool) -> Any:
    """A step; with ``park``, a Wait for signal "go"; a step; the result names the service."""
    yield Do("first", _effects.record, box, key, "first")
    note = (yield Wait("go")) if park else "now"
    yield Do("second", _effects.record, box, key, "second")
    return f"billing {key} {note}"
