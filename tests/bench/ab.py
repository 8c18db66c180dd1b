"""Interleaved A/B of two replaygen builds on this machine: the way performance decisions are made.

    python -m tests.bench.ab OLD_PYTHON NEW_PYTHON [--pairs 7] [--only W1,W2,W3,W4]
                             [--stores sqlite,postgres] [--w3-steps 10000] [--dsn DSN]

Each PYTHON is an interpreter whose environment has the build to measure installed (e.g. a
venv per git worktree: ``git worktree add /tmp/old b243a9b && python3 -m venv /tmp/old-venv &&
/tmp/old-venv/bin/pip install -e '/tmp/old[postgres]'``). Both run this tree's measurement
script (``bench_replaygen.py``), one fresh process and store per measurement, in alternating
order (A B, B A, ...), so that drift on a shared machine falls on both. Printed per workload:
each side's median, the median of the per-pair ratios NEW/OLD with every pair's ratio, and the
CPU time per step of the timed region (``time.process_time``) beside the wall figure.

Workloads as in ``python -m tests.bench``: W1 (SQLite NORMAL, 1000 sequential steps), W2
(SQLite FULL, 200 runs x 10 steps), W3 (resume after SIGKILL; ``--w3-steps``: 1000 steps
replay in ~10 ms, too short a window to compare builds, so 10,000 by default here), W4 (200
runs recovered after SIGKILL), W4big (10,000 runs). W1 and W2 on ``--stores memory`` are
the engine alone (the suite's ``engine`` workload). Each on Postgres too, where W3 also
prints engine start to body (wall and CPU; the store module's import within it; the rest,
imported to body) with process start to body: use ``--w3-steps 1000`` as the suite does,
since the journal is loaded before the body runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import uuid
from typing import Any

from tests.bench.run import RG, child, drop_schema, postgres_ok

# workload -> (how to measure, the figure, whether higher is better)
FIGURES = {"W1": ("steps_per_s", True), "W2": ("steps_per_s", True),
           "W3": ("replayed_per_s", True), "W4": ("seconds", False), "W4big": ("seconds", False)}


def measure(python: str, workload: str, store: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rg-ab-") as tmp:
        if store == "postgres":
            cfg: dict[str, Any] = {"store": "postgres", "dsn": args.dsn,
                                   "schema": f"rgab_{uuid.uuid4().hex[:8]}"}
        elif store == "memory":  # the engine alone: commits cost nothing (W1 and W2 only)
            cfg = {"store": "memory"}
        else:
            cfg = {"store": "sqlite-normal" if workload == "W1" else "sqlite-full",
                   "path": os.path.join(tmp, "ab.db")}
        try:
            if workload == "W1":
                return child(python, RG, dict(cfg, mode="w1", steps=1000)) or {}
            if workload == "W2":
                return child(python, RG, dict(cfg, mode="w2", runs=200, steps=10)) or {}
            if workload == "W3":
                child(python, RG, dict(cfg, mode="w3-crash", steps=args.w3_steps), crash=True)
                return child(python, RG, dict(cfg, mode="w3-resume", steps=args.w3_steps)) or {}
            runs = 10_000 if workload == "W4big" else 200
            child(python, RG, dict(cfg, mode="w4-crash", runs=runs), crash=True)
            return child(python, RG, dict(cfg, mode="w4-recover", runs=runs)) or {}
        finally:
            if store == "postgres":
                drop_schema(args.dsn, cfg["schema"])


def report(workload: str, store: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    key, higher = FIGURES[workload]
    extra = [(k, k, False) for k in ("engine_to_body_s", "engine_to_body_cpu_s", "store_import_s",
                                     "imported_to_body_s", "process_to_body_s")
             if workload == "W3" and all(k in r for r in old + new)]
    for name, k, up in ((key, key, higher), ("CPU us/step", "cpu_us_per_step", False), *extra):
        if not all(k in r for r in old + new):
            print(f"{store:8} {workload} {name}: not reported by one build's run")
            continue
        ratios = [n[k] / o[k] for o, n in zip(old, new, strict=True)]
        print(f"{store:8} {workload} {name + (' (higher is better)' if up else ' (lower is better)'):34}"
              f" old {_num(statistics.median(r[k] for r in old)):>10}"
              f"  new {_num(statistics.median(r[k] for r in new)):>10}"
              f"  new/old {statistics.median(ratios):.3f}  pairs {', '.join(f'{r:.3f}' for r in ratios)}")


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="Python of the baseline build")
    ap.add_argument("new", help="Python of the build under test")
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--only", default="W1,W2,W3,W4")
    ap.add_argument("--stores", default="sqlite")
    ap.add_argument("--w3-steps", type=int, default=10_000)
    ap.add_argument("--dsn", default=os.environ.get("REPLAYGEN_PG_DSN",
                                                    "postgresql://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be at least 1 (5 or more to decide anything)")
    workloads = [w.strip() for w in args.only.split(",")]
    if unknown := sorted(set(workloads) - set(FIGURES)):
        ap.error(f"unknown workloads {unknown}; choose from {sorted(FIGURES)}")
    stores = [s.strip() for s in args.stores.split(",")]
    if "postgres" in stores and not postgres_ok(args.dsn):
        ap.error(f"PostgreSQL is not reachable at {args.dsn} (--dsn)")
    plan = [(s, w) for s in stores for w in workloads]
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for pair in range(args.pairs):
        for store, workload in plan:
            order = ("old", "new") if pair % 2 == 0 else ("new", "old")
            for side in order:
                python = args.old if side == "old" else args.new
                results.setdefault((store, workload, side), []).append(
                    measure(python, workload, store, args))
        print(f"pair {pair + 1} of {args.pairs} done (load {os.getloadavg()[0]:.2f})", flush=True)
    for store, workload in plan:
        report(workload, store, results[(store, workload, "old")], results[(store, workload, "new")])


if __name__ == "__main__":
    main()
