"""Purge of finished runs while W2 runs beside it (issue 22), as interleaved pairs.

    python -m tests.bench purge [--store sqlite|postgres] [--runs 100000] [--pairs 5]
                                [--alone 5] [--dsn DSN] [--dir DIR]

Each pair fills a fresh store with ``--runs`` finished runs of 3 steps, finished two days
ago (bench_purge.py ``fill``: rows copied in bulk from a few real runs), starts one worker
process running W2 rounds (200 runs x 10 steps started at once) back to back, and, in a
second process, ``Client.purge(older_than=1 day)``. The worker samples its committed steps
and CPU time every 20 ms: "during" is the rate between the purge's first and last moment,
"alone" over ``--alone`` seconds before the purge in even pairs and after it in odd ones
(after a second of warm-up), so drift falls on both. Reported: purge rate and time, W2
steps/s alone and during and their ratio per pair (target >= 0.7), CPU per step. Tables go
to --tables (results-purge.md), one JSON line per pair is appended to --out (results.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.bench.run import HERE, child, drop_schema, fmt, log, med, postgres_ok, table

SCRIPT = str(HERE / "bench_purge.py")


def window(samples: list[list[float]], x0: float, x1: float) -> tuple[float, float]:
    """W2 steps/s and CPU us/step between the first sample at or after x0 and the last one
    at or before x1."""
    inside = [s for s in samples if x0 <= s[0] <= x1]
    if len(inside) < 2 or inside[-1][2] == inside[0][2]:
        return 0.0, float("nan")
    (t0, c0, n0), (t1, c1, n1) = inside[0], inside[-1]
    return (n1 - n0) / (t1 - t0), (c1 - c0) / (n1 - n0) * 1e6


def pair(a: argparse.Namespace, k: int, cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One pair on a freshly filled store: W2 alone and W2 during the purge."""
    load = os.getloadavg()[0]
    fill = child(sys.executable, SCRIPT, dict(cfg, mode="fill", runs=a.runs), tree=a.tree) or {}
    stop = tmp / "stop"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*([a.tree] if a.tree else []), str(HERE)]),
               PYTHONDONTWRITEBYTECODE="1")
    w2 = subprocess.Popen([sys.executable, SCRIPT, json.dumps(dict(cfg, mode="w2loop", stop=str(
        stop)))], stdout=subprocess.PIPE, text=True, env=env, cwd=str(HERE))
    purge_cfg = dict(cfg, mode="purge", **a.knobs)
    try:
        assert w2.stdout is not None and w2.stdout.readline() == "ready\n", "w2loop did not start"
        before = k % 2 == 0
        time.sleep(1.0)  # warm-up: the first round
        if before:
            a0 = time.time()
            time.sleep(a.alone)
            a1 = time.time()
        purge = child(sys.executable, SCRIPT, purge_cfg, tree=a.tree) or {}
        if not before:
            time.sleep(0.3)
            a0 = time.time()
            time.sleep(a.alone)
            a1 = time.time()
        stop.touch()
        out, _ = w2.communicate(timeout=600)
    finally:
        if w2.poll() is None:
            w2.kill()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if w2.returncode != 0 or not lines:
        raise RuntimeError(f"w2loop failed ({w2.returncode})")
    samples = json.loads(lines[-1][len("RESULT "):])["samples"]
    alone, alone_cpu = window(samples, a0, a1)
    during, during_cpu = window(samples, purge["t0"], purge["t1"])
    return {"pair": k, "order": "alone-first" if before else "purge-first", "load": load,
            "knobs": a.knobs, "tree": a.tree, "fill_s": fill.get("fill_s"),
            **{f"purge_{x}": y for x, y in purge.items() if x not in ("t0", "t1")},
            "alone_steps_per_s": alone, "during_steps_per_s": during,
            "ratio": during / alone if alone else float("nan"),
            "alone_cpu_us_per_step": alone_cpu, "during_cpu_us_per_step": during_cpu}


def run_store(a: argparse.Namespace, store: str) -> list[dict[str, Any]]:
    rows = []
    for k in range(a.first_pair, a.first_pair + a.pairs):
        tmp = Path(tempfile.mkdtemp(prefix="rgbench-purge-", dir=a.dir))
        if store == "postgres":
            cfg: dict[str, Any] = {"store": "postgres", "dsn": a.dsn,
                                   "schema": f"rgpurge_{uuid.uuid4().hex[:8]}"}
        else:
            cfg = {"store": "sqlite-full", "path": str(tmp / "purge.db")}
        try:
            row = pair(a, k, cfg, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if store == "postgres":
                drop_schema(a.dsn, cfg["schema"])
        log(f"{store} pair {k - a.first_pair + 1}/{a.pairs}: purge {row['purge_runs_per_s']:,.0f} runs/s, W2 "
            f"{row['alone_steps_per_s']:,.0f} alone, {row['during_steps_per_s']:,.0f} during "
            f"({row['ratio']:.2f}), load {row['load']:.2f}")
        rows.append(dict(row, store=store))
    return rows


def report(a: argparse.Namespace, rows: list[dict[str, Any]], suite: str) -> str:
    def col(store: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["store"] == store and r[key] == r[key]]

    body = [[s, med(col(s, "purge_runs_per_s")), med(col(s, "purge_seconds")),
             med(col(s, "purge_batch_ms_median")), med(col(s, "alone_steps_per_s")),
             med(col(s, "during_steps_per_s")), med(col(s, "ratio")),
             med(col(s, "alone_cpu_us_per_step")), med(col(s, "during_cpu_us_per_step")),
             med(col(s, "load"))] for s in sorted({r["store"] for r in rows})]
    summary = table(f"Purge of {a.runs:,} finished runs beside W2: medians of {a.pairs} pairs "
                    f"[min–max]", ["store", "purge runs/s", "purge s", "batch ms",
                                   "W2 alone steps/s", "W2 during steps/s",
                                   "during / alone (target >= 0.7)", "CPU us/step alone",
                                   "during", "load"], body)
    per = table("Every pair", ["store", "pair", "order", "purge runs/s", "batch ms (p90)",
                               "W2 alone", "W2 during", "ratio", "CPU us/step alone/during",
                               "load"],
                [[r["store"], str(r["pair"]), r["order"], fmt(r["purge_runs_per_s"]),
                  f"{fmt(r['purge_batch_ms_median'])} ({fmt(r['purge_batch_ms_p90'])})",
                  fmt(r["alone_steps_per_s"]), fmt(r["during_steps_per_s"]), f"{r['ratio']:.2f}",
                  f"{fmt(r['alone_cpu_us_per_step'])}/{fmt(r['during_cpu_us_per_step'])}",
                  f"{r['load']:.2f}"] for r in rows])
    head = (f"# Purge beside W2 — suite {suite}\n\nMethod: `python -m tests.bench purge` "
            f"(tests/bench/purge.py). Each pair fills a fresh store with {a.runs:,} completed "
            f"runs of 3 steps finished two days ago (rows copied in bulk from real runs), runs W2 "
            f"(200 runs x 10 no-op steps started at once) back to back in one worker process and "
            f"`Client.purge(older_than=1 day)` in another; W2's committed steps are sampled every "
            f"20 ms. \"During\" is W2's rate from the purge's first to its last moment, \"alone\" "
            f"over {a.alone:g} s before the purge (even pairs) or after it (odd pairs). SQLite: "
            f"WAL, synchronous=FULL. Machine: {os.cpu_count()} cores, shared; load is the "
            f"1-minute load average at each pair's start.\n")
    return f"{head}{summary}\n{per}\n"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.bench purge", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="sqlite,postgres", help="sqlite, postgres or both")
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--alone", type=float, default=5.0, help="seconds of W2 alone per pair")
    ap.add_argument("--dsn", default=os.environ.get(
        "REPLAYGEN_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--dir", default=None, help="where SQLite files go (default: the temp dir)")
    ap.add_argument("--out", default=str(HERE / "results.jsonl"), help="JSON lines, appended")
    ap.add_argument("--tables", default=str(HERE / "results-purge.md"))
    ap.add_argument("--batch", type=int, default=None,
                    help="A/B knob: runs per purge transaction (default: the library's)")
    ap.add_argument("--pause", type=float, default=None,
                    help="A/B knob: sleep this many times each batch's time after it")
    ap.add_argument("--sqlite-yield", type=float, default=None,
                    help="A/B knob: replaygen.stores.sqlite.PURGE_YIELD in the purging process")
    ap.add_argument("--tree", default=None, help="A/B: a directory holding an older build's "
                    "replaygen package (with its stores as replaygen/stores), used by every process")
    ap.add_argument("--first-pair", type=int, default=0,
                    help="number the pairs from here (even: W2 alone before the purge)")
    a = ap.parse_args(argv)
    a.knobs = {k: v for k, v in (("batch", a.batch), ("pause", a.pause),
                                 ("sqlite_yield", a.sqlite_yield)) if v is not None}
    stores = [s.strip() for s in a.store.split(",") if s.strip()]
    if "postgres" in stores and not postgres_ok(a.dsn):
        stores.remove("postgres")
    suite = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip() or "?"
    rows = [r for s in stores for r in run_store(a, s)]
    with open(a.out, "a") as f:
        for r in rows:
            f.write(json.dumps({"suite": suite, "commit": commit, "workload": "purge",
                                "system": "replaygen",
                                "runs": a.runs, **r}) + "\n")
    text = report(a, rows, f"{suite}, replaygen {commit}")
    print(text)
    Path(a.tables).write_text(text)
    log(f"tables written to {a.tables}; JSON lines appended to {a.out}")
