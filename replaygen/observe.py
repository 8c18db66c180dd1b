"""Observation: events the interpreter reports, and what a step can learn about itself.

Observers are plain callables taking an ``Event``; use them for metrics,
tracing or tests. Most run on the engine's driver thread, which runs every
run, so keep them quick; an exception from an observer is logged and ignored.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import uuid
from contextvars import ContextVar
from typing import NamedTuple
from dataclasses import dataclass

from .errors import ReplaygenError

EVENTS = (
    "run_started",     # a run's workflow body is about to start (fresh or resumed)
    "step_started",    # a step function is about to be called (attempt is set)
    "step_returned",   # it returned or raised; its entry is not committed yet
    "step_committed",  # its final entry is durable
    "step_retrying",   # a failed try is journaled; the next waits for its backoff
    "run_parked",      # the run sleeps or waits and holds no thread
    "signal_taken",    # a Wait consumed a signal (durable)
    "run_finished",    # completed, failed or cancelled (durable)
    "run_blocked",     # non-determinism, a corrupt row, an unknown workflow, a crash loop
    "recovered",       # recover() claimed runs (each batch resumes as it is claimed)
    "shutdown",        # shutdown() began
)


@dataclass(frozen=True)
class Event:
    """One thing that happened. ``kind`` is one of ``EVENTS``; unused fields are None."""

    kind: str
    run_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    position: int | None = None
    attempt: int | None = None
    state: str | None = None
    duration: float | None = None
    error: str | None = None
    count: int | None = None


Observer = Callable[[Event], None]


def notify(observer: Observer | None, event: Event) -> None:
    """Give the observer an event; its exception is logged, never raised into the engine."""
    if observer is not None:
        try:
            observer(event)
        except Exception:
            logging.getLogger("replaygen").exception("observer failed on %s", event.kind)


class StepInfo(NamedTuple):  # a tuple: one is built per step
    """What a running step knows about itself (see ``current_step``)."""

    run_id: str
    """The id of the run the step belongs to."""
    step: str
    """The step's name: the ``name`` given to its ``Do``."""
    position: int
    """Where the step's command stands among the run's commands, counted from 0 (each member
    of an ``All`` has one of its own): the POS column of ``replaygen show``."""
    attempt: int
    """Which try this is: 1 for the first, 2 for the first retry (see ``Retry``). A step run
    again after a crash, before its outcome was journaled, keeps the attempt it had."""
    incarnation: str = ""
    """A random nonce stored with the run when it was started (empty for older runs); it makes
    ``idempotency_key`` unique to this run, not just to its id."""

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and across re-execution after a crash, and unique to this
        run: a run id reused in another store, or after a store is recreated, gets other
        keys. Hand it to APIs that deduplicate."""
        return str(uuid.uuid5(_KEYS, f"{self.run_id}\x00{self.position}" + (
            f"\x00{self.incarnation}" if self.incarnation else "")))


_KEYS = uuid.UUID("6f1c2a52-9d1e-4c1b-8f0a-3e5d7b9c1a20")
_current: ContextVar[StepInfo] = ContextVar("replaygen_step")


def current_step() -> StepInfo:
    """The step being executed, from inside a step function run by an Interpreter."""
    try:
        return _current.get()
    except LookupError:
        raise ReplaygenError(
            "current_step() works only inside a step function that an Interpreter is running"
        ) from None
