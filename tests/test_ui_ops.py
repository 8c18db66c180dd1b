"""The web view of operated runs (SPEC 13, 14): a forked run links its source, a group entry
reads as words, a purged run's page says it was purged, and tombstones are counted apart and
listed only when asked for. Over HTTP on SQLite and Postgres, then once in a real browser."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replaygen import All, Do, Interpreter, Store, WorkflowFailed

from .cdp import Browser, find_chromium
from .conftest import PATIENCE
# The fixture serve comes from test_ui; ruff takes its parameters for redefinitions.
# ruff: noqa: F811
from .test_ui import KINDS, _open, serve  # noqa: F401

fixed = {"charge": False}


def charge(amount: int) -> str:
    if not fixed["charge"]:
        raise ValueError("the card service rejected the currency")
    return f"charged {amount}"


def order(item: str, amount: int) -> Any:
    held = yield Do("reserve", lambda: f"held {item}")
    packed = yield All(Do("a", lambda: "a"), Do("b", lambda: "b"), Do("c", lambda: "c"))
    return [held, packed, (yield Do("charge", charge, amount))]


def quick(n: int) -> Any:
    return (yield Do("answer", lambda: n))


def operate(store: Store) -> None:
    """q1 (completed, then purged), q2 (completed), o1 (failed at 'charge', after an All of
    3) and o1-fixed (o1 forked from 'charge' after the fix, completed)."""
    fixed["charge"] = False
    with Interpreter(store, [order, quick]) as worker:
        for n in (1, 2):
            worker.result(worker.start(quick, n, run_id=f"q{n}"), PATIENCE)
        with pytest.raises(WorkflowFailed):
            worker.result(worker.start(order, "lamp", 30, run_id="o1"), PATIENCE)
        fixed["charge"] = True
        worker.result(worker.fork("o1", "charge", run_id="o1-fixed"), PATIENCE)
        assert worker.purge(0, states=["completed"], limit=1) == 1  # the oldest: q1


@pytest.fixture(scope="module", params=KINDS)
def operated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    store, drop = _open(request.param, tmp_path_factory.mktemp("uiops"))
    operate(store)
    yield store
    drop()


def test_a_forked_run_names_its_source_and_a_group_reads_as_words(operated: Store,
                                                                  serve: Any) -> None:
    data = serve(operated).api("/api/run", id="o1-fixed")
    assert data["run"]["forked_from"] == "o1" and data["run"]["purged"] is None
    group = next(i for i in data["timeline"] if i["kind"] == "group")
    assert (group["position"], group["group"], group["members"]) == (1, "all", 3)
    assert [i["kind"] for i in data["timeline"]] == ["do", "group", "do", "do", "do", "do"]
    assert serve(operated).api("/api/run", id="o1")["run"]["forked_from"] is None


def test_a_purged_run_says_it_was_purged_and_has_no_timeline(operated: Store, serve: Any) -> None:
    data = serve(operated).api("/api/run", id="q1")
    run = data["run"]
    assert run["state"] == "purged" and run["result"] is None
    assert run["purged"]["had"] == "completed"
    assert "run 'q1' was purged at" in run["purged"]["message"]
    assert (data["timeline"], data["items"]) == ([], 0)


def test_tombstones_are_listed_only_when_asked_for_and_counted_apart(operated: Store,
                                                                     serve: Any) -> None:
    web = serve(operated)
    every = web.api("/api/runs")
    assert "q1" not in [r["run_id"] for r in every["runs"]]
    assert every["purged"] == 1 and every["total"] == 3 and "purged" not in every["counts"]
    tombs = web.api("/api/runs", state="purged")
    assert [(r["run_id"], r["state"]) for r in tombs["runs"]] == [("q1", "purged")]
    assert tombs["total"] == 1 and "was purged" in tombs["runs"][0]["detail"]["error"]
    assert web.api("/api/runs", state="purged", workflow="order")["runs"] == []
    refused = web.get("/api/runs?state=gone")
    assert refused.status == 400 and "states are pending" in refused.text


def test_the_workflows_page_counts_purged_runs(operated: Store, serve: Any) -> None:
    data = serve(operated).api("/api/overview")
    counts = {w["workflow"]: w["counts"] for w in data["workflows"]}
    assert counts["quick"] == {"completed": 1, "purged": 1}
    assert counts["order"] == {"failed": 1, "completed": 1}
    assert data["purged"] is True


# ---- in a browser ------------------------------------------------------------------------------

@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or set REPLAYGEN_CHROMIUM)")
    b = Browser(binary)
    yield b
    b.close()


def test_the_pages_show_forks_groups_and_tombstones_in_a_browser(browser: Browser,
                                                                 tmp_path: Path) -> None:
    from replaygen.stores.sqlite import SQLiteStore
    from replaygen.ui import make_server

    store = SQLiteStore(tmp_path / "runs.db")
    operate(store)
    server = make_server(store, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url, b = server.url.rstrip("/"), browser
    try:
        b.open(url + "/run?id=o1-fixed")
        b.wait_for("document.querySelectorAll('table.tl tbody tr').length === 6", "the timeline")
        facts = b.evaluate("document.querySelector('.facts').textContent")
        assert "Forked from" in facts
        assert b.evaluate("[...document.querySelectorAll('.facts a.runid')].map((a) => "
                          "a.getAttribute('href'))") == ["/run?id=o1"]
        assert b.evaluate("document.querySelectorAll('table.tl tbody tr')[1].textContent") \
            .startswith("1groupall")  # position, kind, name
        assert "all of 3 (positions 1 to 3)" in b.evaluate(
            "document.querySelectorAll('table.tl tbody tr')[1].querySelector('.outcome').textContent")

        b.open(url + "/run?id=" + urllib.parse.quote("q1"))
        b.wait_for("document.querySelector('.callout.purged') !== null", "the purged run")
        callout = b.evaluate("document.querySelector('.callout.purged').textContent")
        assert "This run was purged (it had completed)" in callout and "was purged at" in callout
        assert "journal is no longer kept" in b.evaluate("document.querySelector('main').textContent")

        b.open(url + "/workflows")
        b.wait_for("document.querySelectorAll('main table tbody tr').length >= 2", "the counts")
        heads = b.evaluate("[...document.querySelector('main table').querySelectorAll('th')]"
                           ".map((t) => t.textContent)")
        assert heads[-3:] == ["purged", "total", "Live worker"]
        row = b.evaluate("[...document.querySelector('main table').querySelectorAll('tbody tr')]"
                         ".find((r) => r.textContent.startsWith('quick')).textContent")
        assert row.endswith("11none") or row.endswith("11serving"), row  # purged 1, total 1

        b.open(url + "/?state=purged")
        b.wait_for("document.querySelectorAll('tbody tr').length === 1", "the tombstones")
        assert b.evaluate("document.querySelector('.chip.s-purged.on') !== null")
        assert b.problems == [], b.problems
    finally:
        server.shutdown()
        server.server_close()
        store.close()
