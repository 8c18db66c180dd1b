"""Where the Postgres tests find their server: skip with a reason on a laptop, fail in CI."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from replaygen import MemoryStore, Store
from replaygen.stores.sqlite import SQLiteStore

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_dsn() -> str:
    """The test server's DSN; skips (or, under CI, fails) when it is not reachable."""
    dsn = os.environ.get("REPLAYGEN_TEST_DSN", DEFAULT_DSN)
    try:
        import psycopg
    except ImportError:
        reason = "psycopg is not installed (pip install 'replaygen[postgres]')"
    else:
        try:
            psycopg.connect(dsn, connect_timeout=3).close()
            return dsn
        except Exception as exc:  # noqa: BLE001
            shown = DEFAULT_DSN if dsn == DEFAULT_DSN else "REPLAYGEN_TEST_DSN"  # may hold a password
            reason = f"PostgreSQL is not reachable at {shown}: {type(exc).__name__}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the Postgres tests)")
    pytest.skip(reason)


@contextlib.contextmanager
def each_store(kind: str, tmp_path: Path, prefix: str) -> Iterator[Store]:
    """A fresh store of ``kind`` (memory, sqlite or postgres: a schema of its own, dropped)."""
    if kind == "memory":
        yield MemoryStore()
        return
    if kind == "sqlite":
        s: Store = SQLiteStore(tmp_path / "runs.db")
        yield s
        s.close()
        return
    from replaygen.stores.postgres import PostgresStore

    dsn, schema = postgres_dsn(), prefix + uuid.uuid4().hex[:10]
    pg = PostgresStore(dsn, schema=schema)
    yield pg
    pg.close()
    PostgresStore.drop_schema(dsn, schema)
