"""The scenarios: one per boundary of a run's life, plus the random mode.

Each deterministic scenario gives the i-th worker process of its life a kill
point (``None``: run to the end); the worker SIGKILLs itself at the n-th
matching engine event (see ``crash.worker.Killer``), or inside a step
(``crash.plans``). The signal scenario kills the *sending* process instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

# A run touching every kind of command: steps, a durable sleep, two Waits on one signal
# name (FIFO), a fan-out with a slow async branch, a Wait that times out, a retried step.
BASE_OPS: list[Any] = [
    ["do", "a", 5], ["do", "b", 10], ["sleep", 0.3], ["do", "c", 5], ["wait", "go"],
    ["all", [["fan_0", 5, True], ["fan_1", 40, True], ["fan_2", 250, False]]],
    ["timeout", "never", 0.2], ["retry", "flaky", 5], ["async", "d", 5], ["wait", "go"],
    ["do", "z", 5],
]


# More sleeps and fan-outs, so that every repeated kill still finds its boundary ahead.
LONG_OPS: list[Any] = BASE_OPS[:-1] + [
    ["sleep", 0.3], ["do", "e", 5],
    ["all", [["fan_0", 5, True], ["fan_1", 40, True], ["fan_2", 250, False]]],
    ["sleep", 0.3], ["do", "f", 5],
    ["all", [["fan_0", 5, True], ["fan_1", 40, True], ["fan_2", 250, False]]],
    ["do", "z", 5],
]


# Children: an All of three (one starts a grandchild), a far deadline the next child inherits,
# a lone child with a fan-out and a retried step. No Waits: a waiting parent awaits children.
KIDS: list[Any] = [
    ["children", [["k0", [["do", "x", 5], ["do", "y", 10]]],
                  ["k1", [["async", "x", 5], ["sleep", 0.2], ["retry", "r", 5]]],
                  ["k2", [["do", "x", 5], ["child", "g", [["do", "x", 5], ["do", "y", 5]]]]]]],
    ["deadline", 3600],
    ["child", "c", [["do", "x", 5], ["all", [["f0", 5, True], ["f1", 30, False]]],
                    ["do", "y", 5]]],
]
CHILD_OPS: list[Any] = [["do", "a", 5], *KIDS, ["do", "z", 5]]
LONG_CHILD_OPS: list[Any] = [["do", "a", 5], *KIDS, ["do", "b", 5], *KIDS, ["do", "z", 5]]

# Deadlines: a far one (journaled, never strikes), a strike caught in the parent, a child
# struck by the deadline it inherits (it catches it and goes on to its end, unhindered by
# the cancel its parent's strike sends; the parent catches its own DeadlineExceeded), another
# strike. Every wait is a hold.
STRIKES: list[Any] = [
    ["strike", 0.3, "wait"], ["do", "b", 5],
    ["strike_child", 0.4, "s", [["hold", "wait"], ["do", "x", 5]]],
]
STRIKE_OPS: list[Any] = [["do", "a", 5], ["deadline", 3600], *STRIKES,
                         ["do", "c", 5], ["strike", 0.3, "wait"], ["do", "z", 5]]
LONG_STRIKE_OPS: list[Any] = [["do", "a", 5], ["deadline", 3600], *STRIKES * 3, ["do", "z", 5]]


@dataclass
class Scenario:
    name: str
    boundary: str                      # what the table says
    runs: list[tuple[str, list[Any]]]
    worker_kills: list[dict[str, Any] | None] = field(default_factory=list)
    shutdown_after: list[int] = field(default_factory=list)
    signaler_kills: list[dict[str, Any] | None] = field(default_factory=list)
    signal_delay: float = 0.0
    signal_pace: float = 0.0
    lease: float = 10.0
    stall: dict[str, Any] | None = None     # SIGSTOP the first worker here; see run_stall
    random_kills: int = 0                    # > 0: the random mode, this many kills
    seed: int = 0
    expect_kill: bool = True                 # the kill point must be reached
    schedule: dict[str, Any] | None = None   # the runs are a schedule's ticks: see SCHEDULED
    default: bool = True                     # False: only with --only (a known engine bug)
    boot_delay: float = 0.0                  # a restarted worker boots this much later
    limit: int = 0                           # > 0: limits={the plan workflow: limit}
    helpers: int = 0                         # workers never killed, besides the killed one
    operation: str | None = None             # "purge" or "fork": see crash/operations.py
    size: int = 0                            # an operation's runs to purge, or forks to make


# A schedule's tick: the workers' clocks start at TICK (every life again), so the one tick due
# is TICK's; the run's arguments are its own plan, as for the other runs. No sleep, timeout or
# retry: their deadlines would be read on the workers' clock, the checker's on the real one.
TICK = "2026-12-05T13:00:00Z"
SCHEDULED: list[Any] = [["do", "a", 5], ["async", "b", 5],
                        ["all", [["fan_0", 5, True], ["fan_1", 20, False]]], ["do", "z", 5]]


def _runs(prefix: str, n: int = 3, ops: list[Any] | None = None) -> list[tuple[str, list[Any]]]:
    return [(f"{prefix}-{i}", ops or BASE_OPS) for i in range(n)]


def boundaries(k: int) -> list[Scenario]:
    """Every boundary; ``k`` kills at each (the quick mode uses 1)."""
    rep = lambda spec: [spec] * k  # noqa: E731
    out = [
        Scenario("before_step", "before a step starts (step_started)", _runs("bs"),
                 rep({"event": "step_started", "n": 3})),
        Scenario("in_step", "inside a step (the step kills itself)", _runs("is"),
                 rep({"event": "in_step", "n": 3})),
        Scenario("after_return", "step returned, entry not committed", _runs("ar"),
                 rep({"event": "step_returned", "n": 3})),
        Scenario("after_commit", "right after the commit", _runs("ac"),
                 rep({"event": "step_committed", "n": 3})),
        Scenario("sleeping", "while sleeping", _runs("sl", ops=LONG_OPS if k > 1 else None),
                 rep({"event": "run_parked", "state": "sleeping", "n": 2})),
        Scenario("waiting", "while waiting for a signal", _runs("wa"),
                 rep({"event": "run_parked", "state": "waiting", "n": 1}), signal_delay=2.0),
        Scenario("signal", "during signal delivery (sender killed)", _runs("sg"),
                 signaler_kills=[{"when": "before", "n": 1}, {"when": "during", "n": 1},
                                 {"when": "after", "n": 1}] * (1 if k == 1 else 2),
                 signal_pace=0.02),
        Scenario("recover", "during recover() (runs claimed)", _runs("rc"),
                 [{"event": "step_committed", "n": 4}] + [{"event": "recovered", "n": 1}] * k),
        Scenario("shutdown", "during graceful shutdown",
                 _runs("sd", ops=LONG_OPS if k > 1 else None),
                 [{"event": "shutdown", "n": 1} for i in range(k)]
                 + [None, None],
                 shutdown_after=[2] * k + [3]),
        Scenario("fanout", "inside a fan-out, some branches done",
                 _runs("fo", ops=LONG_OPS if k > 1 else None),
                 rep({"event": "step_committed", "step": "fan_1", "n": 1})),
        Scenario("stall", "lease lost while stopped (SIGSTOP), fence", _runs("st", 2, [
            ["do", "a", 5], ["do", "slow", 600], ["do", "y", 5], ["sleep", 0.1], ["do", "z", 5]]),
                 stall={"event": "step_returned", "step": "slow", "n": 1, "action": "hold"},
                 lease=1.0),
        # Killed between a tick's computation and its start(), then right after the start():
        # the tick must fire once. One tick, so one kill of each kind, whatever k is.
        Scenario("schedule", "between a tick's computation and its start",
                 [(f"sched:tick:{TICK}", SCHEDULED)],
                 [{"event": "tick_start", "when": "before"},
                  {"event": "tick_start", "when": "after"}],
                 schedule={"name": "tick", "at": TICK, "every": 3600}),
    ]
    return out + child_boundaries(k) + operation_boundaries(k)


def child_boundaries(k: int) -> list[Scenario]:
    """The boundaries of child runs and deadlines; ``k`` kills at each."""
    rep = lambda spec: [spec] * k  # noqa: E731
    kids = lambda prefix: _runs(prefix, ops=LONG_CHILD_OPS if k > 1 else CHILD_OPS)  # noqa: E731
    parked = {"event": "run_parked", "state": "waiting", "n": 1}
    return [
        Scenario("child_start", "a child just created (run_started)", kids("cs"),
                 rep({"event": "run_started", "child": True, "fresh": True, "n": 2})),
        Scenario("child_step", "inside a child, right after a commit", kids("ck"),
                 rep({"event": "step_committed", "child": True, "n": 3})),
        Scenario("parent_parked", "parent waiting for its children", kids("pp"),
                 rep({**parked, "child": False})),
        Scenario("child_end", "a child ended, its parent not yet resumed", kids("ce"),
                 rep({"event": "run_finished", "child": True, "n": 2})),
        Scenario("deadline", "a deadline passes while no worker runs",
                 _runs("dl", ops=LONG_STRIKE_OPS if k > 1 else STRIKE_OPS),
                 [{**parked, "child": False}, {**parked, "child": True}] * k, boot_delay=0.6),
        # A run resumed into its Sleep is struck there (an engine bug this row found).
        # One kill in every mode: the restart comes after the deadline (boot_delay), so the
        # resumed run is struck in its Sleep and never parks again.
        Scenario("strike_sleep", "a deadline strikes a resumed Sleep", _runs("ss", ops=[
            ["do", "a", 5], ["strike", 0.5, "sleep"], ["do", "z", 5]]),
                 [{"event": "run_parked", "state": "sleeping", "n": 1}], boot_delay=0.6),
    ]


# Limited runs: steps with a sleep between (a parked run frees its slot), many per run, so that
# every life of the killed worker still finds a step of its own ahead.
LIMITED: list[Any] = [["do", "a", 60], ["do", "b", 60], ["sleep", 0.05], ["do", "c", 60],
                      ["do", "d", 60]]


def operation_boundaries(k: int) -> list[Scenario]:
    """Operations killed in the middle (crash/operations.py), and a worker killed while its run
    holds a limit slot; ``k`` kills of each kind."""
    return [
        Scenario("purge", "mid-purge (before, inside, after a batch)", [],
                 [{"when": "inside", "n": 2, "k": 3}, {"when": "after", "n": 3},
                  {"when": "before", "n": 2}] * k, operation="purge", size=100 if k == 1 else 250),
        Scenario("fork", "mid-fork (before, during, after its commit)", [],
                 [{"when": "before", "n": 2}, {"when": "after", "n": 1},
                  {"when": "during", "n": 1, "delay": 0.001}] * k,
                 operation="fork", size=4 if k == 1 else 12, lease=1.0),
        Scenario("limit", "holding a limit slot, inside a step",
                 _runs("lm", 8 if k == 1 else 16, LIMITED),
                 [{"event": "in_step", "n": 2, "remote": i % 2 == 0} for i in range(k)],
                 lease=1.0, limit=2, helpers=1),
    ]


# How often each op comes up in a random plan (relative weights).
WEIGHTS: dict[str, int] = {
    "do": 30, "async": 8, "sleep": 8, "wait": 12, "all": 12, "retry": 6, "timeout": 5,
    "child": 6, "children": 5, "deadline": 3, "strike": 3, "strike_child": 3,
}
TOP_ONLY = ("wait",)                         # the signaler addresses top-level runs only
NESTING = ("child", "children", "strike_child")
MAX_DEPTH = 2                                # children of children, no deeper


def random_plan(rng: random.Random, run_id: str, depth: int = 0) -> list[Any]:
    """A random plan: a top-level run's has 14-26 ops, a child's 1-4 (and no signal waits)."""
    kinds = [k for k in WEIGHTS if not (depth and k in TOP_ONLY)
             and not (depth >= MAX_DEPTH and k in NESTING)]
    weights = [WEIGHTS[k] for k in kinds]
    n = rng.randint(14, 26) if depth == 0 else rng.randint(1, 4)
    return [_random_op(rng, rng.choices(kinds, weights)[0], i, depth) for i in range(n)]


def _random_op(rng: random.Random, kind: str, i: int, depth: int) -> list[Any]:
    sub = lambda: random_plan(rng, "", depth + 1)  # noqa: E731
    if kind in ("do", "async"):
        return [kind, f"s{i}", rng.choice([0, 2, 5, 10, 20, 40] if kind == "do" else [0, 5, 20])]
    if kind == "sleep":
        return ["sleep", round(rng.uniform(0.05, 0.6), 3)]
    if kind == "wait":
        return ["wait", rng.choice(["go", "ping"])]
    if kind == "all":
        return ["all", [[f"f{i}_{j}", rng.choice([0, 5, 20, 60]), rng.random() < 0.7]
                        for j in range(rng.randint(2, 4))]]
    if kind == "retry":
        return ["retry", f"s{i}", 5]
    if kind == "timeout":
        return ["timeout", "never", round(rng.uniform(0.05, 0.2), 3)]
    if kind == "child":
        return ["child", f"c{i}", sub()]
    if kind == "children":
        return ["children", [[f"c{i}_{j}", sub()] for j in range(rng.randint(2, 3))]]
    if kind == "deadline":
        return ["deadline", rng.choice([600, 3600, 86400])]
    near = round(rng.uniform(0.1, 0.4), 3)
    if kind == "strike":
        return ["strike", near, "wait"]
    # strike_child: the child holds (struck by the deadline it inherits), may take steps
    # after catching it, unhindered by its parent's strike, and ends.
    steps = [_random_op(rng, "do", j, depth + 1) for j in range(rng.randint(0, 2))]
    return ["strike_child", near, f"c{i}", [["hold", "wait"], *steps]]


def random_round(i: int, kills: int, seed: int) -> Scenario:
    """Round ``i`` of the random mode: 16 runs with random plans, up to ``kills`` kills."""
    rng = random.Random(seed * 7919 + i)
    runs = [(f"rnd{i}-{j}", random_plan(rng, f"rnd{i}-{j}")) for j in range(16)]
    return Scenario(f"random{i}", "random kills of a busy worker", runs,
                    signal_pace=0.03, random_kills=kills, seed=seed * 7919 + i)
