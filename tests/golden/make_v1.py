"""Writes tests/golden/v1.db: runs parked in every resumable state, by replaygen 0.1 (schema 1).

Run once when the on-disk format changes on purpose (then add v2.db beside it and keep v1.db):
    python tests/golden/make_v1.py
The test reads a copy of the file and resumes every run with today's code.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from replaygen import Interpreter  # noqa: E402
from replaygen.stores.sqlite import SQLiteStore  # noqa: E402
from replaygen.testing import FakeClock  # noqa: E402
from tests.golden.flows import WORKFLOWS  # noqa: E402

PATH = Path(__file__).with_name("v1.db")
if __name__ == "__main__":
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{PATH}{suffix}"):
            os.remove(f"{PATH}{suffix}")
    clock = FakeClock(1_700_000_000.0)
    interp = Interpreter(SQLiteStore(PATH), WORKFLOWS, clock=clock)
    interp.start("order", {"id": 1, "items": ["a", "b"]}, run_id="sleeping-order")
    interp.start("approval", "exp-7", run_id="waiting-approval")
    interp.start("fanout", 3, run_id="done-fanout")
    interp.start("retrying", run_id="retrying")
    interp.deliver("waiting-approval", "note", {"text": "queued before the wait"})
    deadline = time.monotonic() + 10
    while any(interp.status(r).state not in want for r, want in (
            ("sleeping-order", ("sleeping",)), ("waiting-approval", ("waiting",)),
            ("done-fanout", ("completed",)), ("retrying", ("running",)))):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    interp.shutdown()
    store = SQLiteStore(PATH)
    store._w.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file
    store.close()
    print("wrote", PATH)
