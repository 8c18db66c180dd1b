"""replaygen: durable execution for Python generators.

A workflow is a generator function that yields commands (``Do``, ``Sleep``,
``Wait``, ``Version``, ``All``, ``Any``, ``Child``, ``Deadline``); an ``Interpreter``
executes each command or, when a run is resumed after a crash, answers it from the run's
journal.
"""

from .codec import Codec, JSONCodec
from .commands import All, Any, Child, Command, Deadline, Do, Retry, Sleep, Version, Wait
from .errors import (
    Cancelled, ChildFailed, CorruptRecord, DeadlineExceeded, NonDeterminismError, ReplaygenError,
    ResultTimeout, RunBlocked, RunFinished, RunNotFound, StepFailed, StoreUnavailable, UsageError,
    WaitTimeout, WorkflowFailed,
)
from .client import Client
from .client import DEFAULT_MAX_PAYLOAD, RunStatus
from .interpreter import Interpreter
from .runtime import Clock, SystemClock
from .observe import Event, Observer, StepInfo, current_step
from .registry import workflow
from .schedules import Schedule
from .store import MemoryStore, Store

__all__ = [
    "DEFAULT_MAX_PAYLOAD", "All", "Any", "Cancelled", "Child", "ChildFailed", "Client", "Clock",
    "Codec", "Command", "CorruptRecord", "Deadline", "DeadlineExceeded", "Do", "Event",
    "Interpreter", "JSONCodec", "MemoryStore",
    "NonDeterminismError", "Observer", "ReplaygenError", "ResultTimeout", "Retry", "RunBlocked",
    "RunFinished", "RunNotFound", "RunStatus", "Schedule", "Sleep", "StepFailed", "StepInfo", "Store",
    "StoreUnavailable", "SystemClock", "UsageError", "Version", "Wait", "WaitTimeout",
    "WorkflowFailed", "current_step", "workflow",
]
