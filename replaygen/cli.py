"""The ``replaygen`` command: look at runs in a store, steer them, and serve workflows.

    replaygen --store sqlite:///runs.db runs --state blocked
    replaygen show RUN_ID [--full]          replaygen signal RUN_ID NAME '{"ok": true}'
    replaygen cancel RUN_ID                 replaygen resume RUN_ID --app myapp.flows
    replaygen purge --older-than 30d        replaygen fork RUN_ID charge
    replaygen worker myapp.flows            (serve until SIGINT/SIGTERM, then park every run)

The store comes from ``--store`` or ``$REPLAYGEN_STORE`` (``--schema`` or ``?schema=`` for a
Postgres schema). Only the worker creates a store; the commands that only read
(``READ_ONLY``, and ``purge --dry-run``) open it read-only, the others need one that exists,
and none of them writes into a file that holds no store. This module only uses the store's
public operations and the Interpreter: it must never change a run in a way the engine could
not (no editing journals, no forcing states). Every failure, a ``resume`` that leaves the
run blocked included, is one line on stderr and exit status 1 (``REPLAYGEN_DEBUG=1`` shows
the traceback; argparse's usage errors exit 2). Ids and names are printed with control
characters escaped; ``--json`` is exact. A worker whose store is down at start waits for it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import inspect
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, cast

from ._identity import is_dead
from .codec import JSONCodec
from .commands import check_name
from .errors import ReplaygenError, RunNotFound, StoreUnavailable
from .client import Client
from .client import DEFAULT_MAX_PAYLOAD
from .interpreter import Interpreter
from .loader import load
from .registry import table
from .replay import CHILD_SIGNAL
from .store import ACTIVE, FINISHED, PURGED, STATES, Entry, RunRecord, Store

ENV = "REPLAYGEN_STORE"
READ_ONLY = frozenset({"runs", "show", "check", "export", "versions"})
"""The commands that only read: they open the store read-only and change no byte of it."""
WIDTH = 60                     # widest value shown in a table cell, unless --full
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between a waiting worker's tries: doubling, capped
WAIT_LOG_EVERY = 5.0               # seconds between its "waiting for the store" lines
STORE_HELP = f"sqlite:///path.db, path.db or postgresql://...[?schema=NAME] (default: ${ENV})"
SCHEMA_HELP = "the Postgres schema that holds the store (default: replaygen), as ?schema=NAME"
log = logging.getLogger("replaygen.cli")


class CLIError(ReplaygenError):
    """The operator asked for something that cannot be done; printed as one line."""


# ---- the store and the user's workflows ------------------------------------------------

def _split_schema(url: str) -> tuple[str, str | None]:
    """Take ``schema=NAME`` out of a postgresql:// URL's query (libpq refuses a parameter it
    does not know); every other parameter is kept exactly as written."""
    base, sep, query = url.partition("?")
    kept, found = [], set()
    for part in query.split("&") if sep else ():
        key, _, value = part.partition("=")
        if urllib.parse.unquote(key) == "schema":
            found.add(urllib.parse.unquote(value))
        else:
            kept.append(part)
    if len(found) > 1:
        raise CLIError(f"the store URL names several schemas ({', '.join(map(repr, sorted(found)))})"
                       f"; give ?schema= once")
    return base + ("?" + "&".join(kept) if kept else ""), next(iter(found), None)


def _no_postgres_store(url: str, schema: str) -> str | None:
    """Why the server holds no replaygen store in ``schema`` (no such schema, or one without
    replaygen's tables), or None: it does, or this cannot tell (opening the store then reports
    why, without leaking a password, which this must not print)."""
    try:
        psycopg = importlib.import_module("psycopg")
        params = psycopg.conninfo.conninfo_to_dict(url)
        params.setdefault("connect_timeout", "5")  # libpq's default is to wait forever
        with psycopg.connect(**params, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            [schema]).fetchone() is None:
                return f"no schema {schema!r} in this database"
            meta = psycopg.sql.Identifier(schema, "meta").as_string(conn)
            if conn.execute("SELECT to_regclass(%s)", [meta]).fetchone()[0] is None:
                return f"schema {schema!r} holds no replaygen store"
    except Exception:
        return None
    return None


def open_store(url: str | None, *, schema: str | None = None, mode: str = "ro") -> Store:
    """A store from a URL: ``sqlite:///relative.db``, ``sqlite:////abs.db``, ``path.db``, or
    ``postgresql://...[?schema=NAME]``. ``schema`` (--schema) names the Postgres schema, as
    ``?schema=`` does. ``mode`` is ``"ro"`` (read-only: a store that exists), ``"rw"`` (a
    store that exists) or ``"rwc"`` (the worker: made when missing)."""
    if not url:
        raise CLIError(f"no store given: pass --store sqlite:///path.db (or postgresql://...) "
                       f"or set ${ENV}")
    if url.startswith(("postgresql://", "postgres://")):
        url, in_url = _split_schema(url)
        if schema is not None and in_url is not None and schema != in_url:
            raise CLIError(f"two different schemas: {in_url!r} (?schema= in the store URL) and "
                           f"{schema!r} (--schema); give one")
        schema = schema if schema is not None else in_url
        try:  # imported by name: psycopg is an optional extra
            postgres = importlib.import_module("replaygen.stores.postgres")
        except ImportError as exc:
            raise CLIError(f"Postgres support is not available ({exc}); "
                           f"pip install 'replaygen[postgres]'") from None
        if schema is None:
            schema = inspect.signature(postgres.PostgresStore).parameters["schema"].default
        if mode != "rwc" and (why := _no_postgres_store(url, str(schema))):  # opening makes it
            raise CLIError(f"{why}: check --schema or ?schema= (a worker creates the store)")
        return cast(Store, postgres.PostgresStore(url, schema=schema))
    if schema is not None:
        raise CLIError(f"--schema {schema!r} is for a Postgres store; a SQLite file holds one "
                       f"store (use another file)")
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") else path  # sqlite:///rel.db, sqlite:////abs.db
    elif url.endswith((".db", ".sqlite", ".sqlite3")) or os.path.isfile(url):
        path = url
    else:
        raise CLIError(f"unrecognised store {url!r}: use sqlite:///path.db, a path ending in .db, "
                       f"or postgresql://user@host/dbname")
    if mode != "rwc" and not os.path.exists(path):
        raise CLIError(f"no database at {os.path.abspath(path)!r}: check --store (a worker "
                       f"creates the file)")
    sqlite = importlib.import_module("replaygen.stores.sqlite")
    return cast(Store, sqlite.SQLiteStore(path, mode=mode))


def load_workflows(spec: str) -> Any:
    """What ``MODULE[:ATTR]`` names (see ``replaygen.loader``): a list or dict of workflows (one
    workflow is made a list of one), or a function taking the store and returning an
    Interpreter."""
    found = load(spec).found
    return [found] if inspect.isgeneratorfunction(found) else found


def load_app(spec: str) -> Callable[[Store], Interpreter]:
    """What builds the Interpreter of ``MODULE[:ATTR]`` (see ``load_workflows``) over a store.
    Checked before any store is opened, so that a typo neither creates a database nor
    touches one."""
    obj = load_workflows(spec)
    wrong = CLIError(f"{spec} must be a list or dict of workflows, or a function "
                     f"(store) -> Interpreter; found {type(obj).__name__}")
    if isinstance(obj, (list, tuple, dict)):
        if not obj:
            raise CLIError(f"{spec} holds no workflows: nothing to serve")
        workflows = table(obj)  # the engine's own checks: generator functions, names, duplicates
        return lambda store: Interpreter(store, workflows)
    if not callable(obj):
        raise wrong
    factory = obj

    def make(store: Store) -> Interpreter:  # a factory can only be checked by calling it
        if not isinstance(interp := factory(store), Interpreter):
            raise wrong
        return interp

    return make


def get_run(store: Store, run_id: str) -> RunRecord:
    record = store.get(check_name("run_id", run_id))
    if record is None:
        raise RunNotFound(_NO_RUN.format(run_id))
    return record


_NO_RUN = "no run {!r} in this store (see: replaygen runs)"
"""What every command says of a run id the store does not hold (each store words it its way)."""


@contextlib.contextmanager
def _existing(run_id: str) -> Iterator[None]:
    """Whatever the store says of a run it does not hold, say it in one wording."""
    try:
        yield
    except RunNotFound:
        raise RunNotFound(_NO_RUN.format(run_id)) from None


# ---- formatting ------------------------------------------------------------------------

# What a terminal acts on instead of showing: C0 and C1 controls, DEL, the unicode line and
# paragraph separators, and bidi overrides (they reorder what follows them on screen).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _safe(text: str) -> str:
    """``text`` with every control character escaped as repr() does (``\\x1b``, ``\\n``): an
    id can then neither recolour the terminal nor break a line. Printable text, é and 中
    included, is left as it is; spaces are kept, so an id is shown byte for byte."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def _decode(text: str | bytes | None) -> Any:
    if isinstance(text, bytes):  # a damaged cell, as the store hands it over: show, never fail
        return text.decode("utf-8", "backslashreplace")
    try:
        return None if text is None else json.loads(text)
    except ValueError:
        return text


def _arguments(text: str) -> Any:
    """A run's stored arguments without the engine's nonce (it only seeds idempotency keys)."""
    args = _decode(text)
    return {k: v for k, v in args.items() if k != "nonce"} if isinstance(args, dict) else args


def _count(n: int, one: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs``: a number and the noun it takes."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def _ts(t: Any) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if isinstance(
        t, (int, float)) else "-"


def _span(seconds: float) -> str:
    s = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{s * 1000:.0f}ms"


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    delta = t - time.time()
    return f"{_ts(t)} ({'in ' + _span(delta) if delta > 0 else _span(delta) + ' ago'})"


def _cut(text: str, full: bool) -> str:
    """A value on one line: control characters escaped, cut at WIDTH unless ``full``."""
    text = _safe(text)
    return text if full or len(text) <= WIDTH else text[:WIDTH - 1] + "…"


def _traceback(text: str | None) -> str | None:
    """A stored error's traceback, escaped line by line, or None."""
    info = _decode(text)
    tb = info.get("traceback") if isinstance(info, dict) else None
    return "\n".join(_safe(line) for line in str(tb).rstrip("\n").split("\n")) if tb else None


def _error(text: str | None, traceback: bool = False) -> str:
    """A stored error as ``Type: message`` (escaped); with ``traceback``, the stored traceback
    follows on lines of its own."""
    info = _decode(text)
    if not isinstance(info, dict):
        return "" if info is None else _safe(str(info))
    line = _safe(f"{info.get('type', 'Error')}: {info.get('message', '')}")
    tb = _traceback(text) if traceback else None
    return line + ("\n" + tb if tb else "")


def _outcome(e: Entry, full: bool) -> str:
    """An entry's value as a person reads it: deadlines as times, failures as Type: message."""
    if e.kind in ("sleep", "timer", "deadline"):
        at = _decode(e.value)
        return "no timeout" if at is None else f"until {_ts(at)}"
    if e.kind == "cancel":
        return f"{'DeadlineExceeded' if e.status == 'deadline' else 'Cancelled'} raised here"
    if e.kind == "spawn":
        return f"started child {_safe(str(_decode(e.value)))}"
    if e.kind == "woke":
        return "slept to the end (first of the Any)"
    if e.kind == "group":
        return _group(e)
    if e.status == "timeout":
        return "timed out"
    if e.status == "cancelled":
        return _cut(f"child cancelled: {_error(e.value)}", full)
    if e.status == "error":
        info = _decode(e.value)
        text = _error(e.value)  # a step's traceback goes below the table (show --full)
        if e.kind == "retry" and isinstance(info, dict):
            text = f"try {info.get('attempt')}, next at {_ts(info.get('next_at'))}: {text}"
        return _cut(text, full)
    return _cut("" if e.value is None else e.value, full)


def _detail(r: RunRecord) -> str:
    if r.state == "sleeping":
        return f"until {_when(r.wake_at)}"
    if r.state == "waiting":
        timeout = f", timeout {_ts(r.wake_at)}" if r.wake_at else ""
        return f"for {_awaited(r.waiting_for)}{timeout}"
    if r.error:
        return _error(r.error)
    return "cancel requested" if r.cancel_requested and r.state in ACTIVE else ""


def _awaited(waiting_for: str | None) -> str:
    """What a waiting run waits for, in words: signals by name, children by id."""
    parts = (waiting_for or "").split(",")
    return ", ".join(f"child {_safe(p[len(CHILD_SIGNAL):])}" if p.startswith(CHILD_SIGNAL)
                     else f"signal {_safe(p)}" for p in parts)


def _group(e: Entry) -> str:
    """Where an All or Any of 2+ members began, in words: ``all of 3``, ``any of 2``."""
    size = _decode(e.value)
    return _safe(f"{e.name} of {size}" if isinstance(size, int) else f"{e.name} of {e.value!r}")


_COMMAND = {"retry": "do", "timer": "wait", "woke": "sleep", "spawn": "child"}
"""The command an entry kind belongs to, where the two names differ."""

_Live = dict[str, list[str] | None]
"""``Store.workers()``: each live worker and the workflows it serves (None: it never said)."""


def _live(store: Store) -> _Live | None:
    """The store's live workers and the workflows each serves. A worker whose lease still
    runs is live, unless it ran on this machine and its process is gone (killed, crashed):
    that is known at once, while a worker elsewhere stays live until its lease lapses."""
    return {owner: w.workflows for owner, w in store.workers().items() if not is_dead(owner)}


def _known_by(live: _Live | None, r: RunRecord) -> bool | None:
    """Whether a live worker serves the workflow of a run that waits for one (unfinished, not
    blocked). None for other runs, and when it cannot be told: the store cannot say, or a
    live worker never said what it serves (an older replaygen)."""
    if live is None or r.state not in ACTIVE:
        return None
    if any(r.workflow in names for names in live.values() if names is not None):
        return True
    return None if any(names is None for names in live.values()) else False


def _unserved(live: _Live | None, r: RunRecord) -> str | None:
    """Why an unfinished run waits for nothing that will come: no live worker would run it.
    (A worker never claims a run of a workflow it does not know.) None otherwise."""
    if _known_by(live, r) is not False:
        return None
    return "no worker is live" if not live else f"no live worker knows workflow {r.workflow!r}"


def _no_server(live: _Live | None, workflow: str) -> str | None:
    """Why no live worker would take a new run of ``workflow``, or None (one would, or that
    cannot be told: the store cannot say, or a live worker never said what it serves)."""
    if live is None or any(names is None or workflow in names for names in live.values()):
        return None
    if not live:
        return f"no worker is live, so none serves workflow {workflow!r} yet"
    served = sorted({name for names in live.values() for name in names or ()})
    return (f"no live worker serves workflow {workflow!r} (they serve "
            f"{', '.join(map(repr, served)) or 'nothing'})")


def _width(text: str) -> int:
    """Terminal columns: wide characters (中) take two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF"
               else 1 for c in text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns; every cell escaped, so a value can never break its row."""
    cells = [[_safe(str(c)) for c in row] for row in (headers, *rows)]
    widths = [max(map(_width, col)) for col in zip(*cells, strict=True)]
    return "\n".join("  ".join(c + " " * (w - _width(c)) for c, w in zip(row, widths, strict=True))
                     .rstrip() for row in cells)


def _record_json(r: RunRecord, live: _Live | None) -> dict[str, Any]:
    return {**dataclasses.asdict(r), "args": _arguments(r.args), "result": _decode(r.result),
            "error": _decode(r.error), "known_by_live_worker": _known_by(live, r)}


def _entry_json(e: Entry) -> dict[str, Any]:
    return {**e._asdict(), "value": _decode(e.value)}


# ---- subcommands ---------------------------------------------------------------------------

def cmd_runs(store: Store, a: argparse.Namespace) -> int:
    if a.limit < 1 or a.offset < 0:  # SQLite reads LIMIT -1 as "no limit": refuse, never list all
        raise CLIError(f"--limit must be 1 or more and --offset 0 or more; got --limit {a.limit} "
                       f"--offset {a.offset}")
    states = [s for v in a.state or () for s in v.split(",") if s] or None
    for s in states or ():
        if s not in (*STATES, PURGED):  # purged: the tombstones, listed only when asked for
            raise CLIError(f"unknown state {s!r}; states are {', '.join(STATES)} and {PURGED}")
    runs = store.runs(states=states, workflow=a.workflow, parent=a.parent, limit=a.limit,
                      offset=a.offset)
    tails = {r.run_id: next(reversed(store.journal(r.run_id)), None) for r in runs}
    live = _live(store)
    if a.json:
        print(json.dumps([{**_record_json(r, live), "last_entry": (t := tails[r.run_id]) and
                            _entry_json(t)} for r in runs], indent=2, ensure_ascii=False))
        return 0
    now, rows = time.time(), []
    for r in runs:
        t = tails[r.run_id]
        step = "-" if t is None else f"#{t.position} {_group(t)}" if t.kind == "group" else \
            f"#{t.position} {_COMMAND.get(t.kind, t.kind)}" + (f" {t.name}" if t.name else "")
        state = r.state + (f" ({note})" if (note := _unserved(live, r)) else "")
        rows.append((r.run_id, state, r.workflow, _span(now - r.created), step,
                     _cut(_detail(r), a.full)))
    print(_table(("RUN", "STATE", "WORKFLOW", "AGE", "LAST STEP", "DETAIL"), rows)
          if rows else "no runs match")
    if len(runs) == a.limit:
        print(f"(more may follow: --offset {a.offset + a.limit})", file=sys.stderr)
    return 0


def _children(store: Store, run_id: str) -> list[str]:
    """The runs ``run_id`` started as children, in creation order."""
    found: list[RunRecord] = []
    while page := store.runs(parent=run_id, limit=1000, offset=len(found)):
        found += page
    return [c.run_id for c in reversed(found)]


def cmd_show(store: Store, a: argparse.Namespace) -> int:
    r = get_run(store, a.run_id)
    journal, signals, live = store.journal(r.run_id), store.signals(r.run_id), _live(store)
    children = _children(store, r.run_id)
    if a.json:
        print(json.dumps({"run": {**_record_json(r, live), "children": children},
                          "journal": [_entry_json(e) for e in journal],
                          "signals": [{**dataclasses.asdict(s), "payload": _decode(s.payload)}
                                      for s in signals]}, indent=2, ensure_ascii=False))
        return 0
    for key, value in _show_head(r, live, children, len(signals), a.full):
        print(f"{key + ':':<13}{value}")
    for s in signals:
        print(f"  #{s.id} {s.name!r} sent {_ts(s.sent)}: {_cut(s.payload, a.full)}")
    if r.state == PURGED:  # a tombstone: say why there is nothing to list
        print("\njournal: purged (a purged run keeps no journal, result or signals)")
        return 0
    print(f"\njournal ({_count(len(journal), 'entry', 'entries')}):" if journal else
          "\njournal: empty")
    if journal:
        print(_table(("POS", "SEQ", "KIND", "NAME", "STATUS", "TOOK", "RESULT/ERROR"), [
            (str(e.position), str(e.seq), e.kind, e.name or "-", e.status,
             _span(e.ended - e.started), _outcome(e, a.full)) for e in journal]))
    for e in journal if a.full else ():  # below the table, so that it keeps one row per entry
        if e.status == "error" and (tb := _traceback(e.value)):
            print(f"\ntraceback of #{e.position} {_safe(e.name)}, seq {e.seq} ({_try(e)}):\n{tb}")
    return 0


def _show_head(r: RunRecord, live: _Live | None, children: list[str], signals: int,
               full: bool) -> list[tuple[str, str]]:
    """The lines above ``show``'s journal, as (label, value): the run, where it is parked
    or why it ended, its family, and how many signals wait for it."""
    unowned = "none: the next worker that knows its workflow takes it" if r.state in ACTIVE else "-"
    purged = r.state == PURGED  # its arguments are kept as a hash only
    head = [("run", _safe(r.run_id)), ("workflow", _safe(r.workflow)),
            ("state", r.state + (" (cancel requested)" if r.cancel_requested else "")),
            ("owner", _safe(r.owner) if r.owner else unowned), ("created", _when(r.created)),
            ("updated", _when(r.updated)),
            ("args", f"kept as a hash only ({_cut(r.args, full)})" if purged
             else _cut(json.dumps(_arguments(r.args)), full))]
    if r.wake_at is not None:
        head.append(("times out" if r.state == "waiting" else "wakes at", _when(r.wake_at)))
    if r.waiting_for:
        head.append(("waiting for", _awaited(r.waiting_for)))
    if note := _unserved(live, r):
        head.append(("note", _safe(f"{note}: it waits until a worker that serves it starts")))
    if r.parent is not None:
        head.append(("parent", _safe(r.parent)))
    if r.forked_from is not None:
        head.append(("forked from", _safe(r.forked_from)))
    if children:
        shown = ", ".join(_safe(c) for c in children[:10])
        more = f" and {len(children) - 10} more (replaygen runs --parent)" if len(children) > 10 else ""
        head.append(("children", f"{len(children)}: {shown}{more}"))
    if r.resumes:
        head.append(("resumes", f"{r.resumes} without progress (a crash loop blocks the run)"))
    if r.result is not None:
        head.append(("result", _cut(r.result, full)))
    if r.error:  # never truncated: for a blocked run this is the non-determinism diff
        label = {"blocked": "blocked", PURGED: "purged"}.get(r.state, "error")
        head.append((label, _error(r.error, full)))
    head.append(("signals", f"{signals} queued" if signals else "none queued"))
    return head


def _try(e: Entry) -> str:
    """Which try of its step a failed entry records: a retried one, or the last."""
    if e.kind != "retry":
        return "failed for good"
    info = _decode(e.value)
    attempt = info.get("attempt") if isinstance(info, dict) else None
    return f"try {attempt}, retried" if attempt is not None else "retried"


def _payload(arg: str | None) -> tuple[str | bytes | None, str]:
    """The JSON text of the payload argument and where it came from: ``-`` is stdin and
    ``@PATH`` a file (a large payload does not fit in an argument list), else the argument."""
    if arg == "-":
        return sys.stdin.buffer.read(), "from stdin"
    if arg is not None and arg.startswith("@"):
        try:
            with open(arg[1:], "rb") as f:
                return f.read(), f"from file {arg[1:]!r}"
        except OSError as exc:
            raise CLIError(f"cannot read the payload file {arg[1:]!r}: "
                           f"{exc.strerror or exc}") from None
    return arg, "" if arg is None else repr(arg[:WIDTH]) + ("…" if len(arg) > WIDTH else "")


def cmd_signal(store: Store, a: argparse.Namespace) -> int:
    check_name("signal name", a.name)
    if a.max_payload < 1:
        raise CLIError(f"--max-payload must be 1 or more bytes, got {a.max_payload}")
    data, source = _payload(a.payload)
    try:  # bytes from a file or stdin: json decodes UTF-8 (a BOM too), UTF-16 and UTF-32
        text = JSONCodec().encode(None if data is None else json.loads(data))
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, the codec's refusals (NaN, ...)
        hint = " (quote it for the shell, e.g. '{\"approved\": true}')" if isinstance(data, str) else ""
        raise CLIError(f"bad JSON payload {source}: {_safe(str(exc))}{hint}") from None
    if (size := len(text.encode())) > a.max_payload:
        raise CLIError(f"payload is {size} bytes encoded, over the limit of {a.max_payload}; "
                       f"pass a reference to the data instead, or raise --max-payload (the "
                       f"workers must allow as much: Interpreter(max_payload=...))")
    with _existing(a.run_id):
        store.deliver(check_name("run_id", a.run_id), a.name, text)
    print(f"signal {a.name!r} queued for run {a.run_id!r} ({get_run(store, a.run_id).state})")
    return 0


def cmd_cancel(store: Store, a: argparse.Namespace) -> int:
    with _existing(a.run_id):
        r = store.cancel(check_name("run_id", a.run_id))
    if r.state in FINISHED:
        print(f"run {r.run_id!r} is already {r.state}; nothing changed")
    elif r.state == "blocked":
        print(f"cancel requested for run {r.run_id!r}, which is blocked: it takes effect when "
              f"code that replays the run runs it again (Cancelled is raised in the workflow "
              f"then). To end it now, without running workflow code: replaygen terminate "
              f"{_safe(repr(r.run_id))}")
    else:
        where = "its worker raises" if r.owner else "no worker holds it now; the next one raises"
        print(f"cancel requested for run {r.run_id!r} ({r.state}): {where} Cancelled in the "
              f"workflow at its current yield")
    return 0


def cmd_start(store: Store, a: argparse.Namespace) -> int:
    try:
        args = json.loads(a.args)
    except ValueError as exc:
        raise CLIError(f"the arguments must be a JSON array, e.g. '[42, \"x\"]': {exc}") from None
    if not isinstance(args, list):
        raise CLIError(f"the arguments must be a JSON array (the positional arguments), got "
                       f"{type(args).__name__}")
    name = check_name("workflow name", a.workflow)
    run_id = Client(store).start(name, *args, run_id=a.run_id)
    if (why := _no_server(_live(store), name)) is not None:  # a worker may come later: start it
        print(_safe(f"replaygen: warning: {why}; the run waits for one that does"),
              file=sys.stderr)
    print(_safe(run_id))
    return 0


def cmd_terminate(store: Store, a: argparse.Namespace) -> int:
    before = get_run(store, a.run_id)
    with _existing(a.run_id):
        status = Client(store).terminate(a.run_id, a.reason)
    if before.state in FINISHED:
        print(f"run {_safe(repr(a.run_id))} is already {before.state}; nothing changed")
    else:
        print(f"run {_safe(repr(a.run_id))} terminated ({before.state} -> {status.state})")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class Duration(NamedTuple):
    """A duration as given on the command line, and in seconds."""

    text: str
    seconds: float


def duration(text: str) -> Duration:
    """``30d``, ``12h``, ``90m``, ``45s`` (a number, then its unit); argparse reports
    anything else as a usage error, in these words."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a number and a unit s, m, h or d (e.g. 30d, 12h)")
    return Duration(text.strip(), float(found.group(1)) * _UNITS[found.group(2)])


def finished_states(text: str) -> list[str]:
    """One ``purge --state`` value (``failed`` or ``failed,cancelled``), each a finished
    state: the engine never purges an unfinished or blocked run."""
    states = [s for s in text.split(",") if s]
    for s in states:
        if s not in STATES:
            raise argparse.ArgumentTypeError(f"unknown state {s!r}; states are {', '.join(STATES)}")
        if s not in FINISHED:
            raise argparse.ArgumentTypeError(f"a {s} run is never purged: give finished states "
                                             f"({', '.join(FINISHED)})")
    return states


def _purgeable(store: Store, states: Sequence[str], before: float) -> int:
    """How many runs ``purge`` would take now: in ``states`` and last updated (finished)
    before ``before``, the store's own criteria, read a page at a time."""
    found = offset = 0
    while page := store.runs(states=states, limit=1000, offset=offset):
        found += sum(r.updated < before for r in page)
        offset += len(page)
    return found


def cmd_purge(store: Store, a: argparse.Namespace) -> int:
    """Purge (or with --dry-run count) the finished runs older than --older-than."""
    states = list(dict.fromkeys(s for v in a.state or () for s in v)) or list(FINISHED)
    named = ", ".join(states[:-1]) + " or " + states[-1] if len(states) > 1 else states[0]
    which = f"{named} runs that ended more than {a.older_than.text} ago"
    if a.dry_run:  # a read: the store is open read-only, so nothing can change
        n = _purgeable(store, states, time.time() - a.older_than.seconds)
        print(f"would purge {_count(n, 'run')} ({which}); nothing was deleted")
        return 0
    n = Client(store).purge(a.older_than.seconds, states=states)
    print(f"purged {_count(n, 'run')} ({which}); each leaves a tombstone (state {PURGED})")
    return 0


def cmd_fork(store: Store, a: argparse.Namespace) -> int:
    """Fork a run from a step (``Client.fork``) and print the new run's id."""
    # All digits is a position (Client.fork takes an int as one); --by-name for a step so named.
    digits = a.from_step.isascii() and a.from_step.isdigit()
    point: str | int = int(a.from_step) if digits and not a.by_name else a.from_step
    with _existing(a.source):
        run_id = Client(store).fork(a.source, point, run_id=a.run_id)
    workflow = get_run(store, run_id).workflow
    if (why := _no_server(_live(store), workflow)) is not None:  # a worker may come later
        print(_safe(f"replaygen: warning: {why}; the run waits for one that does"),
              file=sys.stderr)
    print(_safe(run_id))
    return 0


def cmd_check(store: Store, a: argparse.Namespace) -> int:
    from .testing import check  # the testing kit: only this command needs it

    workflows = load_workflows(a.app)
    if not isinstance(workflows, (list, tuple, dict)):
        raise CLIError(f"{a.app} must name workflows (a list or dict, or @workflow functions) "
                       f"for check, not a factory")
    states = [s for v in a.state or () for s in v.split(",") if s] or None
    results = check(store, workflows, states=states)
    bad = [c for c in results if not c.ok]
    if a.json:
        print(json.dumps([dataclasses.asdict(c) for c in results]))
    else:
        for c in bad:
            print(_safe(f"{c.run_id}  {c.workflow}  {c.state}  {c.message}"))
        taken: dict[tuple[str, int], int] = {}
        for c in results:
            for change, branch in c.versions:
                taken[change, branch] = taken.get((change, branch), 0) + 1
        versions = ", ".join(f"{n} would take Version({ch!r}) = {b}" for (ch, b), n in
                             sorted(taken.items()))
        fine = len(results) - len(bad)
        print(f"{_count(len(results), 'run')} checked: {fine} {'replays' if fine == 1 else 'replay'}"
              f", {len(bad)} would block" + (f"; {versions}" if versions else ""))
    return 1 if bad else 0


def cmd_export(store: Store, a: argparse.Namespace) -> int:
    from .testing import export_run

    with _existing(a.run_id):
        text = json.dumps(export_run(store, check_name("run_id", a.run_id)), indent=1)
    if a.output in (None, "-"):
        print(text)
    else:
        _write(a.output, text + "\n")
    return 0


def _write(path: str, text: str) -> None:
    """Write ``text`` to the file at ``path``; a path that cannot be written is a CLIError
    saying why, in the CLI's words."""
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {_unwritable(path, exc)}") from None


def _unwritable(path: str, exc: OSError) -> str:
    folder = os.path.dirname(path) or "."
    if isinstance(exc, IsADirectoryError):
        return f"it is a directory; give the path of a file (e.g. {os.path.join(path, 'run.json')!r})"
    if isinstance(exc, NotADirectoryError):
        parent = next((p for p in _parents(folder) if os.path.isfile(p)), folder)
        return f"{parent!r} is a file, not a directory; fix the path"
    if isinstance(exc, FileNotFoundError):
        return f"there is no directory {folder!r}; create it first, or give another path"
    if isinstance(exc, PermissionError):
        return (f"permission denied: this user may not write the file or create it in "
                f"{folder!r}; choose another path, or fix the permissions (chmod, chown)")
    return exc.strerror or str(exc)


def _parents(folder: str) -> list[str]:
    """``folder`` and each directory above it, nearest first (``a/b/c``: a/b/c, a/b, a)."""
    out = []
    while folder and folder not in out:
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


def cmd_versions(store: Store, a: argparse.Namespace) -> int:
    from .testing import census

    counts = census(store, a.change)
    if a.json:
        print(json.dumps({c: {str(k): n for k, n in b.items()} for c, b in counts.items()}))
        return 0
    rows = [[c, "no marker" if b is None else str(b), str(n)] for c, branches in counts.items()
            for b, n in sorted(branches.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    nothing = f"no unfinished run has a marker for Version {a.change!r}" if a.change else \
        "no unfinished run has a Version marker"
    print(_table(["CHANGE", "BRANCH", "UNFINISHED RUNS"], rows) if rows else _safe(nothing))
    return 0


def cmd_resume(store: Store, a: argparse.Namespace) -> int:
    r = get_run(store, a.run_id)
    if r.state in FINISHED:
        raise CLIError(f"run {r.run_id!r} is {r.state}; only unfinished runs can be resumed")
    interp = a.make(store)
    try:
        interp.resume(r.run_id, a.timeout)
    finally:
        interp.shutdown(a.timeout)
    r = get_run(store, r.run_id)
    if r.state == "blocked":  # the command failed at what it was asked: an error like any other
        raise CLIError(f"run {r.run_id!r} is still blocked: {_detail(r) or 'no reason stored'}")
    print(f"run {r.run_id!r} is {r.state}" + (f": {d}" if (d := _detail(r)) else ""))
    return 0


def _start_worker(a: argparse.Namespace, stop: threading.Event) -> Interpreter | None:
    """Open the store, build the Interpreter and recover(). While the store is unavailable
    (Postgres down or restarting, SQLite locked) wait and retry with backoff, as a running
    worker does through an outage, until it answers or ``stop`` is set (then None). Any
    other failure (a bad URL, a missing module, a newer schema) is raised at once."""
    delay, logged = RETRY_FIRST, -math.inf
    while not stop.is_set():
        store: Store | None = None
        interp: Interpreter | None = None
        try:
            store = open_store(a.store, schema=a.schema, mode="rwc")
            interp = a.make(store)
            interp.recover()
            return interp
        except StoreUnavailable as exc:
            if interp is not None:
                with contextlib.suppress(Exception):  # tidying up after an outage may fail too
                    interp.shutdown(0)
            if store is not None:
                with contextlib.suppress(Exception):
                    store.close()
            if time.monotonic() - logged >= WAIT_LOG_EVERY:
                log.warning("waiting for the store, trying again every %gs at most until it "
                            "answers (stop with Ctrl-C or SIGTERM): %s", RETRY_MAX, _safe(str(exc)))
                logged = time.monotonic()
            else:
                log.debug("store still unavailable; next try in %gs", delay)
            stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX)
    return None


def cmd_worker(a: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    interp = _start_worker(a, stop)
    if interp is None:
        log.info("stopped before the store could be opened; nothing to park")
        return 0
    log.info("worker %s serving %s; stop with SIGINT or SIGTERM", interp.worker_id, a.app)
    while not stop.wait(1.0):
        pass
    log.info("stopping: running steps may finish (up to %gs), then every run is parked", a.grace)
    interp.shutdown(a.grace)
    log.info("stopped; the next worker's recover() resumes the parked runs")
    return 0


def cmd_lint(a: argparse.Namespace) -> int:
    """Reads source only, so it opens no store: exit 1 on findings, 2 for a bad module."""
    from . import lint  # stdlib only, but nothing else here needs it

    return lint.main(a.modules, as_json=a.json)


def cmd_ui(store: Store, a: argparse.Namespace) -> int:
    """Serve the web view until Ctrl-C (replaygen.ui); refuses an open host without a token."""
    from .ui import serve  # http.server: only this command needs it

    try:
        serve(store, host=a.host, port=a.port, token=a.token or None,
              allow_actions=a.allow_actions)
    except KeyboardInterrupt:
        print("replaygen ui: stopped")
    return 0


def cmd_schedules(store: Store, a: argparse.Namespace) -> int:
    """The schedules of MODULE[:ATTR] (ATTR default: ``schedules``, a list of ``Schedule``):
    settings, next tick, and the last tick fired in the store. Never builds a worker (it would
    fire ticks). Without MODULE: the schedules whose runs are among the store's newest runs."""
    from . import schedules  # only this command needs it by name

    if a.module is None:
        rows = schedules.seen(store)
        head = ["SCHEDULE", "WORKFLOW", "RUNS SEEN", "LAST TICK", "ITS RUN"]
        cells = [[r["name"], r["workflow"], str(r["runs"]), r["last"], r["last_state"]] for r in rows]
        none = "no runs of a schedule among the newest runs (name a module: schedules MODULE)"
    else:
        spec = a.module if ":" in a.module else a.module + ":schedules"
        found = load_workflows(spec)
        if not isinstance(found, (list, tuple)):
            raise CLIError(f"{spec} must be a list of Schedule(...), found {type(found).__name__} "
                           f"(this command never builds a worker: it would fire ticks); keep the "
                           f"list in a module attribute and pass it to Interpreter(schedules=...)")
        rows = schedules.describe(found, store, time.time())
        head = ["SCHEDULE", "WORKFLOW", "WHEN", "TZ", "CATCHUP", "OVERLAP", "NEXT (UTC)",
                "NEXT (LOCAL)", "LAST FIRED", "ITS RUN"]
        cells = [[r["name"], r["workflow"], r["when"], r["tz"], r["catchup"], r["overlap"],
                  r["next"] or "never", r["next_local"] or "-", r["last"] or "-",
                  r["last_state"] or "-"] for r in rows]
        none = f"{spec} holds no schedules"
    if a.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print(_table(head, cells) if cells else none)
    return 0


# ---- entry point ---------------------------------------------------------------------------

def _add_ui_command(add: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """ui: the web view (replaygen.ui)."""
    sp = add("ui", cmd_ui, "serve a web view of the runs, read-only unless --allow-actions "
                           "(never creates or changes a store by itself)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: "
                    "127.0.0.1); any other than a loopback address needs --token")
    sp.add_argument("--port", type=int, default=8642, help="port (default: 8642; 0: any free one)")
    sp.add_argument("--token", default=os.environ.get("REPLAYGEN_UI_TOKEN"),
                    help="a secret every request must carry (open the page once as "
                         "/?token=TOKEN); default: $REPLAYGEN_UI_TOKEN")
    sp.add_argument("--allow-actions", action="store_true",
                    help="let the page signal, cancel, terminate and retry runs (each confirmed)")
    sp.add_argument("--log-level", default="WARNING", help="INFO also logs each action, DEBUG "
                                                          "each request (default: WARNING)")


def _add_service_commands(add: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """start and terminate (a client's), check, export and versions (before a deploy)."""
    sp = add("start", cmd_start, "queue a run for a worker that knows the workflow (this "
                                 "process executes nothing)")
    sp.add_argument("workflow", help="the workflow's registered name")
    sp.add_argument("args", nargs="?", default="[]", metavar="JSON_ARRAY",
                    help="the positional arguments as a JSON array (default: [])")
    sp.add_argument("--run-id", help="the run's id (default: a new one); an existing id with "
                                     "the same workflow and arguments starts nothing")
    sp = add("terminate", cmd_terminate, "end an unfinished run now, as cancelled, running no "
                                         "workflow code")
    sp.add_argument("run_id")
    sp.add_argument("--reason", help="stored as the run's error message")
    sp = add("check", cmd_check, "replay stored runs against code before deploying it; exit 1 "
                                 "if any would block (writes nothing, takes no lease)")
    sp.add_argument("app", metavar="MODULE[:ATTR]", help="the new code's workflows")
    sp.add_argument("--state", action="append", help="only runs in these states (default: "
                                                     "every unfinished one, blocked included)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = add("export", cmd_export, "write a run as JSON, for replaygen.testing.replay_run")
    sp.add_argument("run_id")
    sp.add_argument("-o", "--output", help="the file (default: stdout)")
    sp = add("versions", cmd_versions, "unfinished runs per Version branch")
    sp.add_argument("--change", help="only this change id")
    sp.add_argument("--json", action="store_true", help="machine-readable output")


def _add_reading_commands(add: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """runs and show: what is in the store."""
    runs = sp = add("runs", cmd_runs, "list runs, newest first")
    sp.add_argument("--state", action="append", help="only these states (repeat, or a,b); "
                    "purged lists the tombstones, which are otherwise left out")
    sp.add_argument("--workflow", help="only runs of this workflow")
    sp.add_argument("--parent", metavar="RUN_ID", help="only the children of this run")
    sp.add_argument("--limit", type=int, default=50, help="at most this many runs (default: 50)")
    sp.add_argument("--offset", type=int, default=0, help="skip this many of the newest runs")
    sp = add("show", cmd_show, "a run, where it is parked or why it is blocked, and its journal")
    sp.add_argument("run_id")
    for listing in (runs, sp):
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        listing.add_argument("--full", action="store_true", help="do not truncate values")


def _add_ops_commands(add: Callable[[str, Any, str], argparse.ArgumentParser]) -> None:
    """purge and fork: operating a store over time."""
    sp = add("purge", cmd_purge, "delete finished runs that ended long ago, leaving tombstones "
                                 "(never an unfinished or blocked run)")
    sp.add_argument("--older-than", required=True, type=duration, metavar="DURATION",
                    help="runs that finished more than this long ago: a number and a unit "
                         "s, m, h or d (e.g. 30d, 12h)")
    sp.add_argument("--state", action="append", type=finished_states, help="only runs in these "
                    "finished states (repeat, or a,b; default: completed, failed, cancelled)")
    sp.add_argument("--dry-run", action="store_true", help="count what would be purged and "
                    "delete nothing (the store is opened read-only)")
    sp = add("fork", cmd_fork, "start a new run from a finished or blocked run's journal up to "
                               "a step: the steps before it are not run again")
    sp.add_argument("source", metavar="RUN_ID", help="the run to copy (finished or blocked)")
    sp.add_argument("from_step", metavar="FROM_STEP", help="the step to run again and go on "
                    "from: its name (its first try), or its position if all digits")
    sp.add_argument("--run-id", help="the new run's id (default: a new one)")
    sp.add_argument("--by-name", action="store_true", help="FROM_STEP is a step's name even if "
                                                           "it is all digits")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    common.add_argument("--schema", default=argparse.SUPPRESS, help=SCHEMA_HELP)
    p = argparse.ArgumentParser(prog="replaygen", description="See and steer replaygen runs.")
    p.add_argument("--store", default=os.environ.get(ENV), help=STORE_HELP)  # before COMMAND
    p.add_argument("--schema", help=SCHEMA_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Any, text: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, parents=[common], help=text, description=text)
        sp.set_defaults(func=fn)
        return sp

    _add_reading_commands(add)
    sp = add("signal", cmd_signal, "queue a signal for a run")
    sp.add_argument("run_id")
    sp.add_argument("name")
    sp.add_argument("payload", nargs="?", metavar="JSON",
                    help="the payload as JSON (default: null); - reads it from stdin and @FILE "
                         "from a file, for payloads too large for an argument")
    sp.add_argument("--max-payload", type=int, default=DEFAULT_MAX_PAYLOAD, metavar="BYTES",
                    help=f"refuse a larger encoded payload (default: {DEFAULT_MAX_PAYLOAD}, the "
                         f"Interpreter's default max_payload)")
    add("cancel", cmd_cancel, "raise Cancelled inside a run").add_argument("run_id")
    sp = add("resume", cmd_resume, "retry a blocked (or unowned) run with the current code")
    sp.add_argument("run_id")
    sp.add_argument("--app", required=True, metavar="MODULE[:ATTR]", help="the workflows")
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds to drive the run")
    sp.add_argument("--log-level", help="also log what the engine does, at this level (e.g. "
                                        "INFO), on stderr (default: only the outcome)")
    sp = add("worker", cmd_worker, "serve workflows until SIGINT/SIGTERM (a store that is down "
                                   "at start is waited for)")
    sp.add_argument("app", metavar="MODULE[:ATTR]",
                    help="ATTR (default: workflows) is a list/dict of workflows or a "
                         "function(store) returning an Interpreter")
    sp.add_argument("--grace", type=float, default=30.0, help="seconds steps get to finish")
    sp.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default), WARNING, ERROR")
    _add_service_commands(add)
    _add_ops_commands(add)
    _add_ui_command(add)
    sp = add("schedules", cmd_schedules, "list schedules: settings, next tick, last tick fired")
    sp.add_argument("module", nargs="?", metavar="MODULE[:ATTR]", help="ATTR (default: "
                    "schedules) is a list of Schedule; without it, schedules seen in the store")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    text = "report calls in workflow bodies that differ between runs (needs no store)"
    sp = sub.add_parser("lint", help=text, description=text)  # not add(): no --store
    sp.set_defaults(func=cmd_lint)
    sp.add_argument("modules", nargs="+", metavar="MODULE[:ATTR]",
                    help="ATTR (default: workflows), else its @workflow functions")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.command == "lint":  # needs no store
            return cmd_lint(a)
        if getattr(a, "log_level", None):  # the engine logs under "replaygen"
            logging.basicConfig(level=a.log_level.upper(),
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        else:  # not logging's last resort either: an error is the one line printed below
            logging.getLogger("replaygen").addHandler(logging.NullHandler())
        if getattr(a, "app", None):  # before the store: a module that cannot be served creates none
            a.make = load_app(a.app)
        if a.command == "worker":  # opens the store itself: it waits for one that is down
            return cmd_worker(a)
        reads = a.command in READ_ONLY or getattr(a, "dry_run", False)  # purge --dry-run too
        store = open_store(a.store, schema=a.schema, mode="ro" if reads else "rw")
        try:
            return int(a.func(store, a))
        finally:
            if a.command != "resume":  # its threads may still read it
                store.close()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `replaygen runs | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        return 0
    except Exception as exc:
        if os.environ.get("REPLAYGEN_DEBUG"):
            raise
        text = str(exc) if isinstance(exc, ReplaygenError) else f"{type(exc).__name__}: {exc}"
        # Escaped, not squashed: squashing whitespace would name another run ('a   b').
        print("replaygen: error: " + _safe(text), file=sys.stderr)
        return 1
