"""``Client``: start, watch and steer runs in a store, executing none of them.

For processes that start runs and read their results but run no workflow code (a web
app): it needs no workflow functions, starts no thread and holds no lease. A live worker
(``Interpreter(store).recover()``) that knows the workflow picks a started run up at once.
``Interpreter`` is a Client that also executes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from ._identity import new_owner_id
from .codec import Codec, JSONCodec, Payloads
from .commit import GroupCommit
from .commands import check_name, check_signal
from .errors import (
    CorruptRecord, ReplaygenError, ResultTimeout, RunNotFound, UsageError, describe_error,
    read_error, stored_error,
)
from .journal import Entry
from .registry import name_of
from .effects import CANCEL, STOP, Notice, Signals
from .replay import CHILD_SIGNAL
from .store import FINISHED, PURGED, RunRecord, Signal, Store, Write

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""The largest encoded step result, argument list or signal payload, in bytes."""
PURGE_BATCH = 500
"""Runs purged per transaction: each batch is short, so no worker waits long for its locks."""
START_BATCH = 1000
"""Runs ``start_many`` creates per commit."""


class NewRun(NamedTuple):
    """A run to create: its id, workflow, encoded arguments, and a fork's prefix and source."""

    run_id: str
    workflow: str
    args: str
    entries: tuple[Entry, ...] = ()
    source: str | None = None

    def write(self, owner: str, release: bool) -> Write:
        create = (self.workflow, self.args) if self.source is None else (
            self.workflow, self.args, self.source)
        return Write(self.run_id, owner, 1, "pending", self.entries, release=release,
                     create=create)


@dataclass(frozen=True)
class RunStatus:
    """What ``status()`` reports. ``state`` is one of the fixed state strings."""

    run_id: str
    state: str
    error: str | None
    workflow: str
    created: float
    updated: float
    wake_at: float | None
    waiting_for: str | None
    parent: str | None = None
    """The run that started this one (``Child``), or None."""
    children: tuple[str, ...] = ()
    """The runs this one started as children, in creation order."""
    forked_from: str | None = None
    """The run this one was forked from (``fork``), or None."""


class Client:
    """Starts and steers runs in ``store``; executes nothing."""

    def __init__(self, store: Store, *, codec: Codec | None = None,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        missing = [m for m in ("commit", "get", "deliver") if not hasattr(store, m)]
        if missing:
            raise UsageError(f"{store!r} is not a store (it has no {', '.join(missing)}); pass e.g. "
                             f"SQLiteStore('runs.db') or MemoryStore()")
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            raise UsageError(f"max_payload must be an int >= 1, got {max_payload!r}")
        self._store, self._codec = store, codec or JSONCodec()
        self._payloads = Payloads(self._codec, max_payload)
        self.client_id = new_owner_id()
        self._id_key, self._ids = os.urandom(32), itertools.count()
        self._group = GroupCommit(store)  # starts from many threads share commits

    def start(self, workflow: Any, *args: Any, run_id: str | None = None, **kwargs: Any) -> str:
        """Start a run of ``workflow`` and return its id once it is durable. A ``Client`` queues
        it for any live worker that knows the workflow (given by name, or a function used for
        its name); an ``Interpreter`` runs it here. Starting an existing ``run_id`` with the
        same workflow and arguments returns it and starts nothing; with others it raises."""
        name = self._workflow_name(workflow)
        run_id = self._new_run_id() if run_id is None else check_name("run_id", run_id)
        self._start([NewRun(run_id, name, self._args(name, args, kwargs))])
        return run_id

    def start_many(self, workflow: Any, calls: Iterable[tuple[Any, ...] | dict[str, Any]],
                   run_ids: Sequence[str] | None = None) -> list[str]:
        """Start one run of ``workflow`` per item of ``calls`` (a tuple of positional
        arguments, or a dict of keyword arguments) and return their ids, in order, once all
        are durable: they share commits (``START_BATCH`` runs each), so starting many costs
        little more than starting one. ``run_ids`` (one per call) work as in ``start()``: an
        existing run with the same workflow and arguments is returned and started again
        nowhere; one with others raises, after the runs in its commit were started."""
        name = self._workflow_name(workflow)
        items = list(calls)
        ids = [self._new_run_id() for _ in items] if run_ids is None else [
            check_name("run_id", r) for r in run_ids]
        if len(ids) != len(items) or len(set(ids)) != len(ids):
            raise UsageError(f"run_ids must be {len(items)} distinct ids, one per call; got "
                             f"{len(ids)} ({len(set(ids))} distinct)")
        new = [NewRun(run_id, name, self._args(name, *_call_args(call)))
               for run_id, call in zip(ids, items, strict=True)]
        for at in range(0, len(new), START_BATCH):
            self._start(new[at:at + START_BATCH])
        return ids

    def _start(self, new: list[NewRun]) -> None:
        """Create the runs; one found existing must be this start's (else a UsageError)."""
        for run, made in zip(new, self._create(new), strict=True):
            if not made:
                self._existing(run.run_id, run.workflow, run.args)

    def result(self, run_id: str, timeout: float | None = None) -> Any:
        """Wait for the run to finish and return its result; raise WorkflowFailed or Cancelled
        (a ResultTimeout, also a TimeoutError, after ``timeout`` seconds)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
            raise UsageError(f"timeout must be seconds (a number) or None, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self._record(run_id)
            if record.state == "completed":
                try:
                    return None if record.result is None else self._codec.decode(record.result)
                except Exception as exc:
                    raise CorruptRecord(f"run {run_id!r}: the stored result cannot be decoded: "
                                        f"{exc}") from None
            if record.state == PURGED:
                info = read_error(record.error, self._codec)
                raise ReplaygenError(f"run {run_id!r} was purged (it had {info.get('state', 'ended')}"
                                     f"); its result is no longer kept")
            if record.state in ("failed", "cancelled"):
                info = read_error(record.error, self._codec)
                info.setdefault("message", f"run {run_id!r} was cancelled")
                raise stored_error(info, run=run_id if record.state == "failed" else None)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ResultTimeout(f"run {run_id!r} is still {record.state} after {timeout}s")
            self._wait_for(run_id, min(left if left is not None else 1.0, 1.0))

    def status(self, run_id: str) -> RunStatus:
        """The run's state (a fixed string) and, when failed, cancelled or blocked, why."""
        return self._status(self._record(run_id))

    def deliver(self, run_id: str, signal: str, payload: Any = None) -> None:
        """Queue a signal for the run; durable before this returns."""
        check_name("signal name", signal)
        check_signal("signal name", signal)
        text = self._payloads.encode(payload, "the payload of signal {!r}", signal)
        sent = self._store.deliver(check_name("run_id", run_id), signal, text)
        if isinstance(sent, int):  # a store before ids were returned gives None
            self._tell(run_id, Signals((Signal(sent, signal, text, time.time()),)))

    def cancel(self, run_id: str) -> None:
        """Raise Cancelled inside the run at its current or next yield, and in every unfinished
        run descending from it (its children...); idempotent. A blocked run takes it when code
        that replays it runs it again; ``terminate`` ends it now."""
        record = self._store.cancel(check_name("run_id", run_id))
        if record.cancel_requested:
            self._tell(run_id, CANCEL)

    def terminate(self, run_id: str, reason: str | None = None) -> RunStatus:
        """End an unfinished run now, and every unfinished run descending from it, as
        ``cancelled``, without running workflow code; a step still running somewhere is
        refused by the fence when it ends. A finished run is left as it is. Returns the run's
        status."""
        message = reason or "terminated"
        info = {"type": "Terminated", "message": message}
        record = self._record(run_id)
        notice = None if record.parent is None else Notice(
            record.parent, CHILD_SIGNAL + run_id, self._payloads.encode_error(
                {"state": "cancelled", "error": info}))
        record = self._store.terminate(run_id, self._payloads.encode_error(info), notice)
        self._tell(run_id, STOP)
        return self._status(record)

    def runs(self, *, states: Collection[str] | None = None, workflow: str | None = None,
             parent: str | None = None, limit: int = 100, offset: int = 0) -> list[RunStatus]:
        """Runs in the store, newest first: in these ``states``, of this ``workflow``, the
        children of ``parent`` (each filter only if given); ``limit`` runs from ``offset``."""
        return [self._status(r) for r in self._store.runs(
            states=states, workflow=workflow, parent=parent, limit=limit, offset=offset)]

    def purge(self, older_than: float | timedelta, states: Collection[str] = FINISHED,
              limit: int | None = None) -> int:
        """Delete the runs in ``states`` (finished ones) that finished more than ``older_than``
        (seconds or a timedelta) ago, oldest first, in short transactions of ``PURGE_BATCH``
        runs; at most ``limit`` runs (None: all). Returns how many. Each leaves a tombstone in
        state ``purged``: a later ``start()`` of its id with the same workflow and arguments
        returns the id and starts nothing; ``result()`` says it was purged. Never touches an
        unfinished or blocked run."""
        age = seconds("older_than", older_than)
        chosen = (states,) if isinstance(states, str) else tuple(states)
        if not chosen or any(s not in FINISHED for s in chosen):
            raise UsageError(f"states must be finished states ({', '.join(FINISHED)}), got "
                             f"{states!r}: an unfinished or blocked run is never purged")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise UsageError(f"limit must be an int >= 0 or None, got {limit!r}")
        before, total = time.time() - age, 0
        while limit is None or total < limit:
            size = PURGE_BATCH if limit is None else min(PURGE_BATCH, limit - total)
            done = len(self._store.purge(before, states=chosen, limit=size,
                                         tombstone=self._tombstone))
            total += done
            if done < size:  # all there are (or the rest are held by other transactions)
                break
        return total

    def fork(self, source: str, from_step: str | int, *, run_id: str | None = None) -> str:
        """Start a run of ``source``'s workflow and arguments whose journal is ``source``'s
        before ``from_step`` (a step name: its first try; or a position), and return its id:
        it replays that prefix (step results, version markers, consumed signals, deadlines)
        and goes on live from there with the current code, so the steps before are not run
        again. The new run records ``forked_from``; it has no parent. ``source`` must be
        finished or blocked; a point inside an ``All`` or ``Any`` is refused."""
        old = self._record(source)
        if old.state not in (*FINISHED, "blocked"):
            raise ReplaygenError(
                f"cannot fork run {source!r}: it is {old.state}"
                + (" (its journal is gone)" if old.state == PURGED else
                   "; fork a finished or blocked run (cancel or terminate it first)"))
        prefix = _fork_prefix(source, self._store.journal(source), from_step, self._codec)
        try:  # a fresh nonce: the steps it runs again get idempotency keys of their own
            stored = self._codec.decode(old.args)
            args = self._payloads.encode({**stored, "nonce": self._nonce()},
                                         "the arguments of workflow {!r}", old.workflow)
        except UsageError:
            raise
        except Exception as exc:
            raise CorruptRecord(f"cannot fork run {source!r}: its stored arguments cannot be "
                                f"decoded: {exc}") from None
        run_id = self._new_run_id() if run_id is None else check_name("run_id", run_id)
        if not self._create([NewRun(run_id, old.workflow, args, tuple(prefix), source)])[0]:
            raise UsageError(f"cannot fork run {source!r} as {run_id!r}: a run with that id "
                             f"exists; choose another run_id")
        return run_id

    # ---- shared with Interpreter ------------------------------------------------------------

    def _workflow_name(self, workflow: Any) -> str:
        """The name ``workflow`` is stored under: a name, or a function's."""
        name = workflow if isinstance(workflow, str) else name_of(workflow) \
            if callable(workflow) else None
        if name is None:
            raise UsageError(f"workflow must be a name or a workflow function, got {workflow!r}")
        return check_name("workflow name", name)

    def _new_run_id(self) -> str:
        # Unguessable as a uuid4, but a keyed hash of (pid, counter): os.urandom per start
        # would give up the GIL and then wait for a busy driver to hand it back.
        return hashlib.blake2b(b"%d:%d" % (os.getpid(), next(self._ids)), key=self._id_key,
                               digest_size=16).hexdigest()

    def _create(self, new: list[NewRun]) -> list[bool]:
        """Store the new runs in one commit, shared with other threads' starts; for each,
        False if its id is taken. A client's are released at once (no lease backs them), and
        the release wakes the workers."""
        done = self._group.grouped([run.write(self.client_id, release=True) for run in new])
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return [bool(result) for result in done]

    def _tell(self, run_id: str, *events: Any) -> None:
        """Give a run held by this process events (a Client holds none)."""

    def _wait_for(self, run_id: str, seconds: float) -> None:
        time.sleep(min(seconds, 0.05))  # executed elsewhere: poll

    def _args(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # The nonce makes idempotency keys unique to this run, not just to its id.
        return self._payloads.encode({"args": list(args), "kwargs": kwargs, "nonce": self._nonce()},
                                  "the arguments of workflow {!r}", name)

    def _nonce(self) -> str:
        return self._new_run_id()

    def _status(self, r: RunRecord) -> RunStatus:
        error = describe_error(read_error(r.error, self._codec)) if r.error else None
        return RunStatus(r.run_id, r.state, error, r.workflow, r.created, r.updated,
                         r.wake_at, r.waiting_for, r.parent, self._children_of(r.run_id),
                         r.forked_from)

    def _children_of(self, run_id: str) -> tuple[str, ...]:
        found: list[str] = []
        while page := self._store.runs(parent=run_id, limit=1000, offset=len(found)):
            found += [r.run_id for r in page]
        return tuple(reversed(found))

    def _existing(self, run_id: str, name: str, args_text: str) -> RunRecord:
        """The run already stored under ``run_id``, if it is this start's; else a UsageError."""
        old = self._record(run_id)
        purged = old.state == PURGED  # its arguments are kept as a hash
        if old.workflow == name and (old.args == _digest(self._canonical(args_text)) if purged
                                     else self._same_args(old.args, args_text)):
            return old
        was = f"a purged run of {old.workflow!r} with other arguments" if purged \
            else self._call(old.workflow, old.args)
        raise UsageError(
            f"run {run_id!r} already exists as {was}; this start() asked for "
            f"{self._call(name, args_text)}. Use another run_id, or the same workflow and "
            f"arguments.")

    def _call(self, name: str, args_text: str) -> str:
        """A start as a person reads it, ``name(args, key=value)``: no engine fields."""
        try:
            stored = self._codec.decode(args_text)
            shown = [repr(a) for a in stored["args"]] + [f"{k}={v!r}" for k, v in
                                                         stored["kwargs"].items()]
            return f"{name}({', '.join(shown)})"
        except Exception:
            return f"{name}({args_text})"

    def _same_args(self, old: str, new: str) -> bool:
        return self._canonical(old) == self._canonical(new)

    def _canonical(self, args_text: str) -> str:
        """Stored arguments without the engine's fields, in one form: key order does not
        matter, but True, 1 and 1.0 differ. Arguments that cannot be decoded stay as stored."""
        try:
            return json.dumps({k: v for k, v in self._codec.decode(args_text).items()
                               if k != "nonce"}, sort_keys=True, default=repr)
        except Exception:
            return str(args_text)

    def _tombstone(self, run: RunRecord) -> tuple[str, str]:
        """What a purged run keeps: a hash of its arguments, and an error record saying what
        became of it."""
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        info = {"type": "Purged", "state": run.state, "message": (
            f"run {run.run_id!r} was purged at {when} (it had {run.state}); its journal and "
            f"result are no longer kept")}
        return _digest(self._canonical(run.args)), self._payloads.encode_error(info)

    def _record(self, run_id: str) -> RunRecord:
        record = self._store.get(check_name("run_id", run_id))
        if record is None:
            raise RunNotFound(f"no run {run_id!r} in this store")
        return record


def seconds(what: str, value: float | timedelta, least: float = 0.0) -> float:
    """A duration given as seconds or a ``timedelta``, checked to be at least ``least``."""
    n = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not n >= least:
        raise UsageError(f"{what} must be seconds {'> 0' if least else '>= 0'} or a timedelta, "
                         f"got {value!r}")
    return float(n)


def _call_args(call: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A ``start_many`` call's (args, kwargs): a tuple is positional, a dict is keywords."""
    if isinstance(call, tuple):
        return call, {}
    if isinstance(call, dict) and all(isinstance(k, str) for k in call):
        return (), call
    raise UsageError(f"each call of start_many must be a tuple of positional arguments or a "
                     f"dict of keyword arguments, got {call!r} (one argument x is (x,))")


def _digest(canonical: str) -> str:
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _fork_prefix(source: str, journal: list[Entry], from_step: str | int,
                 codec: Any) -> list[Entry]:
    """The entries of ``journal`` a fork from ``from_step`` keeps, renumbered: those before the
    fork's position, except a child's start whose end is not journaled (it starts anew)."""
    if isinstance(from_step, bool) or not isinstance(from_step, (str, int)):
        raise UsageError(f"from_step must be a step name or a position, got {from_step!r}")
    end = max((e.position + 1 for e in journal if e.kind not in ("version", "group")), default=0)
    if isinstance(from_step, str):
        at = next((e.position for e in journal if e.kind in ("do", "retry")
                   and e.name == from_step), None)
        if at is None:
            names = list(dict.fromkeys(e.name for e in journal if e.kind in ("do", "retry")))
            raise ReplaygenError(f"cannot fork run {source!r} from step {from_step!r}: it has no "
                                 f"step of that name (its steps: {', '.join(names) or 'none'})")
    elif not 0 <= from_step <= end:
        raise ReplaygenError(f"cannot fork run {source!r} from position {from_step}: its "
                             f"positions are 0 to {end}")
    else:
        at = from_step
    for e in journal:
        if e.kind == "group":
            size = int(codec.decode(e.value))
            if e.position < at < e.position + size:
                raise ReplaygenError(
                    f"cannot fork run {source!r} from position {at}: it is inside the "
                    f"{'Any' if e.name == 'any' else 'All'} at positions {e.position} to "
                    f"{e.position + size - 1}; fork from position {e.position} to run it again")
    ended = {e.position for e in journal if e.kind == "child"}
    kept = [e for e in journal if e.position < at
            and not (e.kind == "spawn" and e.position not in ended)]
    return [e._replace(seq=i) for i, e in enumerate(kept)]


__all__ = ["DEFAULT_MAX_PAYLOAD", "Client", "FINISHED", "NewRun", "PURGE_BATCH", "RunStatus",
           "START_BATCH"]
