"""The signal sender: ``python -m crash.signaler --store SPEC --dir DIR [--kill JSON] ...``

A separate process, as in production, delivers every signal the plan's runs
wait for, each with a unique payload, in order per run and signal name. It can
be SIGKILLed around its ``deliver()`` call (before, during, or after it
returned), so it keeps an fsynced log of deliveries that returned and, on
restart, retries each unrecorded one until a ``deliver()`` returns. A crash
after ``deliver()`` returned but before the log line leaves the outcome
unknown, so a retry first looks for the payload in the store (queued, then
consumed in a journal) and only sends what is truly missing: delivery is
at-least-once, made exactly-once by the sender, as a careful client would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from typing import Any


def _present(store: Any, run_id: str, name: str, payload: str) -> bool:
    # Queue first, then journal: a signal consumed between the two reads is still seen.
    if any(s.name == name and json.loads(s.payload) == payload for s in store.signals(run_id)):
        return True
    return any(e.kind == "wait" and e.name == name and e.status == "ok" and e.value is not None
               and json.loads(e.value) == payload for e in store.journal(run_id))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m crash.signaler")
    ap.add_argument("--store", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--kill", default="")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before the first delivery")
    ap.add_argument("--pace", type=float, default=0.0, help="max random pause between deliveries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from replaygen import Interpreter, RunNotFound, StoreUnavailable
    from . import plans
    from .stores import open_store
    from .worker import note_kill
    from . import worker

    worker._kills_path = os.path.join(args.dir, "kills.log")
    spec = json.loads(args.kill) if args.kill else {}
    rng = random.Random(args.seed * 1000 + os.getpid())
    store = open_store(args.store)
    interp = Interpreter(store, {plans.WORKFLOW: plans.plan})
    log_path = os.path.join(args.dir, "delivered.log")
    done: set[str] = set()
    if os.path.exists(log_path):
        with open(log_path) as f:
            done = {json.loads(line)["payload"] for line in f if line.strip()}
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    todo = []
    per_run = [plans.deliveries(r, ops) for r, ops in plans.load_runs(os.path.join(args.dir,
                                                                                  "plan.json"))]
    # Interleave runs, keeping each run's own order.
    while any(per_run):
        for d in per_run:
            if d:
                todo.append(d.pop(0))
    time.sleep(args.delay)
    count = 0
    for run_id, name, payload in todo:
        if payload in done:
            continue
        if args.pace:
            time.sleep(rng.uniform(0, args.pace))
        while True:
            try:
                if _present(store, run_id, name, payload):
                    break
                count += 1
                if spec.get("n") == count:
                    note_kill(f"deliver:{spec['when']}", run_id, name, None, payload=payload)
                    if spec["when"] == "before":
                        os.kill(os.getpid(), signal.SIGKILL)
                    if spec["when"] == "during":  # lands inside deliver(), mid-transaction
                        threading.Timer(spec.get("delay", 0.001), os.kill,
                                        (os.getpid(), signal.SIGKILL)).start()
                interp.deliver(run_id, name, payload)
                if spec.get("n") == count and spec["when"] == "after":
                    os.kill(os.getpid(), signal.SIGKILL)
                if spec.get("n") == count and spec["when"] == "during":
                    time.sleep(1.0)  # the timer fires in here if deliver() was quicker
                break
            except (RunNotFound, StoreUnavailable):
                time.sleep(0.05)  # the run is not started yet, or the store is busy: retry
        os.write(fd, (json.dumps({"run": run_id, "name": name, "payload": payload}) + "\n").encode())
        os.fsync(fd)
    interp.shutdown(timeout=1)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
