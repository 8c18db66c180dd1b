"""Where the Postgres tests find their server: skip with a reason on a laptop, fail in CI."""

from __future__ import annotations

import os

import pytest

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
