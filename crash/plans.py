"""The workload: one data-driven workflow, its steps, the side-effect log, and the expected results.

A run's arguments are a *plan*: a list of operations the ``plan`` workflow
interprets in order. Being data, a plan makes any mix of steps, sleeps,
waits, fan-outs, timeouts, retries, child runs and deadlines from one registered
workflow, and its uncrashed outcome (and its children's) is computed here without
any engine (``expected``, ``tree``).

Operations (JSON lists):

===============================================  ===============================================
``["do", name, work_ms]``                        a synchronous step
``["async", name, work_ms]``                     an ``async def`` step
``["retry", name, work_ms]``                     a step that fails its first try; Retry(3)
``["gate", name, work_ms]``                      a step that fails (no retry) while the gate
                                                 file is closed (a fork's source; see GATE)
``["sleep", seconds]``                           a durable Sleep
``["wait", signal]``                             Wait for a signal (sent by the signaler)
``["timeout", signal, seconds]``                 Wait that always times out (nobody sends it)
``["all", [[name, work_ms, sync?], ...]]``       fan-out of steps (``sync?`` false: async step)
``["child", name, ops]``                         a child run of the plan ``ops``; awaits it
``["children", [[name, ops], ...]]``             an ``All`` of child runs
``["deadline", seconds]``                        ``Deadline``, far off: journaled and inherited,
                                                 it never strikes in a scenario
``["strike", seconds, park]``                    ``Deadline`` (near), then a *hold*: a park that
                                                 only the deadline ends, ``DeadlineExceeded``
                                                 caught
``["hold", park]``                               a hold struck by a deadline already in force
                                                 (a child's: the one it inherited)
``["park"]``                                     waits for good (uncaught): a child ended only
                                                 by its parent's cancel
``["strike_child", seconds, name, ops]``         ``Deadline`` (near), then a child of ``ops``
                                                 (which begin with a hold, then end by
                                                 themselves); the parent catches its own
                                                 ``DeadlineExceeded``
===============================================  ===============================================

``park`` is ``"wait"`` (a Wait on ``HOLD_SIGNAL``, which nobody sends) or ``"sleep"`` (a Sleep
of ``HOLD_SLEEP`` seconds, far longer than any near deadline).

A child's plan gets its derived id (``<parent>/<position>``, as the engine derives it) as its
first argument, so its steps' values are its own; the workflow counts positions itself. A
child never waits for a signal (the signaler addresses top-level runs only).

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
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from replaygen import (
    All, Child, Deadline, DeadlineExceeded, Do, Retry, Sleep, Wait, WaitTimeout, current_step,
)

WORKFLOW = "crash.plan"
HOLD_SIGNAL = "forever"
"""The signal a hold or a park waits for: nobody ever sends it."""
HOLD_SLEEP = 60.0
"""A hold's Sleep: much longer than any near deadline (only the deadline ends it)."""
NEAR = 30.0
"""A Deadline shorter than this strikes at the next hold; a longer one never strikes."""

# Set in worker processes only (see crash.worker); in the harness parent every step is pure.
_effects_fd: int | None = None
_in_step_kill: dict[str, Any] | None = None
_in_step_lock = threading.Lock()
_in_step_seen = 0
_gate_path: str | None = None
offset = 0.0  # seconds the workers' clock is behind the real one (a schedule's scenario)
GATE = "gate.open"
"""A ``gate`` step fails until this file exists next to the side-effect log: a run failed by
an outage, forked once it is over (the harness opens the gate)."""


def configure(effects_path: str | None, in_step_kill: dict[str, Any] | None = None) -> None:
    global _effects_fd, _in_step_kill, _gate_path
    _effects_fd = None if effects_path is None else os.open(
        effects_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    _in_step_kill = in_step_kill
    _gate_path = None if effects_path is None else os.path.join(
        os.path.dirname(effects_path), GATE)


def value(name: str, acc: Any) -> int:
    """A step's deterministic result."""
    return zlib.crc32(json.dumps([name, acc], sort_keys=True).encode()) % 1_000_000


def payload(run_id: str, signal_name: str, k: int) -> str:
    """The unique payload of the k-th signal ``signal_name`` sent to ``run_id``."""
    return f"{run_id}|{signal_name}|{k}"


def child_id(parent: str, position: int) -> str:
    """The id the engine derives for a child started at ``position``: the parent's id, a
    slash, the position (the harness keeps ids short, so the engine's hashing of over-long
    ids never applies)."""
    return f"{parent}/{position}"


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


class GateClosed(RuntimeError):
    pass


def gated(name: str, acc: Any, work_ms: float) -> int:
    _record()
    if _gate_path is not None and not os.path.exists(_gate_path):
        raise GateClosed(f"{name}: the gate is closed")
    if _effects_fd is not None and work_ms:
        time.sleep(work_ms / 1000)
    return value(name, acc)


RETRY = Retry(3, backoff=0.05, max_backoff=0.1, jitter=0.0)


# ---- the workflow -------------------------------------------------------------------------

@dataclass
class _Run:
    """What the plan workflow keeps as it goes: its id, accumulator, the outcomes of its
    waits and holds, and the journal position of its next command (for child ids)."""

    run_id: str
    acc: Any
    got: list[Any] = field(default_factory=list)
    pos: int = 0


_Op = Generator[Any, Any, None]


def _steps(r: _Run, op: list[Any]) -> _Op:
    kind = op[0]
    if kind == "all":
        r.acc = yield All(*[Do(n, step if sync else astep, n, r.acc, ms) for n, ms, sync in op[1]])
        r.pos += len(op[1])
        return
    fn, retry = {"do": (step, None), "async": (astep, None), "retry": (flaky, RETRY),
                 "gate": (gated, None)}[kind]
    r.acc = yield Do(op[1], fn, op[1], r.acc, op[2], retry=retry)
    r.pos += 1


def _waits(r: _Run, op: list[Any]) -> _Op:
    kind = op[0]
    r.pos += 1
    if kind == "sleep":
        yield Sleep(op[1])
    elif kind == "wait":
        p = yield Wait(op[1])
        r.got.append(p)
        r.acc = value(p, r.acc)
    elif kind == "timeout":
        try:
            p = yield Wait(op[1], timeout=op[2])
            r.got.append(["unexpected", p])
        except WaitTimeout:
            r.got.append("timeout")
    else:  # park: only a cancel ends it, and it is not caught
        yield Wait(HOLD_SIGNAL)


def _hold(r: _Run, park: str) -> _Op:
    """Park until the deadline in force strikes; note how the park ended."""
    r.pos += 1
    try:
        got = yield (Sleep(HOLD_SLEEP) if park == "sleep" else Wait(HOLD_SIGNAL))
        r.got.append(["unexpected", park, got])
    except DeadlineExceeded:
        r.got.append("deadline")


def _children(r: _Run, op: list[Any]) -> _Op:
    kind = op[0]
    if kind == "child":
        result = yield Child(WORKFLOW, child_id(r.run_id, r.pos), op[2])
        r.acc, r.pos = value(op[1], [r.acc, result]), r.pos + 1
    else:
        kids = [Child(WORKFLOW, child_id(r.run_id, r.pos + i), ops) for i, (_, ops) in
                enumerate(op[1])]
        results = yield All(*kids)
        r.acc, r.pos = value("children", [r.acc, [n for n, _ in op[1]], results]), r.pos + len(kids)


def _deadlines(r: _Run, op: list[Any]) -> _Op:
    kind = op[0]
    if kind == "hold":
        yield from _hold(r, op[1])
        return
    yield Deadline(op[1])
    r.pos += 1
    if kind == "strike":
        yield from _hold(r, op[2])
    elif kind == "strike_child":
        try:
            result = yield Child(WORKFLOW, child_id(r.run_id, r.pos), op[3])
            r.got.append(["unexpected", op[2], result])
        except DeadlineExceeded:
            r.got.append("deadline")
        r.pos += 1


OPS: dict[str, Callable[[_Run, list[Any]], _Op]] = {
    "do": _steps, "async": _steps, "retry": _steps, "gate": _steps, "all": _steps,
    "sleep": _waits, "wait": _waits, "timeout": _waits, "park": _waits,
    "child": _children, "children": _children,
    "deadline": _deadlines, "strike": _deadlines, "hold": _deadlines, "strike_child": _deadlines,
}


def plan(run_id: str, ops: list[Any]) -> Any:
    """The one workflow of the harness: interpret ``ops`` (see the module docstring)."""
    r = _Run(run_id, run_id)
    for op in ops:
        handler = OPS.get(op[0])
        if handler is None:
            raise ValueError(f"unknown op {op!r}")
        yield from handler(r, op)
    return {"acc": r.acc, "signals": r.got}


# ---- the uncrashed outcome, without any engine ------------------------------------------------

@dataclass
class Expect:
    """How an uncrashed run of a plan ends: ``completed`` with ``result``, or ``cancelled``
    (a child parked for good, cancelled when its parent's deadline struck)."""

    run_id: str
    ops: list[Any]
    parent: str | None
    state: str = "completed"
    result: Any = None


def _roundtrip(x: Any) -> Any:
    return json.loads(json.dumps(x))  # what the engine hands back: decoded from its stored form


def _is_hold(cmd: Any) -> bool:
    return (isinstance(cmd, Wait) and cmd.signal == HOLD_SIGNAL) or (
        isinstance(cmd, Sleep) and cmd.seconds >= HOLD_SLEEP)


def _drive(run_id: str, ops: list[Any], parent: str | None, deadline: str | None,
           out: dict[str, Expect]) -> Expect:
    """Drive the workflow with pure answers. Time is modelled by one rule: a near deadline
    strikes at the next hold, and nothing else may come between (else the plan races the
    clock, and is refused). ``deadline``: None, ``far`` or ``near`` (inherited)."""
    exp = out[run_id] = Expect(run_id, ops, parent)
    gen = plan(run_id, ops)
    sent: dict[str, int] = {}
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            cmd = gen.throw(error) if error is not None else gen.send(answer)
        except StopIteration as stop:
            exp.result = _roundtrip(stop.value)
            return exp
        answer, error = None, None
        if deadline == "near" and not (_is_hold(cmd) or isinstance(cmd, (Child, Deadline))):
            raise ValueError(f"plan of {run_id!r}: {cmd!r} comes between a near deadline and "
                             f"the hold it strikes")
        if isinstance(cmd, Deadline):
            deadline = "near" if cmd.seconds < NEAR else deadline or "far"
        elif _is_hold(cmd):
            if deadline != "near":
                exp.state = "parked"  # for good: only its parent's cancel ends it
                return exp
            error, deadline = DeadlineExceeded(f"run {run_id!r} passed its deadline"), None
        elif isinstance(cmd, Child):
            kid = _drive(cmd.args[0], cmd.args[1], run_id, deadline, out)
            if kid.state == "completed" and deadline != "near":
                answer = kid.result
            elif kid.state == "completed" and deadline == "near":  # struck too, it went on:
                # the parent's strike comes first, even if the child finishes first
                error, deadline = DeadlineExceeded(f"run {run_id!r} passed its deadline"), None
            else:
                raise ValueError(f"plan of {run_id!r}: child {kid.run_id!r} ends "
                                 f"{kid.state} under a {deadline} deadline: it races the clock")
        elif isinstance(cmd, All):
            answer = [_member(c, run_id, deadline, out) for c in cmd.commands]
        elif isinstance(cmd, Do):
            answer = value(cmd.args[0], cmd.args[1])
        elif isinstance(cmd, Wait) and cmd.timeout is not None:
            error = WaitTimeout(cmd.signal)
        elif isinstance(cmd, Wait):
            if parent is not None:
                raise ValueError(f"plan of child {run_id!r} waits for signal {cmd.signal!r}: "
                                 f"the signaler addresses top-level runs only")
            k = sent.get(cmd.signal, 0)
            sent[cmd.signal] = k + 1
            answer = payload(run_id, cmd.signal, k)
        answer = _roundtrip(answer)


def _member(cmd: Any, run_id: str, deadline: str | None, out: dict[str, Expect]) -> Any:
    """The answer of one member of an ``All``: a step's value or a child's result."""
    if isinstance(cmd, Do):
        return value(cmd.args[0], cmd.args[1])
    kid = _drive(cmd.args[0], cmd.args[1], run_id, deadline, out)
    if kid.state != "completed" or deadline == "near":
        raise ValueError(f"plan of {run_id!r}: child {kid.run_id!r} in an All must complete, "
                         f"with no near deadline in force")
    return kid.result


def tree(run_id: str, ops: list[Any]) -> dict[str, Expect]:
    """The uncrashed outcome of a top-level run and of every run it starts, by run id."""
    out: dict[str, Expect] = {}
    top = _drive(run_id, ops, None, None, out)
    if top.state != "completed":
        raise ValueError(f"plan of {run_id!r} parks for good: nothing would end it")
    return out


def expected(run_id: str, ops: list[Any]) -> Any:
    """The result an uncrashed top-level run gives: drive the workflow with pure answers."""
    return tree(run_id, ops)[run_id].result


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
