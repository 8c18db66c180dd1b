"""A worker process for the multi-process SQLite tests (run as a script, never imported by pytest).

    sqlite_worker.py DB LOG start RUN_ID STEPS [WAIT]   start a run and serve until it finishes
    sqlite_worker.py DB LOG recover                     recover() and serve until no run is active
    sqlite_worker.py DB LOG deliver RUN_ID NAME JSON    deliver one signal and exit

Every step appends "run step pid time" to LOG with fsync before it returns. A step
kills its own process with SIGKILL when the file LOG.kill-<run>-<step> exists
(the file is removed first, so the re-executed step goes through).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

from replaygen import Do, Interpreter, Wait
from replaygen.stores.sqlite import SQLiteStore

DB, LOG, ACTION, *ARGS = sys.argv[1:]


def step(run_id: str, i: int) -> int:
    with open(LOG, "a") as f:
        f.write(f"{run_id} {i} {os.getpid()} {time.time()}\n")
        f.flush()
        os.fsync(f.fileno())
    trap = f"{LOG}.kill-{run_id}-{i}"
    if os.path.exists(trap):
        os.remove(trap)
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def chain(run_id: str, steps: int, wait: bool = False) -> Any:
    total = 0
    for i in range(steps):
        total += yield Do(f"step-{i}", step, run_id, i)
        if wait and i == 0:
            total += (yield Wait("go"))["n"]
    return total


def serve(interp: Interpreter, store: SQLiteStore) -> None:
    while store.runs(states=["pending", "running", "sleeping", "waiting"], limit=1):
        time.sleep(0.02)
    interp.shutdown()


store = SQLiteStore(DB)
interp = Interpreter(store, [chain], lease=5.0)
if ACTION == "start":
    run_id, steps = ARGS[0], int(ARGS[1])
    interp.start(chain, run_id, steps, len(ARGS) > 2, run_id=run_id)
    serve(interp, store)
elif ACTION == "recover":
    print(json.dumps({"recovered": interp.recover(), "at": time.time()}), flush=True)
    serve(interp, store)
elif ACTION == "deliver":
    interp.deliver(ARGS[0], ARGS[1], json.loads(ARGS[2]))
    print(json.dumps({"delivered_at": time.time()}), flush=True)
    interp.shutdown()
