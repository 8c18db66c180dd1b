"""The workload: one data-driven workflow, its steps, the side-effect log, and the expected results.

A run's arguments are a *plan*: a list of operations the ``plan`` workflow
interprets in order. Being data, a plan makes any mix of steps, sleeps,
waits, fan-outs, timeouts and retries from one registered workflow, and its
uncrashed result is computed here without any engine (``expected``).

Operations (JSON lists):

=========================================  =============================================
``["do", name, work_ms]``                  a synchronous step
``["async", name, work_ms]``               an ``async def`` step
``["retry", name, work_ms]``               a step that fails its first try; Retry(3)
``["sleep", seconds]``                     a durable Sleep
``["wait", signal]``                       Wait for a signal (sent by the signaler)
``["timeout", signal, seconds]``           Wait that always times out (nobody sends it)
``["all", [[name, work_ms, sync?], ...]]`` fan-out of steps (``sync?`` false: async step)
=========================================  =============================================

Every step appends one line to the side-effect log, fsynced, *before* it does its
work: ``{"run", "step", "pos", "attempt", "pid", "t"}`` with ``t`` the wall time
the step body began. The log lives outside the store, so it records what really
ran, whatever the journal says.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import zlib
from typing import Any

from replaygen import All, Do, Retry, Sleep, Wait, WaitTimeout, current_step

WORKFLOW = "crash.plan"

# Set in worker processes only (see crash.worker); in the harness parent every step is pure.
_effects_fd: int | None = None
_in_step_kill: dict[str, Any] | None = None
_in_step_lock = threading.Lock()
_in_step_seen = 0
offset = 0.0  # seconds the workers' clock is behind the real one (a schedule's scenario)


def configure(effects_path: str | None, in_step_kill: dict[str, Any] | None = None) -> None:
    global _effects_fd, _in_step_kill
    _effects_fd = None if effects_path is None else os.open(
        effects_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _in_step_kill = in_step_kill


def value(name: str, acc: Any) -> int:
    """A step's deterministic result."""
    return zlib.crc32(json.dumps([name, acc], sort_keys=True).encode()) % 1_000_000


def payload(run_id: str, signal_name: str, k: int) -> str:
    """The unique payload of the k-th signal ``signal_name`` sent to ``run_id``."""
    return f"{run_id}|{signal_name}|{k}"


def _record() -> None:
    """Append this execution to the side-effect log (fsynced), then maybe die here."""
    global _in_step_seen
    if _effects_fd is None:
        return
    info = current_step()
    line = json.dumps({"run": info.run_id, "step": info.step, "pos": info.position,
                       "attempt": info.attempt, "pid": os.getpid(), "t": time.time() - offset})
    os.write(_effects_fd, (line + "\n").encode())
    os.fsync(_effects_fd)
    spec = _in_step_kill
    if spec is not None and spec.get("step") in (None, info.step):
        with _in_step_lock:
            _in_step_seen += 1
            hit = _in_step_seen == spec.get("n", 1)
        if hit:
            from .worker import note_kill
            note_kill("in_step", info.run_id, info.step, info.position)
            os.kill(os.getpid(), signal.SIGKILL)


def step(name: str, acc: Any, work_ms: float) -> int:
    _record()
    if _effects_fd is not None and work_ms:
        time.sleep(work_ms / 1000)
    return value(name, acc)


async def astep(name: str, acc: Any, work_ms: float) -> int:
    _record()
    if _effects_fd is not None and work_ms:
        await asyncio.sleep(work_ms / 1000)
    return value(name, acc)


class Flaky(RuntimeError):
    pass


def flaky(name: str, acc: Any, work_ms: float) -> int:
    _record()
    if _effects_fd is not None:
        if work_ms:
            time.sleep(work_ms / 1000)
        if current_step().attempt == 1:
            raise Flaky(f"{name}: first try always fails")
    return value(name, acc)


RETRY = Retry(3, backoff=0.05, max_backoff=0.1, jitter=0.0)


def plan(run_id: str, ops: list[Any]) -> Any:
    """The one workflow of the harness: interpret ``ops`` (see the module docstring)."""
    acc: Any = run_id
    got: list[Any] = []
    for op in ops:
        kind = op[0]
        if kind == "do":
            acc = yield Do(op[1], step, op[1], acc, op[2])
        elif kind == "async":
            acc = yield Do(op[1], astep, op[1], acc, op[2])
        elif kind == "retry":
            acc = yield Do(op[1], flaky, op[1], acc, op[2], retry=RETRY)
        elif kind == "sleep":
            yield Sleep(op[1])
        elif kind == "wait":
            p = yield Wait(op[1])
            got.append(p)
            acc = value(p, acc)
        elif kind == "timeout":
            try:
                p = yield Wait(op[1], timeout=op[2])
                got.append(["unexpected", p])
            except WaitTimeout:
                got.append("timeout")
        elif kind == "all":
            acc = yield All(*[Do(n, step if sync else astep, n, acc, ms) for n, ms, sync in op[1]])
        else:
            raise ValueError(f"unknown op {op!r}")
    return {"acc": acc, "signals": got}


def expected(run_id: str, ops: list[Any]) -> Any:
    """The result an uncrashed run gives: drive the workflow with pure answers, no engine."""
    gen = plan(run_id, ops)
    sent: dict[str, int] = {}
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            cmd = gen.throw(error) if error is not None else gen.send(answer)
        except StopIteration as stop:
            return json.loads(json.dumps(stop.value))
        answer, error = None, None
        if isinstance(cmd, Do):
            answer = value(cmd.args[0], cmd.args[1])
        elif isinstance(cmd, All):
            answer = [value(c.args[0], c.args[1]) for c in cmd.commands]
        elif isinstance(cmd, Wait):
            if cmd.timeout is not None:
                error = WaitTimeout(cmd.signal)
            else:
                k = sent.get(cmd.signal, 0)
                sent[cmd.signal] = k + 1
                answer = payload(run_id, cmd.signal, k)
        answer = json.loads(json.dumps(answer))


def deliveries(run_id: str, ops: list[Any]) -> list[tuple[str, str, str]]:
    """The signals a run waits for, in the order they must be sent: (run_id, name, payload)."""
    out, sent = [], {}
    for op in ops:
        if op[0] == "wait":
            k = sent.get(op[1], 0)
            sent[op[1]] = k + 1
            out.append((run_id, op[1], payload(run_id, op[1], k)))
    return out


def load_runs(path: str) -> list[tuple[str, list[Any]]]:
    with open(path) as f:
        return [(r["run_id"], r["ops"]) for r in json.load(f)]
