"""A worker process for the multi-process tests of per-workflow limits (run as a script, never
imported by pytest).

Usage: python tests/_limits_worker.py '<json config>'. Config keys: store ({"sqlite": path} or
{"dsn": ..., "schema": ...}), log (path every step appends to, O_APPEND + fsync), limit (slots
of workflow ``w``), lease, delay (seconds a step takes), nap (seconds of the Sleep between
steps), stop (path: the worker shuts down when it exists), gate (path: every step waits until
it exists), claims (path: each ``Store.claim`` call appends how many runs it took), killer
(this worker obeys kill markers), concurrency (the Interpreter's).

Workflow ``w(tag, steps)``: step i (returns i + 1) appends "B <tag> <i> <pid> <time>" when it
begins and "E ..." when it ends; between steps the run sleeps ``nap`` s after an even step
and waits for signal "go" (its payload adds to the result) after an odd one, so that runs park
and wake. A killer's step that finds LOG.kill-<tag>-<i> waits for LOG.fire, appends "K ..."
and kills its own process with SIGKILL (the marker is removed first: the step, re-executed
elsewhere, goes through).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Generator
from typing import Any

from replaygen import Do, Interpreter, Sleep, Wait
from replaygen.store import Store


def _open(where: dict[str, str]) -> Store:
    if "sqlite" in where:
        from replaygen.stores.sqlite import SQLiteStore
        return SQLiteStore(where["sqlite"])
    from replaygen.stores.postgres import PostgresStore
    return PostgresStore(where["dsn"], schema=where["schema"], pool_size=2)


def _await(path: str | None, poll: float = 0.005) -> None:
    while path and not os.path.exists(path):
        time.sleep(poll)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    fd, pid = os.open(cfg["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), os.getpid()
    delay, nap, killer = float(cfg.get("delay", 0.05)), float(cfg.get("nap", 0.05)), \
        bool(cfg.get("killer"))

    def record(mark: str, tag: str, i: int) -> None:
        os.write(fd, f"{mark} {tag} {i} {pid} {time.time()}\n".encode())
        os.fsync(fd)  # the line is on disk before the step goes on (or dies)

    def step(tag: str, i: int) -> int:
        record("B", tag, i)
        _await(cfg.get("gate"))
        marker = f"{cfg['log']}.kill-{tag}-{i}"
        if killer and os.path.exists(marker):
            os.remove(marker)
            _await(f"{cfg['log']}.fire")
            record("K", tag, i)
            os.kill(pid, signal.SIGKILL)
        time.sleep(delay)
        record("E", tag, i)
        return i + 1

    def w(tag: str, steps: int) -> Generator[Any, Any, int]:
        total = 0
        for i in range(steps):
            total += yield Do(f"s{i}", step, tag, i)
            if i + 1 < steps:
                if i % 2 == 0:
                    yield Sleep(nap)
                else:
                    total += yield Wait("go")
        return total

    store = _open(cfg["store"])
    if cfg.get("claims"):  # how often this worker asked for runs, and what it got
        claim, claims = store.claim, os.open(cfg["claims"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)

        def counted(*args: Any, **kwargs: Any) -> Any:
            took = claim(*args, **kwargs)
            os.write(claims, f"{len(took)}\n".encode())
            return took
        store.claim = counted  # type: ignore[method-assign]
    interp = Interpreter(store, {"w": w}, limits={"w": int(cfg["limit"])},
                         lease=float(cfg.get("lease", 10.0)),
                         concurrency=int(cfg.get("concurrency", 64)))
    interp.recover()
    print("ready", flush=True)
    _await(cfg["stop"], 0.05)
    interp.shutdown(timeout=5)
    store.close()


if __name__ == "__main__":
    main()
