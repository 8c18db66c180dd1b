"""The invariants, checked against the store's journals and the side-effect log kept outside it.

Times compared here are all wall-clock ``time.time()`` readings of processes on this one
machine: a journal entry's ``started`` is read just before the step function is called
and its ``ended`` just before the entry is committed; a side-effect line's ``t`` is read
inside the step function, so the attempt that produced an entry always has
``started <= t <= ended``.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from . import plans

RESULT = "every run completes with the uncrashed result"
COMMITTED = "a committed step is never executed again"
RAN_FIRST = "an entry is committed only after its step ran"
REEXEC = "a step is re-executed only when a kill landed between its start and its commit"
FENCE = "one owner at a time: a worker that lost the run never commits"
SIGNAL = "no signal is lost or consumed twice"
SLEEP = "no sleep or wait timeout ends before its deadline"
SEQ = "the journal has no gaps or duplicates"

FINISHED = ("completed", "failed", "cancelled")


@dataclass
class Violation:
    invariant: str
    run: str | None
    step: str | None
    pos: int | None
    detail: str


@dataclass
class Report:
    violations: list[Violation] = field(default_factory=list)
    reexecutions: int = 0
    executions: int = 0


def read_lines(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line torn by a kill (never seen in practice: writes are single syscalls)
    return out


def check(store: Any, runs: list[tuple[str, list[Any]]], effects: list[dict[str, Any]],
          crashed: set[int], stalled: set[int], final: bool) -> Report:
    """``crashed``: pids that died by SIGKILL or lost their lease while stopped (``stalled``,
    a subset). ``final``: every process is done, so every run must be complete."""
    rep = Report()
    bad = rep.violations
    execs: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for x in effects:
        execs[(x["run"], x["pos"], x["attempt"])].append(x)
        by_run[x["run"]].append(x)
    rep.executions = len(effects)
    consumed: Counter[str] = Counter()
    wanted = {p for r, ops in runs for _, _, p in plans.deliveries(r, ops)}

    for run_id, ops in runs:
        journal = store.journal(run_id)
        # -- seq: dense, unique; one final entry per slot
        seqs = [e.seq for e in journal]
        if seqs != list(range(len(journal))):
            bad.append(Violation(SEQ, run_id, None, None, f"journal seqs are {seqs}"))
        finals = Counter(e.position for e in journal if e.kind in ("do", "sleep", "wait"))
        for slot, n in finals.items():
            if n > 1:
                e = next(e for e in journal if e.position == slot)
                bad.append(Violation(SEQ, run_id, e.name, slot,
                                     f"{n} final entries for one command at position {slot}"))
        slots: dict[int, list[Any]] = defaultdict(list)
        for e in journal:
            slots[e.position].append(e)
        committed: set[tuple[int, int]] = set()
        for slot, entries in sorted(slots.items()):
            attempt = 1
            for e in entries:
                if e.kind not in ("do", "retry"):
                    continue
                if e.kind == "retry":
                    attempt = json.loads(e.value).get("attempt", attempt)
                key = (run_id, slot, attempt)
                if (slot, attempt) in committed:
                    attempt += 1
                    continue
                committed.add((slot, attempt))
                rep_attempt(rep, key, e, execs.get(key, []), crashed, stalled)
                attempt += 1
            # -- deadlines
            for e in entries:
                deadline = None
                if e.kind == "sleep":
                    deadline = float(json.loads(e.value))
                elif e.kind == "timer" and any(w.kind == "wait" and w.status == "timeout"
                                               for w in entries):
                    deadline = float(json.loads(e.value))
                    w = next(w for w in entries if w.kind == "wait")
                    if w.started < deadline:
                        bad.append(Violation(SLEEP, run_id, e.name, slot,
                                             f"Wait timed out at {w.started:.6f}, before its "
                                             f"journaled deadline {deadline:.6f}"))
                if deadline is None:
                    continue
                early = [x for x in by_run[run_id] if x["pos"] > slot and x["t"] < deadline]
                early_e = [f for f in journal if f.position > slot and f.started < deadline
                           and f.kind not in ("version", "cancel")]
                for x in early[:1]:
                    bad.append(Violation(SLEEP, run_id, x["step"], x["pos"],
                                         f"step ran at {x['t']:.6f} (pid {x['pid']}), before the "
                                         f"deadline {deadline:.6f} of the {e.kind} at position "
                                         f"{slot}"))
                for f in early_e[:1]:
                    bad.append(Violation(SLEEP, run_id, f.name, f.position,
                                         f"entry {f.seq} ({f.kind}) started at {f.started:.6f}, "
                                         f"before the deadline {deadline:.6f} of the {e.kind} at "
                                         f"position {slot}"))
        # -- executions that never got an entry: only a crash may explain them
        for (r, pos, attempt), xs in execs.items():
            if r == run_id and (pos, attempt) not in committed:
                rep.reexecutions += max(0, len(xs) - 1)
                explain_lost(rep, (r, pos, attempt), xs, crashed, final, None)
        # -- signals: FIFO per name, each payload to its own run, once
        seen: dict[str, int] = defaultdict(int)
        for e in journal:
            if e.kind == "wait" and e.status == "ok":
                p = json.loads(e.value)
                consumed[p] += 1
                want = plans.payload(run_id, e.name, seen[e.name])
                seen[e.name] += 1
                if p != want:
                    bad.append(Violation(SIGNAL, run_id, e.name, e.position,
                                         f"Wait consumed {p!r}, expected {want!r} (FIFO per name)"))
        # -- the result
        if final:
            rec = store.get(run_id)
            want_result = plans.expected(run_id, ops)
            if rec is None:
                bad.append(Violation(RESULT, run_id, None, None, "the run is not in the store"))
            elif rec.state != "completed":
                bad.append(Violation(RESULT, run_id, None, None,
                                     f"run ended {rec.state!r}, not completed: {rec.error}"))
            elif json.loads(rec.result) != want_result:
                bad.append(Violation(RESULT, run_id, None, None,
                                     f"result {rec.result} != uncrashed result "
                                     f"{json.dumps(want_result)}"))
            left = store.signals(run_id)
            if left:
                bad.append(Violation(SIGNAL, run_id, left[0].name, None,
                                     f"{len(left)} signals left unconsumed: "
                                     f"{[s.payload for s in left]}"))
    for p, n in consumed.items():
        if n > 1:
            bad.append(Violation(SIGNAL, p.split("|")[0], p.split("|")[1], None,
                                 f"payload {p!r} consumed {n} times"))
        if p not in wanted:
            bad.append(Violation(SIGNAL, p.split("|")[0], None, None, f"unknown payload {p!r}"))
    if final:
        for p in sorted(wanted - set(consumed)):
            bad.append(Violation(SIGNAL, p.split("|")[0], p.split("|")[1], None,
                                 f"payload {p!r} was never consumed (lost)"))
    return rep


def _fmt(xs: list[dict[str, Any]]) -> str:
    return ", ".join(f"pid {x['pid']} at {x['t']:.6f}" for x in xs)


def rep_attempt(rep: Report, key: tuple[str, int, int], e: Any, xs: list[dict[str, Any]],
                crashed: set[int], stalled: set[int]) -> None:
    """One committed attempt (entry ``e``) against the executions the side-effect log saw."""
    run_id, pos, attempt = key
    bad = rep.violations
    rep.reexecutions += max(0, len(xs) - 1)
    within = [x for x in xs if e.started <= x["t"] <= e.ended]
    after = [x for x in xs if x["t"] > e.ended and x["pid"] not in stalled]
    before = [x for x in xs if x["t"] < e.started]
    what = f"attempt {attempt}, entry seq {e.seq} committed at {e.ended:.6f}"
    if not within:
        bad.append(Violation(RAN_FIRST, run_id, e.name, pos,
                             f"{what}: no execution between its start {e.started:.6f} and its "
                             f"commit; executions: {_fmt(xs) or 'none'}"))
    if len(within) > 1:
        bad.append(Violation(FENCE, run_id, e.name, pos,
                             f"{what}: {len(within)} processes executed it while the committed "
                             f"attempt was in flight ({_fmt(within)}); the one that committed had "
                             f"lost the run to another worker"))
    if after:
        bad.append(Violation(COMMITTED, run_id, e.name, pos,
                             f"{what}: executed again after the commit by {_fmt(after)}"))
    explain_lost(rep, key, before, crashed, True, e)


def explain_lost(rep: Report, key: tuple[str, int, int], xs: list[dict[str, Any]],
                 crashed: set[int], final: bool, e: Any) -> None:
    """Executions whose outcome was not committed: each needs its process to have been killed
    (or to have lost its lease) before committing, and one process runs an attempt once."""
    run_id, pos, attempt = key
    per_pid = Counter(x["pid"] for x in xs)
    for pid, n in per_pid.items():
        step = next(x["step"] for x in xs if x["pid"] == pid)
        if pid not in crashed:
            how = "superseded by the committed execution" if e is not None else (
                "never journaled although the run finished" if final else "not journaled")
            bad_x = [x for x in xs if x["pid"] == pid]
            rep.violations.append(Violation(
                REEXEC, run_id, step, pos,
                f"attempt {attempt} executed by pid {pid} ({_fmt(bad_x)}), {how}, yet pid {pid} "
                f"was never killed"))
        elif n > 1:
            rep.violations.append(Violation(
                REEXEC, run_id, step, pos,
                f"attempt {attempt} executed {n} times by pid {pid} with no kill in between"))


def evidence(store: Any, v: Violation, effects: list[dict[str, Any]], kills: list[dict[str, Any]],
             limit: int = 80) -> str:
    """The run's journal and the executions that show a violation."""
    out = [f"  run {v.run!r}, step {v.step!r}, position {v.pos}: {v.detail}"]
    if v.run is None:
        return "\n".join(out)
    try:
        journal = store.journal(v.run)
        rec = store.get(v.run)
    except Exception as exc:
        return "\n".join(out + [f"  (cannot read the journal: {exc})"])
    if rec is not None:
        out.append(f"  run state {rec.state!r}, owner {rec.owner!r}, fence {rec.fence}")
    out.append(f"  journal of {v.run!r} ({len(journal)} entries):")
    out.append("    seq slot kind     name         status  started            ended              "
               "value")
    for e in journal[:limit]:
        mark = " <--" if v.pos is not None and e.position == v.pos else ""
        value = (e.value or "")[:60]
        out.append(f"    {e.seq:>3} {e.position:>4} {e.kind:<8} {e.name[:12]:<12} {e.status:<7} "
                   f"{e.started:.6f} {e.ended:.6f} {value}{mark}")
    xs = [x for x in effects if x["run"] == v.run and (v.pos is None or x["pos"] == v.pos)]
    if xs:
        out.append(f"  side-effect log for this {'step' if v.pos is not None else 'run'}:")
        for x in xs[:limit]:
            out.append(f"    pos {x['pos']} {x['step']} attempt {x['attempt']} pid {x['pid']} "
                       f"t {x['t']:.6f}")
    ks = [k for k in kills if k.get("run") == v.run]
    if ks:
        out.append("  kills recorded in this run:")
        for k in ks[:20]:
            out.append(f"    pid {k['pid']} at {k['at']} step {k.get('step')} pos {k.get('pos')} "
                       f"t {k['t']:.6f}")
    return "\n".join(out)
