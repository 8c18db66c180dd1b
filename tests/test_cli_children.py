"""The CLI on runs with children: ``show`` names a run's parent and children, ``runs
--parent`` lists the children, and a waiting parent says which child it awaits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from replaygen import All, Child, Interpreter, Wait
from replaygen.stores.sqlite import SQLiteStore

from .test_cli import cli, eventually


def kid(n: int) -> Any:
    return (yield Wait("go"))


def parent() -> Any:
    return (yield All(Child(kid, 1), Child(kid, 2)))


@pytest.fixture
def family(tmp_path: Path) -> Path:
    db = SQLiteStore(tmp_path / "runs.db")
    with Interpreter(db, [kid, parent]) as interp:
        interp.start(parent, run_id="order")
        eventually(lambda: len(db.runs(parent="order")) == 2 and all(
            r.state == "waiting" for r in db.runs()))
    return tmp_path


def test_show_names_the_parent_and_the_children(family: Path) -> None:
    out = cli("show", "order", cwd=family, store="runs.db").stdout
    assert "children:    2: order/0, order/1\n" in out
    assert "waiting for: child order/0, child order/1" in out
    child = cli("show", "order/1", cwd=family, store="runs.db").stdout
    assert "parent:      order\n" in child and "waiting for: signal go" in child
    shown = json.loads(cli("show", "order", "--json", cwd=family, store="runs.db").stdout)
    assert shown["run"]["children"] == ["order/0", "order/1"] and shown["run"]["parent"] is None
    assert [e["kind"] for e in shown["journal"]] == ["group", "spawn", "spawn"]


def test_runs_lists_the_children_of_a_run(family: Path) -> None:
    done = cli("runs", "--parent", "order", "--json", cwd=family, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert [r["run_id"] for r in json.loads(done.stdout)] == ["order/1", "order/0"]
    table = cli("runs", "--parent", "order", cwd=family, store="runs.db").stdout
    assert "order/0" in table and "order/1" in table and "\norder " not in table
    none = cli("runs", "--parent", "order/0", cwd=family, store="runs.db")
    assert none.returncode == 0 and "no runs match" in none.stdout
