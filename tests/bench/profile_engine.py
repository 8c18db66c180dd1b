"""Where a replaygen step's time goes: W1, W2 and W3 on SQLite, profiled in one process.

    python tests/bench/profile_engine.py [--steps 1000] [--top 25]   (or python -m tests.bench --profile)

Two passes per workload:
1. timing, no profiler: the store's write connection is wrapped so that every statement is
   timed by kind (BEGIN, the fenced UPDATE, the journal INSERT, COMMIT = WAL write + fsync);
   engine time is wall time minus store time (W1 is sequential, so they add up). A raw
   write+fdatasync loop on the same disk gives the fsync floor.
2. cProfile of every thread the engine uses (each pool thread gets its own profiler; the
   stats are merged), sorted by own time: the hot spots.
Writes the report to tests/bench/profile.txt as well as stdout.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import noop  # noqa: E402

import replaygen.interpreter as ri  # noqa: E402
import replaygen.runtime as rt  # noqa: E402
from replaygen import Do, Interpreter  # noqa: E402
from replaygen.stores.sqlite import SQLiteStore  # noqa: E402

OUT: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def seq(n: int) -> Any:
    for i in range(n):
        yield Do(f"s{i}", noop, i)
    return n


class TimedConnection:
    """Delegates to a sqlite3 connection, timing each statement by its first word."""

    def __init__(self, conn: Any, times: dict[str, list[float]]) -> None:
        self._c, self._t = conn, times

    def _kind(self, sql: str) -> str:
        word = sql.lstrip().split(None, 1)[0].upper()
        if word == "INSERT" and "journal" in sql:
            return "INSERT journal"
        if word == "UPDATE" and "runs" in sql and "fence" in sql:
            return "UPDATE runs (fenced)"
        return word

    def execute(self, sql: str, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._c.execute(sql, *args)
        finally:
            self._t[self._kind(sql)].append(time.perf_counter() - t)

    def executemany(self, sql: str, *args: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._c.executemany(sql, *args)
        finally:
            self._t[self._kind(sql)].append(time.perf_counter() - t)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


def timed_store(path: str, sync: str) -> tuple[SQLiteStore, dict[str, list[float]]]:
    store = SQLiteStore(path, synchronous=sync)
    times: dict[str, list[float]] = defaultdict(list)
    store._w = TimedConnection(store._w, times)  # type: ignore[assignment]
    return store, times


def fsync_floor(directory: str, n: int = 300) -> float:
    fd = os.open(os.path.join(directory, "fsync.bin"), os.O_CREAT | os.O_WRONLY, 0o600)
    block = b"x" * 4096
    t = time.perf_counter()
    for i in range(n):
        os.pwrite(fd, block, (i % 16) * 4096)
        os.fdatasync(fd)
    per = (time.perf_counter() - t) / n
    os.close(fd)
    return per


# ---- profiling every engine thread ----------------------------------------------------------

PROFILES: list[cProfile.Profile] = []
_orig_drive = rt.Runtime._drive


def _profiled_drive(self: Any, me: object) -> None:
    p = cProfile.Profile()  # each driver thread (one, unless a turn ran long) its own
    PROFILES.append(p)
    p.enable()
    try:
        _orig_drive(self, me)
    finally:
        p.disable()


def hot_spots(title: str, main: cProfile.Profile | None, top: int) -> None:
    profiles = [p for p in PROFILES] + ([main] if main else [])
    for p in profiles:
        p.disable()  # an idle driver keeps its profiler enabled; stats need it stopped
    stats = pstats.Stats(profiles[0])
    for p in profiles[1:]:
        stats.add(p)
    buf = io.StringIO()
    stats.stream = buf
    stats.sort_stats("tottime").print_stats(top)
    lines = buf.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if "ncalls" in ln)
    say(f"\ncProfile, {title} (all threads, sorted by own time; cProfile inflates Python-level "
        f"time ~2x):")
    say("\n".join(ln.replace(str(Path(ri.__file__).parent.parent) + "/", "")
                  for ln in lines[start:start + top + 1]))
    PROFILES.clear()


# ---- workloads ------------------------------------------------------------------------------

def breakdown(title: str, steps: int, wall: float, times: dict[str, list[float]]) -> None:
    store_total = sum(sum(v) for v in times.values())
    say(f"\n{title}: {steps} steps in {wall:.3f}s = {steps / wall:,.0f} steps/s, "
        f"{wall / steps * 1e6:,.0f} µs per step")
    say(f"  {'where':<26}{'µs/step':>10}{'calls':>8}{'µs/call':>10}")
    for kind in sorted(times, key=lambda k: -sum(times[k])):
        total = sum(times[kind])
        say(f"  sqlite {kind:<19}{total / steps * 1e6:>10,.1f}{len(times[kind]):>8}"
            f"{total / len(times[kind]) * 1e6:>10,.1f}")
    say(f"  {'engine (wall - store)':<26}{(wall - store_total) / steps * 1e6:>10,.1f}")


def w1(tmp: str, sync: str, steps: int, top: int, profile: bool) -> None:
    store, times = timed_store(os.path.join(tmp, f"w1-{sync}-{profile}.db"), sync)
    interp = Interpreter(store, {"seq": seq})
    interp.run("seq", 5)  # warm up: threads, caches
    times.clear()
    t = time.perf_counter()
    interp.run("seq", steps)
    wall = time.perf_counter() - t
    interp.shutdown()
    if profile:
        hot_spots(f"W1 {sync}", None, top)
    else:
        breakdown(f"W1 sequential, SQLite {sync}", steps, wall, times)


def w2(tmp: str, sync: str, top: int, profile: bool) -> None:
    store, times = timed_store(os.path.join(tmp, f"w2-{sync}-{profile}.db"), sync)
    interp = Interpreter(store, {"seq": seq})
    interp.run("seq", 2)
    times.clear()
    main = cProfile.Profile() if profile else None
    t = time.perf_counter()
    if main:
        main.enable()
    ids = [interp.start("seq", 10) for _ in range(200)]
    t_start = time.perf_counter() - t
    for rid in ids:
        interp.result(rid)
    if main:
        main.disable()
    wall = time.perf_counter() - t
    interp.shutdown()
    if profile:
        hot_spots(f"W2 {sync}", main, top)
        return
    breakdown(f"W2 200 runs x 10 steps, SQLite {sync} (store time summed over threads)", 2000,
              wall, times)
    commits = len(times.get("COMMIT", []))
    say(f"  start() of the 200 runs took {t_start:.3f}s of {wall:.3f}s; {commits} commits for "
        f"2000 steps + 200 starts + 200 finishes (mean {2400 / max(commits, 1):.1f} writes "
        f"per commit)")


def w3(tmp: str, sync: str, steps: int, top: int, profile: bool) -> None:
    path = os.path.join(tmp, f"w3-{sync}-{profile}.db")
    env = dict(os.environ, PYTHONPATH=str(HERE))
    store_kind = "sqlite-full" if sync == "FULL" else "sqlite-normal"
    p = subprocess.run([sys.executable, str(HERE / "bench_replaygen.py"), json.dumps(
        {"mode": "w3-crash", "store": store_kind, "path": path, "steps": steps})], env=env,
        capture_output=True)
    assert p.returncode == -9, p.stderr[-2000:]
    import bench_replaygen as br  # its workflows, so that the journal matches
    br.MARK.clear()
    main = cProfile.Profile() if profile else None
    if main:
        main.enable()
    t0 = time.perf_counter()
    store, times = timed_store(path, sync)
    t1 = time.perf_counter()
    spent: dict[str, float] = defaultdict(float)

    def clock(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapped
    store.owners = clock("store.owners()", store.owners)  # type: ignore[method-assign]
    store.claim = clock("store.claim() (tx + journal rows -> Entry)", store.claim)  # type: ignore
    real_is_dead, real_journal = ri.is_dead, ri.Journal
    ri.is_dead = clock("is_dead(owner)", ri.is_dead)
    ri.Journal = clock("Journal() index of the entries", ri.Journal)
    interp = Interpreter(store, br.WORKFLOWS)
    t2 = time.perf_counter()
    interp.recover()
    t3 = time.perf_counter()
    while "live" not in br.MARK:
        time.sleep(0.0002)
    if main:
        main.disable()
    interp.result("w3", timeout=60)
    interp.shutdown()
    ri.is_dead, ri.Journal = real_is_dead, real_journal
    if profile:
        hot_spots(f"W3 resume {sync}", main, top)
        return
    body, live = br.MARK["body"], br.MARK["live"]
    say(f"\nW3 resume of {steps} journaled steps, SQLite {sync}: engine start to live step "
        f"{(live - t0) * 1000:.1f} ms = {steps / (live - t0):,.0f} replayed steps/s")
    say(f"  open store (connect, WAL, migrate tx)   {(t1 - t0) * 1000:8.2f} ms")
    say(f"  Interpreter() (heartbeat tx, threads)   {(t2 - t1) * 1000:8.2f} ms")
    say(f"  recover() (owners, claim tx, journal)   {(t3 - t2) * 1000:8.2f} ms")
    say(f"  recover() returned -> body starts       {(body - t3) * 1000:8.2f} ms")
    say(f"  body -> live step (replay {steps} steps)  {(live - body) * 1000:8.2f} ms = "
        f"{(live - body) / steps * 1e6:.2f} µs per replayed step, "
        f"{steps / (live - body):,.0f}/s")
    say("  inside recover(): " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in spent.items()))
    say("  sqlite on the write connection: " + ", ".join(
        f"{k} {sum(v) * 1000:.2f} ms/{len(v)}" for k, v in sorted(times.items())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--top", type=int, default=22)
    ap.add_argument("--out", default=str(HERE / "profile.txt"))
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="rgprofile-")
    say(f"replaygen engine profile ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
        f"shared machine: absolute figures are noisy)")
    say(f"raw 4 KiB pwrite+fdatasync on this disk: {fsync_floor(tmp) * 1e6:,.0f} µs")
    for sync in ("FULL", "NORMAL"):
        w1(tmp, sync, a.steps, a.top, profile=False)
    w2(tmp, "FULL", a.top, profile=False)
    w2(tmp, "NORMAL", a.top, profile=False)
    w3(tmp, "FULL", a.steps, a.top, profile=False)
    w3(tmp, "NORMAL", a.steps, a.top, profile=False)
    rt.Runtime._drive = _profiled_drive  # type: ignore[method-assign]
    w1(tmp, "NORMAL", a.steps, a.top, profile=True)
    w2(tmp, "NORMAL", a.top, profile=True)
    w3(tmp, "NORMAL", a.steps, a.top, profile=True)
    Path(a.out).write_text("\n".join(OUT) + "\n")
    print(f"\nwritten to {a.out}")


if __name__ == "__main__":
    main()
