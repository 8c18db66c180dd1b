"""The purge benchmark's processes (run by tests/bench/purge.py, never imported by pytest).

    python tests/bench/bench_purge.py '<json config>'

Modes: ``fill`` (``runs`` finished runs of 3 steps, finished ``age`` seconds ago, copied in
bulk from a few real runs), ``w2loop`` (W2 rounds back to back until the file ``stop``
exists; every round's wall interval and CPU time) and ``purge`` (``Client.purge`` of the
runs older than ``older_than``; every batch's wall interval). Store keys as in
bench_replaygen.py. The result is one line ``RESULT {json}`` on stdout.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import sys
import threading
import time
from typing import Any

from bench_common import emit
from bench_replaygen import engine, make_store

import replaygen.client
import replaygen.stores.sqlite
from replaygen import Client

TEMPLATES = 4  # real runs whose rows every filled run copies
STEPS = 3  # journal entries a filled run has
CHUNK = 10_000  # runs per transaction of the fill


# ---- fill -------------------------------------------------------------------------------

def _templates(cfg: dict[str, Any]) -> None:
    """Run a few real workflows, so the store holds rows of the real shape to copy."""
    store = make_store(cfg)
    interp = engine(store)
    for _ in range(TEMPLATES):
        assert interp.run("seq", STEPS) == STEPS
    interp.shutdown()
    store.close()


def _copies(runs: list[dict[str, Any]], journal: dict[str, list[dict[str, Any]]], n: int,
            age: float) -> Any:
    """Chunks of (run rows, journal rows): the templates' rows with a fresh run_id and nonce,
    created one ms apart and finished ``age`` seconds before now (oldest first)."""
    base = time.time() - age - n * 0.001
    for lo in range(0, n, CHUNK):
        run_rows, entry_rows = [], []
        for i in range(lo, min(n, lo + CHUNK)):
            t = runs[i % len(runs)]
            rid, shift = secrets.token_hex(16), base + i * 0.001 - t["created"]
            args = json.loads(t["args"])
            args["nonce"] = secrets.token_hex(16)
            run_rows.append(dict(t, run_id=rid, args=json.dumps(args, separators=(",", ":")),
                                 created=t["created"] + shift, updated=t["updated"] + shift))
            entry_rows += [dict(e, run_id=rid, started=e["started"] + shift,
                                ended=e["ended"] + shift) for e in journal[t["run_id"]]]
        yield run_rows, entry_rows


def _fill_sqlite(cfg: dict[str, Any], n: int, age: float) -> None:
    c = sqlite3.connect(cfg["path"], isolation_level=None)
    c.row_factory = sqlite3.Row
    runs = [dict(r) for r in c.execute("SELECT * FROM runs")]
    journal = {r["run_id"]: [dict(e) for e in c.execute(
        "SELECT * FROM journal WHERE run_id = ? ORDER BY seq", (r["run_id"],))] for r in runs}
    for run_rows, entry_rows in _copies(runs, journal, n, age):
        c.execute("BEGIN IMMEDIATE")
        for table, rows in (("runs", run_rows), ("journal", entry_rows)):
            cols = list(rows[0])
            c.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                          f"({', '.join(':' + k for k in cols)})", rows)
        c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # each phase starts from an empty WAL
    c.execute("ANALYZE")
    c.close()


def _fill_postgres(cfg: dict[str, Any], n: int, age: float) -> None:
    import psycopg
    from psycopg import sql
    with psycopg.connect(cfg["dsn"], autocommit=True) as c:
        def table(name: str) -> sql.Composed:
            return sql.SQL("{}").format(sql.Identifier(cfg["schema"], name))
        cur = c.cursor(row_factory=psycopg.rows.dict_row)
        runs = cur.execute(sql.SQL("SELECT * FROM {} ORDER BY id").format(table("runs"))).fetchall()
        journal = {r["run_id"]: cur.execute(sql.SQL(
            "SELECT * FROM {} WHERE run_id = %s ORDER BY seq").format(table("journal")),
            [r["run_id"]]).fetchall() for r in runs}
        for r in runs:
            del r["id"]  # bigserial: the copies get their own, in insertion order
        for run_rows, entry_rows in _copies(runs, journal, n, age):
            with c.transaction():
                for name, rows in (("runs", run_rows), ("journal", entry_rows)):
                    cols = sql.SQL(", ").join(map(sql.Identifier, rows[0]))
                    with c.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                            table(name), cols)) as copy:
                        for row in rows:
                            copy.write_row(list(row.values()))
        for name in ("runs", "journal"):
            c.execute(sql.SQL("VACUUM ANALYZE {}").format(table(name)))


def mode_fill(cfg: dict[str, Any]) -> None:
    n, age = cfg.get("runs", 100_000), cfg.get("age", 2 * 86400)
    t0 = time.perf_counter()
    _templates(cfg)
    (_fill_sqlite if cfg["store"].startswith("sqlite") else _fill_postgres)(cfg, n, age)
    emit(runs=n, fill_s=time.perf_counter() - t0)


# ---- W2 in a loop -------------------------------------------------------------------------

def mode_w2loop(cfg: dict[str, Any]) -> None:
    """W2 rounds (200 runs x 10 steps started at once) back to back until the ``stop`` file
    exists; every 20 ms a sample (wall time, process CPU, steps committed so far)."""
    committed = [0]

    def observer(event: Any) -> None:
        if event.kind == "step_committed":
            committed[0] += 1  # called on the driver thread only

    store = make_store(cfg)
    interp = engine(store, observer=observer)
    runs, steps = cfg.get("runs", 200), cfg.get("steps", 10)
    samples: list[tuple[float, float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append((time.time(), time.process_time(), committed[0]))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    print("ready", flush=True)
    while not os.path.exists(cfg["stop"]):
        ids = [interp.start("seq", steps) for _ in range(runs)]
        for rid in ids:
            assert interp.result(rid) == steps
    done.set()
    sampler.join()
    interp.shutdown()
    emit(samples=samples)


# ---- purge --------------------------------------------------------------------------------

class _Timed:
    """The store, with the wall interval of every ``purge`` batch recorded; ``pause``: sleep
    that many times the batch's time after it (an A/B knob; 0 is the library as it is)."""

    def __init__(self, store: Any, pause: float) -> None:
        self.store, self.pause = store, pause
        self.batches: list[tuple[float, float, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def purge(self, *args: Any, **kw: Any) -> list[str]:
        t0 = time.time()
        ids: list[str] = self.store.purge(*args, **kw)
        t1 = time.time()
        self.batches.append((t0, t1, len(ids)))
        if self.pause:
            time.sleep(self.pause * (t1 - t0))
        return ids


def mode_purge(cfg: dict[str, Any]) -> None:
    if "batch" in cfg:  # an A/B knob: runs per purge transaction
        replaygen.client.PURGE_BATCH = cfg["batch"]
    if "sqlite_yield" in cfg:  # an A/B knob: how long SQLite's write lock is left free
        replaygen.stores.sqlite.PURGE_YIELD = cfg["sqlite_yield"]
    timed = _Timed(make_store(cfg), cfg.get("pause", 0.0))
    client = Client(timed)
    t0, c0 = time.time(), time.process_time()
    n = client.purge(older_than=cfg.get("older_than", 86400))
    t1, cpu = time.time(), time.process_time() - c0
    timed.store.close()
    spans = sorted(b[1] - b[0] for b in timed.batches)
    emit(purged=n, t0=t0, t1=t1, seconds=t1 - t0, runs_per_s=n / (t1 - t0), cpu_s=cpu,
         batches=len(spans), batch_ms_median=spans[len(spans) // 2] * 1000,
         batch_ms_p90=spans[int(len(spans) * 0.9)] * 1000, batch_ms_max=spans[-1] * 1000,
         busy_fraction=sum(spans) / (t1 - t0),
         store_file=sys.modules[type(timed.store).__module__].__file__)


MODES = {"fill": mode_fill, "w2loop": mode_w2loop, "purge": mode_purge}

if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    conf = json.loads(sys.argv[1])
    MODES[conf["mode"]](conf)
