"""How fast the web view answers a big store (issue 25): the runs page with 100,000 runs
(target < 200 ms) and a run of 10,000 steps, paged (target < 500 ms), on SQLite and Postgres.

    python -m tests.bench.ui [--runs 100000] [--steps 10000] [--reps 21]
                             [--stores sqlite,postgres] [--dsn postgresql://...]

Each store is filled through its own ``commit()`` (every run with three journal entries, in
the mix of states and workflows a busy store has), then served by ``replaygen.ui`` in this
process on a free port, and each request is timed over a kept-alive HTTP connection, as
the page's script makes it: wall time from sending the request to the last byte of the
answer, medians and 90th percentiles of ``--reps`` after three warm-ups. A program that
prints a table, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from replaygen.store import Entry, Store, Write
from replaygen.ui import make_server

STATES = ["completed"] * 6 + ["failed", "waiting", "sleeping", "blocked"]
WORKFLOWS = ["checkout", "refund", "approval", "shipping", "nightly-report"]
VALUE = '{"ok": true, "pad": "' + "x" * 80 + '"}'  # a ~100-byte step result
BATCH = 500
REQUESTS = [  # (what, path)
    ("runs page, newest 50", "/api/runs"),
    ("runs page, state=waiting", "/api/runs?state=waiting"),
    ("runs page, workflow=refund", "/api/runs?workflow=refund"),
    ("runs page 1000 (offset 50,000)", "/api/runs?page=1000"),
    ("run id search", "/api/runs?q=run-0042000"),
    ("the page itself (HTML)", "/"),
    ("10,000-step run, first page", "/api/run?id=long-run"),
    ("10,000-step run, last page", "/api/run?id=long-run&page=last"),
    ("workflows and workers", "/api/overview"),
]
TARGETS = {"runs page, newest 50": 0.200, "10,000-step run, first page": 0.500,
           "10,000-step run, last page": 0.500}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fill(store: Store, runs: int, steps: int) -> None:
    """``runs`` runs of three entries each, oldest first, and one run of ``steps`` steps."""
    t0 = 100.0
    for first in range(0, runs, BATCH):
        writes: list[Write] = []
        for i in range(first, min(first + BATCH, runs)):
            run_id, state = f"run-{i:07d}", STATES[i % len(STATES)]
            entries = tuple(Entry(k, k, "do", f"step-{k}", "ok", VALUE, t0 + k, t0 + k + 0.01)
                            for k in range(3))
            error = '{"type": "StepFailed", "message": "card declined"}' \
                if state in ("failed", "blocked") else None
            writes += [Write(run_id, "bench", 1, "pending",
                             create=(WORKFLOWS[i % len(WORKFLOWS)], '{"args": [1], "kwargs": {}}')),
                       Write(run_id, "bench", 1, state, entries, waiting_for="go" if state == "waiting"
                             else None, wake_at=4e9 if state == "sleeping" else None, error=error,
                             release=True)]
        store.commit(writes)
        if first % 20_000 == 0:
            log(f"  {first:,} runs written")
    store.commit([Write("long-run", "bench", 1, "pending", create=("seq", "[]"))])
    for first in range(0, steps, 1000):
        store.commit([Write("long-run", "bench", 1, "running", tuple(
            Entry(k, k, "do", f"s{k}", "ok", VALUE, t0 + k, t0 + k + 0.001)
            for k in range(first, min(first + 1000, steps))))])


@contextmanager
def sqlite_store(where: Path, runs: int, steps: int) -> Iterator[Store]:
    from replaygen.stores.sqlite import SQLiteStore

    path = where / "ui-bench.db"
    filling = SQLiteStore(path, synchronous="NORMAL")
    fill(filling, runs, steps)
    filling.close()
    store = SQLiteStore(path)  # as `replaygen ui` opens it
    try:
        yield store
    finally:
        store.close()


@contextmanager
def postgres_store(dsn: str, runs: int, steps: int) -> Iterator[Store]:
    from replaygen.stores.postgres import PostgresStore

    schema = f"rgbench_ui_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(dsn, schema=schema)
    try:
        fill(store, runs, steps)
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:  # as autovacuum would have by now
            for table in ("runs", "journal"):
                conn.execute(f'ANALYZE "{schema}".{table}')
        yield store
    finally:
        store.close()
        PostgresStore.drop_schema(dsn, schema)


def timings(port: int, path: str, reps: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for i in range(reps + 3):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        took = time.perf_counter() - start
        assert response.status == 200, (path, response.status, body[:300])
        if i >= 3:
            out.append(took)
    conn.close()
    return out


def measure(store: Store, reps: int) -> dict[str, list[float]]:
    server = make_server(store, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        return {what: timings(server.server_address[1], path, reps) for what, path in REQUESTS}
    finally:
        server.shutdown()
        server.server_close()


def table(results: dict[str, dict[str, list[float]]], runs: int, steps: int) -> str:
    stores = list(results)
    lines = [f"{runs:,} runs in the store, one of {steps:,} steps; medians (p90) in ms", "",
             "| request | " + " | ".join(stores) + " | target |",
             "|---|" + "---|" * len(stores) + "---|"]
    for what, _ in REQUESTS:
        cells = []
        for s in stores:
            xs = sorted(results[s][what])
            p90 = xs[min(len(xs) - 1, int(len(xs) * 0.9))]
            cells.append(f"{statistics.median(xs) * 1000:.1f} ({p90 * 1000:.1f})")
        target = f"< {TARGETS[what] * 1000:.0f}" if what in TARGETS else ""
        lines.append(f"| {what} | " + " | ".join(cells) + f" | {target} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=21)
    ap.add_argument("--stores", default="sqlite,postgres")
    ap.add_argument("--dsn", default=os.environ.get("REPLAYGEN_TEST_DSN",
                                                    "postgresql://postgres@127.0.0.1:5432/test"))
    a = ap.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="replaygen-ui-bench-") as tmp:
        for name in a.stores.split(","):
            log(f"{name}: writing {a.runs:,} runs and a run of {a.steps:,} steps")
            opened: Any = sqlite_store(Path(tmp), a.runs, a.steps) if name == "sqlite" \
                else postgres_store(a.dsn, a.runs, a.steps)
            with opened as store:
                log(f"{name}: timing {len(REQUESTS)} requests x {a.reps}")
                results[name] = measure(store, a.reps)
    print(table(results, a.runs, a.steps))


if __name__ == "__main__":
    main()
