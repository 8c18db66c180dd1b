"""The effect protocol between the replay rules and whoever drives them.

A run's life (``replay.Life.life()``) yields *effects*, values saying what it needs done (a
write, a step call, an alarm, a read of its signal inbox); the driver performs each and sends
back the answer. What happens to the run from outside (a step that ran elsewhere ended, a
signal, a cancel, an alarm going off) reaches it as *events*, in the answer to ``Idle`` and to
``Save``. The runtime (threads, a store) and the testing kit (a fake journal) are drivers; they
import this module and never the rules. Declarations only: nothing here does anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .journal import Entry
from .observe import Event, StepInfo


# ---- effects: what a life asks of its driver ----------------------------------------------

class Spawn(NamedTuple):
    """A child run a write of its parent creates, in the same transaction."""

    run_id: str
    workflow: str
    args: str


class Notice(NamedTuple):
    """A signal a write delivers to another run (a child's end, to its parent), unless that
    run is finished or gone."""

    run_id: str
    name: str
    payload: str


class Save(NamedTuple):
    """Make entries and the run row durable, fenced (the fields after ``run_id, owner, fence``
    of a store ``Write``). Answer: the events that arrived meanwhile; a refused write, or an
    admitting one that found no free slot (the run waits in the store), ends the life
    instead."""

    state: str
    entries: tuple[Entry, ...] = ()
    wake_at: float | None = None
    waiting_for: str | None = None
    result: str | None = None
    error: str | None = None
    consume: tuple[int, ...] = ()
    cancel_seen: bool = False
    release: bool = False
    keep: bool = False
    spawn: tuple[Spawn, ...] = ()
    cancel: tuple[str, ...] = ()
    notify: Notice | None = None
    progress: bool = False
    admit: int = 0


class Acquire(NamedTuple):
    """Hold one of ``concurrency`` slots for the next ``Call`` at ``position``. Answer: True,
    or False: queued, and a ``Granted`` follows once a slot is kept for it (ask again then)."""

    position: int


class Call(NamedTuple):
    """Run ``fn(*args, **kwargs)`` in a slot (kept for it by ``Acquire``, or free). Answer: its
    ``Outcome`` if it ran at once; None, and a ``Done`` follows; or False: queued for a slot,
    and a ``Granted`` follows once one is kept for it (call again then). ``alone``: nothing
    else of the run waits on it (it may run inline)."""

    position: int
    attempt: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Any
    info: StepInfo
    alone: bool


class Withdraw(NamedTuple):
    """Give up every slot queued for or kept for this run. Answer: None."""


class Alarm(NamedTuple):
    """Send a ``Ring`` at this wall-clock time (None: never), replacing the last alarm."""

    at: float | None


class Inbox(NamedTuple):
    """Answer: the run's unconsumed signals, oldest first (each with id, name, payload)."""


class Lookup(NamedTuple):
    """Answer: the store's record of run ``run_id`` (a child), or None."""

    run_id: str


class Idle(NamedTuple):
    """Nothing to do until something happens. Answer: the events that happened."""


class Emit(NamedTuple):
    """Report an event to the observer (yielded only when there is one)."""

    event: Event


Effect = Save | Acquire | Call | Withdraw | Alarm | Inbox | Lookup | Idle | Emit
IDLE, INBOX, WITHDRAW = Idle(), Inbox(), Withdraw()


# ---- events: what happens to a life --------------------------------------------------------

class Ring(NamedTuple):
    """The alarm went off, and is gone: a deadline still ahead (the clock stepped back) asks
    for another."""


class Granted(NamedTuple):
    """A concurrency slot is kept for a step that was queued: ask for it again."""


class Outcome(NamedTuple):
    """How one try of a step ended: a value, an error, or an interrupt (not a failure)."""

    started: float
    value: Any = None
    error: Exception | None = None
    interrupt: BaseException | None = None


class Done(NamedTuple):
    """A step that ran off the driver has ended."""

    position: int
    attempt: int
    outcome: Outcome


class Signals(NamedTuple):
    """Signals were delivered: these (each with id, name, payload), or None: read the inbox."""

    items: tuple[Any, ...] | None = None


class Cancel(NamedTuple):
    """A cancel was requested."""


class Stop(NamedTuple):
    """The run was terminated, or its worker let it go: the life ends, writing nothing."""


RING, GRANTED, CANCEL, STOP, UNREAD = Ring(), Granted(), Cancel(), Stop(), Signals()
