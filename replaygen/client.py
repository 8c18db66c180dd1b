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
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ._identity import new_owner_id
from .codec import Codec, JSONCodec, Payloads
from .commands import check_name, check_signal
from .errors import (
    CorruptRecord, ResultTimeout, RunNotFound, UsageError,
)
from .journal import Notice, describe_error, read_error, stored_error
from .registry import name_of
from .effects import CANCEL, STOP, Signals
from .replay import CHILD_SIGNAL
from .store import FINISHED, RunRecord, Signal, Store, Write

DEFAULT_MAX_PAYLOAD = 2 * 1024 * 1024
"""The largest encoded step result, argument list or signal payload, in bytes."""


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

    def start(self, workflow: Any, *args: Any, run_id: str | None = None, **kwargs: Any) -> str:
        """Start a run of ``workflow`` and return its id once it is durable. A ``Client`` queues
        it for any live worker that knows the workflow (given by name, or a function used for
        its name); an ``Interpreter`` runs it here. Starting an existing ``run_id`` with the
        same workflow and arguments returns it and starts nothing; with others it raises."""
        name = self._workflow_name(workflow)
        run_id = self._new_run_id() if run_id is None else check_name("run_id", run_id)
        args_text = self._args(name, args, kwargs)
        if not self._create(run_id, name, args_text):
            self._existing(run_id, name, args_text)
        return run_id

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

    def _create(self, run_id: str, name: str, args_text: str) -> bool:
        """Store the new run; False if ``run_id`` is taken. A client's is released at once (no
        lease backs it), and the release wakes the workers."""
        write = Write(run_id, self.client_id, 1, "pending", create=(name, args_text), release=True)
        return bool(self._store.commit([write])[0])

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
                         r.wake_at, r.waiting_for, r.parent, self._children_of(r.run_id))

    def _children_of(self, run_id: str) -> tuple[str, ...]:
        found: list[str] = []
        while page := self._store.runs(parent=run_id, limit=1000, offset=len(found)):
            found += [r.run_id for r in page]
        return tuple(reversed(found))

    def _existing(self, run_id: str, name: str, args_text: str) -> RunRecord:
        """The run already stored under ``run_id``, if it is this start's; else a UsageError."""
        old = self._record(run_id)
        if old.workflow == name and self._same_args(old.args, args_text):
            return old
        raise UsageError(
            f"run {run_id!r} already exists as {self._call(old.workflow, old.args)}; this start() "
            f"asked for {self._call(name, args_text)}. Use another run_id, or the same workflow "
            f"and arguments.")

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
        # Canonical forms, so key order does not matter but True, 1 and 1.0 differ.
        try:
            a, b = (json.dumps({k: v for k, v in self._codec.decode(t).items() if k != "nonce"},
                               sort_keys=True, default=repr) for t in (old, new))
            return a == b
        except Exception:
            return old == new

    def _record(self, run_id: str) -> RunRecord:
        record = self._store.get(check_name("run_id", run_id))
        if record is None:
            raise RunNotFound(f"no run {run_id!r} in this store")
        return record


__all__ = ["DEFAULT_MAX_PAYLOAD", "Client", "FINISHED", "RunStatus"]
