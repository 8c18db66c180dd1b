"""``python -m crash``: run every scenario, check the invariants, print the table."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from replaygen.store import ACTIVE

from . import check as inv
from . import plans
from .scenarios import Scenario, boundaries, random_round
from .stores import drop, make_spec, open_store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIO_TIMEOUT = float(os.environ.get("CRASH_SCENARIO_TIMEOUT", 120))


@dataclass
class Row:
    boundary: str
    store: str
    kills: int = 0
    restarts: int = 0
    reexecutions: int = 0
    executions: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    detail: str = ""                     # figures of an operation's row (printed with -v)

    @property
    def verdict(self) -> str:
        return "PASS" if not self.problems else "FAIL"


class Runner:
    """One scenario against one store: processes, kills, restarts, checks."""

    def __init__(self, sc: Scenario, store_kind: str, dsn: str | None, broken: str | None,
                 verbose: bool, keep: bool) -> None:
        self.sc, self.broken, self.verbose, self.keep = sc, broken, verbose, keep
        self.dir = tempfile.mkdtemp(prefix=f"crash-{sc.name}-")
        with open(os.path.join(self.dir, "plan.json"), "w") as f:
            json.dump([{"run_id": r, "ops": ops} for r, ops in sc.runs], f)
        self.spec = make_spec(store_kind, self.dir, dsn, sc.name)
        self.store = open_store(self.spec)  # creates the schema before any worker starts
        self.row = Row(sc.boundary, store_kind)
        self.crashed: set[int] = set()
        self.stalled: set[int] = set()
        self.lives = {"worker": 0, "signaler": 0}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.rng = random.Random(sc.seed)
        self.kill_at: float | None = None
        self.reported = False
        self.needs_signals = any(plans.deliveries(r, ops) for r, ops in sc.runs)
        # A schedule's workers read the time shifted so that its tick is due now: by one offset
        # for every process, so their journals and side-effect lines stay comparable.
        self.schedule = sc.schedule and {**sc.schedule, "offset": time.time() - datetime.fromisoformat(
            sc.schedule["at"].replace("Z", "+00:00")).timestamp()}

    # ---- processes ----------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def spawn(self, role: str, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
        life = self.lives.get(role, 0)
        self.lives[role] = life + 1
        sc = self.sc
        args = [sys.executable, "-m", "crash.signaler" if role == "signaler" else "crash.worker",
                "--store", self.spec, "--dir", self.dir]
        if role == "signaler":
            kill = sc.signaler_kills[life] if life < len(sc.signaler_kills) else None
            args += ["--delay", str(sc.signal_delay if life == 0 else 0),
                     "--pace", str(sc.signal_pace), "--seed", str(sc.seed + life)]
        else:
            kill = sc.worker_kills[life] if role == "worker" and life < len(sc.worker_kills) \
                else None
            args += ["--lease", str(sc.lease)] + (["--limit", str(sc.limit)] if sc.limit else [])
            if role == "helper" and self.broken != "no-limit":  # one step at a time: it leaves
                args += ["--concurrency", "1"]                  # the killed worker a slot
            if life > 0 and sc.boot_delay:
                args += ["--boot-delay", str(sc.boot_delay)]
            if life < len(sc.shutdown_after):
                args += ["--shutdown-after", str(sc.shutdown_after[life])]
            if self.broken:
                args += ["--break", self.broken]
            if self.schedule:
                args += ["--schedule", json.dumps(self.schedule)]
        args += extra or []
        if kill and "--kill" not in args:
            args += ["--kill", json.dumps(kill)]
        err = open(os.path.join(self.dir, f"{role}-{life}.err"), "wb")
        p = subprocess.Popen(args, cwd=ROOT, env=self._env(), stdout=err, stderr=err)
        err.close()
        p.role_life, p.role_name = life, role  # type: ignore[attr-defined]
        if role == "worker" and sc.random_kills and self.row.kills < sc.random_kills:
            self.kill_at = time.monotonic() + self.rng.uniform(0.1, 0.8)
        return p

    def stderr_of(self, role: str, life: int) -> str:
        try:
            with open(os.path.join(self.dir, f"{role}-{life}.err"), errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    # ---- checking ---------------------------------------------------------------

    def effects(self) -> list[dict[str, Any]]:
        return inv.read_lines(os.path.join(self.dir, "effects.log"))

    def kills(self) -> list[dict[str, Any]]:
        return inv.read_lines(os.path.join(self.dir, "kills.log"))

    def check(self, final: bool) -> None:
        if not final and any(role.startswith("helper") for role in self.procs):
            return  # a helper is mid-step: no consistent look before the end (which sees all)
        effects = self.effects()
        rep = inv.check(self.store, self.sc.runs, effects, self.crashed, self.stalled, final)
        self.row.reexecutions, self.row.executions = rep.reexecutions, rep.executions
        if self.sc.limit:
            bad, most = inv.check_limit(self.sc.limit, self.sc.runs, effects, self.kills())
            rep.violations += bad
            self.row.detail = (f"at most {most} of {self.sc.limit} runs inside a step at "
                               f"once; a killed run's next step after (s) "
                               f"{inv.slot_back(self.kills(), effects)}")
        self.report(rep.violations, effects, final)

    def report(self, violations: list[inv.Violation], effects: list[dict[str, Any]],
               final: bool) -> None:
        if violations and not self.reported:
            self.reported = True  # report the first state that breaks; later ones repeat it
            kills = self.kills()
            when = "at the end" if final else (
                f"after {self.row.kills} kills and {self.row.restarts} restarts")
            seen: set[tuple[str, str | None, int | None]] = set()
            for v in violations:
                key = (v.invariant, v.run, v.pos)
                if key in seen or len(seen) >= 6:
                    continue
                seen.add(key)
                self.row.problems.append(
                    f"VIOLATION [{v.invariant}] in scenario {self.sc.name} ({self.row.store}), "
                    f"{when}:\n{inv.evidence(self.store, v, effects, kills)}")

    def problem(self, text: str) -> None:
        self.row.problems.append(f"PROBLEM in scenario {self.sc.name} ({self.row.store}): {text}")

    # ---- the loop -----------------------------------------------------------------

    def all_finished(self) -> bool:
        """Every run of the plan exists, and no run in the store (children too) is unfinished."""
        return all((r := self.store.get(run_id)) is not None and r.state in inv.FINISHED
                   for run_id, _ in self.sc.runs) and not self.store.runs(
            states=(*ACTIVE, "blocked"), limit=1)

    def states(self) -> str:
        """The runs of the plan and their children, by state (for a report)."""
        counts = Counter(r.state for r in self.store.runs(limit=100_000))
        top = ", ".join(f"{r}={self.store.get(r).state}" for r, _ in self.sc.runs[:8])
        return f"{top}; all runs: {dict(counts)}"

    def run(self) -> Row:
        t0 = time.monotonic()
        try:
            if self.sc.stall:
                self.run_stall()
            self.loop()
            self.check(final=True)
            expected_kills = len([k for k in self.sc.worker_kills if k]) + len(
                [k for k in self.sc.signaler_kills if k])
            if self.sc.expect_kill and not self.sc.random_kills and not self.sc.stall \
                    and self.row.kills < expected_kills and not self.row.problems:
                self.problem(f"only {self.row.kills} of {expected_kills} kill points were reached "
                             f"(the scenario no longer exercises its boundary)")
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.row.seconds = time.monotonic() - t0
            try:
                self.store.close()
            except Exception:
                pass
            drop(self.spec)
            if not self.keep and not self.row.problems:
                shutil.rmtree(self.dir, ignore_errors=True)
            elif self.row.problems:
                self.row.problems.append(f"  (scenario files kept in {self.dir})")
        return self.row

    def loop(self) -> None:
        sc = self.sc
        if "worker" not in self.procs:
            self.procs["worker"] = self.spawn("worker")
        for i in range(sc.helpers):  # workers that are never killed (they end by themselves)
            self.procs[f"helper{i}"] = self.spawn("helper")
        if self.needs_signals and "signaler" not in self.procs and self.lives["signaler"] == 0:
            self.procs["signaler"] = self.spawn("signaler")
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        max_lives = len(sc.worker_kills) + sc.random_kills + 12
        while self.procs:
            if time.monotonic() > deadline:
                self.problem(f"not finished after {SCENARIO_TIMEOUT:.0f}s (live: "
                             + ", ".join(f"{r} pid {p.pid} state {_proc_state(p.pid)}"
                                         for r, p in self.procs.items()) + "); runs: "
                             + self.states())
                return
            if self.kill_at is not None and time.monotonic() >= self.kill_at:
                self.kill_at = None
                self.random_kill()
            for role, p in list(self.procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del self.procs[role]
                life = p.role_life  # type: ignore[attr-defined]
                if rc == -signal.SIGKILL:
                    self.row.kills += 1
                    self.crashed.add(p.pid)
                elif rc not in (0, 3, 4):
                    self.problem(f"{role} {life} (pid {p.pid}) exited {rc}:\n"
                                 + self.stderr_of(p.role_name, life))  # type: ignore[attr-defined]
                    return
                if rc != 0 and role == "worker":
                    self.check(final=False)
                if role == "signaler" and rc != 0:
                    self.row.restarts += 1
                    self.procs["signaler"] = self.spawn("signaler")
                elif role == "worker" and (rc != 0 or not self.all_finished()):
                    if self.lives["worker"] >= max_lives:
                        self.problem(f"runs still unfinished after {self.lives['worker']} worker "
                                     f"lives: " + self.states())
                        return
                    self.row.restarts += 1
                    self.procs["worker"] = self.spawn("worker")
                elif role == "zombie" and "worker" not in self.procs and not self.all_finished():
                    self.procs["worker"] = self.spawn("worker")
            time.sleep(0.005)

    def random_kill(self) -> None:
        """SIGKILL from outside: mostly the busy worker, sometimes the signal sender."""
        victim = "signaler" if ("signaler" in self.procs and self.rng.random() < 0.15) else "worker"
        p = self.procs.get(victim)
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)

    def run_stall(self) -> None:
        """Worker A reaches the stall point holding its runs and is SIGSTOPped there; its lease
        lapses; worker B takes the runs over and re-executes the step; then A is continued and
        tries to commit what it did. A correct engine refuses A's writes (the fence)."""
        sc = self.sc
        assert sc.stall is not None
        zombie = self.spawn("worker", ["--kill", json.dumps(sc.stall)])
        self.procs["zombie"] = zombie
        if self.needs_signals:
            self.procs["signaler"] = self.spawn("signaler")
        kills_log = os.path.join(self.dir, "kills.log")
        end = time.monotonic() + 30

        def give_up(text: str) -> None:
            self.problem(text)
            open(os.path.join(self.dir, "release"), "w").close()
            os.kill(zombie.pid, signal.SIGCONT)

        while not any(k["pid"] == zombie.pid for k in inv.read_lines(kills_log)):
            if zombie.poll() is not None or time.monotonic() > end:
                return give_up(f"worker A never reached the stall point (rc {zombie.poll()}):\n"
                               + self.stderr_of("worker", 0))
            time.sleep(0.005)
        while True:  # stop it, but not while another of its threads holds the store's lock
            os.kill(zombie.pid, signal.SIGSTOP)
            while _proc_state(zombie.pid) != "T":
                time.sleep(0.001)
            if not _store_locked(self.spec):
                break
            os.kill(zombie.pid, signal.SIGCONT)
            time.sleep(0.003)
            if time.monotonic() > end:
                return give_up("worker A always held the store's lock")
        self.stalled.add(zombie.pid)
        self.crashed.add(zombie.pid)
        self.row.kills += 1  # a SIGSTOP that outlives the lease is a crash to the others
        b = self.procs["worker"] = self.spawn("worker")
        step = sc.stall.get("step")
        while not any(x["pid"] == b.pid and x["step"] == step for x in self.effects()):
            if b.poll() is not None or time.monotonic() > end:
                return give_up(f"worker B never re-executed {step!r} (rc {b.poll()})")
            time.sleep(0.01)
        open(os.path.join(self.dir, "release"), "w").close()
        os.kill(zombie.pid, signal.SIGCONT)  # B is inside the step now: A wakes up and commits


def _store_locked(spec: str) -> bool:
    """Whether a stopped process holds the store's write lock (SQLite; with Postgres a stopped
    client's open transaction is not probed: B would wait on it as on any slow client)."""
    kind, _, path = spec.partition(":")
    if kind != "sqlite":
        return False
    import sqlite3
    try:
        conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return False
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return True


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rfind(")") + 2:].split()[0]
    except OSError:
        return "?"


def table(rows: list[Row]) -> str:
    head = ("boundary", "store", "kills", "restarts", "re-executions/steps run", "verdict")
    body = [(r.boundary, r.store, str(r.kills), str(r.restarts),
             f"{r.reexecutions}/{r.executions}", r.verdict) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *map(line, body), sep])


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m crash",
        description="Kill replaygen workers with SIGKILL at every boundary of a run's life and "
                    "check the crash-safety invariants after every restart.")
    ap.add_argument("--quick", action="store_true",
                    help="every boundary once plus a few dozen random kills (CI)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), action="append",
                    help="store(s) to test (default sqlite; repeat for both)")
    ap.add_argument("--dsn", help="Postgres DSN for --store postgres")
    ap.add_argument("--random-kills", type=int, help="random kills in total (default 200; quick 30)")
    ap.add_argument("--kills-per-boundary", type=int, help="default 3; quick 1")
    ap.add_argument("--only", help="comma-separated scenario names (before_step, in_step, "
                                   "after_return, after_commit, sleeping, waiting, signal, recover, "
                                   "shutdown, fanout, stall, schedule, child_start, child_step, "
                                   "parent_parked, child_end, deadline, strike_sleep, purge, "
                                   "fork, limit, random)")
    ap.add_argument("--break", dest="broken", choices=("early-commit", "no-fence", "no-limit",
                                                       "split-purge", "fork-from-start"),
                    help="deliberately break the engine inside the workers (the harness must fail)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep every scenario's temp dir")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    k = args.kills_per_boundary or (1 if args.quick else 3)
    n_random = args.random_kills if args.random_kills is not None else (30 if args.quick else 200)
    only = set(args.only.split(",")) if args.only else None
    scenarios = [s for s in boundaries(k) if (s.default and only is None) or (only and s.name in only)]
    do_random = (only is None or "random" in only) and n_random > 0
    per_round = 15 if args.quick else 25
    stores = args.store or ["sqlite"]
    t0 = time.monotonic()
    rows: list[Row] = []

    def run(sc: Scenario, store: str) -> Row:
        from .operations import ForkRunner, PurgeRunner
        kind = {"purge": PurgeRunner, "fork": ForkRunner}.get(sc.operation or "", Runner)
        row = kind(sc, store, args.dsn, args.broken, args.verbose, args.keep).run()
        if args.verbose:
            print(f"  {sc.name:<14} {store:<8} kills {row.kills:>3} restarts {row.restarts:>3}"
                  f" re-executions {row.reexecutions:>3} {row.seconds:5.1f}s {row.verdict}"
                  + (f"  ({row.detail})" if row.detail else ""), flush=True)
        for p in row.problems:
            print(p, flush=True)
        return row

    for store in stores:
        rows += [run(sc, store) for sc in scenarios]
        if not do_random:
            continue
        total = Row("random kills of a busy worker", store)
        rows.append(total)
        i = 0
        # Rounds (a fresh store each) until the kills add up: a round ends when its runs do.
        while total.kills < n_random and not total.problems and i < 4 * n_random:
            budget = min(per_round, n_random - total.kills)
            row = run(random_round(i, budget, args.seed), store)
            for attr in ("kills", "restarts", "reexecutions", "executions", "seconds"):
                setattr(total, attr, getattr(total, attr) + getattr(row, attr))
            total.problems += row.problems
            i += 1
    print()
    print(table(rows))
    total_kills = sum(r.kills for r in rows)
    failed = [r for r in rows if r.problems]
    print(f"{len(rows)} rows, {total_kills} kills, {sum(r.restarts for r in rows)} restarts, "
          f"{sum(r.reexecutions for r in rows)} re-executions, "
          f"{time.monotonic() - t0:.1f}s" + (f", broken engine: {args.broken}" if args.broken
                                             else ""))
    if failed:
        print(f"FAILED: {len(failed)} of {len(rows)} rows broke an invariant (details above)")
        return 1
    print("all invariants held")
    return 0
