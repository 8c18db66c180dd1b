"""Loading ``MODULE[:ATTR]``: the workflows a command-line argument names.

The one loader for every command that takes a module (``worker``, ``check``, ``resume``,
``lint``). It imports the module from the current directory (or ``PYTHONPATH``) and picks
``ATTR`` (default ``workflows``) if the module has it, else the workflows the module
registered with ``@workflow``, else what the caller's fallback finds. It calls nothing of
the user's beyond the import, and knows nothing about stores or the interpreter: what
``ATTR`` may hold (a list, a dict, a factory) is for each command to judge.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import ReplaygenError
from .registry import registered

DEFAULT_ATTR = "workflows"


class LoadError(ReplaygenError):
    """``MODULE[:ATTR]`` is malformed, cannot be imported, or names no workflows."""


@dataclass(frozen=True)
class Fallback:
    """What to pick when a module has no ``ATTR`` and registered no ``@workflow``."""

    rule: str
    """How the fallback picks, for messages (``... so every generator function ...``)."""
    missing: str
    """What the module lacks when the fallback finds nothing (``defines no ...``)."""
    pick: Callable[[ModuleType], Mapping[str, Callable[..., Any]]]


@dataclass(frozen=True)
class Loaded:
    """What ``MODULE[:ATTR]`` names, and the rule that picked it."""

    spec: str
    module: ModuleType
    found: Any
    """What ``ATTR`` holds, as it is; or, picked by registration or by the fallback, a dict
    ``{name: workflow}``."""
    rule: str
    """``from its `ATTR```, ``registered with @workflow``, or the fallback's rule."""
    attr: str | None = None
    """The attribute ``found`` was read from; None when it was picked otherwise."""


def load(spec: str, fallback: Fallback | None = None) -> Loaded:
    """Import ``MODULE[:ATTR]`` and pick what it names; ``LoadError`` saying what is wrong."""
    module_name, colon, attr = spec.partition(":")
    if not module_name or (colon and not attr):
        raise LoadError(f"bad module argument {spec!r}: use MODULE or MODULE:ATTR")
    before = registered()
    module = _import(module_name)
    name = attr or DEFAULT_ATTR
    if hasattr(module, name):
        return Loaded(spec, module, getattr(module, name), f"from its `{name}`", name)
    if attr:
        raise LoadError(f"module {module_name!r} has no attribute {attr!r}")
    # Registered while importing it, or defined in it or in a module below it.
    mine = {key: fn for key, fn in registered().items() if key not in before or (
        fn.__module__ == module_name or fn.__module__.startswith(module_name + "."))}
    if mine:
        return Loaded(spec, module, mine, "registered with @workflow")
    if fallback is not None and (guessed := dict(fallback.pick(module))):
        return Loaded(spec, module, guessed, fallback.rule)
    lacks = f", and {fallback.missing}" if fallback is not None else ""
    raise LoadError(f"no workflows in {module_name!r}: it has no `{DEFAULT_ATTR}` and registered "
                    f"nothing with @workflow{lacks}; decorate its workflows with @workflow, or "
                    f"name them as MODULE:ATTR")


def _import(name: str) -> ModuleType:
    if os.getcwd() not in sys.path:  # as `python -m` does; a console script does not
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # whatever the module raises while importing
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        hint = (" (run from the directory that holds it, or set PYTHONPATH)"
                if missing is not None and (name == missing or name.startswith(missing + "."))
                else "")
        raise LoadError(f"cannot import {name!r}: {type(exc).__name__}: {exc}{hint}") from None
