"""Every store passes the same conformance suite; a new store adds one fixture parameter."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import MemoryStore, Store
from replaygen.stores.conformance import *  # noqa: F403
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
