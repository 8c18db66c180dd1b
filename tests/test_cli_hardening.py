"""The ``replaygen`` command against hostile input and unhelpful surroundings (issue 15):
run ids with whitespace and control characters, negative paging, large payloads, a
store that is not there yet, a Postgres schema of its own, a module that cannot be served.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter
from replaygen.stores.sqlite import SQLiteStore

# The fixtures home, db and runs come from test_cli; ruff takes their parameters for redefinitions.
# ruff: noqa: F811
from .test_cli import cli, db, eventually, fails_in_one_line, home, runs  # noqa: F401

# Characters a terminal acts on instead of showing: C0 (but the newline that ends a line),
# DEL, C1, the unicode line and paragraph separators, and bidi overrides.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

HOSTILE = '''
from replaygen import Do, Wait

def flow():
    yield Do("st\\x9bep\\u2028", lambda: "v\\x1b[0m")
    yield Wait("go\\x07")

workflows = {"wf\\x1b[2J": flow}
'''
HOSTILE_IDS = ["red\x1b[31m", "two\nlines", "é中\x7f", "para\u2029graph", "rtl\u202eevil"]


def run_cli(*args: str, cwd: Path, store: str | None = None, input: bytes | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``cli`` with bytes on stdin (the output is still text)."""
    env = {k: v for k, v in os.environ.items() if k != "REPLAYGEN_STORE"}
    if store is not None:
        env["REPLAYGEN_STORE"] = store
    done = subprocess.run([sys.executable, "-m", "replaygen", *args], cwd=cwd, env=env,
                          input=input, capture_output=True, timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(),
                                       done.stderr.decode())


@pytest.fixture
def hostile(home: Path, db: SQLiteStore) -> list[str]:
    """Runs whose ids, workflow, step and signal names hold control characters, all waiting."""
    (home / "hostile.py").write_text(HOSTILE)
    app = runpy.run_path(str(home / "hostile.py"))
    with Interpreter(db, app["workflows"]) as interp:
        for run_id in HOSTILE_IDS:
            interp.start("wf\x1b[2J", run_id=run_id)
        for run_id in HOSTILE_IDS:
            eventually(lambda r=run_id: interp.status(r).state == "waiting")
    return HOSTILE_IDS


# ---- 12: messages name the run byte-exact --------------------------------------------------

@pytest.mark.parametrize(("args", "named"), [
    (("show", "a   b"), "no run 'a   b'"),
    (("signal", "  ", "go"), "'  '"),
    (("cancel", "tab\there"), "no run 'tab\\there'"),
    (("show", "two\nlines"), "no run 'two\\nlines'"),
    (("show", "esc\x1b[2J"), "no run 'esc\\x1b[2J'"),
])
def test_errors_name_the_run_byte_exact(home: Path, runs: Any, args: tuple[str, ...],
                                        named: str) -> None:
    done = cli(*args, cwd=home, store="runs.db")
    fails_in_one_line(done, named)
    assert not RAW_CONTROL.search(done.stderr)
