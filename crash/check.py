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

RESULT = "every run ends as an uncrashed run does (its result, or cancelled)"
COMMITTED = "a committed step is never executed again"
RAN_FIRST = "an entry is committed only after its step ran"
REEXEC = "a step is re-executed only when a kill landed between its start and its commit"
FENCE = "one owner at a time: a worker that lost the run never commits"
SIGNAL = "no signal is lost or consumed twice"
SLEEP = "no sleep or wait timeout ends before its deadline"
SEQ = "the journal has no gaps or duplicates"
CHILDREN = "every parent has exactly its expected children, by derived id"
SPAWN = "a child position has one spawn entry and at most one child entry"
TREE = "no descendant of a finished run is left unfinished"
DEADLINE = "a deadline is inherited, only brought closer, and strikes once, never early"
PURGE_WHOLE = "a purge leaves each run wholly present or wholly gone (a tombstone)"
PURGE_SPARED = "a purge never touches an unfinished run, nor one that finished too recently"
PURGE_ALL = "a purge that completes leaves no eligible run"
PURGED_START = "starting a purged id with its arguments starts nothing"
FORK_WHOLE = "a fork exists wholly (the source's prefix, forked_from set) or not at all"
FORK_PREFIX = "a fork never runs its prefix's steps again"
LIMIT = "never more than N runs of a limited workflow inside a step at once (nor a dead " \
    "holder's slot given away while its lease lasts)"

FINISHED = ("completed", "failed", "cancelled")
CHILD_NOTICE = "replaygen:child:"
"""A child's end reaches its parent as a signal of this name + its id."""
EPSILON = 1e-6
"""Deadlines are compared as stored (JSON floats of one reading): equal, up to this."""


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
    return Checker(store, runs, effects, crashed, stalled, final).run()


class Checker:
    """One look at a store: every top-level run of the plan and every run it started
    (found through ``store.runs(parent=...)``, recursively), each checked alike."""

    def __init__(self, store: Any, runs: list[tuple[str, list[Any]]],
                 effects: list[dict[str, Any]], crashed: set[int], stalled: set[int],
                 final: bool) -> None:
        self.store, self.top, self.crashed, self.stalled, self.final = (
            store, runs, crashed, stalled, final)
        self.rep = Report(executions=len(effects))
        self.bad = self.rep.violations
        self.expect: dict[str, plans.Expect] = {}
        for run_id, ops in runs:
            self.expect.update(plans.tree(run_id, ops))
        # run -> (position, attempt) -> executions; run -> executions
        self.execs: dict[str, dict[tuple[int, int], list[dict[str, Any]]]] = defaultdict(
            lambda: defaultdict(list))
        self.by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for x in effects:
            self.execs[x["run"]][(x["pos"], x["attempt"])].append(x)
            self.by_run[x["run"]].append(x)
        self.consumed: Counter[str] = Counter()
        self.wanted = {p for r, ops in runs for _, _, p in plans.deliveries(r, ops)}
        self.records: dict[str, Any] = {}     # run id -> its record (None: not created yet)
        self.kids: dict[str, list[str]] = {}  # run id -> its children's ids, as the store says

    def run(self) -> Report:
        for run_id in self.family():
            journal = self.store.journal(run_id)
            self.check_seq(run_id, journal)
            slots: dict[int, list[Any]] = defaultdict(list)
            for e in journal:
                slots[e.position].append(e)
            self.check_steps(run_id, slots)
            self.check_sleeps(run_id, journal, slots)
            self.check_signals(run_id, journal)
            self.check_children(run_id, journal)
            self.check_deadlines(run_id, journal)
            if self.final:
                self.check_result(run_id)
        self.check_tree()
        self.check_signal_totals()
        return self.rep

    def family(self) -> list[str]:
        """The top-level runs and all their descendants, parents first."""
        order = [run_id for run_id, _ in self.top]
        for run_id in order:  # grows as children are found
            if run_id not in self.records:
                self.records[run_id] = self.store.get(run_id)
            kids = self.store.runs(parent=run_id, limit=100_000)
            self.records.update((k.run_id, k) for k in kids)
            self.kids[run_id] = [k.run_id for k in kids]
            order += self.kids[run_id]
        strays = sorted(set(self.by_run) - set(order))
        for run_id in strays:
            self.bad.append(Violation(CHILDREN, run_id, None, None,
                                      "steps of this run were executed, but it is no "
                                      "top-level run of the plan nor found as a child"))
        return order

    # ---- the journal itself ------------------------------------------------------------------

    def check_seq(self, run_id: str, journal: list[Any]) -> None:
        """Dense seqs from 0; one final entry per command and position."""
        seqs = [e.seq for e in journal]
        if seqs != list(range(len(journal))):
            self.bad.append(Violation(SEQ, run_id, None, None, f"journal seqs are {seqs}"))
        finals = Counter((e.position, e.kind) for e in journal
                         if e.kind in ("do", "sleep", "wait", "deadline", "cancel"))
        for (slot, kind), n in finals.items():
            if n > 1:
                e = next(e for e in journal if e.position == slot and e.kind == kind)
                self.bad.append(Violation(SEQ, run_id, e.name, slot,
                                          f"{n} final {kind!r} entries for one command at "
                                          f"position {slot}"))

    # ---- steps against the side-effect log ---------------------------------------------------

    def check_steps(self, run_id: str, slots: dict[int, list[Any]]) -> None:
        """Each committed attempt ran exactly once in its window; every other execution is
        explained by a kill."""
        execs = self.execs.get(run_id, {})
        committed: set[tuple[int, int]] = set()
        for slot, entries in sorted(slots.items()):
            attempt = 1
            for e in entries:
                if e.kind not in ("do", "retry"):
                    continue
                if e.kind == "retry":
                    attempt = json.loads(e.value).get("attempt", attempt)
                if (slot, attempt) in committed:
                    attempt += 1
                    continue
                committed.add((slot, attempt))
                rep_attempt(self.rep, (run_id, slot, attempt), e, execs.get((slot, attempt), []),
                            self.crashed, self.stalled)
                attempt += 1
        # -- executions that never got an entry: only a crash may explain them
        for (pos, attempt), xs in execs.items():
            if (pos, attempt) not in committed:
                self.rep.reexecutions += max(0, len(xs) - 1)
                explain_lost(self.rep, (run_id, pos, attempt), xs, self.crashed, self.final, None)

    def check_sleeps(self, run_id: str, journal: list[Any], slots: dict[int, list[Any]]) -> None:
        """Nothing after a sleep or a timed-out wait starts before its journaled deadline. A
        sleep ended by a cancel or a deadline strike (a ``cancel`` entry at its position)
        rightly ends early."""
        for slot, entries in sorted(slots.items()):
            if any(e.kind == "cancel" for e in entries):
                continue
            for e in entries:
                deadline = None
                if e.kind == "sleep":
                    deadline = float(json.loads(e.value))
                elif e.kind == "timer" and any(w.kind == "wait" and w.status == "timeout"
                                               for w in entries):
                    deadline = float(json.loads(e.value))
                    w = next(w for w in entries if w.kind == "wait")
                    if w.started < deadline:
                        self.bad.append(Violation(SLEEP, run_id, e.name, slot,
                                                  f"Wait timed out at {w.started:.6f}, before "
                                                  f"its journaled deadline {deadline:.6f}"))
                if deadline is not None:
                    self.early(run_id, journal, slot, e.kind, deadline)

    def early(self, run_id: str, journal: list[Any], slot: int, kind: str,
              deadline: float) -> None:
        xs = [x for x in self.by_run.get(run_id, ()) if x["pos"] > slot and x["t"] < deadline]
        es = [f for f in journal if f.position > slot and f.started < deadline
              and f.kind not in ("version", "cancel")]
        for x in xs[:1]:
            self.bad.append(Violation(SLEEP, run_id, x["step"], x["pos"],
                                      f"step ran at {x['t']:.6f} (pid {x['pid']}), before the "
                                      f"deadline {deadline:.6f} of the {kind} at position {slot}"))
        for f in es[:1]:
            self.bad.append(Violation(SLEEP, run_id, f.name, f.position,
                                      f"entry {f.seq} ({f.kind}) started at {f.started:.6f}, "
                                      f"before the deadline {deadline:.6f} of the {kind} at "
                                      f"position {slot}"))

    # ---- signals -----------------------------------------------------------------------------

    def check_signals(self, run_id: str, journal: list[Any]) -> None:
        """FIFO per name, each payload to its own run; none left queued at the end (but the
        end notice of a child its parent no longer awaited: it left that yield by a strike)."""
        seen: dict[str, int] = defaultdict(int)
        for e in journal:
            if e.kind == "wait" and e.status == "ok":
                p = json.loads(e.value)
                self.consumed[p] += 1
                want = plans.payload(run_id, e.name, seen[e.name])
                seen[e.name] += 1
                if p != want:
                    self.bad.append(Violation(SIGNAL, run_id, e.name, e.position,
                                              f"Wait consumed {p!r}, expected {want!r} (FIFO "
                                              f"per name)"))
        if self.final:
            left = [s for s in self.store.signals(run_id) if not s.name.startswith(CHILD_NOTICE)]
            if left:
                self.bad.append(Violation(SIGNAL, run_id, left[0].name, None,
                                          f"{len(left)} signals left unconsumed: "
                                          f"{[s.payload for s in left]}"))

    def check_signal_totals(self) -> None:
        for p, n in self.consumed.items():
            if n > 1:
                self.bad.append(Violation(SIGNAL, p.split("|")[0], p.split("|")[1], None,
                                          f"payload {p!r} consumed {n} times"))
            if p not in self.wanted:
                self.bad.append(Violation(SIGNAL, p.split("|")[0], None, None,
                                          f"unknown payload {p!r}"))
        if self.final:
            for p in sorted(self.wanted - set(self.consumed)):
                self.bad.append(Violation(SIGNAL, p.split("|")[0], p.split("|")[1], None,
                                          f"payload {p!r} was never consumed (lost)"))

    # ---- children and deadlines --------------------------------------------------------------

    def check_children(self, run_id: str, journal: list[Any]) -> None:
        """One spawn entry per child position (naming the derived id) and at most one end
        entry; the children in the store are exactly those spawn entries name (creation and
        entry commit together) and, at the end, exactly those the plan starts."""
        spawned: dict[str, Any] = {}
        for kind in ("spawn", "child"):
            for pos, n in Counter(e.position for e in journal if e.kind == kind).items():
                if n > 1:
                    self.bad.append(Violation(SPAWN, run_id, None, pos,
                                              f"{n} {kind!r} entries at position {pos}"))
        for e in journal:
            if e.kind != "spawn":
                continue
            kid = json.loads(e.value)
            spawned[kid] = e
            if kid != plans.child_id(run_id, e.position):
                self.bad.append(Violation(CHILDREN, run_id, e.name, e.position,
                                          f"the spawn entry names {kid!r}, not the derived id "
                                          f"{plans.child_id(run_id, e.position)!r}"))
        actual = set(self.kids.get(run_id, ()))
        want = {k for k, x in self.expect.items() if x.parent == run_id}
        wrong = [(k, "is no child the plan starts") for k in actual - want]
        wrong += [(k, "has a spawn entry but no run (creation and entry commit together)")
                  for k in set(spawned) - actual]
        wrong += [(k, "exists without a spawn entry in its parent's journal")
                  for k in actual - set(spawned)]
        if self.final:
            wrong += [(k, "was never created") for k in want - actual]
        for kid in sorted(actual & want):
            args = _stored(self.records[kid]).get("args")
            if args != [kid, self.expect[kid].ops]:
                wrong.append((kid, f"has the arguments {json.dumps(args)[:200]}, not its plan"))
        for kid, what in sorted(wrong):
            e = spawned.get(kid)
            self.bad.append(Violation(CHILDREN, run_id, None, e.position if e else None,
                                      f"child {kid!r} {what}"))

    def check_deadlines(self, run_id: str, journal: list[Any]) -> None:
        """A later Deadline only brings the deadline closer; a strike lands once, never before
        the deadline in force; a child inherits the deadline its parent had at its spawn."""
        rec = self.records.get(run_id)
        if rec is None:
            return
        at = _stored(rec).get("deadline")
        for e in journal:
            what = None
            if e.kind == "deadline":
                new = float(json.loads(e.value))
                if at is not None and new > at + EPSILON:
                    what = f"a Deadline moved the deadline away, from {at:.6f} to {new:.6f}"
                at = new
            elif e.kind == "cancel" and e.status == "deadline":
                if at is None:
                    what = "DeadlineExceeded was journaled with no deadline in force"
                elif e.started < at:
                    what = f"DeadlineExceeded at {e.started:.6f}, before the deadline {at:.6f}"
                at = None  # it strikes once
            elif e.kind == "spawn" and (kid := self.records.get(json.loads(e.value))):
                got = _stored(kid).get("deadline")
                if (got is None) != (at is None) or (got is not None and abs(got - at) > EPSILON):
                    what = (f"child {kid.run_id!r} inherited the deadline {got}, but its parent's "
                            f"was {at} when it was spawned")
            if what is not None:
                self.bad.append(Violation(DEADLINE, run_id, e.name, e.position, what))

    def check_result(self, run_id: str) -> None:
        exp, rec = self.expect.get(run_id), self.records.get(run_id)
        if exp is None:
            return  # a child the plan does not start: check_children says so
        if rec is None:
            self.bad.append(Violation(RESULT, run_id, None, None, "the run is not in the store"))
        elif rec.state != exp.state:
            self.bad.append(Violation(RESULT, run_id, None, None,
                                      f"run ended {rec.state!r}, not {exp.state}: {rec.error}"))
        elif exp.state == "completed" and json.loads(rec.result) != exp.result:
            self.bad.append(Violation(RESULT, run_id, None, None,
                                      f"result {rec.result} != uncrashed result "
                                      f"{json.dumps(exp.result)}"))

    def check_tree(self) -> None:
        """A finished run leaves no descendant unfinished: at the end none at all, before it
        none whose cancel was not requested (a parent struck by its deadline cancels its
        children in the same commit, and may end before they do)."""
        for run_id, rec in self.records.items():
            if rec is None or rec.state not in FINISHED:
                continue
            below, at = list(self.kids.get(run_id, ())), 0
            while at < len(below):
                kid = self.records.get(below[at])
                below += self.kids.get(below[at], [])
                at += 1
                if kid is None or kid.state in FINISHED or (
                        kid.cancel_requested and not self.final):
                    continue
                self.bad.append(Violation(TREE, kid.run_id, None, None,
                                          f"run {run_id!r} ended {rec.state}, yet its "
                                          f"descendant {kid.run_id!r} is {kid.state}"
                                          + ("" if kid.cancel_requested else
                                             " with no cancel requested")))


def _stored(rec: Any) -> dict[str, Any]:
    """A run's stored arguments: ``{"args": [...], "kwargs": {...}, "deadline": ...}``."""
    try:
        found = json.loads(rec.args)
    except (TypeError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


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


# ---- operations: purge, fork, limits (crash/operations.py) -------------------------------------

Snapshot = dict[str, tuple[Any, list[Any], list[Any]]]
"""run id -> (its record, journal, queued signals), as read before the operation."""


def snapshot(store: Any, run_ids: list[str]) -> Snapshot:
    return {r: (store.get(r), store.journal(r), store.signals(r)) for r in run_ids}


def check_purge(store: Any, before: Snapshot, eligible: set[str], final: bool) -> list[Violation]:
    """Each eligible run is as it was or a bare tombstone; every other run is as it was; at the
    end (a purge completed) no eligible run is left, and ``runs()`` lists no tombstone."""
    bad: list[Violation] = []
    for run_id, was in before.items():
        now = (store.get(run_id), store.journal(run_id), store.signals(run_id))
        rec, journal, signals = now
        if run_id not in eligible:
            if now != was:
                bad.append(Violation(PURGE_SPARED, run_id, None, None,
                                     f"a {was[0].state} run not eligible was changed: "
                                     + _diff(was, now)))
        elif rec is None:
            bad.append(Violation(PURGE_WHOLE, run_id, None, None, "the run is gone, no tombstone"))
        elif rec.state == "purged":
            if journal or signals or rec.result is not None:
                bad.append(Violation(PURGE_WHOLE, run_id, None, None,
                                     f"a tombstone with {len(journal)} journal entries, "
                                     f"{len(signals)} signals, result {rec.result!r}"))
        elif now != was:
            bad.append(Violation(PURGE_WHOLE, run_id, None, None,
                                 "partly purged: " + _diff(was, now)))
        elif final:
            bad.append(Violation(PURGE_ALL, run_id, None, None,
                                 f"still {rec.state} after a purge that completed"))
    listed = [r.run_id for r in store.runs(limit=100_000) if r.state == "purged"]
    if listed:
        bad.append(Violation(PURGE_WHOLE, listed[0], None, None,
                             f"runs() lists {len(listed)} tombstones"))
    return bad


def _diff(was: tuple[Any, list[Any], list[Any]], now: tuple[Any, list[Any], list[Any]]) -> str:
    parts = [f"{what} {a!r} -> {b!r}" if what == "record" else
             f"{what}: {len(a)} -> {len(b)}" for what, a, b in zip(
                 ("record", "journal entries", "signals"), was, now, strict=True) if a != b]
    return "; ".join(parts)[:600]


def check_restarts(store: Any, started: list[dict[str, Any]], effects: list[dict[str, Any]],
                   purged: set[str]) -> list[Violation]:
    """Each purged id started again with its arguments returned its id and left the tombstone
    bare (nothing ran); with other arguments the start was refused."""
    bad: list[Violation] = []
    for s in started:
        run_id = s["run"]
        rec = store.get(run_id)
        what = None
        if run_id not in purged:
            what = "the harness restarted a run it did not see purged"
        elif s["same"] and s.get("error"):
            what = f"start() with its arguments raised {s['error']}"
        elif not s["same"] and not s.get("error"):
            what = "start() with other arguments was not refused"
        elif rec is None or rec.state != "purged" or store.journal(run_id):
            what = f"after start() it is {getattr(rec, 'state', None)!r} with " \
                   f"{len(store.journal(run_id))} journal entries"
        elif any(x["run"] == run_id and x["t"] >= s["at"] for x in effects):
            what = "a step of it ran after the start()"
        if what:
            bad.append(Violation(PURGED_START, run_id, None, None, what))
    return bad


def fork_prefix(journal: list[Any], from_step: str | int) -> tuple[int, list[Any]]:
    """Where a fork from ``from_step`` goes live, and the entries it keeps (renumbered): those
    before the step's first entry's position (the harness's plans start no child there)."""
    at = from_step if isinstance(from_step, int) else next(
        e.position for e in journal if e.kind in ("do", "retry") and e.name == from_step)
    return at, [e._replace(seq=i) for i, e in enumerate(e for e in journal if e.position < at)]


def check_fork(store: Any, fork: tuple[str, str, str | int, list[Any]], source: Snapshot,
               effects: list[dict[str, Any]], crashed: set[int], final: bool) -> Report:
    """A fork is absent or whole: forked_from its source, the source's arguments, its journal
    the source's prefix and then live entries past it; no step of the prefix runs under the
    fork; its live steps obey invariants 2-5 and 8; at the end it completed as its source's
    plan does. The source itself is never changed."""
    new, src, from_step, ops = fork
    rec, journal = store.get(new), store.journal(new)
    at, prefix = fork_prefix(source[src][1], from_step)
    ran = [x for x in effects if x["run"] == new]
    checker = Checker(store, [], [x for x in ran if x["pos"] >= at], crashed, set(), final)
    bad = checker.bad
    if (store.get(src), store.journal(src), store.signals(src)) != source[src]:
        bad.append(Violation(FORK_WHOLE, src, None, None, "the source was changed: " + _diff(
            source[src], (store.get(src), store.journal(src), store.signals(src)))))
    if rec is None:
        if final or journal:
            bad.append(Violation(FORK_WHOLE, new, None, None, f"no run, {len(journal)} entries"
                                 + (" at the end" if final else "")))
        return checker.rep
    theirs = _stored(source[src][0]).get("args")
    if rec.forked_from != src or rec.parent is not None or _stored(rec).get("args") != theirs:
        bad.append(Violation(FORK_WHOLE, new, None, None,
                             f"forked_from {rec.forked_from!r}, parent {rec.parent!r}, args "
                             f"{_stored(rec).get('args')!r} (source {src!r}: {theirs!r})"))
    if journal[:len(prefix)] != prefix:
        bad.append(Violation(FORK_WHOLE, new, None, None,
                             f"its journal does not begin with the {len(prefix)} entries of "
                             f"{src!r} before position {at} ({len(journal)} entries)"))
    early = [x for x in ran if x["pos"] < at]
    again = [e for e in journal[len(prefix):] if e.position < at]
    if early:
        bad.append(Violation(FORK_PREFIX, new, early[0]["step"], early[0]["pos"],
                             f"{len(early)} executions under the fork, the first by pid "
                             f"{early[0]['pid']} at {early[0]['t']:.6f}"))
    if again:
        bad.append(Violation(FORK_PREFIX, new, again[0].name, again[0].position,
                             f"entry {again[0].seq} journals a position of the prefix again"))
    checker.check_seq(new, journal)
    slots: dict[int, list[Any]] = defaultdict(list)
    for e in journal[len(prefix):]:
        slots[e.position].append(e)
    checker.check_steps(new, slots)
    if final:
        exp = plans.tree(src, ops)[src]
        if rec.state != "completed" or json.loads(rec.result or "null") != exp.result:
            bad.append(Violation(RESULT, new, None, None, f"ended {rec.state} with "
                                 f"{rec.result or rec.error}, not its plan's result"))
    return checker.rep


Span = tuple[float, float, str, int]
"""A step inside: (from, until, run, pid)."""


def spans(runs: list[tuple[str, list[Any]]], effects: list[dict[str, Any]],
          deaths: dict[int, float]) -> list[Span]:
    """Each execution is inside its step from its side-effect line for its planned work (it
    sleeps at least that long), or until its process was killed if sooner: an under-estimate,
    so an overlap found is real."""
    work = {(r, op[1]): op[2] / 1000 for r, ops in runs for op in ops
            if op[0] in ("do", "async", "retry", "gate")}
    out = []
    for x in effects:
        end = x["t"] + work.get((x["run"], x["step"]), 0.0)
        if deaths.get(x["pid"], end) >= x["t"]:
            end = min(end, deaths.get(x["pid"], end))
        out.append((x["t"], end, x["run"], x["pid"]))
    return out


def inside(steps: list[Span], lo: float = float("-inf"), hi: float = float("inf"),
           but: str | None = None) -> tuple[int, float, list[str]]:
    """The most runs (``but`` one) inside a step at once between ``lo`` and ``hi``: how many,
    when, which."""
    events = [(max(a, lo), 1, r) for a, b, r, _ in steps if r != but and a < hi and b > lo]
    events += [(min(b, hi), -1, r) for a, b, r, _ in steps if r != but and a < hi and b > lo]
    count: Counter[str] = Counter()
    most: tuple[int, float, list[str]] = (0, lo, [])
    for t, step, run_id in sorted(events, key=lambda e: (e[0], e[1])):  # ends first
        count[run_id] += step
        busy = sorted(r for r, n in count.items() if n > 0)
        if len(busy) > most[0]:
            most = (len(busy), t, busy)
    return most


def check_limit(limit: int, runs: list[tuple[str, list[Any]]], effects: list[dict[str, Any]],
                kills: list[dict[str, Any]]) -> tuple[list[Violation], int]:
    """At most ``limit`` runs inside a step at once; and while a killed worker's lease lasts
    (noted at its kill when it looked remote: nobody can tell it died), its run is not taken
    and its slot not given away (at most ``limit - 1`` other runs inside). Returns the
    violations and the most runs seen inside at once."""
    steps = spans(runs, effects, {k["pid"]: k["t"] for k in kills})
    bad = []
    most, at, busy = inside(steps)
    if most > limit:
        bad.append(Violation(LIMIT, busy[0], None, None, f"at {at:.6f} {most} runs were "
                             f"inside a step: {busy}, limit {limit}"))
    for k in kills:
        until, run_id = k.get("lease_until"), k.get("run")
        if until is None or run_id is None:
            continue
        taken = [x for x in effects if x["run"] == run_id and k["t"] < x["t"] < until]
        others, when, who = inside(steps, k["t"], until, but=run_id)
        if taken:
            bad.append(Violation(LIMIT, run_id, taken[0]["step"], taken[0]["pos"],
                                 f"pid {taken[0]['pid']} ran it at {taken[0]['t']:.6f}, before "
                                 f"the lease of killed pid {k['pid']} ran out at {until:.6f}"))
        if others > limit - 1:
            bad.append(Violation(LIMIT, run_id, None, None,
                                 f"its slot was given away before the lease of killed pid "
                                 f"{k['pid']} ran out at {until:.6f}: at {when:.6f} {who} "
                                 f"were inside a step"))
    return bad, most


def slot_back(kills: list[dict[str, Any]], effects: list[dict[str, Any]]) -> list[float]:
    """For each kill inside a step: seconds until its run took a step again (its slot back,
    once the dead worker's lease lapsed). A figure, not an invariant: liveness is that every
    run finishes."""
    out = []
    for k in kills:
        later = [x["t"] for x in effects if x["run"] == k.get("run") and x["t"] > k["t"]]
        if k["at"] == "in_step" and later:
            out.append(round(min(later) - k["t"], 2))
    return out
