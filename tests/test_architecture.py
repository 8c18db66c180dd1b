"""The shape of the house (issue 13): the replay rules stay pure, the runtime stays ignorant."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "replaygen"


def _imports(module: str) -> set[str]:
    tree = ast.parse((ENGINE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_replay_rules_import_no_threads_no_event_loop_and_no_store() -> None:
    for module in ("replay", "journal"):
        imported = _imports(module)
        assert not imported & {"threading", "asyncio", "queue", "concurrent.futures", "socket",
                               "sqlite3", "psycopg", ".store", ".runtime", ".interpreter",
                               "replaygen.store", "replaygen.stores"}, (module, imported)


def test_the_runtime_does_not_know_the_commands() -> None:
    tree = ast.parse((ENGINE / "runtime.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"Sleep", "Wait", "Version", "All"}, names & {"Sleep", "Wait", "Version", "All"}


def test_a_command_is_one_entry_in_the_rules_tables() -> None:
    from replaygen import All, Do, Sleep, Version, Wait
    from replaygen.replay import HANDLERS, MEMBERS

    assert set(HANDLERS) == {Do, Sleep, Wait, Version, All}
    assert set(MEMBERS) == {Do, Sleep, Wait}


def test_a_save_is_a_store_write_without_its_run_owner_and_fence() -> None:
    # The runtime builds each Write as Write(run_id, owner, fence, *save): the fields must match.
    from replaygen.replay import Save
    from replaygen.store import Write

    assert Write._fields[3:3 + len(Save._fields)] == Save._fields
    assert set(Write._fields) - set(Save._fields) == {"run_id", "owner", "fence", "create"}
