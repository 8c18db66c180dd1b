"""The ``replaygen`` command against hostile input and unhelpful surroundings (issue 15):
run ids with whitespace and control characters, negative paging, large payloads, a
store that is not there yet, a Postgres schema of its own, a module that cannot be served.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Do, Interpreter, Retry
from replaygen.stores.conformance import create
from replaygen.stores.sqlite import SQLiteStore

from .pg import postgres_dsn
# The fixtures home, db and runs come from test_cli; ruff takes their parameters for redefinitions.
# ruff: noqa: F811
from .test_cli import (  # noqa: F401
    NO_SUCH_RUN, cli, db, eventually, fails_in_one_line, home, runs)

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


# ---- 13: tables and messages escape control characters -------------------------------------

def test_runs_escapes_control_characters_and_keeps_one_line_per_run(
    home: Path, hostile: list[str]
) -> None:
    done = cli("runs", cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert not RAW_CONTROL.search(done.stdout)
    lines = done.stdout.splitlines()
    assert len(lines) == 1 + len(hostile)  # the header and one row per run
    for shown in ("red\\x1b[31m", "two\\nlines", "é中\\x7f", "para\\u2029graph", "rtl\\u202eevil"):
        assert sum(line.startswith(shown + " ") for line in lines) == 1, shown
    assert all("wf\\x1b[2J" in line and "#1 wait go\\x07" in line
               and "for signal go\\x07" in line for line in lines[1:])


def test_show_escapes_the_id_names_and_values(home: Path, hostile: list[str]) -> None:
    done = cli("show", "two\nlines", cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert not RAW_CONTROL.search(out)
    assert "run:         two\\nlines\n" in out and "workflow:    wf\\x1b[2J\n" in out
    assert "waiting for: signal go\\x07\n" in out
    [row] = [line for line in out.splitlines() if line.startswith("0 ")]
    assert row.split()[2:5] == ["do", "st\\x9bep\\u2028", "ok"]


def test_show_full_keeps_tracebacks_readable_below_the_journal(home: Path, runs: Any) -> None:
    out = cli("show", "boom-1", "--full", cwd=home, store="runs.db").stdout
    table, _, below = out.partition("traceback of #0 explode, seq 0 (failed for good):\n")
    assert "ZeroDivisionError" in table and "Traceback" not in table.split("journal")[-1]
    assert below.startswith("Traceback (most recent call last):\n")


def test_show_full_labels_each_traceback_of_a_retried_step_apart(home: Path,
                                                                   db: SQLiteStore) -> None:
    def flaky() -> Any:
        def fail() -> None:
            raise ValueError("try again")
        yield Do("charge", fail, retry=Retry(3, backoff=0.001))

    with Interpreter(db, [flaky]) as interp:
        interp.start(flaky, run_id="flaky-1")
        eventually(lambda: interp.status("flaky-1").state == "failed")
    out = cli("show", "flaky-1", "--full", cwd=home, store="runs.db").stdout
    labels = [line for line in out.splitlines() if line.startswith("traceback of ")]
    assert labels == ["traceback of #0 charge, seq 0 (try 1, retried):",
                      "traceback of #0 charge, seq 1 (try 2, retried):",
                      "traceback of #0 charge, seq 2 (failed for good):"]


def test_printable_unicode_is_shown_as_is(home: Path, hostile: list[str]) -> None:
    done = cli("show", "é中\x7f", cwd=home, store="runs.db")
    assert done.returncode == 0 and "run:         é中\\x7f\n" in done.stdout


def test_json_output_stays_exact(home: Path, hostile: list[str]) -> None:
    listed = json.loads(cli("runs", "--json", cwd=home, store="runs.db").stdout)
    assert sorted(r["run_id"] for r in listed) == sorted(hostile)
    shown = json.loads(cli("show", "red\x1b[31m", "--json", cwd=home, store="runs.db").stdout)
    assert shown["run"]["run_id"] == "red\x1b[31m" and shown["run"]["workflow"] == "wf\x1b[2J"
    assert shown["run"]["waiting_for"] == "go\x07"
    assert [e["name"] for e in shown["journal"]] == ["st\x9bep\u2028", "go\x07"]


def test_signal_confirmation_escapes_the_names(home: Path, hostile: list[str]) -> None:
    done = cli("signal", "two\nlines", "go\x07", cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "signal 'go\\x07' queued for run 'two\\nlines' (waiting)\n"


# ---- 15: paging takes no negative numbers ----------------------------------------------------

@pytest.mark.parametrize(("args", "named"), [
    (("--limit", "-1"), "--limit"), (("--limit", "0"), "--limit"), (("--offset", "-5"), "--offset"),
])
def test_runs_refuses_negative_paging(home: Path, runs: Any, args: tuple[str, ...],
                                      named: str) -> None:
    done = cli("runs", *args, cwd=home, store="runs.db")
    fails_in_one_line(done, named)
    assert done.stdout == ""


# ---- 16: payloads from stdin and from a file ---------------------------------------------------

BIG = {"blob": "x" * 1_500_000, "ü": "中"}  # under the 2 MiB limit, far over an argument's 128 KiB


def test_signal_payload_from_stdin(home: Path, runs: Any, db: SQLiteStore) -> None:
    done = run_cli("signal", "wait-1", "go", "-", cwd=home, store="runs.db",
                   input=json.dumps(BIG).encode())
    assert done.returncode == 0, done.stderr
    [queued] = db.signals("wait-1")
    assert json.loads(queued.payload) == BIG


def test_signal_payload_from_a_file(home: Path, runs: Any, db: SQLiteStore) -> None:
    (home / "payload.json").write_text(json.dumps(BIG), encoding="utf-8")
    done = run_cli("signal", "wait-1", "go", "@payload.json", cwd=home, store="runs.db")
    assert done.returncode == 0, done.stderr
    assert json.loads(db.signals("wait-1")[0].payload) == BIG


def test_signal_payload_over_the_limit_unless_raised(home: Path, runs: Any,
                                                     db: SQLiteStore) -> None:
    ten_mb = json.dumps({"blob": "x" * 10_000_000}).encode()
    refused = run_cli("signal", "wait-1", "go", "-", cwd=home, store="runs.db", input=ten_mb)
    fails_in_one_line(refused, "over the limit of 2097152", "--max-payload")
    assert db.signals("wait-1") == []
    sent = run_cli("signal", "wait-1", "go", "-", "--max-payload", "16000000", cwd=home,
                   store="runs.db", input=ten_mb)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(db.signals("wait-1")[0].payload) == json.loads(ten_mb)


def test_missing_payload_file(home: Path, runs: Any, db: SQLiteStore) -> None:
    fails_in_one_line(cli("signal", "wait-1", "go", "@nope.json", cwd=home, store="runs.db"),
                      "cannot read the payload file 'nope.json'", "No such file")
    assert db.signals("wait-1") == []


def test_bad_json_on_stdin(home: Path, runs: Any, db: SQLiteStore) -> None:
    fails_in_one_line(run_cli("signal", "wait-1", "go", "-", cwd=home, store="runs.db",
                              input=b'{"approved": tru'), "bad JSON payload from stdin")
    assert db.signals("wait-1") == []


def test_signal_help_documents_stdin_and_files(home: Path) -> None:
    out = cli("signal", "--help", cwd=home).stdout
    assert "- reads" in out and "@FILE" in out


# ---- 18: a resume that stays blocked is one error line ----------------------------------------

def test_resume_that_stays_blocked_is_one_line_on_stderr(home: Path, runs: Any) -> None:
    done = cli("resume", "wait-1", "--app", "broken", cwd=home, store="runs.db")
    fails_in_one_line(done, "run 'wait-1' is still blocked", "NonDeterminismError",
                      "position 0")
    assert done.stdout == ""


# ---- 7: nothing is created for a module that cannot be served ---------------------------------

@pytest.mark.parametrize(("spec", "said"), [
    ("no_such_module", "cannot import 'no_such_module'"),
    ("app:nothing", "no attribute 'nothing'"),
    ("empty", "holds no workflows"),
    ("notgen", "not a generator function"),
])
def test_worker_with_a_module_it_cannot_serve_creates_no_store(home: Path, spec: str,
                                                               said: str) -> None:
    (home / "empty.py").write_text("workflows = []\n")
    (home / "notgen.py").write_text("def f():\n    return 1\n\nworkflows = [f]\n")
    fails_in_one_line(cli("worker", spec, cwd=home, store="new.db"), said)
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("new.db")) == []


# ---- 17: a worker waits for its store -------------------------------------------------------

class Lines:
    """A process's stderr, read line by line on a thread so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        stream = proc.stderr
        assert stream is not None
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")),
                                        daemon=True)
        self._thread.start()

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))

    def join(self) -> str:
        self._thread.join(30)
        return "".join(self.lines)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_worker_waits_for_an_unreachable_store_until_stopped(home: Path, stop: int) -> None:
    pytest.importorskip("psycopg")
    worker = subprocess.Popen(
        [sys.executable, "-m", "replaygen", "--store", "postgresql://nobody@127.0.0.1:1/none",
         "worker", "app", "--log-level", "DEBUG"],
        cwd=home, stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(worker)
        eventually(lambda: out.count("waiting for the store") >= 1, timeout=60)
        retried = out.count("still unavailable")
        eventually(lambda: out.count("still unavailable") > retried, timeout=60)  # it keeps trying
        assert worker.poll() is None
        worker.send_signal(stop)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
    logs = out.join()
    assert "Connection refused" in logs and "SIGTERM" in logs
    assert "Traceback" not in logs and "stopped before the store could be opened" in logs


@pytest.mark.parametrize("store", ["bogus://x", "postgresql://127.0.0.1:1/none?schema="])
def test_worker_fails_at_once_on_a_bad_store_url(home: Path, store: str) -> None:
    fails_in_one_line(cli("worker", "app", cwd=home, store=store))


# ---- 14: a Postgres store in a schema of its own ---------------------------------------------

@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """(dsn, schema): a store in a fresh non-default schema holding one pending run 'pg-1'."""
    dsn = postgres_dsn()
    from replaygen.stores.postgres import PostgresStore

    schema = f"rgcli_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(dsn, schema=schema)
    try:
        create(store, "pg-1", "flow", json.dumps({"args": [1], "kwargs": {}}), "starter")
        store.release("starter")
        yield dsn, schema
    finally:
        store.close()
        PostgresStore.drop_schema(dsn, schema)


@pytest.mark.postgres
@pytest.mark.parametrize("args", NO_SUCH_RUN, ids=" ".join)
def test_no_such_run_in_postgres_is_said_as_in_sqlite(home: Path, pg_schema: tuple[str, str],
                                                      args: tuple[str, ...]) -> None:
    dsn, schema = pg_schema
    done = cli(*args, "--schema", schema, cwd=home, store=dsn)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "replaygen: error: no run 'nope' in this store (see: replaygen runs)\n"


def _ids(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return [r["run_id"] for r in json.loads(done.stdout)]


def _schema_exists(dsn: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                            [schema]).fetchone() is not None


@pytest.mark.postgres
def test_schema_in_the_url_or_as_an_option(home: Path, pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    assert _ids(cli("runs", "--json", cwd=home, store=f"{dsn}?schema={schema}")) == ["pg-1"]
    assert _ids(cli("runs", "--json", "--schema", schema, cwd=home, store=dsn)) == ["pg-1"]
    assert _ids(cli("--schema", schema, "runs", "--json", cwd=home,
                    store=f"{dsn}?connect_timeout=7&schema={schema}&application_name=rg")) == ["pg-1"]
    assert _ids(cli("runs", "--json", "--schema", schema, cwd=home,
                    store=f"{dsn}?schema={schema}")) == ["pg-1"]  # the same twice is no conflict
    shown = cli("show", "pg-1", "--schema", schema, cwd=home, store=dsn)
    assert shown.returncode == 0 and "state:       pending" in shown.stdout


@pytest.mark.postgres
def test_other_url_parameters_reach_the_server(home: Path, pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    fails_in_one_line(cli("runs", cwd=home, store=f"{dsn}?sslmode=bogus&schema={schema}"),
                      "sslmode")


@pytest.mark.postgres
def test_two_different_schemas_are_refused(home: Path, pg_schema: tuple[str, str]) -> None:
    dsn, schema = pg_schema
    fails_in_one_line(cli("runs", "--schema", "other", cwd=home, store=f"{dsn}?schema={schema}"),
                      f"'{schema}' (?schema= in the store URL) and 'other' (--schema)")
    fails_in_one_line(cli("runs", cwd=home, store=f"{dsn}?schema={schema}&schema=other"),
                      "several schemas", f"'{schema}'", "'other'")


def test_schema_for_a_sqlite_store_is_refused(home: Path, runs: Any) -> None:
    fails_in_one_line(cli("runs", "--schema", "billing", cwd=home, store="runs.db"),
                      "--schema", "Postgres")


# ---- 17 and 14: a worker that waited for Postgres serves once it answers ------------------

class Forwarder:
    """A TCP port that forwards to the Postgres server, opened when the test says: until then
    nothing listens on it, as when the server is down."""

    def __init__(self, target: tuple[str, int]) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port, self.target = probe.getsockname()[1], target
        probe.close()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.mark.postgres
def test_worker_serves_once_the_store_comes_up(home: Path) -> None:
    dsn = postgres_dsn()
    url = urllib.parse.urlsplit(dsn)
    if not url.scheme.startswith("postgres"):
        pytest.skip("needs the test DSN as a postgresql:// URL")
    down = Forwarder((url.hostname or "127.0.0.1", url.port or 5432))
    userinfo = url.netloc.rpartition("@")[0]
    schema = f"rgcli_{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "replaygen", "worker", "app", "--schema", schema, "--store",
         url._replace(netloc=f"{userinfo}@127.0.0.1:{down.port}".lstrip("@")).geturl()],
        cwd=home, stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(worker)
        eventually(lambda: out.count("waiting for the store") >= 1, timeout=60)
        down.open()  # the server is back
        eventually(lambda: out.count("serving app") >= 1, timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        worker.kill()
        down.close()
        from replaygen.stores.postgres import PostgresStore

        PostgresStore.drop_schema(dsn, schema)
    logs = out.join()
    assert "recovered 0 runs" in logs and "Traceback" not in logs


# ---- 14: a mistyped schema is refused, not created ------------------------------------------

@pytest.mark.postgres
def test_a_missing_schema_is_refused_not_created(home: Path) -> None:
    dsn = postgres_dsn()
    missing = f"rgcli_missing_{uuid.uuid4().hex[:8]}"
    fails_in_one_line(cli("runs", "--schema", missing, cwd=home, store=dsn),
                      f"no schema '{missing}'")
    assert not _schema_exists(dsn, missing)
