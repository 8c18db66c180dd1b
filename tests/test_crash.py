"""The crash harness: it passes on the real engine and fails on deliberately broken ones.

The harness itself lives in crash/ (``python -m crash``); these tests run it as a
subprocess, as CI does, so every kill is a real SIGKILL of a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUNDARIES = [
    "before a step starts", "inside a step", "step returned, entry not committed",
    "right after the commit", "while sleeping", "while waiting", "during signal delivery",
    "during recover()", "during graceful shutdown", "inside a fan-out", "lease lost",
    "a child just created", "inside a child", "parent waiting for its children",
    "a child ended, its parent not yet resumed", "a deadline passes while no worker runs",
    "mid-purge", "mid-fork", "holding a limit slot", "random kills",
]


def crash(*args: str, timeout: float = 170) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "crash", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.rstrip().endswith(("PASS", "FAIL"))]


@pytest.mark.slow
def test_quick_mode_passes_every_boundary() -> None:
    p = crash("--quick")
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    rows = table_rows(p.stdout)
    for boundary in BOUNDARIES:
        row = [r for r in rows if boundary in r]
        assert row and row[0].rstrip().endswith("PASS"), (boundary, p.stdout[-4000:])
    kills = int(next(r for r in rows if "random kills" in r).split()[-4])
    assert kills >= 30
    assert "all invariants held" in p.stdout


@pytest.mark.slow
def test_early_commit_engine_is_caught() -> None:
    # Journal each step's entry before calling the step: the step then runs after its commit.
    p = crash("--only", "in_step", "--break", "early-commit")
    assert p.returncode == 1, p.stdout[-4000:]
    assert "VIOLATION [a committed step is never executed again]" in p.stdout
    assert "journal of" in p.stdout and "FAIL" in p.stdout


@pytest.mark.slow
def test_unfenced_store_is_caught() -> None:
    # Commits ignore owner and fence: a worker that lost its lease while stopped still appends.
    p = crash("--only", "stall", "--break", "no-fence")
    assert p.returncode == 1, p.stdout[-4000:]
    assert "VIOLATION [one owner at a time: a worker that lost the run never commits]" in p.stdout
    assert "journal of" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("scenario, broken, invariant", [
    ("purge", "split-purge", "a purge leaves each run wholly present or wholly gone"),
    ("fork", "fork-from-start", "a fork never runs its prefix's steps again"),
    ("limit", "no-limit", "never more than N runs of a limited workflow inside a step"),
])
def test_a_broken_operation_is_caught(scenario: str, broken: str, invariant: str) -> None:
    # A purge whose journal deletes commit apart from its tombstones, a fork that runs its
    # prefix again, workers that ignore the limit: each row then fails, naming its invariant.
    p = crash("--only", scenario, "--kills-per-boundary", "1", "--break", broken, timeout=120)
    assert p.returncode == 1, p.stdout[-4000:]
    assert f"VIOLATION [{invariant}" in p.stdout and "FAIL" in p.stdout


def test_expected_results_match_an_uncrashed_run() -> None:
    """The harness's notion of "the result an uncrashed run gives" agrees with the engine."""
    sys.path.insert(0, ROOT)
    from crash import plans
    from crash.scenarios import BASE_OPS
    from replaygen import Interpreter, MemoryStore

    with Interpreter(MemoryStore(), {plans.WORKFLOW: plans.plan}) as interp:
        run_id = interp.start(plans.WORKFLOW, "uncrashed", BASE_OPS, run_id="uncrashed")
        for rid, name, payload in plans.deliveries("uncrashed", BASE_OPS):
            interp.deliver(rid, name, payload)
        assert interp.result(run_id, timeout=20) == plans.expected("uncrashed", BASE_OPS)


def test_checker_flags_an_execution_after_commit() -> None:
    sys.path.insert(0, ROOT)
    from crash import check, plans
    from replaygen.store import Entry

    class Fake:
        def journal(self, run_id: str) -> list[Any]:
            return [Entry(0, 0, "do", "a", "ok", str(plans.value("a", "r"))[:6], 10.0, 11.0)]

        def get(self, run_id: str) -> Any:
            return None

        def signals(self, run_id: str) -> list[Any]:
            return []

        def runs(self, **where: Any) -> list[Any]:
            return []  # no children

    effects = [{"run": "r", "step": "a", "pos": 0, "attempt": 1, "pid": 1, "t": 10.5},
               {"run": "r", "step": "a", "pos": 0, "attempt": 1, "pid": 2, "t": 12.0}]
    rep = check.check(Fake(), [("r", [["do", "a", 0]])], effects, crashed={1}, stalled=set(),
                      final=False)
    assert [v.invariant for v in rep.violations] == [check.COMMITTED]
    rep = check.check(Fake(), [("r", [["do", "a", 0]])], effects[:1], crashed=set(),
                      stalled=set(), final=False)
    assert rep.violations == []
    # An earlier, uncommitted execution is fine only if its process was killed.
    earlier = [{"run": "r", "step": "a", "pos": 0, "attempt": 1, "pid": 3, "t": 9.0}] + effects[:1]
    rep = check.check(Fake(), [("r", [["do", "a", 0]])], earlier, crashed={3}, stalled=set(),
                      final=False)
    assert rep.violations == [] and rep.reexecutions == 1
    rep = check.check(Fake(), [("r", [["do", "a", 0]])], earlier, crashed=set(), stalled=set(),
                      final=False)
    assert [v.invariant for v in rep.violations] == [check.REEXEC]
