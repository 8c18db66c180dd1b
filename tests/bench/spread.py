"""Spread: do two worker processes share the runs a Client starts, and finish them sooner?

For 1 and then 2 workers: boot the worker processes (tests/_services_worker.py serving
tests._service_app: ``Interpreter(store, concurrency=10).recover()``) and wait until each is
ready; then a Client in this process starts 40 runs of ``nap`` (one step of 1 second each) and
the wall time until every run is completed is measured. Prints the wall time, the ideal time
(the runs in rounds of the total concurrency), and how many runs each worker executed.

    python tests/bench/spread.py [--store sqlite|postgres] [--runs 40] [--step 1.0]
                                 [--concurrency 10] [--workers 1 2] [--backlog]

``--backlog`` starts the runs before the workers boot (their recover() then finds them).
PostgreSQL: REPLAYGEN_TEST_DSN or postgresql://postgres@127.0.0.1:5432/test, in a fresh schema.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from replaygen import Client  # noqa: E402
from replaygen.store import ACTIVE  # noqa: E402
from tests._services_worker import close, open_store  # noqa: E402

DSN = os.environ.get("REPLAYGEN_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def once(kind: str, workers: int, runs: int, step: float, concurrency: int,
         backlog: bool) -> tuple[float, list[int]]:
    """Wall seconds until every run completed, and the runs each worker executed."""
    with tempfile.TemporaryDirectory() as tmp:
        schema = f"rgspread_{uuid.uuid4().hex[:8]}"
        spec = json.dumps({"sqlite": os.path.join(tmp, "runs.db")} if kind == "sqlite"
                          else {"postgres": DSN, "schema": schema})
        store = open_store(spec)
        client = Client(store)
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        procs: list[subprocess.Popen[bytes]] = []
        keys = [f"nap-{i:03d}" for i in range(runs)]

        def start() -> float:
            began = time.perf_counter()
            for key in keys:
                client.start("nap", tmp, key, step, run_id=key)
            return began

        try:
            began = start() if backlog else 0.0
            for w in range(workers):
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests._services_worker", "serve", spec,
                     "--import", "tests._service_app", "--recover",
                     "--concurrency", str(concurrency), "--report", os.path.join(tmp, f"w{w}.json"),
                     "--stop", os.path.join(tmp, "stop")], cwd=ROOT, env=env))
            reports = [Path(tmp, f"w{w}.json") for w in range(workers)]
            while not all(r.exists() for r in reports):
                assert all(p.poll() is None for p in procs), "a worker died while booting"
                time.sleep(0.01)
            began = began if backlog else start()
            while store.runs(states=ACTIVE, limit=1):
                time.sleep(0.01)
            wall = time.perf_counter() - began
            pids = [json.loads(r.read_text())["pid"] for r in reports]
            done = Counter(client.result(key) for key in keys)
            return wall, [done[pid] for pid in pids]
        finally:
            Path(tmp, "stop").touch()
            for p in procs:
                p.wait(timeout=60)
            close(store)
            if kind == "postgres":
                from replaygen.stores.postgres import PostgresStore

                PostgresStore.drop_schema(DSN, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--step", type=float, default=1.0, help="seconds of work per run")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--backlog", action="store_true")
    a = parser.parse_args()
    print(f"{a.runs} runs of one {a.step:g} s step, started by a Client "
          f"{'before' if a.backlog else 'after'} the workers boot; concurrency={a.concurrency}; "
          f"store: {a.store}")
    print(f"{'workers':>7}  {'wall (s)':>8}  {'ideal (s)':>9}  runs executed per worker")
    for n in a.workers:
        wall, per = once(a.store, n, a.runs, a.step, a.concurrency, a.backlog)
        ideal = math.ceil(a.runs / (n * a.concurrency)) * a.step
        print(f"{n:>7}  {wall:>8.2f}  {ideal:>9.2f}  {' + '.join(map(str, per))}", flush=True)


if __name__ == "__main__":
    main()
