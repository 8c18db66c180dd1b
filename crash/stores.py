"""Store factory: the harness names a store by a URL-like spec, so it never depends on one backend.

* ``sqlite:/abs/path/store.db`` -> ``replaygen.stores.sqlite.SQLiteStore(path)``
* ``postgres:SCHEMA:DSN``       -> ``replaygen.stores.postgres.PostgresStore(DSN, schema=SCHEMA)``
  (DSN is anything psycopg accepts: ``postgresql://...`` or ``host=... dbname=...``)
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any


def make_spec(kind: str, scenario_dir: str, dsn: str | None, label: str) -> str:
    if kind == "sqlite":
        return f"sqlite:{os.path.join(scenario_dir, 'store.db')}"
    if kind == "postgres":
        if not dsn:
            raise SystemExit("--store postgres needs --dsn DSN")
        schema = "crash_" + re.sub(r"[^a-z0-9_]", "_", label.lower())[:30] + "_" + uuid.uuid4().hex[:8]
        return f"postgres:{schema}:{dsn}"
    raise SystemExit(f"unknown store kind {kind!r} (sqlite or postgres)")


def open_store(spec: str) -> Any:
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        from replaygen.stores.sqlite import SQLiteStore
        return SQLiteStore(rest)
    if kind == "postgres":
        schema, _, dsn = rest.partition(":")
        from replaygen.stores.postgres import PostgresStore  # type: ignore[import-not-found]
        return PostgresStore(dsn, schema=schema)
    raise ValueError(f"bad store spec {spec!r}")


def drop(spec: str) -> None:
    """Throw a scenario's store away (the SQLite file lives in the scenario's temp dir)."""
    kind, _, rest = spec.partition(":")
    if kind != "postgres":
        return
    schema, _, dsn = rest.partition(":")
    try:
        from replaygen.stores.postgres import PostgresStore  # type: ignore[import-not-found]
        if hasattr(PostgresStore, "drop_schema"):
            PostgresStore.drop_schema(dsn, schema)
            return
    except ImportError:
        pass
    except Exception as exc:
        print(f"note: could not drop schema {schema}: {exc}")
        return
    try:
        import psycopg  # type: ignore[import-not-found]
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception as exc:  # leaving a schema behind is not a verdict
        print(f"note: could not drop schema {schema}: {exc}")
