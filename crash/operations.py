"""The operations' boundaries: a purge and a fork whose process is SIGKILLed in the middle.

A setup process (``crash.ops setup``) first builds the store with the real engine; the harness
snapshots it, then runs the operation's process (``crash.ops purge`` / ``crash.ops fork``) life
after life, each killed at its kill point, the last one left to finish; the invariants of
``crash.check`` (``check_purge``, ``check_restarts``, ``check_fork``) are checked after every
kill and at the end. The limits boundary needs no runner of its own: it is a plain scenario
with ``limit`` and ``helpers`` (see ``crash.main.Runner``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from . import check as inv
from . import plans
from .main import SCENARIO_TIMEOUT, Runner

WAITS = [["do", "a", 0], ["wait", "go"], ["wait", "go"]]  # parks at its second Wait
DONE = [["do", "a", 0], ["wait", "go"], ["do", "z", 0]]
GATED = [["do", "a", 5], ["wait", "go"], ["do", "b", 5], ["gate", "c", 5], ["do", "z", 5]]
PLAIN = [["do", "a", 5], ["all", [["f0", 5, True], ["f1", 5, False]]], ["sleep", 0.05],
         ["do", "b", 5], ["do", "c", 5], ["do", "z", 5]]


def _signals(run_id: str) -> list[list[str]]:
    """One "x" it never waits for (left queued with the run: sent first, while it cannot have
    finished), and one "go" it consumes."""
    return [[run_id, "x", f"{run_id}|x"], [run_id, "go", plans.payload(run_id, "go", 0)]]


def purge_phases(size: int) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Old runs (``size`` completed, a tenth cancelled: eligible; waiting, sleeping and
    never-claimed ones: not), then young completed ones; and every run's plan by id."""
    done = [(f"pg-{i}", DONE) for i in range(size)]
    cancelled = [(f"pc-{i}", WAITS) for i in range(max(2, size // 10))]
    waiting = [(f"pw-{i}", WAITS) for i in range(4)]
    sleeping = [(f"ps-{i}", [["do", "a", 0], ["sleep", 3600]]) for i in range(3)]
    young = [(f"py-{i}", DONE) for i in range(max(2, size // 10))]
    old = done + cancelled + waiting + sleeping
    phases = [{"runs": old, "idle": ["pi-0", "pi-1"],
               "deliver": [s for r, _ in done + cancelled + waiting for s in _signals(r)],
               "park": [r for r, _ in waiting + sleeping], "cancel": [r for r, _ in cancelled]},
              {"runs": young, "deliver": [s for r, _ in young for s in _signals(r)]}]
    return phases, dict(old + young)


class OpRunner(Runner):
    """Setup, snapshot, then the operation's lives: each is killed at its kill point (the
    scenario's ``worker_kills``), the last (None) finishes."""

    mode = ""

    def op_args(self, life: int) -> list[str]:
        return []

    def spawn_op(self, mode: str, kill: dict[str, Any] | None,
                 extra: list[str]) -> subprocess.Popen[bytes]:
        life = self.lives.get(mode, 0)
        self.lives[mode] = life + 1
        args = [sys.executable, "-m", "crash.ops", mode, "--store", self.spec, "--dir", self.dir,
                *extra] + (["--kill", json.dumps(kill)] if kill else []) + (
            ["--break", self.broken] if self.broken and mode != "setup" else [])
        with open(os.path.join(self.dir, f"{mode}-{life}.err"), "wb") as err:
            p = subprocess.Popen(args, cwd=os.path.dirname(os.path.dirname(__file__)),
                                 env=self._env(), stdout=err, stderr=err)
        p.role_life, p.role_name = life, mode  # type: ignore[attr-defined]
        return p

    def finish(self, p: subprocess.Popen[bytes]) -> int | None:
        """Wait for a process; None (and a problem) if it outlives the scenario's time."""
        role: str = p.role_name  # type: ignore[attr-defined]
        self.procs[role] = p  # killed by run() if we give up
        try:
            return p.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.problem(f"{role} (pid {p.pid}) not done after {SCENARIO_TIMEOUT:.0f}s")
            return None
        finally:
            self.procs.pop(role, None)

    def prepare(self) -> bool:
        """Write the setup, run it, snapshot the store; False if it failed."""
        raise NotImplementedError

    def loop(self) -> None:
        self.deadline = time.monotonic() + SCENARIO_TIMEOUT
        if not self.prepare():
            return
        kills = self.sc.worker_kills
        for life in range(len(kills) + 1):
            kill = kills[life] if life < len(kills) else None
            p = self.spawn_op(self.mode, kill, self.op_args(life))
            rc = self.finish(p)
            if rc == -signal.SIGKILL:
                self.row.kills += 1
                self.crashed.add(p.pid)
                self.row.restarts += 1
                self.check(final=False)
            elif rc != 0:
                if rc is not None:
                    self.problem(f"{self.mode} {life} (pid {p.pid}) exited {rc}:\n"
                                 + self.stderr_of(self.mode, life))
                return
            else:
                return  # it finished: the end

    def setup(self, conf: dict[str, Any]) -> bool:
        with open(os.path.join(self.dir, "setup.json"), "w") as f:
            json.dump(conf, f)
        p = self.spawn_op("setup", None, [])
        rc = self.finish(p)
        if rc != 0:
            if rc is not None:
                self.problem(f"setup exited {rc}:\n" + self.stderr_of("setup", 0))
            return False
        return True


class PurgeRunner(OpRunner):
    """Finished runs (with journals and queued signals) among unfinished and young ones,
    purged in batches by a process killed before, inside and after a batch's transaction."""

    mode = "purge"
    BATCH = 8

    def prepare(self) -> bool:
        phases, self.plans = purge_phases(self.sc.size)
        if not self.setup({"phases": phases, "gap": 0.3}):
            return False
        with open(os.path.join(self.dir, "marks.json")) as f:
            self.before = json.load(f)[0]
        self.snap = inv.snapshot(self.store, sorted(self.plans) + ["pi-0", "pi-1"])
        self.eligible = {r for r, _ in phases[0]["runs"]
                         if self.snap[r][0].state in inv.FINISHED}
        want = len(phases[0]["runs"]) - len(phases[0]["park"])
        if len(self.eligible) != want:
            self.problem(f"setup left {len(self.eligible)} finished old runs, not {want}")
            return False
        restart = [sorted(r for r in self.eligible if r.startswith(kind))[0]
                   for kind in ("pg-", "pc-")]  # a completed one, a cancelled one
        with open(os.path.join(self.dir, "restart.json"), "w") as f:
            json.dump([[r, self.plans[r]] for r in restart], f)
        return True

    def op_args(self, life: int) -> list[str]:
        return ["--batch", str(self.BATCH), "--before", repr(self.before), "--restart"]

    def check(self, final: bool) -> None:
        if not hasattr(self, "snap"):
            return
        effects = self.effects()
        bad = inv.check_purge(self.store, self.snap, self.eligible, final)
        purged = {r for r in self.eligible if getattr(self.store.get(r), "state", "") == "purged"}
        self.gone = getattr(self, "gone", []) + [len(purged)]
        if final:
            started = inv.read_lines(os.path.join(self.dir, "restarted.log"))
            bad += inv.check_restarts(self.store, started, effects, purged)
            if len(started) < 2:
                bad.append(inv.Violation(inv.PURGED_START, None, None, None,
                                         "no purged id was started again"))
        self.row.executions = len(effects)
        self.row.detail = (f"{len(self.eligible)} eligible of {len(self.snap)} runs, tombstones "
                           f"after each kill and at the end {self.gone}")
        self.report(bad, effects, final)


class ForkRunner(OpRunner):
    """Failed and completed sources, each forked twice (from a step name and a position) by a
    process that also works the forks, killed around a fork's commit."""

    mode = "fork"

    def prepare(self) -> bool:
        sources = [(f"fk-{i}", GATED if i % 2 == 0 else PLAIN) for i in range(max(2, self.sc.size // 2))]
        points: dict[str, list[str | int]] = {"fk": ["c", "b"], "fp": ["c", 3]}
        self.forks = [(f"{src}~{at}", src, at, ops) for src, ops in sources
                      for at in points["fk" if ops is GATED else "fp"]]
        deliver = [[r, "go", plans.payload(r, "go", 0)] for r, ops in sources if ops is GATED]
        if not self.setup({"phases": [{"runs": sources, "deliver": deliver}], "gap": 0}):
            return False
        self.snap = inv.snapshot(self.store, [r for r, _ in sources])
        states = sorted({rec.state for rec, _, _ in self.snap.values()})
        if states != ["completed", "failed"]:
            self.problem(f"the sources ended {states}, not completed and failed")
            return False
        open(os.path.join(self.dir, plans.GATE), "w").close()  # the outage is over
        with open(os.path.join(self.dir, "forks.json"), "w") as f:
            json.dump(self.forks, f)
        return True

    def op_args(self, life: int) -> list[str]:
        return ["--lease", str(self.sc.lease)]

    def check(self, final: bool) -> None:
        if not hasattr(self, "snap"):
            return
        effects = self.effects()
        bad: list[inv.Violation] = []
        self.row.reexecutions = self.row.executions = 0
        for fork in self.forks:
            rep = inv.check_fork(self.store, fork, self.snap, effects, self.crashed, final)
            bad += rep.violations
            self.row.reexecutions += rep.reexecutions
            self.row.executions += rep.executions
        made = sum(self.store.get(f[0]) is not None for f in self.forks)
        self.made = getattr(self, "made", []) + [made]
        self.row.detail = f"forks present after each kill and at the end {self.made}"
        self.report(bad, effects, final)
