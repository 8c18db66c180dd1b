"""The ``@workflow`` registry: one function per name, a module reload replaces its own."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter, MemoryStore, ReplaygenError, Sleep, registry

FACTORY = '''
from replaygen import Sleep, workflow

def make(seconds):
    @workflow(name="nap")
    def nap():
        yield Sleep(seconds)
    return nap
'''
MODULE = '''
from replaygen import Sleep, workflow

@workflow(name="reloaded")
def reloaded():
    yield Sleep({seconds})
'''


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test registers into a registry of its own, not the process-wide one."""
    monkeypatch.setattr(registry, "_registry", {})


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], Any]]:
    """Write a module into tmp_path and import it; forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # a reload reads the new source
    names: list[str] = []

    def load(name: str, source: str) -> Any:
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        return importlib.import_module(name)

    yield load
    for name in names:
        sys.modules.pop(name, None)


def test_two_closures_of_one_factory_under_one_name_are_refused_naming_both(
        module: Callable[[str, str], Any]) -> None:
    factory = module("rg_factory", FACTORY)
    first = factory.make(1)
    with pytest.raises(ReplaygenError) as refused:
        factory.make(2)
    message = str(refused.value)
    assert "'nap'" in message
    assert message.count("rg_factory.make.<locals>.nap") == 2, message  # both, where they are
    assert "closures" in message and "@workflow(name=...)" in message
    assert registry.registered() == {"nap": first}  # the first one stays


def test_two_closures_in_one_workflows_list_are_refused() -> None:
    def make(seconds: float) -> Any:
        def nap() -> Any:
            yield Sleep(seconds)
        return nap

    with pytest.raises(ReplaygenError, match="closures"):
        Interpreter(MemoryStore(), [make(1), make(2)])


def test_a_reloaded_module_replaces_its_own_workflows(module: Callable[[str, str], Any],
                                                      tmp_path: Path) -> None:
    mod = module("rg_reloaded", MODULE.format(seconds=1))
    old = mod.reloaded
    (tmp_path / "rg_reloaded.py").write_text(MODULE.format(seconds=2))
    new = importlib.reload(mod).reloaded
    assert new is not old and new.__code__ is not old.__code__
    assert registry.registered() == {"reloaded": new}
    assert list(new()) == [Sleep(2)]
