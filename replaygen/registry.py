"""The ``@workflow`` decorator and the default registry it fills.

The one module-level registry of the project: an ``Interpreter`` built without
``workflows=`` serves every workflow recorded here, including those imported after it
was built. The decorator returns the function itself, still a plain generator function.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, TypeVar, overload

from .commands import check_name
from .errors import UsageError

Workflow = Callable[..., Generator[Any, Any, Any]]
F = TypeVar("F", bound=Callable[..., Any])
ATTR = "__replaygen_workflow__"
"""Set on a decorated function: the name the store keeps for it."""
LIMIT = "__replaygen_limit__"
"""Set on a function decorated with ``limit=``: how many of its runs may work at once."""

_lock = threading.Lock()
_registry: dict[str, Workflow] = {}


def where(fn: Any) -> str:
    """``module.qualname (file:line)``: enough to find a function from an error message."""
    code = getattr(fn, "__code__", None)
    at = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}{at}"


def name_of(fn: Any) -> str:
    """The name a workflow function is kept under: its ``@workflow`` name, else its qualname."""
    return str(getattr(fn, ATTR, None) or getattr(fn, "__qualname__", repr(fn)))


def check(name: str, fn: Any, known: dict[str, Workflow]) -> None:
    """Refuse a function that is not a generator function, or a name taken by another."""
    check_name("workflow name", name)
    if not inspect.isgeneratorfunction(fn):
        raise UsageError(f"workflow {name!r} ({fn!r}) is not a generator function; a workflow "
                         f"must `yield` commands (Do, Sleep, Wait, Version, All)")
    old = known.get(name)
    if old is None or old is fn or _reloaded(old, fn):
        return
    if getattr(old, "__code__", None) is getattr(fn, "__code__", None):
        raise UsageError(f"two workflows are registered as {name!r}: {where(old)} and {where(fn)}, "
                         f"two closures of one definition (a factory called twice?); give each "
                         f"its own name (@workflow(name=...) or a dict)")
    raise UsageError(f"two workflows are registered as {name!r}: {where(old)} and "
                     f"{where(fn)}; give one another name (@workflow(name=...) or a dict)")


def _reloaded(old: Any, new: Any) -> bool:
    """``new`` is ``old`` after its module was reloaded: the same module and qualified name,
    compiled again. (Two closures of one factory share their code object: not a reload.)"""
    old_code, new_code = getattr(old, "__code__", None), getattr(new, "__code__", None)
    return (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__) and \
        old_code is not None and new_code is not None and old_code is not new_code


@overload
def workflow(fn: F, /) -> F: ...
@overload
def workflow(*, name: str | None = None, limit: int | None = None) -> Callable[[F], F]: ...
def workflow(fn: Any = None, /, *, name: str | None = None, limit: int | None = None) -> Any:
    """Mark a generator function as a workflow, kept under ``name`` (default: its qualname),
    and record it in the default registry. ``limit``: at most this many of its runs execute
    steps at once, across every worker sharing the store. Returns the function unchanged."""
    if limit is not None:
        check_limits({name or "this workflow": limit})

    def mark(fn: F) -> F:
        chosen = name if name is not None else fn.__qualname__
        with _lock:
            check(chosen, fn, _registry)
            _registry[chosen] = fn
        setattr(fn, ATTR, chosen)
        if limit is not None:
            setattr(fn, LIMIT, limit)
        return fn

    return mark if fn is None else mark(fn)


def table(workflows: Iterable[Workflow] | Mapping[str, Workflow]) -> dict[str, Workflow]:
    """``workflows`` given as a list (each named by ``name_of``) or a dict, checked, by name."""
    if callable(workflows):
        raise UsageError(f"workflows must be a list or dict of workflows, got the lone "
                         f"function {workflows!r}; write workflows=[{workflows.__name__}]")
    known: dict[str, Workflow] = {}
    items = workflows.items() if isinstance(workflows, Mapping) else (
        (name_of(fn), fn) for fn in workflows)
    for name, fn in items:
        check(name, fn, known)
        known[name] = fn
    return known


def check_limits(limits: Mapping[str, int] | None,
                 known: Mapping[str, Workflow] | None = None) -> dict[str, int]:
    """``limits`` ({workflow name: slots}) checked: each an int >= 1, each a workflow of
    ``known`` (when given)."""
    if limits is None:
        return {}
    if not isinstance(limits, Mapping):
        raise UsageError(f"limits must be a dict {{workflow name: int}}, got {limits!r}")
    for name, n in limits.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"the limit of workflow {name!r} must be an int >= 1 (runs working "
                             f"at once), got {n!r}")
        if known is not None and name not in known:
            raise UsageError(f"limits name {name!r}, which this Interpreter does not serve (it "
                             f"serves {sorted(known)})")
    return dict(limits)


def limits_of(known: Mapping[str, Workflow], given: Mapping[str, int]) -> dict[str, int]:
    """Slots per workflow: each ``@workflow(limit=)`` of ``known``, overridden by ``given``."""
    found = {n: getattr(fn, LIMIT) for n, fn in known.items() if hasattr(fn, LIMIT)}
    return {**found, **given}


def registered() -> dict[str, Workflow]:
    """A snapshot of the default registry: name -> function."""
    with _lock:
        return dict(_registry)
