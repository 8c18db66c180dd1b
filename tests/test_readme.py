"""The README works as pasted.

Every ```python block runs, each in a fresh interpreter. A block whose first line is a file
name comment (``# shop.py``, ``# myapp/flows.py``) is that file: it is written there and
imported, so the blocks after it can import it. The SQLite blocks run in order in one
directory, as a reader pastes them. A block that uses ``PostgresStore(...)`` runs against the
test server (``tests/pg.py``) in a schema of its own: the README's example DSN is the only
thing replaced. The block that serves forever is stopped with SIGTERM once it has served.

The shell walk-throughs ("Kill it, look at it, finish it", the approval signal, the
OpenTelemetry worker, the lint example) run command by command, after the README's first
command, as a reader follows them, and what they print is compared with what README says;
the pip installs are left to CI, and the checkout's 60-second "day" is shortened.

To extend: a new ```python block runs by itself (give it a ``# name.py`` first line if later
blocks import it). A new ```sh block must be named in ``SH_BLOCKS`` with the test that runs
it, or the reason none does; ``test_every_sh_block_is_run_or_says_why_not`` fails until it
is. ``sh_block``, ``without_install``, ``command``, ``run`` and the ``background`` fixture
are the pieces a walk-through test is made of.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pg import postgres_dsn

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLE_DSN = "postgresql://app@db.internal/app"
PATIENCE = 60.0
"""Longest the test waits for an event (a line, a state) before it fails."""


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # of the opening fence, for messages
    code: str

    @property
    def file(self) -> str | None:
        """The path a ``# name.py`` first line gives, else None."""
        m = re.fullmatch(r"# ([\w/]+\.py)", self.code.splitlines()[0].strip())
        return m.group(1) if m else None

    @property
    def needs_postgres(self) -> bool:
        return "PostgresStore(" in self.code

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if lang is None and line.startswith("```") and line[3:].strip():
            lang, start, body = line[3:].strip(), number, []
        elif lang is not None and line.strip() == "```":
            blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    return blocks


PYTHON = [b for b in readme_blocks() if b.lang == "python"]
FILES = [b for b in PYTHON if b.file]

SH_BLOCKS = {
    # A piece of text found in exactly one ```sh block of README.md -> the test of this file
    # that runs that block as pasted, or why none does. A new block fails
    # test_every_sh_block_is_run_or_says_why_not until it is added here.
    "examples/checkout.py --sleep 3": "checkout_dir",
    "python -m pytest -n 2": "not run here: it is this suite (.ci/run runs the line verbatim)",
    "replaygen --store runs.db ui": "not run here: tests/test_ui.py serves every page over HTTP "
                                    "and tests/test_ui_browser.py in headless Chromium",
    "python -m tests.bench --quick": "not run here: benchmarks take minutes (run by hand)",
    "python -m tests.bench.ab": "not run here: it compares two builds in two environments",
    "python -m crash --quick": "not run here: tests/test_crash.py runs `python -m crash --quick`",
    "replaygen worker examples.checkout": "test_kill_it_look_at_it_finish_it",
    "examples/approval.py": "test_the_approval_walk_through_takes_the_signal",
    "examples/otel.py": "test_the_otel_walk_through_serves_its_worker_factory",
    "$ replaygen lint greetings": "test_the_python_blocks_run_in_order_on_sqlite",
}


def sh_block(containing: str) -> list[list[str]]:
    """The commands of the one ```sh block holding ``containing``, comments dropped."""
    found = [b for b in readme_blocks() if b.lang == "sh" and containing in b.code]
    assert len(found) == 1, f"README.md: expected one sh block with {containing!r}"
    return [argv for line in found[0].code.splitlines() if (argv := shlex.split(line, comments=True))]


INSTALLS = (["python3", "-m", "venv", ".venv"], [".", ".venv/bin/activate"], ["pip", "install"])
"""How the installing parts of a command line begin (``pip install`` with any argument)."""


def without_install(argv: list[str]) -> list[str]:
    """A ``venv && activate && pip install ... && rest`` line's rest (any of the installing
    parts, in that order): installing is left to CI."""
    parts: list[list[str]] = [[]]
    for word in argv:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    while parts and any(parts[0][:len(start)] == start for start in INSTALLS):
        parts.pop(0)
    assert len(parts) <= 1, argv
    return parts[0] if parts else []


def command(argv: list[str]) -> list[str]:
    """``python`` and ``replaygen`` as installed next to this interpreter."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    assert argv[0] == "replaygen", argv
    script = Path(sys.executable).with_name("replaygen")
    if script.exists():
        return [str(script), *argv[1:]]
    return [sys.executable, "-m", "replaygen", *argv[1:]]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYGEN_")}
    return {**env, **extra}


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env or environment(), capture_output=True, text=True,
                          timeout=PATIENCE)
    assert done.returncode == 0, f"{shlex.join(argv)} exited {done.returncode}:\n" \
                                 f"{done.stdout}{done.stderr}"
    return done.stdout


class Process:
    """A background process whose output (stdout and stderr) is read line by line."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env or environment(), text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        self.ended = False
        self.looked = 0  # lines before this one were searched by wait_for already
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def _find(self, text: str) -> str | None:
        for i in range(self.looked, len(self.lines)):
            if text in self.lines[i]:
                self.looked = i + 1
                return self.lines[i]
        return None

    def wait_for(self, text: str) -> str:
        """The next line holding ``text``; fails if the process ends without writing one."""
        with self.changed:
            self.changed.wait_for(lambda: self.ended or any(
                text in line for line in self.lines[self.looked:]), timeout=PATIENCE)
            line = self._find(text)
        assert line is not None, f"{shlex.join(self.argv)}: no line with {text!r} in:\n{self.output()}"
        return line

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(PATIENCE)

    def output(self) -> str:
        """What it wrote so far; everything, once it has ended."""
        if self.proc.poll() is not None:
            self.reader.join(PATIENCE)
        with self.changed:
            return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def background() -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Process:
        started.append(Process(argv, cwd, env))
        return started[-1]

    yield start
    for process in started:
        process.kill()


def eventually(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + PATIENCE
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the ```python blocks --------------------------------------------------------------------


def write(block: Block, directory: Path, code: str | None = None) -> list[str]:
    """Writes ``block`` into ``directory``; returns the command that runs it as pasted."""
    path = directory / (block.file or f"readme_{block.line}.py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code if code is not None else block.code, encoding="utf-8")
    if block.file:  # a module: imported, as the blocks after it do
        return [sys.executable, "-c", f"import {block.file[:-3].replace('/', '.')}"]
    return [sys.executable, path.name]


def run_block(block: Block, directory: Path, code: str | None = None) -> str:
    argv = write(block, directory, code)
    done = subprocess.run(argv, cwd=directory, env=environment(), capture_output=True, text=True,
                          timeout=PATIENCE)
    assert done.returncode == 0, f"the block at {block} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_every_sh_block_is_run_or_says_why_not() -> None:
    blocks = [b for b in readme_blocks() if b.lang == "sh"]
    for block in blocks:
        keys = [key for key in SH_BLOCKS if key in block.code]
        assert len(keys) == 1, f"the sh block at {block} matches {keys} of SH_BLOCKS: add it " \
                               f"there, with the test that runs it or why none does"
    for key, runner in SH_BLOCKS.items():
        assert sum(key in b.code for b in blocks) == 1, f"SH_BLOCKS: {key!r} is in no sh block"
        if not runner.startswith("not run here"):
            assert callable(globals().get(runner)), f"SH_BLOCKS: no test or fixture {runner!r}"


def test_the_readme_has_the_blocks_this_file_runs() -> None:
    assert [b.file for b in FILES] == ["shop.py", "greetings.py", "jobs.py", "myapp/flows.py"]
    assert PYTHON[0].file == "shop.py"  # "A workflow" starts with it; the rest import it
    assert len([b for b in PYTHON if "sigwait" in b.code]) == 1


def test_the_python_blocks_run_in_order_on_sqlite(tmp_path: Path, background: Callable[..., Process]
                                                  ) -> None:
    outputs = {b.line: run_block(b, tmp_path) for b in PYTHON if not b.needs_postgres}

    worker_block = next(b for b in PYTHON if "worker.start(" in b.code)
    assert outputs[worker_block.line].strip() in ("pending", "running", "sleeping")
    check_block = next(b for b in PYTHON if "check(store" in b.code)
    assert outputs[check_block.line] == "order-42 ok\n"  # the run the worker block started
    schedules_block = next(b for b in PYTHON if "jobs.schedules" in b.code)
    assert re.search(r"^\[(datetime\.datetime\(\d{4}, \d+, \d+, [45], 0, tzinfo=datetime\.timezone"
                     r"\.utc\)(, )?){2}\]$", outputs[schedules_block.line], re.M)  # 06:00 Berlin

    # The worker factory of myapp/flows.py, as its comment says to run it.
    flows = next(b for b in FILES if b.file == "myapp/flows.py")
    comment = re.search(r"# (replaygen worker \S+)", flows.code)
    assert comment is not None
    worker = background(command([*shlex.split(comment.group(1)), "--store", "runs.db"]), tmp_path)
    worker.wait_for("serving myapp.flows:make_interpreter")
    assert worker.stop(signal.SIGINT) == 0, worker.output()

    # The lint example, on greetings.py: the very lines the README shows.
    (lint,) = [b for b in readme_blocks() if b.lang == "sh" and b.code.startswith("$ replaygen lint")]
    prompt, *shown = lint.code.splitlines()
    done = subprocess.run(command(shlex.split(prompt[2:])), cwd=tmp_path, env=environment(),
                          capture_output=True, text=True, timeout=PATIENCE)
    assert (done.returncode, done.stdout.splitlines()) == (1, shown), done.stderr


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    from replaygen.stores.postgres import PostgresStore

    dsn, schema = postgres_dsn(), f"readme_{uuid.uuid4().hex[:12]}"
    yield dsn, schema
    PostgresStore.drop_schema(dsn, schema)


def on_test_server(block: Block, dsn: str, schema: str) -> str:
    """The block with the README's example store replaced by the test server's."""
    example = f'PostgresStore("{EXAMPLE_DSN}")'
    assert block.code.count("PostgresStore(") == block.code.count(example), \
        f"the block at {block} makes a PostgresStore that is not PostgresStore(\"{EXAMPLE_DSN}\")"
    return block.code.replace(example, f"PostgresStore({dsn!r}, schema={schema!r})")


def write_files(directory: Path) -> None:
    for block in FILES:
        write(block, directory)


@pytest.mark.postgres
@pytest.mark.parametrize("block", [b for b in PYTHON if b.needs_postgres and "sigwait" not in b.code],
                         ids=str)
def test_the_postgres_blocks_run_against_the_test_server(
        block: Block, tmp_path: Path, pg_schema: tuple[str, str]) -> None:
    write_files(tmp_path)
    run_block(block, tmp_path, on_test_server(block, *pg_schema))


@pytest.mark.postgres
def test_the_serving_worker_block_serves_until_sigterm_and_parks_its_runs(
        tmp_path: Path, pg_schema: tuple[str, str], background: Callable[..., Process]) -> None:
    from replaygen import Client
    from replaygen.stores.postgres import PostgresStore

    block = next(b for b in PYTHON if "sigwait" in b.code)
    write_files(tmp_path)
    dsn, schema = pg_schema
    worker = background(write(block, tmp_path, on_test_server(block, dsn, schema)), tmp_path)
    store = PostgresStore(dsn, schema=schema)
    try:
        client = Client(store)
        client.start("checkout", {"id": 7}, run_id="order-7")
        eventually(lambda: worker.proc.poll() is not None or client.status("order-7").state
                   == "sleeping", "the worker to charge order-7 and put it to sleep")
        assert worker.stop(signal.SIGTERM) == 0, worker.output()
        assert [e.name for e in store.journal("order-7") if e.kind == "do"] == ["charge"]
        record = store.get("order-7")
        assert record is not None and record.state == "sleeping" and record.owner is None
    finally:
        store.close()


# -- the ```sh walk-throughs -------------------------------------------------------------------


@pytest.fixture
def examples_dir(tmp_path: Path) -> Path:
    """A directory with the repository's examples, as a checkout of it has."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


@pytest.fixture
def checkout_dir(examples_dir: Path) -> Path:
    """``examples_dir`` where the README's first command has run (and finished order-42)."""
    (first,) = [without_install(argv) for argv in sh_block("examples/checkout.py --sleep")
                if "venv" in argv]
    assert first == ["python", "examples/checkout.py", "--sleep", "3"]
    assert "run order-42 completed" in run(command(first), examples_dir)
    return examples_dir


@pytest.mark.slow
def test_kill_it_look_at_it_finish_it(checkout_dir: Path, background: Callable[..., Process]
                                      ) -> None:
    install, *steps = sh_block("replaygen worker examples.checkout")
    assert without_install(install) == []
    export, start, runs, show, worker = steps
    assert export == ["export", "REPLAYGEN_STORE=checkout.db"]
    assert start[:-1] == ["python", "examples/checkout.py", "--order", "43", "--sleep"]
    assert (runs, show, worker) == (["replaygen", "runs"], ["replaygen", "show", "order-43"],
                                    ["replaygen", "worker", "examples.checkout"])
    env = environment(REPLAYGEN_STORE="checkout.db")
    # A shorter "day" than the README's 60 s: the kill still lands while it sleeps.
    first = background(command([*start[:-1], "5"]), checkout_dir, env)
    first.wait_for("run order-43 is sleeping")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    assert first.output().count("charging") == 1

    listed = run(command(runs), checkout_dir, env)
    # Killed on this machine: not live any more, at once.
    assert re.search(r"^order-43\s+sleeping \(no worker is live\)\s+checkout .* until ", listed,
                     re.M), listed
    shown = run(command(show), checkout_dir, env)
    assert re.search(r"^state:\s+sleeping$", shown, re.M), shown
    assert re.search(r"^0 .* do\s+charge\s+ok", shown, re.M), shown
    assert re.search(r"^1 .* sleep .* until ", shown, re.M), shown

    resumed = background(command(worker), checkout_dir, env)
    resumed.wait_for("receipt for txn_43")
    assert resumed.stop(signal.SIGINT) == 0, resumed.output()
    assert "charging" not in resumed.output()
    assert re.search(r"^state:\s+completed$", run(command(show), checkout_dir, env), re.M)


@pytest.mark.slow
def test_the_approval_walk_through_takes_the_signal(examples_dir: Path,
                                                    background: Callable[..., Process]) -> None:
    start, show, send = sh_block("examples/approval.py")
    assert start == ["python", "examples/approval.py", "--timeout", "600", "&"]
    env = environment(REPLAYGEN_STORE="checkout.db")  # still exported from the walk-through above
    approval = background(command(start[:-1]), examples_dir, env)
    approval.wait_for("asked ann to approve")
    eventually(lambda: "waiting for: signal decision" in run(command(show), examples_dir, env),
               "the approval to wait for its decision")
    assert "queued" in run(command(send), examples_dir, env)
    approval.wait_for("approved by ann")
    assert approval.proc.wait(PATIENCE) == 0, approval.output()


@pytest.mark.slow
def test_the_otel_walk_through_serves_its_worker_factory(examples_dir: Path,
                                                         background: Callable[..., Process]
                                                         ) -> None:
    example, serve = sh_block("examples/otel.py")
    assert without_install(example) == ["python", "examples/otel.py"]
    printed = run(command(without_install(example)), examples_dir)
    # With the SDK installed it runs a traced workflow; without, it says what to install.
    assert "result: ada@example.com" in printed or "pip install opentelemetry-sdk" in printed
    assert serve[:3] == ["replaygen", "--store", "otel.db"]
    worker = background(command(serve), examples_dir)
    worker.wait_for("serving examples.otel:make_interpreter")
    assert worker.stop(signal.SIGINT) == 0, worker.output()
