"""Throughput of 1, 2 and 4 worker processes against PostgreSQL (prints a table).

Each repetition seeds RUNS runs of 10 no-op steps (each returns a ~100-byte dict) in a
fresh schema, starts N worker processes (tests/_pg_worker.py, one PostgresStore and one
Interpreter each), releases them at once, and times until every run is completed.

    python tests/bench/pg_workers.py [--runs 1000] [--reps 3] [--workers 1 2 4]

Uses REPLAYGEN_TEST_DSN or postgresql://postgres@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from replaygen.stores.postgres import PostgresStore

DSN = os.environ.get("REPLAYGEN_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")
WORKER = str(Path(__file__).resolve().parent.parent / "_pg_worker.py")
STEPS = 10


def once(n: int, runs: int) -> float:
    schema = f"rgbench_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(DSN, schema=schema)
    with tempfile.TemporaryDirectory() as tmp:
        go, stop = Path(tmp, "go"), Path(tmp, "stop")
        try:
            with psycopg.connect(DSN, autocommit=True) as conn:  # seed fast: one statement
                conn.execute(sql.SQL(
                    "INSERT INTO {} (run_id, workflow, args, state, owner, fence, created, updated)"
                    " SELECT 'r' || i, 'work', json_build_array('r' || i, %s)::text, 'pending',"
                    " NULL, 1, 0, 0 FROM generate_series(1, %s) i").format(
                        sql.Identifier(schema, "runs")), [STEPS, runs])
                conn.execute(sql.SQL(
                    "UPDATE {} SET args = '{{\"args\":' || args || ',\"kwargs\":{{}}}}'").format(
                        sql.Identifier(schema, "runs")))
            cfg = {"dsn": DSN, "schema": schema, "lease": 10, "go": str(go), "stop": str(stop),
                   "app": "rg-bench"}
            procs = [subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)],
                                      stdout=subprocess.PIPE, text=True) for _ in range(n)]
            for p in procs:
                assert p.stdout is not None and p.stdout.readline() == "ready\n"
            started = time.perf_counter()
            go.touch()
            with psycopg.connect(DSN, autocommit=True) as conn:
                count = sql.SQL("SELECT count(*) FROM {} WHERE state <> 'completed'").format(
                    sql.Identifier(schema, "runs"))
                while conn.execute(count).fetchone() != (0,):
                    time.sleep(0.01)
            elapsed = time.perf_counter() - started
            stop.touch()
            for p in procs:
                p.wait(timeout=30)
            return runs * STEPS / elapsed
        finally:
            store.close()
            with psycopg.connect(DSN, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    print(f"{args.runs} runs x {STEPS} no-op steps, median of {args.reps} repetitions")
    print(f"{'workers':>8} {'steps/s':>10} {'all reps':>30}")
    for n in args.workers:
        rates = [once(n, args.runs) for _ in range(args.reps)]
        print(f"{n:>8} {statistics.median(rates):>10,.0f} "
              f"{' '.join(f'{r:,.0f}' for r in rates):>30}", flush=True)


if __name__ == "__main__":
    main()
