"""replaygen benchmark suite, side by side with DBOS Transact and the bare-commit floor.

    python -m tests.bench [--reps 5] [--quick] [--only engine,W1,W2,W2t,W3,W4,W4big,W5,sweep]
                          [--stores sqlite-full,sqlite-normal,postgres] [--no-dbos] [--profile]
    python -m tests.bench purge [--store sqlite,postgres] [--runs 100000] [--pairs 5]  (purge.py)

Workloads (every step a no-op returning a ~100-byte dict; each measurement in fresh
processes on a fresh store; see /work/shared/BENCH.md):

  W1     one run of 1000 sequential steps: steps/s
  engine W1 and W2 on the in-memory store (a commit that costs nothing): the engine's own CPU
         time per step
  W2     200 runs x 10 steps started at once, first start to last result: steps/s
  W2t    W2 with each start from one of 200 request threads (made beforehand, released at once)
  W3     a run journals 1000 steps and is SIGKILLed inside step 1001; a new process resumes
         it: replayed steps/s (engine start to live step 1001), engine start to body
  W4     200 runs x 10 steps SIGKILLed after 5 steps; a new process recovers all: seconds
  W4big  the same with 10,000 runs (replaygen only)
  W5     10,000 parked runs (half Wait, half a one-hour Sleep): worker RSS and threads,
         deliver() to next step latency (replaygen only)
  sweep  steps/s against the number of concurrent runs (1, 10, 50; 200 is W2) for the chart
  children  a parent awaiting 1,000 child runs (one step each) beside a flat All of 1,000
         steps, and a tree of child runs 4 levels deep (6 a level: 1,555 runs): seconds

Every repetition also times, on the same disk (or server), a bare INSERT+COMMIT loop, the
owner-fenced UPDATE+INSERT per commit, 100 rows per commit and a JSON decode loop; results are
reported as ratios to that floor, which survive a noisy machine. DBOS 3.4.0 is installed into
its own virtual environment (--dbos-venv, default /tmp/replaygen-bench-dbos); it is never a
dependency of replaygen. Output: one table per workload on stdout, one JSON line per
measurement appended to --out (tests/bench/results.jsonl), and the chart --chart
(tests/bench/concurrency.png) when matplotlib is importable here or in the DBOS venv.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RG = str(HERE / "bench_replaygen.py")
DB = str(HERE / "bench_dbos.py")
DBOS_VERSION = "3.4.0"
WORKLOADS = ["engine", "W1", "W2", "W2t", "W3", "W4", "W4big", "W5", "sweep", "children"]
STORES = ["sqlite-full", "sqlite-normal", "postgres"]
SWEEP = [1, 10, 50]  # and 200: W2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------------------------

def child(python: str, script: str, cfg: dict[str, Any], *, crash: bool = False,
          timeout: float = 1800, tree: str | None = None) -> dict[str, Any] | None:
    """Run one measurement in a fresh process; its result, or None (a crash mode: it must die
    by SIGKILL). ``tree``: a directory whose ``replaygen`` package is imported instead of the
    installed one (an A/B of an older build)."""
    cfg = dict(cfg, spawned=time.time())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*([tree] if tree else []), str(HERE)]),
               PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([python, script, json.dumps(cfg)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(HERE))
    if crash:
        if p.returncode != -9:
            raise RuntimeError(f"{cfg['mode']} should have been SIGKILLed, exited {p.returncode}:"
                               f"\n{p.stderr[-3000:]}")
        return None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{cfg['mode']} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def ensure_dbos(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import importlib.metadata as m, dbos; "
             f"assert m.version('dbos') == {DBOS_VERSION!r}"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    log(f"creating {venv} with dbos=={DBOS_VERSION} (a minute or two)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"dbos=={DBOS_VERSION}",
                        "matplotlib"], check=True, timeout=900)
        subprocess.run(check, check=True, capture_output=True)
        return str(python)
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"DBOS could not be installed ({exc}); running without it")
        return None


def postgres_ok(dsn: str) -> bool:
    try:
        import psycopg
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except Exception as exc:
        log(f"Postgres at {dsn} is not usable ({exc}); skipping the postgres store")
        return False


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# ---- one repetition -----------------------------------------------------------------------

class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        try:
            self.commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "replaygen", "stores"],
                                   cwd=ROOT, capture_output=True, text=True).stdout.strip()
            self.commit += "+dirty" if dirty else ""
        except OSError:
            self.commit = "?"
        self.rows: list[dict[str, Any]] = []
        self.out = open(args.out, "a")
        self.q = args.quick

    def record(self, workload: str, system: str, store: str, rep: int,
               result: dict[str, Any] | None, **extra: Any) -> None:
        if result is None:
            return
        row = {"suite": self.id, "commit": self.commit, "workload": workload, "system": system,
               "store": store, "rep": rep, **extra, **result}
        self.rows.append(row)
        self.out.write(json.dumps(row) + "\n")
        self.out.flush()

    def attempt(self, what: str, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:  # one broken measurement must not sink the suite
            log(f"FAILED {what}: {exc}")
            self.record(what.split()[0], "error", "", -1, {"error": str(exc)[-2000:]})

    def wanted(self, w: str) -> bool:
        return w in self.args.only

    # -- replaygen --

    def rg_cfg(self, store: str, tmp: Path, name: str) -> dict[str, Any]:
        if store == "postgres":
            return {"store": store, "dsn": self.args.dsn,
                    "schema": f"rgbench_{name}_{uuid.uuid4().hex[:8]}"}
        return {"store": store, "path": str(tmp / f"{name}.db")}

    def rg(self, store: str, rep: int, tmp: Path, name: str, fn: Any) -> Any:
        cfg = self.rg_cfg(store, tmp, name)
        try:
            return fn(cfg)
        finally:
            if store == "postgres":
                drop_schema(self.args.dsn, cfg["schema"])

    def replaygen_rep(self, store: str, rep: int, tmp: Path) -> None:
        py, q = sys.executable, self.q

        def floor(cfg: dict[str, Any], when: str) -> None:
            self.record("floor", "floor", store, rep, child(py, RG, dict(cfg, mode="floor",
                        n=300 if q else 1000)), when=when)
        self.attempt(f"floor {store}", lambda: self.rg(store, rep, tmp, "floor",
                                                       lambda cfg: floor(cfg, "before")))
        try:
            self._workloads(store, rep, tmp)
        finally:
            self.attempt(f"floor {store}", lambda: self.rg(store, rep, tmp, "floor2",
                                                           lambda cfg: floor(cfg, "after")))

    def _workloads(self, store: str, rep: int, tmp: Path) -> None:
        py, q = sys.executable, self.q
        n1 = 200 if q else 1000

        if self.wanted("W1"):
            self.attempt(f"W1 {store}", lambda: self.rg(store, rep, tmp, "w1", lambda cfg: self.record(
                "W1", "replaygen", store, rep, child(py, RG, dict(cfg, mode="w1", steps=n1)))))
        if self.wanted("W2"):
            self.attempt(f"W2 {store}", lambda: self.rg(store, rep, tmp, "w2", lambda cfg: self.record(
                "W2", "replaygen", store, rep, child(py, RG, dict(cfg, mode="w2", runs=200, steps=10)),
                concurrent=200)))
        if self.wanted("W2t"):
            self.attempt(f"W2t {store}", lambda: self.rg(store, rep, tmp, "w2t", lambda cfg: self.record(
                "W2t", "replaygen", store, rep, child(py, RG, dict(
                    cfg, mode="w2", runs=200, steps=10, threads=True)))))
        if self.wanted("sweep"):
            for n in SWEEP:
                steps = max(10, 500 // n)
                self.attempt(f"sweep {store} {n}", lambda n=n, steps=steps: self.rg(
                    store, rep, tmp, f"sweep{n}", lambda cfg: self.record(
                        "sweep", "replaygen", store, rep,
                        child(py, RG, dict(cfg, mode="w2", runs=n, steps=steps)), concurrent=n)))
        if self.wanted("W3"):
            def w3(cfg: dict[str, Any]) -> None:
                child(py, RG, dict(cfg, mode="w3-crash", steps=n1), crash=True)
                self.record("W3", "replaygen", store, rep,
                            child(py, RG, dict(cfg, mode="w3-resume", steps=n1)))
            self.attempt(f"W3 {store}", lambda: self.rg(store, rep, tmp, "w3", w3))
        for w, runs in (("W4", 200), ("W4big", 10_000)):
            if self.wanted(w):
                runs = min(runs, 2000) if q else runs

                def w4(cfg: dict[str, Any], w: str = w, runs: int = runs) -> None:
                    child(py, RG, dict(cfg, mode="w4-crash", runs=runs), crash=True)
                    self.record(w, "replaygen", store, rep,
                                child(py, RG, dict(cfg, mode="w4-recover", runs=runs)))
                self.attempt(f"{w} {store}", lambda w4=w4, w=w: self.rg(store, rep, tmp, w.lower(), w4))
        if self.wanted("W5"):
            runs = 2000 if q else 10_000
            self.attempt(f"W5 {store}", lambda: self.rg(store, rep, tmp, "w5", lambda cfg: self.record(
                "W5", "replaygen", store, rep, child(py, RG, dict(cfg, mode="w5", runs=runs)))))
        if self.wanted("children"):
            kids = dict(n=200, depth=3, width=4) if q else {}
            self.attempt(f"children {store}", lambda: self.rg(
                store, rep, tmp, "children", lambda cfg: self.record(
                    "children", "replaygen", store, rep,
                    child(py, RG, dict(cfg, mode="children", **kids)))))

    # -- DBOS --

    def dbos_cfg(self, backend: str, tmp: Path, name: str) -> dict[str, Any]:
        if backend == "postgres":
            return {"store": backend, "url": self.args.dsn,
                    "schema": f"dbosbench_{name}_{uuid.uuid4().hex[:8]}"}
        return {"store": backend, "url": f"sqlite:///{tmp / (name + '.sqlite')}"}

    def dbos(self, backend: str, tmp: Path, name: str, fn: Any) -> Any:
        cfg = self.dbos_cfg(backend, tmp, name)
        try:
            return fn(cfg)
        finally:
            if backend == "postgres":
                drop_schema(self.args.dsn, cfg["schema"])

    def dbos_rep(self, py: str, backend: str, rep: int, tmp: Path) -> None:
        q = self.q
        n1 = 200 if q else 1000
        store = f"dbos-{backend}"
        if self.wanted("W1"):
            self.attempt(f"W1 {store}", lambda: self.dbos(backend, tmp, "w1", lambda cfg: self.record(
                "W1", "dbos", store, rep, child(py, DB, dict(cfg, mode="w1", steps=n1)))))
        if self.wanted("W2"):
            self.attempt(f"W2 {store}", lambda: self.dbos(backend, tmp, "w2", lambda cfg: self.record(
                "W2", "dbos", store, rep, child(py, DB, dict(cfg, mode="w2", runs=200, steps=10)),
                concurrent=200)))
        if self.wanted("sweep") and backend == "sqlite":
            for n in SWEEP:
                steps = max(10, 500 // n)
                self.attempt(f"sweep {store} {n}", lambda n=n, steps=steps: self.dbos(
                    backend, tmp, f"sweep{n}", lambda cfg: self.record(
                        "sweep", "dbos", store, rep,
                        child(py, DB, dict(cfg, mode="w2", runs=n, steps=steps)), concurrent=n)))
        if self.wanted("W3"):
            def w3(cfg: dict[str, Any]) -> None:
                child(py, DB, dict(cfg, mode="w3-crash", crash=True, steps=n1), crash=True)
                self.record("W3", "dbos", store, rep,
                            child(py, DB, dict(cfg, mode="w3-resume", steps=n1)))
            self.attempt(f"W3 {store}", lambda: self.dbos(backend, tmp, "w3", w3))
        if self.wanted("W4"):
            def w4(cfg: dict[str, Any]) -> None:
                child(py, DB, dict(cfg, mode="w4-crash", crash=True, runs=200), crash=True)
                self.record("W4", "dbos", store, rep,
                            child(py, DB, dict(cfg, mode="w4-recover", runs=200)))
            self.attempt(f"W4 {store}", lambda: self.dbos(backend, tmp, "w4", w4))

    def run(self) -> None:
        a = self.args
        dbos_py = None if a.no_dbos else ensure_dbos(Path(a.dbos_venv))
        backends = [b for b in ("sqlite", "postgres")
                    if b == "sqlite" or "postgres" in a.stores]
        for rep in range(a.reps):
            if self.wanted("engine"):  # the engine alone: W1 and W2 on the in-memory store
                for mode, extra in (("w1", {"steps": 200 if self.q else 1000}),
                                    ("w2", {"runs": 200, "steps": 10})):
                    self.attempt(f"engine {mode}", lambda mode=mode, extra=extra, rep=rep: self.record(
                        "engine", "replaygen", "memory", rep, child(sys.executable, RG, dict(
                            store="memory", mode=mode, **extra)), of=mode.upper()))
            for store in a.stores:
                tmp = Path(tempfile.mkdtemp(prefix=f"rgbench-{store}-", dir=a.dir))
                log(f"rep {rep + 1}/{a.reps}: replaygen on {store}")
                try:
                    self.replaygen_rep(store, rep, tmp)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            if dbos_py is not None:
                for backend in backends:
                    tmp = Path(tempfile.mkdtemp(prefix=f"rgbench-dbos-{backend}-", dir=a.dir))
                    log(f"rep {rep + 1}/{a.reps}: DBOS on {backend}")
                    try:
                        self.dbos_rep(dbos_py, backend, rep, tmp)
                    finally:
                        shutil.rmtree(tmp, ignore_errors=True)
        self.out.close()
        report(self.rows, a, self.id, self.commit)
        if self.wanted("sweep") or self.wanted("W2"):
            chart(a, self.id, dbos_py)


# ---- reporting ------------------------------------------------------------------------------

def med(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{fmt(statistics.median(xs))} [{fmt(min(xs))}–{fmt(max(xs))}]" if len(xs) > 1 \
        else fmt(xs[0])


def fmt(x: float) -> str:
    if x != x:
        return "nan"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def table(title: str, head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [f"\n### {title}\n",
             "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in body]
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], a: argparse.Namespace, suite: str, commit: str) -> None:
    def vals(workload: str, system: str, store: str, key: str, **match: Any) -> list[float]:
        return [r[key] for r in rows if r["workload"] == workload and r["system"] == system
                and r["store"] == store and key in r and all(r.get(k) == v for k, v in match.items())]

    def floor_of(store: str, rep: int, key: str) -> float | None:
        """The floor of that repetition: the mean of the runs before and after its workloads."""
        found = [r[key] for r in rows if r["workload"] == "floor" and r["store"] == store
                 and r["rep"] == rep and key in r]
        return statistics.mean(found) if found else None

    def ratios(workload: str, store: str, key: str, fkey: str) -> list[float]:
        out = []
        for r in rows:
            if r["workload"] == workload and r["system"] == "replaygen" and r["store"] == store:
                f = floor_of(store, r["rep"], fkey)
                if f:
                    out.append(r[key] / f)
        return out

    def dbos_of(store: str) -> str:
        return "dbos-postgres" if store == "postgres" else "dbos-sqlite"

    def times(x: list[float], y: list[float], invert: bool = False) -> str:
        if not x or not y:
            return "—"
        mx, my = statistics.median(x), statistics.median(y)
        return f"{(my / mx if invert else mx / my):,.1f}x"

    out = [f"# replaygen benchmarks — suite {suite}, replaygen {commit}, {a.reps} repetitions "
           f"(median [min–max])",
           "Machine: " + f"{os.cpu_count()} cores; DBOS Transact {DBOS_VERSION} on SQLite uses "
           "its default rollback journal, synchronous=FULL."]
    stores = a.stores
    # the engine alone
    body = [[w, med(vals("engine", "replaygen", "memory", "cpu_us_per_step", of=w)),
             med(vals("engine", "replaygen", "memory", "steps_per_s", of=w))] for w in ("W1", "W2")]
    if any(r[1] != "—" for r in body):
        out.append(table("Engine alone: W1 and W2 on the in-memory store (commits cost nothing)",
                         ["workload", "CPU us per step (target <= 25)", "steps/s"], body))
    # W1
    body = []
    for s in stores:
        x, d = vals("W1", "replaygen", s, "steps_per_s"), vals("W1", "dbos", dbos_of(s), "steps_per_s")
        body.append([s, med(x), med(d), med([r for r in [floor_of(s, k, "fenced_commit_per_s")
                     for k in range(a.reps)] if r]), med([r for r in [floor_of(s, k,
                     "insert_commit_per_s") for k in range(a.reps)] if r]),
                     med(ratios("W1", s, "steps_per_s", "fenced_commit_per_s")), times(x, d)])
    out.append(table("W1 seq: 1 run x 1000 steps, steps/s",
                     ["store", "replaygen", "DBOS", "floor: fenced commit/s", "floor: INSERT+COMMIT/s",
                      "replaygen / fenced floor (target >= 0.9)", "replaygen / DBOS"], body))
    # W2
    body = []
    for s in stores:
        x, d = vals("W2", "replaygen", s, "steps_per_s"), vals("W2", "dbos", dbos_of(s), "steps_per_s")
        body.append([s, med(x), med(d), med([r for r in [floor_of(s, k, "batch100_rows_per_s")
                     for k in range(a.reps)] if r]), med(ratios("W2", s, "steps_per_s",
                     "batch100_rows_per_s")), med(ratios("W2", s, "steps_per_s", "fenced_commit_per_s")),
                     med(vals("W2", "replaygen", s, "start_seconds")),
                     med(vals("W2t", "replaygen", s, "steps_per_s")), times(x, d)])
    out.append(table("W2 concurrent: 200 runs x 10 steps, first start to last result, steps/s",
                     ["store", "replaygen (target >= 20,000)", "DBOS", "floor: 100 rows/commit",
                      "replaygen / batch floor",
                      "replaygen / per-commit floor", "replaygen: s to start 200",
                      "replaygen, 200 request threads (W2t)", "replaygen / DBOS"],
                     body))
    # W3
    body = []
    for s in stores:
        x, d = vals("W3", "replaygen", s, "replayed_per_s"), vals("W3", "dbos", dbos_of(s), "replayed_per_s")
        body.append([s, med(x), med(d), med(vals("W3", "replaygen", s, "replay_only_per_s")),
                     med(ratios("W3", s, "replayed_per_s", "json_decode_per_s")),
                     med([v * 1000 for v in vals("W3", "replaygen", s, "engine_to_body_s")]),
                     med([v * 1000 for v in vals("W3", "dbos", dbos_of(s), "engine_to_body_s")]),
                     med([v * 1000 for v in vals("W3", "replaygen", s, "process_to_body_s")]),
                     med([v * 1000 for v in vals("W3", "dbos", dbos_of(s), "process_to_body_s")]),
                     times(x, d)])
    out.append(table("W3 replay: 1000 journaled steps resumed after SIGKILL",
                     ["store", "replaygen replayed/s (engine start to step 1001)", "DBOS",
                      "replaygen body to step 1001 /s", "replaygen / JSON decode floor",
                      "replaygen engine start to body ms (target < 50)", "DBOS ms",
                      "replaygen process start to body ms", "DBOS ms", "replaygen / DBOS"], body))
    # W4
    body = []
    for s in stores:
        x, d = vals("W4", "replaygen", s, "seconds"), vals("W4", "dbos", dbos_of(s), "seconds")
        big = vals("W4big", "replaygen", s, "seconds")
        body.append([s, med(x), med(d), med(vals("W4", "replaygen", s, "recover_call_s")),
                     times(x, d, invert=True), med(big), med(vals("W4big", "replaygen", s,
                     "recover_call_s")), med(vals("W4big", "replaygen", s, "gc_s"))])
    out.append(table("W4 recover: runs SIGKILLed after 5 of 10 steps, new process to all results, s",
                     ["store", "replaygen 200 runs s (target < 1)", "DBOS 200 runs s",
                      "replaygen recover() call s", "DBOS / replaygen",
                      "replaygen 10,000 runs s (target < 3)", "its recover() call s",
                      "of its s, Python's garbage collector"], body))
    # W5
    body = []
    for s in stores:
        body.append([s, med(vals("W5", "replaygen", s, "runs")),
                     med(vals("W5", "replaygen", s, "rss_mib")),
                     med(vals("W5", "replaygen", s, "rss_per_run_kib")),
                     med(vals("W5", "replaygen", s, "threads")),
                     med(vals("W5", "replaygen", s, "deliver_to_step_ms_median")),
                     med(vals("W5", "replaygen", s, "deliver_to_step_ms_max")),
                     med(vals("W5", "replaygen", s, "park_seconds"))])
    out.append(table("W5 parked: half waiting for a signal, half in a one-hour Sleep (replaygen)",
                     ["store", "runs", "worker RSS MiB", "KiB per parked run", "OS threads",
                      "deliver() to next step ms (median of 50)", "max ms", "s to park all"], body))
    # children
    body = []
    for s in stores:
        body.append([s, med(vals("children", "replaygen", s, "flat_s")),
                     med(vals("children", "replaygen", s, "children_s")),
                     med(vals("children", "replaygen", s, "children_cpu_s")),
                     med(vals("children", "replaygen", s, "tree_runs")),
                     med(vals("children", "replaygen", s, "tree_s"))])
    out.append(table("Children: a parent awaiting 1,000 child runs of one step, beside a flat "
                     "All of 1,000 steps; a tree of child runs 4 levels deep, s (replaygen)",
                     ["store", "flat All of 1,000 steps s", "1,000 children s (target < 2)",
                      "its CPU s", "tree runs", "tree s"], body))
    # sweep
    body = []
    for system, s in [("replaygen", x) for x in stores] + [("dbos", "dbos-sqlite")]:
        cells = []
        for n in [*SWEEP, 200]:
            v = vals("sweep" if n != 200 else "W2", system, s, "steps_per_s", concurrent=n)
            cells.append(med(v))
        if any(c != "—" for c in cells):
            body.append([f"{system} {s}", *cells])
    out.append(table("Concurrency: steps/s vs concurrent runs (max(10, 500/n) steps each; 200 = W2)",
                     ["system", *[str(n) for n in [*SWEEP, 200]]], body))
    # floor
    body = []
    for s in stores:
        body.append([s, *[med(vals("floor", "floor", s, k)) for k in (
            "insert_commit_per_s", "fenced_commit_per_s", "batch100_rows_per_s",
            "batch100_fenced_rows_per_s", "json_decode_per_s")]])
    out.append(table("Floor (same disk or server, every repetition)",
                     ["store", "INSERT+COMMIT/s", "fenced UPDATE+INSERT/s", "100 rows/commit rows/s",
                      "100 fenced rows/commit rows/s", "JSON decode/s"], body))
    errors = [r for r in rows if r["system"] == "error"]
    if errors:
        out.append(f"\n{len(errors)} measurement(s) failed: see {a.out}")
    text = "\n".join(out) + "\n"
    print(text)
    Path(a.tables).write_text(text)
    log(f"tables written to {a.tables}; JSON lines appended to {a.out}")


def chart(a: argparse.Namespace, suite: str, dbos_py: str | None) -> None:
    cmd = [sys.executable, str(HERE / "chart.py"), a.out, suite, a.chart]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if dbos_py is None:
            log("matplotlib is not importable here and there is no DBOS venv: no chart")
            return
        cmd[0] = dbos_py  # the bench venv has matplotlib (never a dependency of replaygen)
    p = subprocess.run(cmd, capture_output=True, text=True)
    log(p.stdout.strip() or p.stderr.strip()[-2000:])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["purge"]:  # its own workload and options: tests/bench/purge.py
        from tests.bench.purge import main as purge_main
        return purge_main(args[1:])
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and one repetition, to check that the suite works")
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--stores", default=",".join(STORES), help="comma-separated subset of "
                    f"{','.join(STORES)}")
    ap.add_argument("--no-dbos", action="store_true", help="skip DBOS")
    ap.add_argument("--dbos-venv", default="/tmp/replaygen-bench-dbos")
    ap.add_argument("--dsn", default=os.environ.get(
        "REPLAYGEN_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--dir", default=None, help="where SQLite files go (default: the temp dir)")
    ap.add_argument("--out", default=str(HERE / "results.jsonl"), help="JSON lines, appended")
    ap.add_argument("--tables", default=str(HERE / "results.md"), help="the tables, as Markdown")
    ap.add_argument("--chart", default=str(HERE / "concurrency.png"))
    ap.add_argument("--profile", action="store_true",
                    help="instead of the suite, profile W1, W2 and W3 (tests/bench/profile_engine.py)")
    a = ap.parse_args(argv)
    try:  # every measurement runs in a child process, which imports the installed replaygen
        import replaygen.stores.sqlite  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"replaygen is not installed for {sys.executable} ({exc}): run "
                         f"`pip install -e '.[postgres]'` in the checkout first") from None
    if a.profile:
        raise SystemExit(subprocess.call([sys.executable, str(HERE / "profile_engine.py")],
                                         cwd=str(ROOT)))
    a.only = [w.strip() for w in a.only.split(",") if w.strip()]
    a.stores = [s.strip() for s in a.stores.split(",") if s.strip()]
    bad = [w for w in a.only if w not in WORKLOADS] + [s for s in a.stores if s not in STORES]
    if bad:
        ap.error(f"unknown workload or store: {', '.join(bad)}")
    if a.quick:
        a.reps = 1 if "--reps" not in " ".join(argv if argv is not None else sys.argv) else a.reps
    if "postgres" in a.stores and not postgres_ok(a.dsn):
        a.stores.remove("postgres")
    Suite(a).run()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
