"""Databases written by earlier versions keep working: the on-disk format never breaks silently.

tests/golden/v1.db was written by replaygen 0.1 (schema 1) with tests/golden/make_v1.py; it
holds a sleeping run, a waiting run with a signal queued, a completed run and a run in a
retry backoff. Today's code must read every run and resume each to the same end.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from replaygen import Interpreter
from replaygen.stores.sqlite import SQLiteStore
from replaygen.testing import FakeClock

from .golden.flows import WORKFLOWS

GOLDEN = Path(__file__).parent / "golden"


def test_a_version_1_database_is_read_and_every_run_resumes(tmp_path: Path) -> None:
    shutil.copy(GOLDEN / "v1.db", tmp_path / "v1.db")
    clock = FakeClock(1_700_000_000.0 + 10)
    store = SQLiteStore(tmp_path / "v1.db")
    interp = Interpreter(store, WORKFLOWS, clock=clock)
    assert sorted(interp.recover()) == ["retrying", "sleeping-order", "waiting-approval"]
    assert store.workers()[interp.worker_id].workflows == sorted(WORKFLOWS)  # the table came
    assert interp.result("done-fanout") == [{"total": 0, "items": []}, {"total": 10, "items": ["1"]},
                                            {"total": 20, "items": ["2", "2"]}]
    interp.deliver("waiting-approval", "decision", {"approved": True})
    assert interp.result("waiting-approval", timeout=10) == [
        "exp-7", "queued before the wait", {"approved": True}]
    deadline = time.monotonic() + 20
    while interp.status("retrying").state != "completed":  # the retry backoffs pass
        assert time.monotonic() < deadline, interp.status("retrying")
        clock.advance(120)
        time.sleep(0.02)
    clock.advance(3600)
    assert interp.result("sleeping-order", timeout=10) == {"id": 1, "total": 20}
    assert interp.result("retrying") == "ok"
    kinds = [(e.kind, e.name, e.status) for e in interp._store.journal("retrying")]  # noqa: SLF001
    assert kinds == [("retry", "call-1", "error"), ("do", "call-1", "error"),
                     ("retry", "call-2", "error"), ("do", "call-2", "error"), ("do", "call-3", "ok")]
    interp.shutdown()
