"""A worker process for the multi-process Postgres tests and the benchmark.

Usage: python tests/_pg_worker.py '<json config>'. Config keys: dsn, schema, lease, effects
(path of a file every step execution appends to, fsynced), delay (seconds each step sleeps),
stop (path: the worker shuts down when it exists), go (path: recover() waits for it),
app (application_name of the worker's connections).

Workflow ``work(run_id, n)``: n steps; step i appends "B <run> <i> <pid>" to ``effects``
when it begins and "E <run> <i> <pid>" when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from replaygen import Do, Interpreter
from replaygen.stores.postgres import PostgresStore


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(process)d %(message)s")
    fd = os.open(cfg["effects"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) \
        if cfg.get("effects") else None
    delay, pid = float(cfg.get("delay", 0.0)), os.getpid()

    def record(mark: str, run_id: str, i: int) -> None:
        if fd is not None:
            os.write(fd, f"{mark} {run_id} {i} {pid}\n".encode())
            os.fsync(fd)

    def step(run_id: str, i: int) -> dict[str, object]:
        record("B", run_id, i)
        if delay:
            time.sleep(delay)
        record("E", run_id, i)
        return {"run": run_id, "step": i, "payload": "x" * 60}

    def work(run_id: str, n: int):  # type: ignore[no-untyped-def]
        done = 0
        for i in range(n):
            yield Do(f"s{i}", step, run_id, i)
            done += 1
        return done

    store = PostgresStore(cfg["dsn"], schema=cfg["schema"], application_name=cfg.get("app", "rg"))
    interp = Interpreter(store, {"work": work}, lease=float(cfg.get("lease", 10.0)))
    print("ready", flush=True)
    go = cfg.get("go")
    while go and not os.path.exists(go):
        time.sleep(0.005)
    interp.recover()
    print("recovered", flush=True)
    stop = cfg["stop"]
    while not os.path.exists(stop):
        time.sleep(0.05)
    interp.shutdown(timeout=5)
    store.close()


if __name__ == "__main__":
    main()
