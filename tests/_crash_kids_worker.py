"""Processes of tests/test_crash_children.py (``python -m tests._crash_kids_worker``).

    serve STORE BOX NAMES
        A worker that knows only the workflows NAMES (comma-separated keys of
        ``tests._crash_kids_app.WORKFLOWS``): ``Interpreter(store, those).recover()``, then it
        writes ``BOX/ready-<pid>`` and serves until ``BOX/stop`` exists (or it is killed).
    cancel STORE BOX RUN_ID
        Opens the store, writes ``BOX/ready-<pid>``, waits for ``BOX/go-<pid>``, calls
        ``Client(store).cancel(RUN_ID)`` and writes ``BOX/cancelled-<pid>``: a test can kill
        it before, during or after the call.

STORE is JSON, as for tests/_services_worker.py: {"sqlite": PATH} or {"postgres": DSN,
"schema": NAME}.
"""

from __future__ import annotations

import os
import sys
import time

from replaygen import Client, Interpreter

from ._crash_kids_app import WORKFLOWS
from ._services_worker import close, open_store


def touch(box: str, name: str) -> None:
    """Create ``BOX/name`` at once (a rename), fsynced: a reader never sees half a state."""
    path = os.path.join(box, name)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT, 0o644)
    os.fsync(fd)
    os.close(fd)
    os.replace(path + ".tmp", path)


def serve(spec: str, box: str, names: str) -> None:
    store = open_store(spec)
    interp = Interpreter(store, {name: WORKFLOWS[name] for name in names.split(",")})
    interp.recover()
    touch(box, f"ready-{os.getpid()}")
    stop = os.path.join(box, "stop")
    while not os.path.exists(stop):
        time.sleep(0.02)
    interp.shutdown(timeout=10)
    close(store)


def cancel(spec: str, box: str, run_id: str) -> None:
    store = open_store(spec)
    client = Client(store)
    touch(box, f"ready-{os.getpid()}")
    go = os.path.join(box, f"go-{os.getpid()}")
    while not os.path.exists(go):
        time.sleep(0.0005)  # a short poll: the test's kill is timed from the go
    client.cancel(run_id)
    touch(box, f"cancelled-{os.getpid()}")
    close(store)


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    {"serve": serve, "cancel": cancel}[role](*rest)
