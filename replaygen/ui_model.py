"""What the pages of ``replaygen ui`` show: runs, one run's timeline, workflows and workers,
read from a store and shaped as JSON-ready dicts for the page's script.

It only reads (``Store.runs``, ``get``, ``journal``, ``signals``, ``workers`` and the
census of ``replaygen.testing``), so it works on a read-only SQLite file, and it never
changes a run. Values are handed over exactly as stored (decoded, pretty-printed, cut at a
limit); escaping them for display is the page's job, which sets them as text only.

Big stores stay fast through the protocol's grouped reads: ``counts()`` (runs per workflow
and state) and ``last_entries(run_ids)`` (each run's last journal entry); ``workers()`` tells
each live worker's workflows and lease. ``forked_from`` is shown when a run has it. A purged
run's tombstone (state ``purged``) is listed only when asked for by state, and counted apart.
"""

from __future__ import annotations

import inspect
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import replay as _replay
from .errors import RunNotFound, UsageError
from .store import ACTIVE, PURGED, STATES, Entry, RunRecord, Store

CUT = 2_000
"""Characters of a value sent with a page; the rest is fetched on demand ("show all")."""
DETAIL_CUT = 300
"""Characters of a run's detail (an error message) in the runs list."""
PAGE_SIZES = {"runs": (50, 500), "timeline": (200, 1000)}
"""Default and largest page size of the runs list and of a run's timeline."""
CENSUS_TTL = 30.0
"""Seconds a version census is reused: it reads the journal of every unfinished run."""
CHILDREN_SHOWN = 100
"""Children listed on a run's page; the runs list filtered by parent shows them all."""

_CHILD_SIGNAL: str | None = getattr(_replay, "CHILD_SIGNAL", None)
"""The signal-name prefix by which a parent waits for a child (engines with ``Child``)."""
_FAMILY = {"retry": "do", "do": "do", "sleep": "sleep", "woke": "sleep", "timer": "wait",
           "wait": "wait", "spawn": "child", "child": "child"}
"""The command an entry kind belongs to: the entries of one command at one position make
one item of the timeline (a step's failed tries and its outcome, a Wait's timer and signal)."""
_POSITION = re.compile(r"\bat position (\d+)\b")


ONE_LINE = 72
"""Values whose JSON fits in this many characters are shown on one line, others indented."""


def text_of(value: Any) -> str:
    """A decoded value as a person reads it: strings as they are, the rest as JSON, indented
    unless it fits on one line."""
    if isinstance(value, str):
        return value
    try:
        flat = json.dumps(value, ensure_ascii=False)
        return flat if len(flat) <= ONE_LINE else json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def decode(text: str | bytes | None) -> Any:
    """A stored value decoded; text that is not JSON (a damaged cell) is returned as it is."""
    if isinstance(text, bytes):
        return text.decode("utf-8", "backslashreplace")
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def shown(value: Any, limit: int = CUT) -> dict[str, Any]:
    """A value for the page: its text cut at ``limit`` characters, saying whether it was."""
    text = text_of(value)
    return {"text": text[:limit], "cut": len(text) > limit, "length": len(text)}


def arguments(text: str | bytes) -> Any:
    """A run's stored arguments as the call gave them: the list of positional arguments, or
    ``{"args": [...], "kwargs": {...}}`` when there are keyword arguments (the engine's nonce
    and deadline are left out)."""
    args = decode(text)
    if not isinstance(args, dict):
        return args
    if set(args) - {"nonce", "deadline"} == {"args", "kwargs"} and args["kwargs"] == {}:
        return args["args"]
    return {k: v for k, v in args.items() if k not in ("nonce", "deadline")}


def error_of(text: str | bytes | None, limit: int = CUT) -> dict[str, Any] | None:
    """A stored error record: type, message and traceback (each cut at ``limit``)."""
    info = decode(text)
    if info is None:
        return None
    if not isinstance(info, dict):
        return {"type": "Error", "message": shown(info, limit), "traceback": None}
    trace = info.get("traceback")
    out = {"type": str(info.get("type", "Error")), "message": shown(str(info.get("message", "")),
                                                                    limit),
           "traceback": shown(str(trace), limit) if trace else None}
    for key in ("attempt", "next_at"):  # a failed try of a step that is retried
        if key in info:
            out[key] = info[key]
    return out


def owner_parts(owner: str) -> dict[str, str]:
    """A worker id (``host|boot|namespace|pid|start|nonce``) as host and pid, for display."""
    parts = owner.split("|")
    if len(parts) == 6:
        return {"host": parts[0], "pid": parts[3]}
    return {"host": "", "pid": ""}


def _waits(waiting_for: str | None) -> list[dict[str, str]]:
    """What a waiting run waits for: signals by name, children by run id."""
    out = []
    for part in (waiting_for or "").split(",") if waiting_for else ():
        if _CHILD_SIGNAL and part.startswith(_CHILD_SIGNAL):
            out.append({"child": part[len(_CHILD_SIGNAL):]})
        else:
            out.append({"signal": part})
    return out


def _page_of(page: Any, size: Any, kind: str) -> tuple[int, int]:
    default, largest = PAGE_SIZES[kind]
    try:
        p = int(page) if page not in (None, "") else 0
        s = int(size) if size not in (None, "") else default
    except (TypeError, ValueError):
        raise UsageError(f"page and size must be whole numbers, got page={page!r} "
                         f"size={size!r}") from None
    if p < 0 or not 1 <= s <= largest:
        raise UsageError(f"page must be 0 or more and size 1 to {largest}; got page={p} size={s}")
    return p, s


@dataclass
class _Census:
    at: float
    took: float
    counts: dict[str, dict[int | None, int]]


class View:
    """The read side of the web view over one store. Thread-safe as the store is."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._census: _Census | None = None
        self._census_lock = threading.Lock()  # one census at a time; the others reuse it
        runs = getattr(store, "runs", None)
        try:
            self.by_parent = runs is not None and "parent" in inspect.signature(runs).parameters
        except (TypeError, ValueError):
            self.by_parent = False

    # ---- the runs list ------------------------------------------------------------------

    def runs_page(self, *, states: Collection[str] | None = None, workflow: str | None = None,
                  parent: str | None = None, run_id: str | None = None, page: Any = 0,
                  size: Any = None) -> dict[str, Any]:
        """One page of runs, newest first, with the filters' counts. ``run_id`` finds the run
        with exactly that id (the other filters then do not apply)."""
        p, s = _page_of(page, size, "runs")
        for state in states or ():
            if state not in (*STATES, PURGED):  # purged: the tombstones, only when asked for
                raise UsageError(f"unknown state {state!r}; states are {', '.join(STATES)} "
                                 f"and {PURGED}")
        if parent and not self.by_parent:
            raise UsageError("this store cannot list runs by parent (its replaygen has no child "
                             "workflows yet)")
        if run_id:
            record = self.store.get(run_id)
            found, more = ([record] if record is not None else []), False
        else:
            kw: dict[str, Any] = {"parent": parent} if parent else {}
            found = self.store.runs(states=states, workflow=workflow or None, limit=s + 1,
                                    offset=p * s, **kw)
            found, more = found[:s], len(found) > s
        counts = self.run_counts()
        by_state = {st: sum(n for (wf, st2), n in counts.items() if st2 == st and (
            not workflow or wf == workflow)) for st in STATES}
        purged = sum(n for (wf, st), n in counts.items() if st == PURGED and (
            not workflow or wf == workflow))
        total = None if (parent or run_id) else sum(
            n for st, n in {**by_state, PURGED: purged}.items()
            if (st in states if states else st != PURGED))
        live = self.live()
        return {"runs": self._rows(found, live), "page": p, "size": s, "more": more,
                "total": total, "counts": by_state, "purged": purged,
                "workflows": sorted({wf for wf, _ in counts}),
                "by_parent": self.by_parent, "now": time.time()}

    def _rows(self, records: Sequence[RunRecord], live: dict[str, Any] | None) -> list[dict[str, Any]]:
        tails = self.last_entries([r.run_id for r in records])
        out = []
        for r in records:
            t = tails.get(r.run_id)
            out.append({
                "run_id": r.run_id, "state": r.state, "workflow": r.workflow,
                "created": r.created, "updated": r.updated,
                "last": None if t is None else {"position": t[1], "kind": _FAMILY.get(t[2], t[2]),
                                                "name": t[3]},
                "detail": self._detail(r), "unserved": unserved(live, r),
                "parent": getattr(r, "parent", None),
            })
        return out

    @staticmethod
    def _detail(r: RunRecord) -> dict[str, Any]:
        """Where an unfinished run is parked, or why it failed or is blocked."""
        if r.state == "sleeping":
            return {"until": r.wake_at}
        if r.state == "waiting":
            return {"waits": _waits(r.waiting_for), "timeout": r.wake_at}
        if r.error:
            e = error_of(r.error, DETAIL_CUT)
            assert e is not None
            return {"error": f"{e['type']}: {e['message']['text']}", "cut": e["message"]["cut"]}
        if r.cancel_requested and r.state in ACTIVE:
            return {"note": "cancel requested"}
        return {}

    # ---- the store's grouped reads ------------------------------------------------------------

    def run_counts(self) -> dict[tuple[str, str], int]:
        """Runs per (workflow, state), in one grouped read."""
        return self.store.counts()

    def last_entries(self, run_ids: Sequence[str]) -> dict[str, Entry]:
        """Each run's last journal entry (runs with an empty journal are left out)."""
        return self.store.last_entries(list(run_ids))

    def live(self) -> dict[str, list[str] | None]:
        """Each live worker and the workflows it serves."""
        return {owner: w.workflows for owner, w in self.store.workers().items()}

    # ---- one run --------------------------------------------------------------------------

    def record(self, run_id: str) -> RunRecord:
        record = self.store.get(run_id)
        if record is None:
            raise RunNotFound(f"no run {run_id!r} in this store")
        return record

    def run_page(self, run_id: str, page: Any = 0, size: Any = None,
                 at: Any = None) -> dict[str, Any]:
        """A run: its record, queued signals, family, and one page of its timeline: ``page``
        (a number or ``"last"``), or the page holding position ``at`` when given."""
        r = self.record(run_id)
        items = timeline(self.store.journal(run_id))
        _, s = _page_of(0, size, "timeline")
        pages = max(1, -(-len(items) // s))
        p = pages - 1 if page == "last" else _page_of(page, s, "timeline")[0]
        if at not in (None, ""):
            try:
                position = int(at)
            except (TypeError, ValueError):
                raise UsageError(f"at must be a position (a whole number), got {at!r}") from None
            p = next((i // s for i, it in enumerate(items) if it[0][1] >= position), pages - 1)
        error = error_of(r.error)
        blocked_at = None
        if r.state == "blocked" and error is not None:
            found = _POSITION.search(error["message"]["text"])
            blocked_at = int(found.group(1)) if found else None
        return {
            "run": self._head(r, error), "blocked_at": blocked_at,
            "signals": [{"id": g.id, "name": g.name, "sent": g.sent,
                         "payload": shown(decode(g.payload))} for g in self.store.signals(run_id)],
            "children": self.children(run_id), "by_parent": self.by_parent,
            "timeline": [describe(item) for item in items[p * s:(p + 1) * s]],
            "page": p, "size": s, "pages": pages, "items": len(items),
            "first_error": next((i // s for i, it in enumerate(items)
                                 if any(e[4] == "error" for e in it)), None),
            "started": items[0][0][6] if items else None,
            "ended": max((e[7] for it in items for e in it), default=None),
            "now": time.time(),
        }

    def _head(self, r: RunRecord, error: dict[str, Any] | None) -> dict[str, Any]:
        live = self.live()
        return {
            "run_id": r.run_id, "workflow": r.workflow, "state": r.state, "owner": r.owner,
            "created": r.created, "updated": r.updated, "wake_at": r.wake_at,
            "waits": _waits(r.waiting_for), "cancel_requested": bool(r.cancel_requested),
            "resumes": r.resumes, "args": shown(arguments(r.args)),
            "result": None if r.result is None else shown(decode(r.result)), "error": error,
            "crash_loop": error is not None and error["type"] == "RunBlocked",
            "parent": getattr(r, "parent", None), "forked_from": getattr(r, "forked_from", None),
            "purged": _purged(r),
            "unserved": unserved(live, r), "served_by": served_by(live, r.workflow),
        }

    def children(self, run_id: str) -> dict[str, Any] | None:
        """The run's first children in creation order (None: the store cannot list them)."""
        if not self.by_parent:
            return None
        found = self.store.runs(parent=run_id, limit=CHILDREN_SHOWN + 1)
        return {"runs": [{"run_id": c.run_id, "state": c.state, "workflow": c.workflow}
                         for c in reversed(found[:CHILDREN_SHOWN])],
                "more": len(found) > CHILDREN_SHOWN}

    def value(self, run_id: str, what: str, seq: Any = None) -> dict[str, Any]:
        """One value whole, for "show all": ``args``, ``result``, ``error``, ``traceback``,
        a journal entry's ``entry`` / ``entry_traceback`` (by ``seq``), or a queued
        ``signal``'s payload (by its id as ``seq``)."""
        r = self.record(run_id)
        if what in ("args", "result", "error", "traceback"):
            raw = {"args": arguments(r.args), "result": decode(r.result)}.get(what)
            if what in ("error", "traceback"):
                info = decode(r.error)
                raw = _error_part(info, what)
            return {"text": text_of(raw)}
        try:
            number = int(seq)
        except (TypeError, ValueError):
            raise UsageError(f"seq must be a whole number, got {seq!r}") from None
        found: list[str | None]
        if what == "signal":
            found = [g.payload for g in self.store.signals(run_id) if g.id == number]
        elif what in ("entry", "entry_traceback"):
            found = [e[5] for e in self.store.journal(run_id) if e[0] == number]
        else:
            raise UsageError(f"unknown value {what!r}: use args, result, error, traceback, "
                             f"entry, entry_traceback or signal")
        if not found:
            raise RunNotFound(f"run {run_id!r} has no {what} {number}")
        value = decode(found[0])
        return {"text": text_of(_error_part(value, "traceback") if what == "entry_traceback"
                                else value)}

    # ---- workflows and workers ---------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Runs per state per workflow, and the live workers with what they serve."""
        counts = self.run_counts()
        workflows: dict[str, dict[str, int]] = {}
        for (wf, st), n in counts.items():
            workflows.setdefault(wf, {})[st] = n
        workers = self.store.workers()
        live = {owner: w.workflows for owner, w in workers.items()}
        until = {owner: w.lease_until for owner, w in workers.items()}
        served = {wf for names in live.values() for wf in names or ()}
        return {
            "workflows": [{"workflow": wf, "counts": workflows[wf], "served": wf in served}
                          for wf in sorted(workflows)],
            "workers": [{"owner": owner, **owner_parts(owner), "workflows": names,
                         "lease_until": until.get(owner)} for owner, names in sorted(live.items())],
            "workers_known": True, "states": list(STATES),
            "purged": any(st == PURGED for _, st in counts), "now": time.time(),
        }

    def versions(self, census: Callable[[Store], dict[str, dict[int | None, int]]]) -> dict[str, Any]:
        """The version census (unfinished runs per ``Version`` branch), reused for
        ``CENSUS_TTL`` seconds: it reads the journal of every unfinished run."""
        with self._census_lock:
            now = time.time()
            if self._census is None or now - self._census.at > CENSUS_TTL:
                start = time.perf_counter()
                counts = census(self.store)
                self._census = _Census(now, time.perf_counter() - start, counts)
            c = self._census
        return {"changes": [{"change": change, "branches": [
                    {"branch": b, "runs": n} for b, n in sorted(
                        branches.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]}
                            for change, branches in c.counts.items()],
                "at": c.at, "took": c.took, "ttl": CENSUS_TTL}


def _purged(r: RunRecord) -> dict[str, Any] | None:
    """What a purged run's tombstone tells (None for another run): the state it had ended
    in, and the tombstone's message (when it was purged)."""
    if r.state != PURGED:
        return None
    info = decode(r.error)
    info = info if isinstance(info, dict) else {}
    return {"had": info.get("state"), "message": str(info.get("message", ""))}


def _error_part(info: Any, what: str) -> Any:
    if not isinstance(info, dict):
        return info
    if what == "traceback":
        return info.get("traceback") or ""
    return {k: v for k, v in info.items() if k != "traceback"}


# ---- live workers --------------------------------------------------------------------------

def served_by(live: dict[str, list[str] | None] | None, workflow: str) -> list[str] | None:
    """The live workers that advertise ``workflow`` (None: the store cannot say)."""
    if live is None:
        return None
    return sorted(owner for owner, names in live.items() if names and workflow in names)


def unserved(live: dict[str, list[str] | None] | None, r: RunRecord) -> str | None:
    """Why an unfinished (not blocked) run waits for nothing that will come: no live worker
    would run it (a worker never claims a run of a workflow it does not know). None when a
    worker serves it, when it is finished or blocked, or when that cannot be told."""
    if live is None or r.state not in ACTIVE:
        return None
    if any(r.workflow in names for names in live.values() if names is not None):
        return None
    if any(names is None for names in live.values()):
        return None  # a live worker of an older replaygen never said what it serves
    return "no worker is live" if not live else f"no live worker knows workflow {r.workflow!r}"


# ---- the timeline --------------------------------------------------------------------------

def timeline(journal: Iterable[Entry]) -> list[list[Entry]]:
    """A journal as timeline items, in the order they began: the entries of one command at
    one position together (a step's failed tries and its outcome; a Wait's timer and its
    signal; a child's start and its end); each Version marker and each cancel on its own."""
    items: list[list[Entry]] = []
    open_at: dict[tuple[int, str], list[Entry]] = {}
    for e in journal:
        family = _FAMILY.get(e[2])
        if family is None:  # version, cancel, deadline, a kind this page does not know
            items.append([e])
            continue
        key = (e[1], family)
        if key in open_at:
            open_at[key].append(e)
        else:
            open_at[key] = [e]
            items.append(open_at[key])
    return items


def describe(entries: list[Entry]) -> dict[str, Any]:
    """One timeline item for the page: when it began and ended, what it was and how it went."""
    first, last = entries[0], entries[-1]
    kind = _FAMILY.get(first[2], first[2])
    item: dict[str, Any] = {
        "position": first[1], "kind": kind, "name": first[3], "seq": first[0],
        "seqs": [e[0] for e in entries], "started": first[6], "ended": last[7],
        "status": last[4],
    }
    handler = _DESCRIBE.get(kind)
    if handler is not None:
        handler(item, entries)
    else:
        item["entry_kind"] = first[2]
        item["value"] = None if last[5] is None else shown(decode(last[5]))
    return item


def _describe_do(item: dict[str, Any], entries: list[Entry]) -> None:
    tries = [e for e in entries if e[2] == "retry"]
    final = next((e for e in entries if e[2] == "do"), None)
    item["attempts"] = len(tries) + (final is not None)
    item["tries"] = [{"seq": e[0], "started": e[6], "ended": e[7], "error": error_of(e[5])}
                     for e in tries]
    if final is None:
        item["status"] = "retrying"
    elif final[4] == "ok":
        item["result"] = shown(decode(final[5]))
    else:
        item["error"] = error_of(final[5])
        item["error_seq"] = final[0]


def _describe_sleep(item: dict[str, Any], entries: list[Entry]) -> None:
    sleep = next((e for e in entries if e[2] == "sleep"), None)
    item["until"] = None if sleep is None else decode(sleep[5])
    item["woke"] = any(e[2] == "woke" for e in entries)  # it won an Any


def _describe_wait(item: dict[str, Any], entries: list[Entry]) -> None:
    timer = next((e for e in entries if e[2] == "timer"), None)
    final = next((e for e in entries if e[2] == "wait"), None)
    item["timeout"] = None if timer is None else decode(timer[5])
    if final is None:
        item["status"] = "waiting"
    elif final[4] == "ok":
        item["payload"] = shown(decode(final[5]))
    # else "timeout": no value


def _describe_child(item: dict[str, Any], entries: list[Entry]) -> None:
    spawn = next((e for e in entries if e[2] == "spawn"), None)
    final = next((e for e in entries if e[2] == "child"), None)
    item["child"] = None if spawn is None else str(decode(spawn[5]))
    if final is None:
        item["status"] = "running"
    elif final[4] == "ok":
        item["result"] = shown(decode(final[5]))
    else:
        item["error"] = error_of(final[5])
        item["error_seq"] = final[0]


def _describe_version(item: dict[str, Any], entries: list[Entry]) -> None:
    item["version"] = decode(entries[0][5])


def _describe_group(item: dict[str, Any], entries: list[Entry]) -> None:
    """Where an All or Any of 2+ members began: which (``all`` or ``any``) and how many."""
    item["group"] = entries[0][3]
    item["members"] = decode(entries[0][5])


def _describe_mark(item: dict[str, Any], entries: list[Entry]) -> None:
    """A cancel (``status`` "deadline": a deadline struck) or a deadline journaled."""
    if entries[0][2] == "deadline":
        item["until"] = decode(entries[0][5])


_DESCRIBE: dict[str, Callable[[dict[str, Any], list[Entry]], None]] = {
    "do": _describe_do, "sleep": _describe_sleep, "wait": _describe_wait,
    "child": _describe_child, "version": _describe_version, "cancel": _describe_mark,
    "deadline": _describe_mark, "group": _describe_group,
}

__all__ = ["View", "describe", "timeline"]
