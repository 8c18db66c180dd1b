"""Every store passes the same conformance suite; a new store adds one fixture parameter."""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import MemoryStore, Store
from replaygen.stores.conformance import *  # noqa: F403
from replaygen.stores.conformance import Tamper
from replaygen.stores.sqlite import SQLiteStore

from .pg import postgres_dsn


def _postgres(tmp_path: Path) -> Iterator[Callable[[], Store]]:
    dsn = postgres_dsn()
    from replaygen.stores.postgres import PostgresStore

    schema = "conf_" + uuid.uuid4().hex[:10]
    yield lambda: PostgresStore(dsn, schema=schema)
    PostgresStore.drop_schema(dsn, schema)


@pytest.fixture(params=["memory", "sqlite", "sqlite-normal", "postgres"])
def store_factory(request: Any, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    if request.param == "memory":
        shared = MemoryStore()
        yield lambda: shared
    elif request.param.startswith("sqlite"):
        sync = "NORMAL" if request.param.endswith("normal") else "FULL"
        yield lambda: SQLiteStore(tmp_path / "runs.db", synchronous=sync)
    else:
        yield from _postgres(tmp_path)


@pytest.fixture
def tamper(store_factory: Callable[[], Store]) -> Iterator[Tamper]:
    """Damage a row the way another program would: straight into the store's tables."""
    probe = store_factory()

    def memory(run_id: str, seq: int | None, column: str, value: Any) -> None:
        assert isinstance(probe, MemoryStore)
        if seq is None:
            probe._runs[run_id] = dataclasses.replace(probe._runs[run_id], **{column: value})
        else:
            journal = probe._journals[run_id]
            at = next(i for i, e in enumerate(journal) if e.seq == seq)
            journal[at] = journal[at]._replace(**{column: value})

    def sql(run_id: str, seq: int | None, column: str, value: Any) -> None:
        table, where = ("runs", "") if seq is None else ("journal", " AND seq = {}")
        if isinstance(probe, SQLiteStore):
            with sqlite3.connect(probe.path) as c:
                c.execute(f'UPDATE {table} SET "{column}" = ? WHERE run_id = ?{where.format("?")}',
                          (value, run_id, *([] if seq is None else [seq])))
            return
        import psycopg
        from psycopg import sql as q

        with psycopg.connect(postgres_dsn(), autocommit=True) as c:
            c.execute(q.SQL("UPDATE {} SET {} = %s WHERE run_id = %s" + where.format("%s")).format(
                q.Identifier(probe.schema, table), q.Identifier(column)),  # type: ignore[attr-defined]
                (value, run_id, *([] if seq is None else [seq])))

    yield memory if isinstance(probe, MemoryStore) else sql
    probe.close()
