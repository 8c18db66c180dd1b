"""``replaygen.loader.load``: the one loader of ``MODULE[:ATTR]`` (worker, check, resume, lint)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replaygen import registry
from replaygen.loader import Fallback, LoadError, load

FLOWS = '''
from replaygen import Sleep, workflow

@workflow(name="nap")
def nap():
    yield Sleep(1)

def helper():
    yield Sleep(2)
'''


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_registry", {})


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a module into tmp_path, importable; forgotten again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(name: str, text: str) -> str:
        (tmp_path / f"{name}.py").write_text(text)
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_the_attribute_wins_as_it_is(module: Callable[[str, str], str]) -> None:
    name = module("ld_attr", FLOWS + "workflows = {'n': nap}\nothers = [helper]\n")
    loaded = load(name)
    assert (loaded.rule, loaded.attr, list(loaded.found)) == ("from its `workflows`", "workflows",
                                                              ["n"])
    assert load(f"{name}:others").found == [loaded.module.helper]


def test_without_the_attribute_the_registered_workflows(module: Callable[[str, str], str]) -> None:
    name = module("ld_flows", FLOWS)
    loaded = load(name)
    assert (loaded.rule, loaded.attr) == ("registered with @workflow", None)
    assert loaded.found == {"nap": loaded.module.nap}


def test_workflows_its_import_registered_count_as_its_own(module: Callable[[str, str], str]) -> None:
    module("ld_shop", FLOWS)
    service = module("ld_service", "import ld_shop  # registers nap\n")
    assert list(load(service).found) == ["nap"]


def test_the_fallback_comes_last(module: Callable[[str, str], str]) -> None:
    name = module("ld_bare", "def flow():\n    yield 1\n")
    guess = Fallback("every generator", "defines no generator",
                     lambda m: {"flow": m.flow})
    assert load(name, guess).rule == "every generator"
    with pytest.raises(LoadError, match="no workflows in 'ld_bare'.*defines no generator"):
        load(name, Fallback("every generator", "defines no generator", lambda m: {}))


@pytest.mark.parametrize(("spec", "said"), [
    ("", "bad module argument ''"), ("x:", "bad module argument 'x:'"),
    ("ld_nowhere", "cannot import 'ld_nowhere': ModuleNotFoundError: No module named "
                   "'ld_nowhere' (run from the directory that holds it, or set PYTHONPATH)"),
])
def test_what_cannot_be_loaded_says_why(spec: str, said: str) -> None:
    with pytest.raises(LoadError) as refused:
        load(spec)
    assert str(refused.value).startswith(said)


def test_a_missing_attribute_or_nothing_at_all_says_what_to_do(
        module: Callable[[str, str], str]) -> None:
    name = module("ld_empty", "x = 1\n")
    with pytest.raises(LoadError, match="module 'ld_empty' has no attribute 'flows'"):
        load(f"{name}:flows")
    with pytest.raises(LoadError, match="no workflows in 'ld_empty'.*@workflow.*MODULE:ATTR"):
        load(name)


def test_a_module_that_raises_while_imported_is_named_with_the_exception(
        module: Callable[[str, str], str]) -> None:
    name = module("ld_raises", "raise KeyError('DATABASE_URL')\n")
    with pytest.raises(LoadError) as refused:
        load(name)
    assert str(refused.value) == "cannot import 'ld_raises': KeyError: 'DATABASE_URL'"
