"""Service "orders" of the composition tests: it knows only ``checkout``, whose children are
workflows of the billing and shipping services, named, never imported."""

from __future__ import annotations

from typing import Any

from replaygen import All, Child, Do, workflow

from . import _effects


@workflow
def checkout(box: str, key: str) -> Any:
    """A child run in each other service, at once; then a step of its own."""
    bill, ship = yield All(Child("billing", box, f"{key}-bill", False),
                           Child("shipping", box, f"{key}-ship", False))
    yield Do("done", _effects.record, box, key, "done")
    return [bill, ship]
