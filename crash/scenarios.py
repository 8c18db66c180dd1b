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
    return out


def random_plan(rng: random.Random, run_id: str) -> list[Any]:
    ops: list[Any] = []
    for i in range(rng.randint(14, 26)):
        r = rng.random()
        if r < 0.35:
            ops.append(["do", f"s{i}", rng.choice([0, 2, 5, 10, 20, 40])])
        elif r < 0.45:
            ops.append(["async", f"s{i}", rng.choice([0, 5, 20])])
        elif r < 0.55:
            ops.append(["sleep", round(rng.uniform(0.05, 0.6), 3)])
        elif r < 0.7:
            ops.append(["wait", rng.choice(["go", "ping"])])
        elif r < 0.85:
            ops.append(["all", [[f"f{i}_{j}", rng.choice([0, 5, 20, 60]), rng.random() < 0.7]
                                for j in range(rng.randint(2, 4))]])
        elif r < 0.93:
            ops.append(["retry", f"s{i}", 5])
        else:
            ops.append(["timeout", "never", round(rng.uniform(0.05, 0.2), 3)])
    return ops


def random_round(i: int, kills: int, seed: int) -> Scenario:
    """Round ``i`` of the random mode: 16 runs with random plans, up to ``kills`` kills."""
    rng = random.Random(seed * 7919 + i)
    runs = [(f"rnd{i}-{j}", random_plan(rng, f"rnd{i}-{j}")) for j in range(16)]
    return Scenario(f"random{i}", "random kills of a busy worker", runs,
                    signal_pace=0.03, random_kills=kills, seed=seed * 7919 + i)
