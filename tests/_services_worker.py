"""Processes of the service tests and of tests/bench/spread.py (``python -m tests._services_worker``).

    serve STORE [--import MODULE]... [--start JSON] [--recover] [--concurrency N]
          [--report PATH] [--stop PATH | --until-parked]
        A worker: import the app modules (their @workflow functions are all it knows), build
        ``Interpreter(store)``, start the runs in JSON (a list of [workflow, args, run_id]),
        recover() if asked, then write the report (pid, worker id, recovered run ids) and
        serve until the stop file exists (or, with --until-parked, until every run it started
        waits or sleeps), then shut down gracefully. Without --stop it serves until killed.
    client STORE STARTS REPORT
        A process running only ``Client(store)``: start the runs in STARTS (as for --start),
        write the report (pid, client id, thread counts, run ids) and exit.

STORE is JSON: {"sqlite": PATH} or {"postgres": DSN, "schema": NAME}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import threading
import time
from typing import Any

from replaygen import Client, Interpreter, Store

PARKED = ("waiting", "sleeping")


def open_store(spec: str) -> Store:
    config = json.loads(spec)
    if "sqlite" in config:
        from replaygen.stores.sqlite import SQLiteStore

        return SQLiteStore(config["sqlite"])
    from replaygen.stores.postgres import PostgresStore

    return PostgresStore(config["postgres"], schema=config["schema"])


def close(store: Store) -> None:
    getattr(store, "close", lambda: None)()


def report(path: str | None, what: dict[str, Any]) -> None:
    """Write ``what`` to ``path`` at once (a rename), so a reader never sees half of it."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump({"pid": os.getpid(), **what}, f)
        os.replace(path + ".tmp", path)


def until(what: str, ready: Any, cap: float = 60.0) -> None:
    end = time.monotonic() + cap
    while not ready():
        if time.monotonic() > end:
            sys.exit(f"gave up after {cap}s waiting for {what}")
        time.sleep(0.02)


def serve(args: argparse.Namespace) -> None:
    store = open_store(args.store)
    for module in args.modules:
        importlib.import_module(module)
    interp = Interpreter(store, concurrency=args.concurrency)
    started = [interp.start(wf, *wf_args, run_id=run_id)
               for wf, wf_args, run_id in json.loads(args.start)]
    recovered = interp.recover() if args.recover else None
    report(args.report, {"worker": interp.worker_id, "started": started, "recovered": recovered})
    if args.until_parked:
        until("the started runs to park", lambda: all(
            (r := store.get(run_id)) is not None and r.state in PARKED for run_id in started))
    elif args.stop:
        until("the stop file", lambda: os.path.exists(args.stop), cap=600.0)
    else:
        threading.Event().wait()  # serve until killed
    interp.shutdown(timeout=10)
    close(store)


def client(args: argparse.Namespace) -> None:
    store = open_store(args.store)
    before = threading.active_count()
    c = Client(store)
    run_ids = [c.start(wf, *wf_args, run_id=run_id) for wf, wf_args, run_id in json.loads(args.starts)]
    report(args.report, {"client": c.client_id, "threads_before": before,
                         "threads_after": threading.active_count(), "run_ids": run_ids})
    close(store)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests._services_worker")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("store")
    s.add_argument("--import", dest="modules", action="append", default=[])
    s.add_argument("--start", default="[]")
    s.add_argument("--recover", action="store_true")
    s.add_argument("--concurrency", type=int, default=64)
    s.add_argument("--report")
    s.add_argument("--stop")
    s.add_argument("--until-parked", action="store_true")
    c = sub.add_parser("client")
    c.add_argument("store")
    c.add_argument("starts")
    c.add_argument("report")
    args = parser.parse_args()
    serve(args) if args.command == "serve" else client(args)


if __name__ == "__main__":
    main()
