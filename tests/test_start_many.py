"""Starts that share commits: ``start_many`` on Client and Interpreter, and concurrent
``start()`` calls from many threads, on memory, SQLite and Postgres."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from .conftest import PATIENCE
from .pg import each_store
from replaygen import Client, Do, Interpreter, Store, UsageError, workflow
from replaygen.client import START_BATCH


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: Any, tmp_path: Path) -> Iterator[Store]:
    with each_store(request.param, tmp_path, "many_") as s:
        yield s


class Counting:
    """A store whose commits are counted (and the writes each carried); the first commit can
    be held until released, so that other writers queue behind it."""

    def __init__(self, inner: Store, hold: bool = False) -> None:
        self.inner, self.sizes = inner, list[int]()
        self.entered, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def commit(self, writes: Sequence[Any]) -> Any:
        if not self.sizes:
            self.entered.set()
            assert self.release.wait(PATIENCE)
        self.sizes.append(len(writes))
        return self.inner.commit(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def double(x: int) -> int:
    return 2 * x


@workflow
def doubled(x: int, plus: int = 0) -> Any:
    return (yield Do("double", double, x)) + plus


def test_client_start_many_shares_commits_and_workers_run_every_run(store: Store) -> None:
    counting = Counting(store)
    client = Client(counting)  # type: ignore[arg-type]
    calls: list[Any] = [(i,) for i in range(START_BATCH + 200)] + [{"x": 1, "plus": 5}]
    ids = client.start_many(doubled, calls)
    assert len(ids) == len(set(ids)) == len(calls)
    assert counting.sizes == [START_BATCH, 201]  # one commit per START_BATCH runs
    with Interpreter(store, [doubled]) as worker:
        worker.recover()
        assert [client.result(r, timeout=PATIENCE) for r in ids] == \
            [2 * i for i in range(START_BATCH + 200)] + [7]


def test_interpreter_start_many_runs_here_and_is_idempotent_by_run_id(store: Store) -> None:
    with Interpreter(store, [doubled]) as worker:
        ids = worker.start_many("doubled", [(1,), (2,), (3,)], run_ids=["a", "b", "c"])
        assert ids == ["a", "b", "c"]
        assert [worker.result(r, timeout=PATIENCE) for r in ids] == [2, 4, 6]
        # The same ids and arguments again start nothing; "d" is new.
        assert worker.start_many(doubled, [(1,), (2,), (4,)], run_ids=["a", "b", "d"]) == \
            ["a", "b", "d"]
        assert worker.result("d", timeout=PATIENCE) == 8
        assert sorted(r.run_id for r in worker.runs()) == ["a", "b", "c", "d"]
        with pytest.raises(UsageError, match=r"run 'c' already exists as doubled\(3\).*"
                                             r"doubled\(9\)"):
            worker.start_many(doubled, [(9,), (5,)], run_ids=["c", "e"])
        assert worker.result("e", timeout=PATIENCE) == 10  # started with it, in its commit


def test_start_many_refuses_bad_calls_and_run_ids_before_starting_any(store: Store) -> None:
    client = Client(store)
    with pytest.raises(UsageError, match="tuple of positional arguments.*got 3"):
        client.start_many(doubled, [(1,), 3])
    with pytest.raises(UsageError, match="run_ids must be 2 distinct ids.*got 1"):
        client.start_many(doubled, [(1,), (2,)], run_ids=["x"])
    with pytest.raises(UsageError, match=r"got 2 \(1 distinct\)"):
        client.start_many(doubled, [(1,), (2,)], run_ids=["x", "x"])
    assert client.runs() == []


def test_concurrent_client_starts_share_a_commit(store: Store) -> None:
    counting = Counting(store, hold=True)
    client = Client(counting)  # type: ignore[arg-type]
    ids: list[str] = []
    first = threading.Thread(target=lambda: ids.append(client.start(doubled, 0)))
    first.start()
    assert counting.entered.wait(PATIENCE)  # the first start's commit is in progress
    others = [threading.Thread(target=lambda i=i: ids.append(client.start(doubled, i)))
              for i in range(1, 20)]
    for t in others:
        t.start()
    group = client._group
    # A server store runs some commits side by side (parallel_commits): as many starts lead
    # one each; every other start queues behind them.
    leaders = getattr(store, "parallel_commits", 1)
    while group.queued() < 20 - leaders:
        assert first.is_alive()
        threading.Event().wait(0.001)
    counting.release.set()
    for t in [first, *others]:
        t.join(PATIENCE)
    assert sorted(counting.sizes) == [1] * leaders + [20 - leaders]  # the queued share one
    assert sorted(r.run_id for r in client.runs(limit=100)) == sorted(ids)


ran: list[int] = []


def once(x: int) -> int:
    ran.append(x)
    return x


@workflow
def counted(x: int) -> Any:
    return (yield Do("once", once, x))


def test_a_start_racing_start_many_for_the_same_ids_runs_each_run_once(store: Store) -> None:
    ran.clear()
    ids = [f"r{i}" for i in range(600)]
    with Interpreter(store, [counted], concurrency=1000) as worker:
        adopt, adopted = worker._adopt, list[str]()

        def slow_adopt(claim: Any) -> None:  # a loaded machine: a wide window between a
            adopted.append(claim.run.run_id)  # batch's commit and its adoptions
            threading.Event().wait(0.0005)
            adopt(claim)

        worker._adopt = slow_adopt  # type: ignore[method-assign]
        batch = threading.Thread(target=lambda: worker.start_many(
            counted, [(i,) for i in range(600)], ids))
        batch.start()
        while store.get(ids[-1]) is None:  # the batch is committed, its adoptions under way
            assert batch.is_alive()
        while batch.is_alive():  # start its last runs again, as a retried request would
            for i in reversed(range(300, 600)):
                worker.start(counted, i, run_id=ids[i])
        assert [worker.result(r, timeout=PATIENCE) for r in ids] == list(range(600))
    assert sorted(adopted) == sorted(ids)  # each run adopted once, here or by the batch
    assert sorted(ran) == list(range(600))  # and no step ran twice


def test_two_clients_starting_the_same_ids_in_opposite_orders_both_succeed(store: Store) -> None:
    ids = [f"id-{i:03}" for i in range(300)]
    errors: list[BaseException] = []

    def starts(order: list[str]) -> None:
        client = Client(store)
        try:
            for _ in range(5):
                client.start_many(doubled, [(int(r[3:]),) for r in order], order)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pair = [threading.Thread(target=starts, args=(o,)) for o in (ids, ids[::-1])]
    for t in pair:
        t.start()
    for t in pair:
        t.join(PATIENCE)
    assert errors == []
    assert len(Client(store).runs(limit=1000)) == 300


class Interrupting:
    """A store whose first commit is interrupted (Ctrl-C in the middle of a start())."""

    def __init__(self, inner: Store) -> None:
        self.inner, self.interrupted = inner, False

    def commit(self, writes: Sequence[Any]) -> Any:
        if not self.interrupted:
            self.interrupted = True
            raise KeyboardInterrupt
        return self.inner.commit(writes)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_start_interrupted_in_its_commit_leaves_the_client_usable(store: Store) -> None:
    client = Client(Interrupting(store))  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        client.start(doubled, 1)
    done: list[str] = []
    later = threading.Thread(target=lambda: done.append(client.start(doubled, 2)))
    later.start()
    later.join(PATIENCE)
    assert not later.is_alive() and len(done) == 1  # the group commit was handed on
    assert [r.run_id for r in client.runs()] == done


class Parallel:
    """A store whose commits run side by side, up to ``parallel_commits`` at once: it records
    how many were in flight at most, and every write it applied."""

    def __init__(self, parallel: int) -> None:
        self.parallel_commits = parallel
        self.lock, self.inflight, self.most = threading.Lock(), 0, 0
        self.applied: list[Any] = []
        self.gate = threading.Barrier(parallel, timeout=PATIENCE)

    def commit(self, writes: Sequence[Any]) -> list[bool]:
        with self.lock:
            self.inflight += 1
            self.most = max(self.most, self.inflight)
            first = len(self.applied) == 0 and self.inflight <= self.parallel_commits
        if first:  # the first leaders meet here: proof that they overlap
            try:
                self.gate.wait()
            except threading.BrokenBarrierError:
                pass
        with self.lock:
            self.applied += writes
            self.inflight -= 1
        return [True] * len(writes)


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_a_group_commit_runs_at_most_parallel_commits_at_once_and_answers_every_write(
        parallel: int) -> None:
    from replaygen.commit import GroupCommit
    store = Parallel(parallel)
    group = GroupCommit(store)  # type: ignore[arg-type]
    answers: dict[int, list[Any]] = {}

    def writer(i: int) -> None:
        for j in range(50):
            answers[i * 100 + j] = group.commit([("w", i, j)])  # type: ignore[list-item]

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(PATIENCE)
    assert not any(t.is_alive() for t in threads)
    assert len(answers) == 400 and all(a == [True] for a in answers.values())
    assert sorted(store.applied) == sorted(("w", i, j) for i in range(8) for j in range(50))
    assert store.most == parallel  # never more at once, and the store's parallelism was used
    assert group._leaders == 0  # every lead was handed on or given back: none leaked


gate = threading.Event()


def gated(x: int) -> int:
    ran.append(x)
    assert gate.wait(PATIENCE)
    return x


@workflow
def held(x: int) -> Any:
    return (yield Do("gated", gated, x))


def test_a_start_again_of_a_run_that_ends_meanwhile_does_not_run_it_again(store: Store) -> None:
    ran.clear()
    gate.clear()
    with Interpreter(store, [held]) as worker:
        adopt, adopted = worker._adopt, list[str]()

        def counted_adopt(claim: Any) -> None:
            adopted.append(claim.run.run_id)
            adopt(claim)

        worker._adopt = counted_adopt  # type: ignore[method-assign]
        worker.start(held, 7, run_id="x")
        while ran != [7]:  # its step is running
            threading.Event().wait(0.001)
        get = store.get

        def stale_get(run_id: str) -> Any:  # the start again reads the run while it runs...
            record = get(run_id)
            if threading.current_thread() is threading.main_thread() and run_id == "x":
                gate.set()  # ...and it ends, and is let go, before that start looks again
                while worker._runtime.actors.get("x") is not None:
                    threading.Event().wait(0.001)
            return record

        store.get = stale_get  # type: ignore[method-assign]
        try:
            assert worker.start(held, 7, run_id="x") == "x"
        finally:
            store.get = get  # type: ignore[method-assign]
        assert worker.result("x", timeout=PATIENCE) == 7
        worker.shutdown()
    assert ran == [7]  # the step ran once
    assert adopted == ["x"]  # and the run that had ended was not adopted again
