"""One replaygen measurement per process (run by tests/bench/run.py, never imported by pytest).

    python tests/bench/bench_replaygen.py '<json config>'

Config keys: ``mode`` (floor, w1, w2, w3-crash, w3-resume, w4-crash, w4-recover, w5, w6),
``store`` (sqlite-full, sqlite-normal, postgres), ``path`` (SQLite file), ``dsn`` and
``schema`` (Postgres), plus the mode's own parameters. The measurement is printed as one
line ``RESULT {json}`` on stdout; crash modes end by SIGKILLing their own process.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sqlite3
import statistics
import sys
import threading
import time
from typing import Any

T_PROCESS = time.time()  # as early as this script can tell: before replaygen is imported

from bench_common import emit, noop, now, os_threads, rss_mib  # noqa: E402

from replaygen import All, Child, Do, Interpreter, Sleep, Wait  # noqa: E402

MARK: dict[str, float] = {}


def make_store(cfg: dict[str, Any]) -> Any:
    kind = cfg["store"]
    if kind == "memory":  # commits cost nothing: what is left is the engine's own time
        from replaygen.store import MemoryStore
        return MemoryStore()
    if kind.startswith("sqlite"):
        from replaygen.stores.sqlite import SQLiteStore
        MARK["store_imported"] = now()
        return SQLiteStore(cfg["path"], synchronous="FULL" if kind == "sqlite-full" else "NORMAL")
    if kind == "postgres":
        from replaygen.stores.postgres import PostgresStore
        MARK["store_imported"] = now()
        return PostgresStore(cfg["dsn"], schema=cfg["schema"], pool_size=cfg.get("pool", 4))
    raise SystemExit(f"unknown store {kind!r}")


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# ---- workflows ------------------------------------------------------------------------------

def seq(n: int) -> Any:
    """W1, W2: n sequential no-op steps."""
    for i in range(n):
        yield Do(f"s{i}", noop, i)
    return n


TRAP: dict[str, Any] = {}


def trapped(i: int) -> dict[str, Any]:
    """Step ``n`` of ``long``: in the crashing process it kills the process; in the
    resuming process it marks the moment replay reached live work."""
    if TRAP.get("crash"):
        kill_self()
    MARK.setdefault("live", now())
    return noop(i)


def long(n: int) -> Any:
    """W3: n journaled steps, then step n+1 (the trap)."""
    MARK.setdefault("body", now())
    MARK.setdefault("body_cpu", time.process_time())
    for i in range(n):
        yield Do(f"s{i}", noop, i)
    yield Do(f"s{n}", trapped, n)
    return n + 1


async def gate_async(i: int) -> dict[str, Any]:
    """Step 6 of ``ten`` in the crashing process of W4: wait (holding no thread: async) until
    every run is here, then the last one to arrive SIGKILLs the process."""
    import asyncio
    BARRIER_ASYNC.arrive_async()
    await asyncio.Event().wait()
    return noop(i)


class _AsyncBarrier:
    def __init__(self) -> None:
        self.n, self.count, self.lock = 0, 0, threading.Lock()

    def arrive_async(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.n:
                kill_self()


BARRIER_ASYNC = _AsyncBarrier()


def ten(steps: int, crash_at: int) -> Any:
    """W4: ``steps`` steps; in the crashing process step ``crash_at`` is the gate."""
    for i in range(steps):
        fn = gate_async if (TRAP.get("crash") and i == crash_at) else noop
        yield Do(f"s{i}", fn, i)
    return steps


STEP2: dict[str, threading.Event] = {}
STEP2_AT: dict[str, float] = {}


def second(run_id: str) -> dict[str, Any]:
    STEP2_AT[run_id] = now()
    event = STEP2.get(run_id)
    if event is not None:
        event.set()
    return noop(2)


def parked(run_id: str, sleep: bool) -> Any:
    """W5: one step, then park (a Wait for 'go', or a one-hour Sleep), then one step."""
    yield Do("first", noop, 1)
    if sleep:
        yield Sleep(3600)
    else:
        yield Wait("go")
    yield Do("second", second, run_id)
    return True


def leaf(i: int) -> Any:
    """children: a child run of one no-op step."""
    return (yield Do("work", noop, i))


def fan(n: int, children: bool) -> Any:
    """children: n children (or, beside it, a flat All of n steps), all at once."""
    if children:
        return len((yield All(*[Child("leaf", i) for i in range(n)])))
    return len((yield All(*[Do(f"s{i}", noop, i) for i in range(n)])))


def tree(depth: int, width: int) -> Any:
    """children: a tree of child runs, ``width`` children a level, ``depth`` levels below."""
    if depth == 0:
        return (yield Do("work", noop, 0)) and 1
    return sum((yield All(*[Child("tree", depth - 1, width) for _ in range(width)])))


WORKFLOWS = {"seq": seq, "long": long, "ten": ten, "parked": parked, "leaf": leaf, "fan": fan,
             "tree": tree}


def engine(store: Any, **kw: Any) -> Interpreter:
    return Interpreter(store, WORKFLOWS, **kw)


# ---- modes ----------------------------------------------------------------------------------

def mode_w1(cfg: dict[str, Any]) -> None:
    store = make_store(cfg)
    interp = engine(store)
    n = cfg.get("steps", 1000)
    t0, c0 = now(), time.process_time()
    assert interp.run("seq", n) == n
    t, cpu = now() - t0, time.process_time() - c0
    interp.shutdown()
    emit(steps=n, seconds=t, steps_per_s=n / t, cpu_us_per_step=cpu / n * 1e6)


def mode_w2(cfg: dict[str, Any]) -> None:
    store = make_store(cfg)
    interp = engine(store, **({"concurrency": cfg["concurrency"]} if "concurrency" in cfg else {}))
    runs, steps = cfg.get("runs", 200), cfg.get("steps", 10)
    ids, pool, go = [""] * runs, [], threading.Event()
    if cfg.get("threads"):  # each start from a request thread of its own, all at once: the
        # threads exist before their requests come, as a web server's do
        def request(i: int) -> None:
            go.wait()
            ids[i] = interp.start("seq", steps)
        pool = [threading.Thread(target=request, args=(i,)) for i in range(runs)]
        for t in pool:
            t.start()
    t0, c0 = now(), time.process_time()
    if pool:
        go.set()
        for t in pool:
            t.join()
    else:
        ids = [interp.start("seq", steps) for _ in range(runs)]
    t_started = now() - t0
    for rid in ids:
        assert interp.result(rid) == steps
    t, cpu = now() - t0, time.process_time() - c0
    interp.shutdown()
    emit(runs=runs, steps=runs * steps, seconds=t, steps_per_s=runs * steps / t,
         start_seconds=t_started, cpu_us_per_step=cpu / (runs * steps) * 1e6)


def mode_w3_crash(cfg: dict[str, Any]) -> None:
    TRAP["crash"] = True
    store = make_store(cfg)
    interp = engine(store)
    interp.start("long", cfg.get("steps", 1000), run_id="w3")
    time.sleep(600)  # the trap kills this process


def mode_w3_resume(cfg: dict[str, Any]) -> None:
    n = cfg.get("steps", 1000)
    t_import = time.time()
    t0, c0 = now(), time.process_time()
    store = make_store(cfg)
    t_store = now()
    interp = engine(store)
    t_interp = now()
    resumed = interp.recover()
    t_recover = now()
    assert resumed == ["w3"], resumed
    deadline = time.monotonic() + 120
    while "live" not in MARK and time.monotonic() < deadline:
        time.sleep(0.0005)
    cpu = time.process_time() - c0  # engine start to the live step (the polling costs little)
    assert interp.result("w3", timeout=60) == n + 1
    interp.shutdown()
    body, live = MARK["body"], MARK["live"]
    emit(replayed=n, seconds=live - t0, replayed_per_s=n / (live - t0),
         replay_only_per_s=n / (live - body), engine_to_body_s=body - t0,
         process_to_body_s=(T_PROCESS - cfg["spawned"]) + (t_import - T_PROCESS) + (body - t0),
         process_to_engine_s=(T_PROCESS - cfg["spawned"]) + (t_import - T_PROCESS),
         engine_to_body_cpu_s=MARK["body_cpu"] - c0, imported_to_body_s=body - MARK["store_imported"],
         store_open_s=t_store - t0, store_import_s=MARK["store_imported"] - t0,
         interpreter_s=t_interp - t_store,
         recover_call_s=t_recover - t_interp, cpu_us_per_step=cpu / n * 1e6)


def mode_w4_crash(cfg: dict[str, Any]) -> None:
    runs, steps, crash_at = cfg.get("runs", 200), cfg.get("steps", 10), cfg.get("crash_at", 5)
    TRAP["crash"] = True
    BARRIER_ASYNC.n = runs
    store = make_store(cfg)
    interp = engine(store, concurrency=runs + 16)  # the async gate holds a slot, not a thread
    for i in range(runs):
        interp.start("ten", steps, crash_at, run_id=f"r{i}")
    time.sleep(3600)  # the last run to reach the gate kills this process


def gc_timer() -> list[float]:
    """[seconds in the cyclic garbage collector so far, start of the one running]."""
    spent = [0.0, 0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            spent[1] = time.perf_counter()
        else:
            spent[0] += time.perf_counter() - spent[1]
    gc.callbacks.append(timed)
    return spent


def mode_w4_recover(cfg: dict[str, Any]) -> None:
    runs, steps, crash_at = cfg.get("runs", 200), cfg.get("steps", 10), cfg.get("crash_at", 5)
    in_gc = gc_timer()  # W4big: how much of it Python's collector takes (README says why)
    t0, c0 = now(), time.process_time()
    store = make_store(cfg)
    interp = engine(store)
    resumed = interp.recover()
    t_recover = now()
    assert len(resumed) == runs, (len(resumed), runs)
    for i in range(runs):
        assert interp.result(f"r{i}", timeout=600) == steps
    t, cpu = now() - t0, time.process_time() - c0
    interp.shutdown()
    emit(runs=runs, seconds=t, recover_call_s=t_recover - t0, gc_s=in_gc[0],
         steps_per_s=runs * (steps - crash_at) / t, cpu_us_per_step=cpu / (runs * steps) * 1e6)


def mode_w5(cfg: dict[str, Any]) -> None:
    runs, samples = cfg.get("runs", 10_000), cfg.get("samples", 50)
    store = make_store(cfg)
    parked_count = [0]
    all_parked = threading.Event()

    def observer(event: Any) -> None:
        if event.kind == "run_parked":
            parked_count[0] += 1
            if parked_count[0] >= runs:
                all_parked.set()

    interp = engine(store, observer=observer)
    time.sleep(0.2)
    rss0, threads0 = rss_mib(), os_threads()
    t0 = now()
    ids = [interp.start("parked", f"p{i}", i % 2 == 1, run_id=f"p{i}") for i in range(runs)]
    assert all_parked.wait(600), f"only {parked_count[0]} of {runs} parked"
    t_parked = now() - t0
    time.sleep(1.0)  # let the pool's idle threads settle
    rss1, threads1 = rss_mib(), os_threads()
    latencies = []
    waiting = [rid for i, rid in enumerate(ids) if i % 2 == 0]
    for rid in waiting[:samples]:
        STEP2[rid] = threading.Event()
        t = now()
        interp.deliver(rid, "go", {"n": 1})
        assert STEP2[rid].wait(30), f"{rid} did not wake"
        latencies.append(STEP2_AT[rid] - t)
        time.sleep(0.01)
    states = {interp.status(ids[1]).state, interp.status(waiting[-1]).state}
    emit(runs=runs, park_seconds=t_parked, rss_mib=rss1, rss_base_mib=rss0,
         rss_per_run_kib=(rss1 - rss0) * 1024 / runs, threads=threads1, threads_base=threads0,
         deliver_to_step_ms_median=statistics.median(latencies) * 1000,
         deliver_to_step_ms_max=max(latencies) * 1000, samples=len(latencies),
         parked_states=sorted(states))
    os._exit(0)  # 10,000 parked runs: no need to wind them down


# ---- the floor ------------------------------------------------------------------------------

def mode_floor(cfg: dict[str, Any]) -> None:
    n = cfg.get("n", 1000)
    out: dict[str, float] = {}
    value = json.dumps(noop(1), separators=(",", ":"))
    # Replay's floor: decoding one entry's ~100-byte JSON value.
    reps = 100_000
    t = now()
    for _ in range(reps):
        json.loads(value)
    out["json_decode_per_s"] = reps / (now() - t)
    if cfg["store"].startswith("sqlite"):
        out.update(_floor_sqlite(cfg, n, value))
    else:
        out.update(_floor_postgres(cfg, n, value))
    emit(**out)


def _floor_sqlite(cfg: dict[str, Any], n: int, value: str) -> dict[str, float]:
    sync = "FULL" if cfg["store"] == "sqlite-full" else "NORMAL"

    def fresh(name: str) -> sqlite3.Connection:
        # Each loop gets a new file, as every workload gets a fresh store: while a new WAL
        # grows, each fsync also flushes the file's size, and commits are ~1.5x slower than
        # into a WAL that was already grown and is being reused.
        c = sqlite3.connect(f"{cfg['path']}.{name}", isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={sync}")
        c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, owner TEXT, fence INTEGER, "
                  "state TEXT, updated REAL)")
        c.execute("CREATE TABLE journal (run_id TEXT NOT NULL, seq INTEGER NOT NULL, value TEXT, "
                  "PRIMARY KEY (run_id, seq)) WITHOUT ROWID")
        c.executemany("INSERT INTO runs VALUES (?, 'me', 1, 'running', 0)",
                      [(f"r{i}",) for i in range(100)])
        return c

    out = {}
    c = fresh("insert")
    t = now()
    for i in range(n):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO journal VALUES ('a', ?, ?)", (i, value))
        c.execute("COMMIT")
    out["insert_commit_per_s"] = n / (now() - t)
    c.close()
    c = fresh("fenced")
    t = now()
    for i in range(n):
        c.execute("BEGIN IMMEDIATE")
        cur = c.execute("UPDATE runs SET state = 'running', updated = ? "
                        "WHERE run_id = 'r0' AND owner = 'me' AND fence = 1", (time.time(),))
        assert cur.rowcount == 1
        c.execute("INSERT INTO journal VALUES ('b', ?, ?)", (i, value))
        c.execute("COMMIT")
    out["fenced_commit_per_s"] = n / (now() - t)
    c.close()
    batches = max(10, n // 10)
    c = fresh("batch")
    t = now()
    for b in range(batches):
        c.execute("BEGIN IMMEDIATE")
        c.executemany("INSERT INTO journal VALUES ('c', ?, ?)",
                      [(b * 100 + j, value) for j in range(100)])
        c.execute("COMMIT")
    out["batch100_rows_per_s"] = batches * 100 / (now() - t)
    c.close()
    c = fresh("batchfenced")
    t = now()
    for b in range(batches):
        c.execute("BEGIN IMMEDIATE")
        for j in range(100):
            c.execute("UPDATE runs SET state = 'running', updated = ? "
                      "WHERE run_id = ? AND owner = 'me' AND fence = 1", (time.time(), f"r{j}"))
            c.execute("INSERT INTO journal VALUES (?, ?, ?)", (f"r{j}", 10**6 + b, value))
        c.execute("COMMIT")
    out["batch100_fenced_rows_per_s"] = batches * 100 / (now() - t)
    c.close()
    return out


def _floor_postgres(cfg: dict[str, Any], n: int, value: str) -> dict[str, float]:
    import psycopg
    from psycopg import sql
    schema = sql.Identifier(cfg["schema"])
    out = {}
    with psycopg.connect(cfg["dsn"], autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        c.execute(sql.SQL("SET search_path TO {}").format(schema))
        c.execute("CREATE TABLE runs (run_id text PRIMARY KEY, owner text, fence bigint, "
                  "state text, updated float8)")
        c.execute("CREATE TABLE journal (run_id text NOT NULL, seq bigint NOT NULL, value text, "
                  "PRIMARY KEY (run_id, seq))")
        c.execute("INSERT INTO runs SELECT 'r' || i, 'me', 1, 'running', 0 "
                  "FROM generate_series(0, 99) i")
        t = now()
        for i in range(n):
            c.execute("INSERT INTO journal VALUES ('a', %s, %s)", (i, value))
        out["insert_commit_per_s"] = n / (now() - t)
        t = now()
        for i in range(n):
            cur = c.execute(
                "WITH u AS (UPDATE runs SET state = 'running', updated = %s WHERE run_id = 'r0' "
                "AND owner = 'me' AND fence = 1 RETURNING run_id) "
                "INSERT INTO journal SELECT 'b', %s, %s FROM u", (time.time(), i, value))
            assert cur.rowcount == 1
        out["fenced_commit_per_s"] = n / (now() - t)
        batches = max(10, n // 10)
        t = now()
        for b in range(batches):
            with c.transaction():
                with c.cursor() as cur:
                    cur.executemany("INSERT INTO journal VALUES ('c', %s, %s)",
                                    [(b * 100 + j, value) for j in range(100)])
        out["batch100_rows_per_s"] = batches * 100 / (now() - t)
        t = now()
        for b in range(batches):
            with c.transaction():
                with c.cursor() as cur:
                    cur.executemany(
                        "WITH u AS (UPDATE runs SET state = 'running', updated = %s "
                        "WHERE run_id = %s AND owner = 'me' AND fence = 1 RETURNING run_id) "
                        "INSERT INTO journal SELECT run_id, %s, %s FROM u",
                        [(time.time(), f"r{j}", 10**6 + b, value) for j in range(100)])
        out["batch100_fenced_rows_per_s"] = batches * 100 / (now() - t)
    return out


def mode_children(cfg: dict[str, Any]) -> None:
    """A parent of ``n`` children beside a flat All of ``n`` steps, and a tree ``depth`` levels
    deep: first start to the parent's result, each with a fresh interpreter on one store."""
    store = make_store(cfg)
    n, depth, width = cfg.get("n", 1000), cfg.get("depth", 4), cfg.get("width", 6)
    out: dict[str, Any] = {"n": n, "tree_runs": sum(width ** d for d in range(depth + 1))}
    for key, name, args in (("flat_s", "fan", (n, False)), ("children_s", "fan", (n, True)),
                            ("tree_s", "tree", (depth, width))):
        interp = engine(store)
        t0, c0 = now(), time.process_time()
        interp.run(name, *args)
        out[key], out[key.replace("_s", "_cpu_s")] = now() - t0, time.process_time() - c0
        interp.shutdown()
    emit(**out)


def mode_w6(cfg: dict[str, Any]) -> None:
    """W6: durable starts by a Client (no worker): ``start_many`` of ``runs`` runs, beside
    ``seq`` one-by-one ``start()`` calls and ``threads`` threads each starting ``each`` runs."""
    from replaygen import Client

    client = Client(make_store(cfg))
    n, single, threads, each = (cfg.get("runs", 10_000), cfg.get("seq", 500),
                                cfg.get("threads", 200), cfg.get("each", 10))
    out: dict[str, Any] = {"runs": n}
    t0, c0 = now(), time.process_time()
    assert len(client.start_many("seq", [(1,)] * n)) == n
    out["many_s"], out["many_runs_per_s"] = now() - t0, n / (now() - t0)
    out["many_cpu_us_per_run"] = (time.process_time() - c0) / n * 1e6
    t0 = now()
    for _ in range(single):
        client.start("seq", 1)
    out["seq_runs_per_s"] = single / (now() - t0)
    gate = threading.Barrier(threads + 1)

    def starter() -> None:
        gate.wait()
        for _ in range(each):
            client.start("seq", 1)

    pool = [threading.Thread(target=starter) for _ in range(threads)]
    for t in pool:
        t.start()
    gate.wait()
    t0 = now()
    for t in pool:
        t.join()
    out["threaded_runs_per_s"] = threads * each / (now() - t0)
    emit(**out)


MODES = {"floor": mode_floor, "w6": mode_w6, "w1": mode_w1, "w2": mode_w2, "w3-crash": mode_w3_crash,
         "w3-resume": mode_w3_resume, "w4-crash": mode_w4_crash, "w4-recover": mode_w4_recover,
         "w5": mode_w5, "children": mode_children}

if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    cfg = json.loads(sys.argv[1])  # parsed here only: profile_engine imports this module
    MODES[cfg["mode"]](cfg)
