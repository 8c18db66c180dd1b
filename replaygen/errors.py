"""The error hierarchy, and the stored form of errors (the error record). Every error
replaygen raises is a ReplaygenError.

Messages are written for the person on call: they name the run, the step or
position, what was expected, what was found, and what to do about it.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec import Codec

TRACEBACK_LIMIT = 50_000
"""Characters of a traceback kept in an error record (its end: where it was raised)."""
MESSAGE_LIMIT = 10_000
"""Characters of an error message kept in an error record."""


class ReplaygenError(Exception):
    """Base of every error raised by replaygen."""


class UsageError(ReplaygenError, TypeError, ValueError):
    """A call was given something it cannot accept (wrong type, bad name, ...)."""


class RunNotFound(ReplaygenError, LookupError):
    """No run with that id exists in the store."""


class RunFinished(ReplaygenError):
    """The run has already finished; it cannot take signals any more."""


class ResultTimeout(ReplaygenError, TimeoutError):
    """result() gave up waiting; the run goes on."""


class StoreUnavailable(ReplaygenError):
    """The store failed in a way that may pass (locked, unreachable, disk full)."""


class CorruptRecord(ReplaygenError):
    """A stored row cannot be read back; the run it belongs to is blocked."""


class RunBlocked(ReplaygenError):
    """The run was blocked for a reason its code cannot see (a crash loop): fix, then resume."""


class StepFailed(ReplaygenError):
    """A step failed for good: its retries are exhausted or its error is not retried.

    Raised into the workflow at the step's ``yield``, identically when the
    step runs and when its journaled failure is replayed.
    """

    def __init__(
        self, step: str, error_type: str, error_message: str, traceback: str | None = None
    ) -> None:
        super().__init__(f"step {step!r} failed: {error_type}: {error_message}")
        self.step = step
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class NonDeterminismError(ReplaygenError):
    """The workflow's code no longer yields what the run's journal recorded."""

    def __init__(self, run_id: str, position: int, journal: str, code: str) -> None:
        super().__init__(
            f"run {run_id!r} is not deterministic at position {position}: the journal holds "
            f"{journal} but the code {code}. The run is blocked, not failed: deploy code that "
            f"replays old runs unchanged (branch with Version(...)) and call recover()."
        )
        self.run_id = run_id
        self.position = position
        self.journal = journal
        self.code = code


class WaitTimeout(ReplaygenError):
    """A Wait's timeout expired before its signal arrived."""

    def __init__(self, signal: str = "") -> None:
        super().__init__(f"no signal {signal!r} arrived before the timeout" if signal else "")
        self.signal = signal


class Cancelled(ReplaygenError):
    """The run was cancelled; raised inside the workflow so it can compensate."""


class DeadlineExceeded(Cancelled):
    """The run's ``Deadline`` passed; raised once, at the yield where the run stands."""

    deadline: float | None = None
    """The deadline that passed (epoch seconds), on the exception the engine raised."""


class ChildFailed(ReplaygenError):
    """A child run (``Child``) failed, or could not be started; raised into the parent.

    ``run_id`` is the child's; ``error_type`` and ``error_message`` are its error's.
    """

    def __init__(self, run_id: str, error_type: str, error_message: str,
                 traceback: str | None = None) -> None:
        super().__init__(f"child run {run_id!r} failed: {error_type}: {error_message}")
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class WorkflowFailed(ReplaygenError):
    """The run ended with an exception escaping the workflow."""

    def __init__(
        self, run_id: str, error_type: str, error_message: str, traceback: str | None = None
    ) -> None:
        super().__init__(f"run {run_id!r} failed: {error_type}: {error_message}")
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


# ---- the error record: how an error is stored, and read back -------------------------------

def error_record(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error (cut further by the engine when it does not fit)."""
    return {"type": type(exc).__name__, "message": str(exc)[:MESSAGE_LIMIT],
            "traceback": "".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]}


def read_error(text: str | None, codec: Codec) -> dict[str, Any]:
    """An error record back from its text; a damaged one still gives a readable message."""
    try:
        info = codec.decode(text or "{}")
        return info if isinstance(info, dict) else {"message": str(info)}
    except Exception:
        return {"type": "Error", "message": str(text)}


def stored_error(info: Any, *, step: str | None = None, child: str | None = None,
                 run: str | None = None) -> Exception:
    """The exception a stored error record stands for: a step's (``StepFailed``), a child's
    (``ChildFailed``; ``Cancelled`` for a cancelled child), a failed run's (``WorkflowFailed``),
    else a cancel (``DeadlineExceeded`` for a deadline). The one decoder of error records."""
    info = info if isinstance(info, dict) else {"message": str(info)}
    kind, message = str(info.get("type", "Error")), str(info.get("message", ""))
    if step is not None:
        return StepFailed(step, kind, message, info.get("traceback"))
    if child is not None:
        if kind in ("Cancelled", "DeadlineExceeded", "Terminated"):
            return Cancelled(f"child run {child!r} was cancelled: {message}")
        return ChildFailed(child, kind, message, info.get("traceback"))
    if run is not None:
        return WorkflowFailed(run, kind, message, info.get("traceback"))
    return (DeadlineExceeded if kind == "DeadlineExceeded" else Cancelled)(message)


def describe_error(info: dict[str, Any]) -> str:
    return f"{info.get('type', 'Error')}: {info.get('message', '')}"
