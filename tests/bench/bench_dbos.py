"""One DBOS Transact measurement per process, the peer of bench_replaygen.py.

Runs in DBOS's own throwaway virtual environment (tests/bench/run.py creates it; DBOS is
never a dependency of replaygen), so it imports nothing from replaygen.

    python tests/bench/bench_dbos.py '<json config>'

Config keys: ``mode`` (w1, w2, w3-crash, w3-resume, w4-crash, w4-recover), ``store``
(sqlite or postgres), ``url`` (DBOS's system database URL), ``schema`` (Postgres only),
plus the mode's parameters. Same workflows as bench_replaygen.py: no-op steps returning a
~100-byte dict. DBOS on SQLite uses SQLite's default rollback journal with
synchronous=FULL (DBOS sets no pragma but busy_timeout and foreign_keys).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

T_PROCESS = time.time()

from bench_common import emit, noop, now  # noqa: E402

from dbos import DBOS, SetWorkflowID  # noqa: E402

CFG: dict[str, Any] = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
MARK: dict[str, float] = {}
CRASH = bool(CFG.get("crash"))
GATE = {"n": CFG.get("runs", 200), "count": 0, "lock": threading.Lock()}


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@DBOS.step()
def step(i: int) -> dict[str, Any]:
    return noop(i)


@DBOS.step()
def trapped(i: int) -> dict[str, Any]:
    if CRASH:
        kill_self()
    MARK.setdefault("live", now())
    return noop(i)


@DBOS.step()
def gate(i: int) -> dict[str, Any]:
    """Step 6 of ``ten``: in the crashing process, blocks until every run is here; the last
    one to arrive SIGKILLs the process."""
    if CRASH:
        with GATE["lock"]:
            GATE["count"] += 1
            if GATE["count"] >= GATE["n"]:
                kill_self()
        threading.Event().wait()
    return noop(i)


@DBOS.workflow()
def seq(n: int) -> int:
    for i in range(n):
        step(i)
    return n


@DBOS.workflow()
def long(n: int) -> int:
    MARK.setdefault("body", now())
    for i in range(n):
        step(i)
    trapped(n)
    return n + 1


@DBOS.workflow()
def ten(steps: int, crash_at: int) -> int:
    for i in range(steps):
        if i == crash_at:
            gate(i)
        else:
            step(i)
    return steps


def launch(cfg: dict[str, Any]) -> None:
    config: dict[str, Any] = {"name": "rgbench", "system_database_url": cfg["url"],
                              "log_level": "ERROR", "console_log_level": "ERROR"}
    if cfg.get("schema"):
        config["dbos_system_schema"] = cfg["schema"]
    DBOS(config=config)  # type: ignore[arg-type]
    DBOS.launch()


def mode_w1(cfg: dict[str, Any]) -> None:
    launch(cfg)
    n = cfg.get("steps", 1000)
    t0 = now()
    assert DBOS.start_workflow(seq, n).get_result() == n
    t = now() - t0
    emit(steps=n, seconds=t, steps_per_s=n / t)


def mode_w2(cfg: dict[str, Any]) -> None:
    launch(cfg)
    runs, steps = cfg.get("runs", 200), cfg.get("steps", 10)
    t0 = now()
    handles = [DBOS.start_workflow(seq, steps) for _ in range(runs)]
    t_started = now() - t0
    for h in handles:
        assert h.get_result() == steps
    t = now() - t0
    emit(runs=runs, steps=runs * steps, seconds=t, steps_per_s=runs * steps / t,
         start_seconds=t_started)


def mode_w3_crash(cfg: dict[str, Any]) -> None:
    launch(cfg)
    with SetWorkflowID("w3"):
        DBOS.start_workflow(long, cfg.get("steps", 1000))
    time.sleep(600)


def mode_w3_resume(cfg: dict[str, Any]) -> None:
    n = cfg.get("steps", 1000)
    t_import = time.time()
    t0 = now()
    launch(cfg)  # DBOS.launch() recovers this executor's pending workflows
    t_launch = now()
    deadline = time.monotonic() + 300
    while "live" not in MARK and time.monotonic() < deadline:
        time.sleep(0.0005)
    assert DBOS.retrieve_workflow("w3").get_result() == n + 1
    body, live = MARK["body"], MARK["live"]
    emit(replayed=n, seconds=live - t0, replayed_per_s=n / (live - t0),
         replay_only_per_s=n / (live - body), engine_to_body_s=body - t0,
         process_to_body_s=(T_PROCESS - cfg["spawned"]) + (t_import - T_PROCESS) + (body - t0),
         process_to_engine_s=(T_PROCESS - cfg["spawned"]) + (t_import - T_PROCESS),
         launch_s=t_launch - t0)


def mode_w4_crash(cfg: dict[str, Any]) -> None:
    launch(cfg)
    runs, steps, crash_at = cfg.get("runs", 200), cfg.get("steps", 10), cfg.get("crash_at", 5)
    for i in range(runs):
        with SetWorkflowID(f"r{i}"):
            DBOS.start_workflow(ten, steps, crash_at)
    time.sleep(3600)


def mode_w4_recover(cfg: dict[str, Any]) -> None:
    runs, steps = cfg.get("runs", 200), cfg.get("steps", 10)
    t0 = now()
    launch(cfg)
    t_launch = now()
    for i in range(runs):
        assert DBOS.retrieve_workflow(f"r{i}").get_result() == steps
    t = now() - t0
    emit(runs=runs, seconds=t, recover_call_s=t_launch - t0,
         steps_per_s=runs * (steps - cfg.get("crash_at", 5)) / t)


MODES = {"w1": mode_w1, "w2": mode_w2, "w3-crash": mode_w3_crash, "w3-resume": mode_w3_resume,
         "w4-crash": mode_w4_crash, "w4-recover": mode_w4_recover}

if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    MODES[CFG["mode"]](CFG)
    sys.stdout.flush()
    os._exit(0)  # DBOS.destroy() can wait on background threads; the measurement is taken
