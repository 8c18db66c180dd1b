"""``replaygen lint``: calls in workflow bodies that differ between runs.

The modules in ``tests/lint_cases`` end each line that must be reported with
``# expect: RG###`` (once per finding on the line); every other line must stay
quiet, so each case checks both what is found, on which line, and what is not.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from replaygen import Do, lint
from replaygen.cli import main
from replaygen.lint import Finding, LintError, find_workflows, lint_module, lint_workflows

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "lint_cases"
EXPECT = re.compile(r"#\s*expect:((?:\s*RG\d{3})+)\s*$")
EXAMPLES = ["examples.checkout", "examples.approval", "examples.children", "examples.fanout",
            "examples.saga", "examples.versioned", "examples.otel"]


def expected(case: str) -> Counter[tuple[int, str]]:
    marks: Counter[tuple[int, str]] = Counter()
    for n, line in enumerate((CASES / f"{case}.py").read_text().splitlines(), 1):
        if m := EXPECT.search(line):
            marks.update((n, code) for code in m.group(1).split())
    return marks


def reported(findings: list[Finding]) -> Counter[tuple[int, str]]:
    return Counter((f.line, f.code) for f in findings)


def on_line(findings: list[Finding], text: str, case: str) -> list[Finding]:
    """The findings on the one line of ``case`` that contains ``text``."""
    lines = [n for n, line in enumerate((CASES / f"{case}.py").read_text().splitlines(), 1)
             if text in line]
    assert len(lines) == 1, (text, lines)
    return [f for f in findings if f.line == lines[0]]


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str], str]]:
    """Write a module into tmp_path and make it importable; forgotten again afterwards."""
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


# ---- what is found -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["clock", "chance", "effects", "sets", "steps", "helpers",
                                  "registered", "bare"])
def test_every_marked_line_is_reported_and_no_other(case: str) -> None:
    findings = lint_module(f"tests.lint_cases.{case}")
    assert reported(findings) == expected(case)
    assert {f.path for f in findings} == {str(CASES / f"{case}.py")}


def test_clock_reads_are_found_under_every_import_style() -> None:
    findings = lint_module("tests.lint_cases.clock")
    for call in ["datetime.now()", "datetime.utcnow()", "datetime.today()", "d = date.today()",
                 "dt.datetime.now(", "dt.date.today()", "= now()", "time.strftime(\"%H\")"]:
        assert [f.code for f in on_line(findings, call, "clock")] == ["RG101"], call
    assert [f.code for f in on_line(findings, "time.sleep(1)", "clock")] == ["RG102"]
    assert "Sleep(" in on_line(findings, "time.sleep(1)", "clock")[0].fix
    assert on_line(findings, 'time.strftime("%H", time.gmtime(0))', "clock") == []


def test_aliases_name_what_they_stand_for() -> None:
    clock = lint_module("tests.lint_cases.clock")
    chance = lint_module("tests.lint_cases.chance")
    assert "`now()` (time.time)" in on_line(clock, "g = now()", "clock")[0].message
    tick = [f for f in on_line(clock, "tick()", "clock") if "tick" in f.message]
    assert tick[0].col == 26 and "(time.monotonic)" in tick[0].message
    assert "(random.randint)" in on_line(chance, "roll(1, 6)", "chance")[0].message
    # A module-level Random carries its state from run to run: found through the instance.
    assert "(random.Random.choice)" in on_line(chance, "rng.choice", "chance")[0].message


def test_uuid_from_data_is_fine_but_new_ones_are_not() -> None:
    findings = lint_module("tests.lint_cases.chance")
    assert [f.code for f in on_line(findings, "uuid.uuid4()", "chance")] == ["RG104"]
    assert on_line(findings, "uuid.uuid5(", "chance") == []


def test_environment_is_found_by_subscript_get_and_getenv() -> None:
    findings = lint_module("tests.lint_cases.effects")
    for read in ['os.environ["HOME"]', 'os.environ.get("DEBUG")', 'os.getenv("REGION")',
                 'environ.get("USER")']:
        assert [f.code for f in on_line(findings, read, "effects")] == ["RG105"], read


def test_a_set_iterated_in_the_body_is_found_and_a_sorted_one_is_not() -> None:
    findings = lint_module("tests.lint_cases.sets")
    loop = on_line(findings, "for who in unique:  # expect", "sets")
    assert [f.code for f in loop] == ["RG109"] and "sorted" in loop[0].fix
    assert on_line(findings, "for who in sorted(unique)", "sets") == []
    assert on_line(findings, "for who in ordered", "sets") == []


# ---- what is not -------------------------------------------------------------------------

def test_steps_given_to_do_are_not_linted() -> None:
    findings = lint_module("tests.lint_cases.steps")
    for step in ['Do("now", time.time)', 'Do("env"', 'Do("pick"', 'Do("id"', 'rg.Do("draw"',
                 'return {"at": time.time()', 'make_id = lambda', 'Do("partial"', 'return f"{prefix}',
                 'Do(name="keyword"', "rg.All("]:
        assert on_line(findings, step, "steps") == [], step
    # An argument of Do is evaluated in the body; the step (time.sleep) is not.
    [at] = on_line(findings, 'Do("at"', "steps")
    assert at.code == "RG101" and "`time.time()`" in at.message


def test_a_lambda_not_given_to_do_runs_in_the_body_and_is_linted() -> None:
    findings = lint_module("tests.lint_cases.steps")
    assert [f.code for f in on_line(findings, "key=lambda", "steps")] == ["RG103"]


def test_the_silencing_comment_silences_its_line(module: Callable[[str, str], str]) -> None:
    body = ("import time\nfrom replaygen import Do\n\n"
            "def flow():\n    started = time.time(){}\n    yield Do('s', print, started)\n")
    loud = module("lint_loud", body.format(""))
    quiet = module("lint_quiet", body.format("  # replaygen: deterministic (read once, logged)"))
    assert [(f.line, f.code) for f in lint_module(loud)] == [(5, "RG101")]
    assert lint_module(quiet) == []


def test_the_silencing_text_inside_a_string_does_not_silence() -> None:
    findings = lint_module("tests.lint_cases.steps")
    assert [f.code for f in on_line(findings, '"# replaygen: deterministic"', "steps")] == ["RG101"]


# ---- helpers and picking the workflows ---------------------------------------------------

def test_helpers_the_body_calls_are_linted_and_named() -> None:
    findings = lint_module("tests.lint_cases.helpers")
    approve = on_line(findings, 'Do("stamp"', "helpers")
    assert "(in `approve`, called by workflow `flow`)" in approve[0].message
    assert "in `new_key`" in on_line(findings, "return uuid.uuid4().hex", "helpers")[0].message
    assert on_line(findings, "return time.time()  # never called", "helpers") == []


def test_the_workflows_attribute_wins_as_list_dict_or_one_function() -> None:
    assert find_workflows("tests.lint_cases.clock").rule == "from its `workflows`"
    assert [n for n, _ in find_workflows("tests.lint_cases.chance").workflows] == ["chance"]
    effects = find_workflows("tests.lint_cases.effects")  # `workflows = effects`
    assert [n for n, _ in effects.workflows] == ["effects"]
    versioned = find_workflows("examples.versioned:workflows")
    assert [n for n, _ in versioned.workflows] == ["fulfil"]


def test_without_workflows_the_functions_marked_by_workflow_are_picked() -> None:
    selection = find_workflows("tests.lint_cases.registered")
    assert selection.rule == "registered with @workflow"
    assert [n for n, _ in selection.workflows] == ["lint_cases.marked"]


def test_without_either_generators_that_make_commands_are_picked() -> None:
    selection = find_workflows("tests.lint_cases.bare")
    assert selection.rule.startswith("no `workflows` or @workflow here")
    # Not `numbers` (no command), `plain` (no generator) nor the imported `clock`.
    assert [n for n, _ in selection.workflows] == ["first", "second"]


def test_a_named_attribute_must_exist() -> None:
    with pytest.raises(LintError, match="has no attribute 'flows'"):
        find_workflows("tests.lint_cases.clock:flows")


def test_a_worker_factory_is_refused_rather_than_called() -> None:
    with pytest.raises(LintError, match="not a list or dict of workflows"):
        find_workflows("examples.otel:make_interpreter")


def test_a_module_that_fails_to_import_is_a_lint_error(module: Callable[[str, str], str]) -> None:
    with pytest.raises(LintError, match="cannot import 'no_such_module_here'.*PYTHONPATH"):
        find_workflows("no_such_module_here")
    broken = module("lint_broken", "raise RuntimeError('no config')\n")
    with pytest.raises(LintError, match="RuntimeError: no config"):
        find_workflows(broken)


def test_a_module_without_workflows_is_a_lint_error(module: Callable[[str, str], str]) -> None:
    empty = module("lint_empty", "def helper():\n    return 1\n")
    with pytest.raises(LintError, match="no workflows in 'lint_empty'"):
        find_workflows(empty)


def test_a_workflow_without_source_is_reported_not_skipped() -> None:
    scope: dict[str, object] = {"Do": Do}
    exec(compile("def ghost():\n    yield Do('x', print)\n", "<generated>", "exec"), scope)
    [finding] = lint_workflows([scope["ghost"]])  # type: ignore[list-item]
    assert finding.code == "RG001" and "ghost" in finding.message


def test_the_examples_are_clean() -> None:
    for spec in EXAMPLES:
        assert lint_module(spec) == [], spec


def test_a_finding_reads_path_line_col_code_message_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    finding = on_line(lint_module("tests.lint_cases.clock"), "time.sleep(1)", "clock")[0]
    assert str(finding) == (
        f"tests/lint_cases/clock.py:{finding.line}:5: RG102 `time.sleep()` blocks the engine's "
        f"driver thread (every run waits), and the wait is not durable (fix: `yield "
        f"Sleep(seconds)`: a durable timer that holds no thread)")


# ---- the command -------------------------------------------------------------------------

def test_cli_lint_exits_1_and_prints_one_line_per_finding(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["lint", "tests.lint_cases.helpers", "tests.lint_cases.registered"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "tests.lint_cases.helpers: flow (from its `workflows`)"
    assert lines[1] == "tests.lint_cases.registered: lint_cases.marked (registered with @workflow)"
    assert [re.match(r"tests/lint_cases/\w+\.py:\d+:\d+: RG\d{3} .* \(fix: .*\)$", line) is not None
            for line in lines[2:-1]] == [True] * 3
    assert lines[-1] == "replaygen lint: 3 findings in 2 workflows from 2 modules"


def test_cli_lint_exits_0_on_the_examples_and_needs_no_store(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLAYGEN_STORE", "postgresql://nowhere.invalid/none")
    assert main(["lint", *EXAMPLES]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "replaygen lint: no findings in 9 workflows from 7 modules")


def test_cli_lint_exits_2_with_one_line_when_a_module_cannot_be_imported(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "examples.checkout", "no_such_module_here"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("replaygen: error: cannot import 'no_such_module_here'")


def test_cli_lint_without_a_module_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["lint"])
    assert exit_.value.code == 2


def test_cli_lint_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--json", "tests.lint_cases.bare"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["modules"][0]["workflows"] == ["first", "second"]
    assert [(f["code"], f["workflow"]) for f in data["findings"]] == [
        ("RG101", "first"), ("RG103", "second")]
    assert set(data["findings"][0]) == {"path", "line", "col", "code", "message", "fix", "workflow"}


def test_the_installed_command_runs_lint() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "replaygen", "lint", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    clean, dirty, missing = run(*EXAMPLES), run("tests.lint_cases.clock"), run("nowhere_module")
    assert (clean.returncode, dirty.returncode, missing.returncode) == (0, 1, 2), clean.stderr
    assert "tests/lint_cases/clock.py:26:5: RG102" in dirty.stdout
    assert len(missing.stderr.splitlines()) == 1 and "Traceback" not in missing.stderr


def test_main_writes_to_the_streams_it_is_given(tmp_path: Path) -> None:
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        assert lint.main(["nowhere_module"], out=out, err=err) == 2
    assert (tmp_path / "err").read_text().startswith("replaygen: error: cannot import")


def test_every_command_makes_a_generator_a_workflow_for_lint(
        module: Callable[[str, str], str]) -> None:
    name = module("composed", """
import time
from replaygen import Any, Child, Deadline, Wait

def racer():
    yield Any(Wait("a"), Wait("b"))

def parent():
    yield Deadline(10)
    started = time.time()
    yield Child("racer")
""")
    selection = find_workflows(name)
    assert sorted(n for n, _ in selection.workflows) == ["parent", "racer"]
    assert [f.code for f in lint_module(name)] == ["RG101"]  # time.time() in parent's body
