"""The web view in a real browser: headless Chromium (Debian's ``chromium``) driven over the
DevTools protocol with the standard library (``tests/cdp.py``). It loads the runs list,
follows a run, sends a signal with actions on and sees a live worker take it, and opens a
run whose id and arguments hold markup: no script of the store's runs, and the console stays
free of errors throughout. Screenshots go to the test's directory, and also to
``$REPLAYGEN_UI_SCREENSHOTS`` when set (how the README's pictures are made)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter
from replaygen.stores.sqlite import SQLiteStore
from replaygen.ui import make_server

from ._ui_flows import HOSTILE_ARGS, HOSTILE_ID, WORKFLOWS, populate, until
from .cdp import Browser, find_chromium


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        reason = "Chromium is not installed (apt-get install chromium, or set REPLAYGEN_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(reason + ": CI must run the browser test")
        pytest.skip(reason)
    b = Browser(binary)
    yield b
    b.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Interpreter]]:
    """A populated store, a live worker (that does not know the blocked run's workflow, so
    the run stays blocked) and the web view with actions on."""
    store = SQLiteStore(tmp_path / "runs.db")
    ids = populate(store)
    worker = Interpreter(store, {k: v for k, v in WORKFLOWS.items() if k != "legacy"})
    worker.recover()
    server = make_server(store, port=0, allow_actions=True, label="runs.db")
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.url.rstrip("/"), ids, worker
    server.shutdown()
    server.server_close()
    worker.shutdown(5.0)
    store.close()


def _shoot(b: Browser, tmp_path: Path, name: str) -> None:
    b.screenshot(tmp_path / name)
    if folder := os.environ.get("REPLAYGEN_UI_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / name)


def _click(b: Browser, selector: str, text: str) -> None:
    """Click the first element matching ``selector`` whose text is ``text``."""
    clicked = b.evaluate(f"""(() => {{
        const found = [...document.querySelectorAll({json.dumps(selector)})]
            .find((e) => e.textContent.trim() === {json.dumps(text)});
        if (found) found.click();
        return Boolean(found);
    }})()""")
    assert clicked, f"no {selector} reading {text!r}"


NOTHING_RAN = "window.__pwned === undefined && document.scripts.length === 1 " \
              "&& document.querySelectorAll('main img, main script, main iframe').length === 0"


def test_the_runs_page_a_run_and_a_signal_in_a_browser(browser: Browser, site: Any,
                                                       tmp_path: Path) -> None:
    url, ids, worker = site
    b = browser
    b.open(url + "/")
    b.wait_for(f"document.querySelectorAll('tbody tr').length === {len(ids)}", "the runs list")
    shown = b.evaluate("[...document.querySelectorAll('a.runid')].map((a) => a.textContent)")
    assert "order-1041" in shown
    # The hostile id is shown as text, its control characters escaped, its markup inert.
    assert any("<script>window.__pwned=1</script>" in s and "\\x1b" in s and "\\u202e" in s
               for s in shown), shown
    assert b.evaluate(NOTHING_RAN)
    _shoot(b, tmp_path, "ui-runs.png")

    _click(b, "a.runid", "order-1041")  # follow a run
    b.wait_event("Page.loadEventFired")
    b.wait_for("location.pathname === '/run' && document.querySelectorAll('table.tl tbody tr').length >= 4",
               "the run's timeline")
    assert b.evaluate("document.querySelector('.run-title .pill').textContent") == "waiting"
    _shoot(b, tmp_path, "ui-run.png")

    _click(b, "button", "Send signal…")  # a form, then a confirmation, then the POST
    b.wait_for("document.querySelector('dialog[open] input').value === 'shipped'", "the signal form")
    b.evaluate("""(() => { const t = document.querySelector('dialog[open] textarea');
        t.value = '{"carrier": "dhl", "by": "browser"}'; t.dispatchEvent(new Event('input')); })()""")
    _click(b, "dialog[open] button", "Review…")
    b.wait_for("document.querySelector('dialog[open] .confirm-box') !== null", "the confirmation")
    assert "shipped" in b.evaluate("document.querySelector('dialog[open] .confirm-box').textContent")
    _click(b, "dialog[open] button", "Confirm")
    b.wait_for("!document.getElementById('toast').hidden && "
               "document.getElementById('toast').textContent.includes('queued')", "the toast")
    until(lambda: worker.status(ids["waiting"]).state == "completed")  # a live worker took it
    b.wait_for("document.querySelector('.run-title .pill').textContent === 'completed'",
               "the page to show the run completed (it refreshes while open)")
    assert "browser" in b.evaluate("document.querySelector('main').textContent")

    b.open(url + "/run?id=" + urllib.parse.quote(HOSTILE_ID))
    b.wait_for("document.querySelectorAll('pre.value').length >= 2", "the hostile run")
    text = b.evaluate("document.querySelector('main').textContent")
    assert HOSTILE_ARGS["html"] in text and HOSTILE_ARGS["img"] in text
    assert "<script>window.__pwned=1</script>" in text and "\\x1b" in text
    assert b.evaluate(NOTHING_RAN)

    b.open(url + "/run?id=" + urllib.parse.quote(ids["blocked"]))
    b.wait_for("document.querySelector('.callout.blocked') !== null", "the blocked run")
    callout = b.evaluate("document.querySelector('.callout.blocked').textContent")
    assert "the journal holds do 'load'" in callout
    _click(b, "button", "show position 0 in the timeline")
    b.wait_for("document.querySelector('table.tl tr.hit td.pos')?.textContent === '0'",
               "the blocked position marked in the timeline")
    _shoot(b, tmp_path, "ui-blocked.png")

    b.open(url + "/workflows")
    b.wait_for("document.getElementById('census')?.textContent.includes('Counting') === false",
               "the version census")
    assert b.evaluate("document.querySelectorAll('main table')[1].querySelectorAll('tbody tr').length") == 1
    _shoot(b, tmp_path, "ui-workflows.png")
    assert b.evaluate(NOTHING_RAN)
    assert b.problems == [], b.problems
