"""The shape of the house: the replay rules stay pure, the runtime knows no command and no
rule, and a command is one entry in one table."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import replaygen
from replaygen.commands import Command

ENGINE = Path(__file__).resolve().parent.parent / "replaygen"


def _tree(module: str) -> ast.Module:
    return ast.parse((ENGINE / f"{module}.py").read_text())


def _imports(module: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def _names(module: str) -> set[str]:
    """Every name the module's code uses, and every attribute it reads or writes."""
    tree = _tree(module)
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | {
        a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
        for a in n.names}


def _commands() -> set[type]:
    return {obj for obj in vars(replaygen).values()
            if inspect.isclass(obj) and issubclass(obj, Command) and obj is not Command}


def test_the_replay_rules_import_no_threads_no_event_loop_and_no_store() -> None:
    for module in ("replay", "journal", "effects"):
        imported = _imports(module)
        assert not imported & {"threading", "asyncio", "queue", "concurrent.futures", "socket",
                               "sqlite3", "psycopg", ".store", ".runtime", ".interpreter",
                               "replaygen.store", "replaygen.stores"}, (module, imported)


def test_the_runtime_imports_no_command_and_reads_no_part_of_a_life() -> None:
    assert not _imports("runtime") & {".commands", ".replay"}  # the effects are its protocol
    used = _names("runtime")
    ours = {a.name for n in ast.walk(_tree("runtime")) if isinstance(n, ast.ImportFrom)
            and n.level for a in n.names}  # (typing.Any is not the command)
    assert not ours & {c.__name__ for c in _commands()}, ours & {c.__name__ for c in _commands()}
    # It holds a run's life as the generator of effects it is, never as a Life: nothing of the
    # rules' state (members, cancel flags, what was written) can be read or written there.
    assert "Life" not in used and "life" not in {
        n.attr for n in ast.walk(_tree("runtime")) if isinstance(n, ast.Attribute)}


def test_an_actor_holds_no_life(interp: Any, store: Any) -> None:
    from replaygen import Wait
    from replaygen.replay import Life

    def wf() -> Any:
        yield Wait("never")

    i = interp([wf])
    run = i.start(wf)
    actor = i._runtime.actors[run]  # noqa: SLF001 - the test looks inside on purpose
    assert not any(isinstance(getattr(actor, name), Life) for name in actor.__slots__)
    assert inspect.isgenerator(actor.gen)


def test_every_command_is_one_rule_and_every_rule_handler_is_a_method_of_life() -> None:
    from replaygen.replay import RULES, Life

    assert set(RULES) == _commands()
    for command, rule in RULES.items():
        assert getattr(Life, rule.answer.__name__) is rule.answer, command
        assert (rule.resolve is not None) == command.groupable, command
        if rule.resolve is not None:
            assert getattr(Life, rule.resolve.__name__) is rule.resolve, command
        assert rule.kit in ("step", "child", "signal", "sleep", "version", "deadline", "all",
                            "any"), command
        assert rule.lint in ("step", "command"), command


def test_no_module_reaches_into_another_objects_private_members() -> None:
    reach = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") \
                    and node.attr not in ("_asdict", "_replace", "_fields", "_make") \
                    and isinstance(node.value, ast.Name) and node.value.id not in ("self", "cls"):
                reach.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not reach, reach


def test_a_save_is_a_store_write_without_its_run_owner_and_fence() -> None:
    # The runtime builds each Write as Write(run_id, owner, fence, *save): the fields must match.
    from replaygen.effects import Save
    from replaygen.store import Write

    assert Write._fields[3:3 + len(Save._fields)] == Save._fields
    assert set(Write._fields) - set(Save._fields) == {"run_id", "owner", "fence", "create"}
