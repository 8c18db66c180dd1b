"""Commands: the values a workflow yields.

Commands are frozen data with validation and nothing else; only the
interpreter executes, journals or answers them. Each can also be used with
``yield from``, which gives the step's result its static type::

    receipt = yield from Do("charge", charge_card, order)   # typed as charge_card's result
"""

from __future__ import annotations

import hashlib
import inspect
import math
import typing
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import MappingProxyType
from typing import ClassVar, Generic, TypeVar, overload

from .errors import UsageError

T = TypeVar("T")

MAX_NAME = 255
"""Longest run id, workflow, step, signal or change name, in characters."""
RESERVED = "replaygen:"
"""Signal names starting with this are the engine's own (a child's end, sent to its parent)."""


def check_name(what: str, value: object) -> str:
    """Return ``value`` if it is a usable identifier, else raise a UsageError saying why."""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a str, got {type(value).__name__} {value!r}")
    if not value or len(value) > MAX_NAME:
        raise UsageError(f"{what} must be 1 to {MAX_NAME} characters long, got {len(value)}")
    if "\x00" in value:
        raise UsageError(f"{what} {value!r} contains a NUL character, which stores cannot keep")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} {value!r} is not valid unicode (lone surrogate)") from None
    return value


def check_signal(what: str, value: object) -> str:
    """``check_name`` for a signal name, which may not start with ``RESERVED``."""
    if check_name(what, value).startswith(RESERVED):
        raise UsageError(f"{what} {value!r} starts with {RESERVED!r}, which is reserved for the "
                         f"engine's own signals; choose another name")
    return value  # type: ignore[return-value]


def _seconds(what: str, value: object) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be seconds or a timedelta, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


class Command:
    """Base of every command a workflow may yield."""

    __slots__ = ()
    groupable: ClassVar[bool] = False
    """It may be a member of ``All`` and ``Any``."""

    def __iter__(self) -> Generator[Command, typing.Any, typing.Any]:
        return (yield self)

    def describe(self) -> str:
        """A short, readable form for error messages."""
        return repr(self)


@dataclass(frozen=True, init=False)
class Retry:
    """How a ``Do`` retries a step that raised: up to ``attempts`` tries in all, with capped,
    jittered exponential backoff between them. ``Do(..., retry=None)`` (the default) tries once.

    - ``attempts`` (default 3): tries in all, the first one included; at least 1.
    - ``backoff`` (seconds or a ``timedelta``, default 1 s): the wait after the first failed try.
    - ``multiplier`` (default 2.0, at least 1): each further wait is this many times the last.
    - ``max_backoff`` (seconds or a ``timedelta``, default 60 s): no wait is longer.
    - ``jitter`` (a fraction from 0 to 1, default 0.1): each wait is shortened by up to this
      fraction at random, so that the failed steps of many runs do not all retry at once.
    - ``retry_on`` (an exception class or a tuple of them, default ``Exception``): only these
      are retried.
    - ``never_retry`` (the same, default none): never retried, even when ``retry_on`` matches
      (a declined card: trying again cannot help).

    The wait before try ``n + 1`` is ``min(max_backoff, backoff * multiplier ** (n - 1))``
    times ``1 - jitter * random()``. An exception that is not retried, or the last try's,
    fails the step: it is journaled and raised in the workflow as ``StepFailed``. Each failed
    try is journaled with the time of the next one, so a crash neither restarts the count
    nor skips the wait; a run waiting to retry holds no thread, and a cancel ends the wait.
    ``KeyboardInterrupt`` and ``SystemExit`` are never retried nor journaled: they propagate.
    """

    attempts: int
    backoff: float
    multiplier: float
    max_backoff: float
    jitter: float
    retry_on: tuple[type[BaseException], ...]
    never_retry: tuple[type[BaseException], ...]

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: float | timedelta = 1.0,
        multiplier: float = 2.0,
        max_backoff: float | timedelta = 60.0,
        jitter: float = 0.1,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (Exception,),
        never_retry: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise UsageError(f"Retry attempts must be an int >= 1, got {attempts!r}")
        if not 0.0 <= jitter <= 1.0 or multiplier < 1.0:
            raise UsageError("Retry needs 0 <= jitter <= 1 and multiplier >= 1")
        classes = []
        for what, value in (("retry_on", retry_on), ("never_retry", never_retry)):
            value = value if isinstance(value, tuple) else (value,)
            if not all(isinstance(c, type) and issubclass(c, BaseException) for c in value):
                raise UsageError(f"Retry {what} must be exception classes, got {value!r}")
            classes.append(value)
        set_ = object.__setattr__
        set_(self, "attempts", attempts)
        set_(self, "backoff", _seconds("Retry backoff", backoff))
        set_(self, "multiplier", float(multiplier))
        set_(self, "max_backoff", _seconds("Retry max_backoff", max_backoff))
        set_(self, "jitter", float(jitter))
        set_(self, "retry_on", classes[0])
        set_(self, "never_retry", classes[1])

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth another try under this policy."""
        return isinstance(exc, self.retry_on) and not isinstance(exc, self.never_retry)

    def delay(self, failed_attempt: int, rand: float) -> float:
        """Seconds to wait after try number ``failed_attempt``; ``rand`` is uniform in [0, 1)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** (failed_attempt - 1))
        return base * (1.0 - self.jitter * rand)


@dataclass(frozen=True, init=False, repr=False)
class Do(Command, Generic[T]):
    """Run ``fn(*args, **kwargs)`` once, journal its result, and answer from the journal on replay.

    ``fn`` may be a plain function or an ``async def``; it runs off the
    workflow, on the interpreter's bounded pool of step threads (or its event
    loop). Its result must be encodable by the codec (JSON by default).
    """

    name: str
    fn: Callable[..., typing.Any]
    args: tuple[typing.Any, ...] = field(hash=False)
    kwargs: Mapping[str, typing.Any] = field(hash=False)
    retry: Retry | None
    groupable: ClassVar[bool] = True

    @overload
    def __init__(
        self: Do[T], name: str, fn: Callable[..., Awaitable[T]], *args: typing.Any,
        retry: Retry | None = None, **kwargs: typing.Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Do[T], name: str, fn: Callable[..., T], *args: typing.Any,
        retry: Retry | None = None, **kwargs: typing.Any,
    ) -> None: ...
    def __init__(
        self, name: str, fn: Callable[..., typing.Any], *args: typing.Any,
        retry: Retry | None = None, **kwargs: typing.Any,
    ) -> None:
        check_name("Do step name", name)
        if not callable(fn):
            raise UsageError(f"Do({name!r}, ...) needs a callable as its second argument, got {fn!r}")
        if retry is not None and not isinstance(retry, Retry):
            raise UsageError(f"Do({name!r}, ...) retry must be a Retry(...) or None, got {retry!r}")
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "fn", fn)
        set_(self, "args", args)
        set_(self, "kwargs", MappingProxyType(dict(kwargs)))
        set_(self, "retry", retry)

    def __iter__(self) -> Generator[Command, typing.Any, T]:
        return (yield self)  # type: ignore[no-any-return]

    def describe(self) -> str:
        return f"Do({self.name!r})"

    def __repr__(self) -> str:
        parts = [repr(self.name), getattr(self.fn, "__qualname__", repr(self.fn))]
        parts += [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.retry is not None:
            parts.append(f"retry={self.retry!r}")
        return f"Do({', '.join(parts)})"


@dataclass(frozen=True, init=False)
class Sleep(Command):
    """A durable timer of ``seconds`` (a number or a timedelta); holds no thread."""

    seconds: float
    groupable: ClassVar[bool] = True

    def __init__(self, duration: float | timedelta) -> None:
        object.__setattr__(self, "seconds", _seconds("Sleep duration", duration))

    def describe(self) -> str:
        return f"Sleep({self.seconds:g}s)"

    def __iter__(self) -> Generator[Command, typing.Any, None]:
        yield self


@dataclass(frozen=True, init=False)
class Wait(Command):
    """Park until signal ``signal`` is delivered to this run; evaluates to its payload.

    With ``timeout`` (seconds or a timedelta) it raises ``WaitTimeout`` in the
    workflow when no signal arrived in time.
    """

    signal: str
    timeout: float | None
    groupable: ClassVar[bool] = True

    def __init__(self, signal: str, timeout: float | timedelta | None = None) -> None:
        object.__setattr__(self, "signal", check_signal("Wait signal name", signal))
        object.__setattr__(
            self, "timeout", None if timeout is None else _seconds("Wait timeout", timeout)
        )

    def describe(self) -> str:
        return f"Wait({self.signal!r})"

    def __iter__(self) -> Generator[Command, typing.Any, typing.Any]:
        return (yield self)


@dataclass(frozen=True, init=False)
class Version(Command):
    """Branch on code changes, as Temporal's GetVersion: old runs get ``min``, new ones ``max``."""

    change_id: str
    min: int
    max: int

    def __init__(self, change_id: str, min: int, max: int) -> None:  # noqa: A002
        check_name("Version change_id", change_id)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (min, max)) or min > max:
            raise UsageError(f"Version({change_id!r}) needs ints with min <= max, got {min!r}, {max!r}")
        object.__setattr__(self, "change_id", change_id)
        object.__setattr__(self, "min", min)
        object.__setattr__(self, "max", max)

    def __iter__(self) -> Generator[Command, typing.Any, int]:
        return (yield self)  # type: ignore[no-any-return]


def _members(what: str, commands: tuple[typing.Any, ...]) -> None:
    for c in commands:
        if not (isinstance(c, Command) and c.groupable):
            raise UsageError(f"{what}(...) takes Do, Sleep, Wait and Child commands, got {c!r}")


@dataclass(frozen=True, init=False)
class All(Command):
    """Run ``Do``, ``Sleep``, ``Wait`` and ``Child`` commands concurrently; evaluates to their
    results in order.

    Every member runs to its end; if any failed, the first failure in member
    order is raised. On recovery only the unfinished members run again.
    """

    commands: tuple[Command, ...]

    def __init__(self, *commands: Command) -> None:
        _members("All", commands)
        object.__setattr__(self, "commands", commands)

    def __iter__(self) -> Generator[Command, typing.Any, list[typing.Any]]:
        return (yield self)  # type: ignore[no-any-return]


@dataclass(frozen=True, init=False)
class Any(Command):  # noqa: A001 - the fixed name; typing.Any is spelled in full here
    """The first of ``Do``, ``Sleep``, ``Wait`` and ``Child`` commands to finish wins;
    evaluates to ``(index, value)``, or raises the winner's error. Deterministic on replay.

    A losing Sleep or Wait is dropped (an untaken signal stays queued for the next Wait), a
    losing step still running has its result journaled but not returned, and a losing
    child is cancelled.
    """

    commands: tuple[Command, ...]

    def __init__(self, *commands: Command) -> None:
        if not commands:
            raise UsageError("Any(...) needs at least one command")
        _members("Any", commands)
        object.__setattr__(self, "commands", commands)

    def __iter__(self) -> Generator[Command, typing.Any, tuple[int, typing.Any]]:
        return (yield self)  # type: ignore[no-any-return]


def child_id(parent: str, position: int) -> str:
    """The id of the child a run starts at ``position`` (unless the command gives one)."""
    made = f"{parent}/{position}"
    if len(made) <= MAX_NAME:
        return made
    digest = hashlib.sha256(parent.encode()).hexdigest()[:16]
    return f"{parent[:MAX_NAME - 40]}~{digest}/{position}"



@dataclass(frozen=True, init=False, repr=False)
class Child(Command):
    """Start a child run of ``workflow`` (a registered function, or its name) and evaluate to
    its result. The parent's worker need not know the workflow: any worker that does runs it.

    The child's id is derived from the parent's id and this command's position unless
    ``run_id`` is given. A failed child raises ``ChildFailed``, a cancelled one ``Cancelled``.
    """

    workflow: str
    args: tuple[typing.Any, ...] = field(hash=False)
    kwargs: Mapping[str, typing.Any] = field(hash=False)
    run_id: str | None
    groupable: ClassVar[bool] = True

    def __init__(self, workflow: typing.Any, *args: typing.Any, run_id: str | None = None,
                 **kwargs: typing.Any) -> None:
        from .registry import name_of  # registry imports this module

        if not isinstance(workflow, str):
            if not inspect.isgeneratorfunction(workflow):
                raise UsageError(f"Child(...) needs a workflow (a generator function or a "
                                 f"registered name), got {workflow!r}")
            workflow = name_of(workflow)
        set_ = object.__setattr__
        set_(self, "workflow", check_name("Child workflow name", workflow))
        set_(self, "args", args)
        set_(self, "kwargs", MappingProxyType(dict(kwargs)))
        set_(self, "run_id", None if run_id is None else check_name("Child run_id", run_id))

    def describe(self) -> str:
        return f"Child({self.workflow!r})"

    def __repr__(self) -> str:
        parts = [repr(self.workflow)] + [repr(a) for a in self.args]
        parts += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if self.run_id is not None:
            parts.append(f"run_id={self.run_id!r}")
        return f"Child({', '.join(parts)})"

    def __iter__(self) -> Generator[Command, typing.Any, typing.Any]:
        return (yield self)


@dataclass(frozen=True, init=False)
class Deadline(Command):
    """From here, the run must end within ``seconds`` (a number or a timedelta); a later
    Deadline can only bring the time closer. When it passes, ``DeadlineExceeded`` is raised
    once, at the yield where the run stands, and its unfinished children are cancelled."""

    seconds: float

    def __init__(self, seconds: float | timedelta) -> None:
        object.__setattr__(self, "seconds", _seconds("Deadline", seconds))

    def describe(self) -> str:
        return f"Deadline({self.seconds:g}s)"

    def __iter__(self) -> Generator[Command, typing.Any, None]:
        yield self
