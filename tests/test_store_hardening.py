"""Opening a SQLite store (issue 15): processes opening a new file at the same moment all
succeed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from replaygen.stores.sqlite import SQLiteStore

PATIENCE = 60.0


# ---- processes opening a new file at the same moment ---------------------------------------

OPENER = r"""
import os, sys
from replaygen.stores.sqlite import SQLiteStore
folder, me, go = sys.argv[1], sys.argv[2], int(sys.argv[3])
for round in range(int(sys.argv[4])):
    print("ready", flush=True)
    os.read(go, 1)  # the barrier: every opener is released at once
    try:
        store = SQLiteStore(os.path.join(folder, f"round-{round}.db"))
        store.heartbeat(me, 30.0)
        store.create(f"run-{me}", "wf", "{}", me)
        store.close()
        print("ok", flush=True)
    except Exception as exc:
        print(f"FAIL {type(exc).__name__}: {exc}", flush=True)
"""


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    rounds, openers = 50, 3
    gates = [os.pipe() for _ in range(openers)]
    procs = [subprocess.Popen([sys.executable, "-c", OPENER, str(tmp_path), f"p{i}", str(r),
                               str(rounds)], pass_fds=(r,), stdout=subprocess.PIPE, text=True)
             for i, (r, _) in enumerate(gates)]
    try:
        failures = []
        for round in range(rounds):
            assert all(p.stdout and p.stdout.readline() == "ready\n" for p in procs)
            for _, w in gates:
                os.write(w, b"g")
            answers = [p.stdout.readline().strip() for p in procs if p.stdout]
            failures += [f"round {round}: {a}" for a in answers if a != "ok"]
            if not failures:
                runs = SQLiteStore(tmp_path / f"round-{round}.db").runs()
                assert sorted(r.run_id for r in runs) == [f"run-p{i}" for i in range(openers)]
        assert failures == []
    finally:
        for r, w in gates:
            os.close(r)
            os.close(w)
        for p in procs:
            p.wait(PATIENCE)
