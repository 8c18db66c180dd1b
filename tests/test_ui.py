"""``replaygen ui`` over HTTP (the standard library's client): every page and read, every
action, and every refusal, on SQLite and on Postgres. The server runs in-process on a free
port; the command itself is driven as a subprocess at the end."""

from __future__ import annotations

import gc
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from replaygen import Interpreter, UsageError
from replaygen.store import Entry, Store, Write
from replaygen.stores.sqlite import SQLiteStore
from replaygen.ui import UIServer, make_server
from replaygen.stores.conformance import create  # noqa: E402

from ._ui_flows import HOSTILE_ARGS, HOSTILE_ID, WORKFLOWS, populate, until
from .pg import postgres_dsn

TOKEN = "a-good-long-token-for-tests_0123456789"


# ---- stores and servers ----------------------------------------------------------------------

def _open(kind: str, where: Path) -> tuple[Store, Callable[[], None]]:
    """A fresh, empty store of ``kind`` and what removes it."""
    if kind == "sqlite":
        s = SQLiteStore(where / f"runs-{uuid.uuid4().hex[:6]}.db")
        return s, s.close
    from replaygen.stores.postgres import PostgresStore

    dsn, schema = postgres_dsn(), f"rgui_{uuid.uuid4().hex[:10]}"
    pg = PostgresStore(dsn, schema=schema)

    def drop() -> None:
        pg.close()
        PostgresStore.drop_schema(dsn, schema)
    return pg, drop


KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=KINDS)
def filled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One populated store per kind, shared by the tests that only read."""
    store, drop = _open(request.param, tmp_path_factory.mktemp("ui"))
    ids = populate(store)
    yield store, ids
    drop()


@pytest.fixture(params=KINDS)
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A populated store of its own, for a test that changes runs."""
    store, drop = _open(request.param, tmp_path)
    ids = populate(store)
    yield store, ids
    drop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclass
class Served:
    """A running server and a client for it."""

    server: UIServer

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> Answer:
        conn = http.client.HTTPConnection(self.netloc, timeout=30)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        answer = Answer(response.status, response.headers, response.read())
        conn.close()
        return answer

    def get(self, path: str, **headers: str) -> Answer:
        return self.request("GET", path, headers=_headers(headers))

    def api(self, path: str, **query: Any) -> Any:
        answer = self.get(path + ("?" + urllib.parse.urlencode(query) if query else ""))
        assert answer.status == 200, answer.text
        return answer.json()

    @property
    def csrf(self) -> str:
        return self.server.app.guard.csrf

    def act(self, action: str, body: dict[str, Any], **headers: str) -> Answer:
        """An action as the page sends it (same origin, CSRF token, JSON), with overrides."""
        sent = {"Origin": f"http://{self.netloc}", "X-CSRF-Token": self.csrf,
                "Content-Type": "application/json", **_headers(headers)}
        return self.request("POST", f"/api/{action}", {k: v for k, v in body.items()},
                            {k: v for k, v in sent.items() if v is not None})


def _headers(given: dict[str, str]) -> dict[str, str]:
    return {k.replace("_", "-"): v for k, v in given.items()}


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(store, **options)``: a server on a free port, shut down at teardown."""
    made: list[UIServer] = []

    def start(store: Store, **options: Any) -> Served:
        server = make_server(store, port=0, **options)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        made.append(server)
        return Served(server)

    yield start
    for server in made:
        server.shutdown()
        server.server_close()


# ---- pages and the files they load --------------------------------------------------------------

def test_every_page_is_the_shell_with_security_headers_and_no_inline_script(filled: Any,
                                                                           serve: Any) -> None:
    web = serve(filled[0])
    for path in ("/", "/run?id=order-1040", "/workflows"):
        page = web.get(path)
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        csp = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "same-origin"
        assert page.headers["X-Frame-Options"] == "DENY"
        assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []  # every script is a file
        assert f'<meta name="rg-csrf" content="{web.csrf}">' in page.text
        assert '<meta name="rg-actions" content="off">' in page.text
    for path, kind in (("/static/app.js", "text/javascript"), ("/static/app.css", "text/css"),
                       ("/static/favicon.svg", "image/svg+xml")):
        asset = web.get(path)
        assert asset.status == 200 and asset.headers["Content-Type"].startswith(kind)
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert "innerHTML" not in web.get("/static/app.js").text  # store values go in as text only
    assert web.get("/nothing").status == 404
    assert web.get("/api/nothing").json() == {"error": "nothing at /api/nothing"}
    head = web.request("HEAD", "/")
    assert head.status == 200 and head.body == b"" and int(head.headers["Content-Length"]) > 0


def test_the_store_label_in_the_shell_is_escaped(filled: Any, serve: Any) -> None:
    web = serve(filled[0], label='x"><script>alert(1)</script>')
    page = web.get("/").text
    assert "<script>alert(1)" not in page
    assert 'content="x&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page


# ---- the runs list ----------------------------------------------------------------------------

def test_runs_lists_every_run_newest_first_with_state_workflow_last_step_and_detail(
        filled: Any, serve: Any) -> None:
    store, ids = filled
    data = serve(store).api("/api/runs")
    rows = {r["run_id"]: r for r in data["runs"]}
    assert [r["run_id"] for r in data["runs"]] == [r.run_id for r in store.runs()]
    assert set(rows) == set(ids.values()) and data["total"] == len(ids) and not data["more"]
    waiting = rows[ids["waiting"]]
    assert (waiting["state"], waiting["workflow"]) == ("waiting", "checkout")
    assert waiting["last"] == {"position": 3, "kind": "wait", "name": "shipped"}  # as reached
    assert waiting["detail"]["waits"] == [{"signal": "shipped"}]
    assert waiting["unserved"] == "no worker is live"
    assert rows[ids["sleeping"]]["detail"]["until"] > data["now"]
    assert rows[ids["timer"]]["detail"]["timeout"] > data["now"]
    assert "ZeroDivisionError: division by zero" in rows[ids["failed"]]["detail"]["error"]
    assert "journal holds do 'load'" in rows[ids["blocked"]]["detail"]["error"]
    assert data["counts"] == {"pending": 0, "running": 0, "sleeping": 1, "waiting": 2,
                              "completed": 2, "failed": 1, "cancelled": 0, "blocked": 1}
    assert data["workflows"] == sorted(WORKFLOWS.keys() - {"unused"})


def test_runs_filter_by_state_and_workflow_and_page(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)

    def listed(**query: Any) -> list[str]:
        return [r["run_id"] for r in web.api("/api/runs", **query)["runs"]]

    assert listed(state="blocked") == [ids["blocked"]]
    assert set(listed(state="completed,failed")) == {ids["completed"], ids["failed"], ids["hostile"]}
    assert set(listed(workflow="checkout")) == {ids["completed"], ids["waiting"]}
    assert listed(workflow="checkout", state="completed") == [ids["completed"]]
    everything = listed()
    pages = [web.api("/api/runs", size=3, page=p) for p in range(3)]
    assert [r["run_id"] for p in pages for r in p["runs"]] == everything
    assert [p["more"] for p in pages] == [True, True, False]
    assert pages[0]["total"] == len(everything)
    narrowed = web.api("/api/runs", workflow="checkout")
    assert narrowed["total"] == 2 and narrowed["counts"]["waiting"] == 1


def test_runs_search_finds_a_run_by_its_exact_id(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    assert [r["run_id"] for r in web.api("/api/runs", q=ids["hostile"])["runs"]] == [ids["hostile"]]
    found = web.api("/api/runs", q="order-10")
    assert found["runs"] == [] and found["total"] is None


def test_runs_refuses_bad_filters_with_a_reason(filled: Any, serve: Any) -> None:
    web = serve(filled[0])
    for query, words in (("state=done", "unknown state 'done'"), ("size=0", "size 1 to 500"),
                         ("page=x", "whole numbers"), ("page=-1", "page must be 0 or more")):
        answer = web.get("/api/runs?" + query)
        assert answer.status == 400 and words in answer.json()["error"], (query, answer.text)


def test_runs_by_parent_lists_children_or_says_the_store_cannot(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    answer = web.get("/api/runs?parent=" + urllib.parse.quote(ids["completed"]))
    if web.server.app.view.by_parent:  # an engine with child workflows
        assert answer.status == 200 and answer.json()["runs"] == []
    else:
        assert answer.status == 400 and "cannot list runs by parent" in answer.json()["error"]
        assert web.api("/api/runs")["by_parent"] is False


# ---- one run ----------------------------------------------------------------------------------------

def test_a_run_shows_arguments_result_and_its_timeline(filled: Any, serve: Any) -> None:
    store, ids = filled
    data = serve(store).api("/api/run", id=ids["completed"])
    run = data["run"]
    assert (run["run_id"], run["state"], run["workflow"]) == (ids["completed"], "completed", "checkout")
    assert json.loads(run["args"]["text"]) == [{"id": 1040, "amount": 129.5}]
    assert json.loads(run["result"]["text"])["txn"] == "txn-1040"
    assert run["error"] is None and run["parent"] is None and data["blocked_at"] is None
    items = data["timeline"]
    assert [(i["position"], i["kind"], i["name"]) for i in items] == [
        (0, "do", "charge"), (1, "do", "reserve"), (2, "version", "receipt-format"),
        (2, "do", "audit"), (3, "wait", "shipped"), (4, "do", "receipt")]
    reserve = items[1]
    assert reserve["attempts"] == 2 and reserve["status"] == "ok"
    assert reserve["tries"][0]["error"]["type"] == "ConnectionError"
    assert "inventory service timed out" in reserve["tries"][0]["error"]["message"]["text"]
    assert "Traceback" in reserve["tries"][0]["error"]["traceback"]["text"]
    assert all(i["ended"] >= i["started"] for i in items)
    assert items[2]["version"] == 2
    assert json.loads(items[4]["payload"]["text"]) == {"carrier": "ups", "tracking": "1Z999"}
    assert (data["items"], data["pages"], data["page"], data["first_error"]) == (6, 1, 0, 0)
    assert data["actions"] is False


def test_a_failed_run_has_its_error_and_folded_traceback(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    data = web.api("/api/run", id=ids["failed"])
    assert data["run"]["error"]["type"] == "StepFailed"
    step = data["timeline"][1]
    assert step["error"]["type"] == "ZeroDivisionError" and step["attempts"] == 1
    whole = web.api("/api/value", id=ids["failed"], what="entry_traceback", seq=step["error_seq"])
    assert "ZeroDivisionError: division by zero" in whole["text"] and "Traceback" in whole["text"]


def test_sleeps_and_waits_show_their_deadlines(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    nap = web.api("/api/run", id=ids["sleeping"])
    sleep = nap["timeline"][-1]
    assert sleep["kind"] == "sleep" and sleep["until"] == nap["run"]["wake_at"] > nap["now"]
    approval = web.api("/api/run", id=ids["timer"])
    wait = approval["timeline"][0]
    assert (wait["kind"], wait["name"], wait["status"]) == ("wait", "decision", "waiting")
    assert wait["timeout"] == approval["run"]["wake_at"]
    assert approval["run"]["waits"] == [{"signal": "decision"}]


def test_a_blocked_run_shows_the_replay_difference_that_blocked_it(filled: Any, serve: Any) -> None:
    store, ids = filled
    data = serve(store).api("/api/run", id=ids["blocked"])
    error = data["run"]["error"]
    assert data["run"]["state"] == "blocked" and error["type"] == "NonDeterminismError"
    assert "at position 0: the journal holds do 'load' but the code yielded Do('fetch')" in \
        error["message"]["text"]
    assert data["blocked_at"] == 0 and data["run"]["crash_loop"] is False


def test_a_long_run_opens_paged(tmp_path: Path, serve: Any) -> None:
    store = SQLiteStore(tmp_path / "long.db")
    assert create(store, "long", "seq", "[]", "w") is None
    store.commit([Write("long", "w", 1, "running", entries=tuple(
        Entry(i, i, "do", f"s{i}", "ok", str(i), 100.0 + i, 100.5 + i) for i in range(450)))])
    web = serve(store)
    first = web.api("/api/run", id="long")
    assert (first["items"], first["pages"], len(first["timeline"])) == (450, 3, 200)
    last = web.api("/api/run", id="long", page="last")
    assert last["page"] == 2 and [i["name"] for i in last["timeline"]][0] == "s400"
    assert len(last["timeline"]) == 50 and last["timeline"][-1]["result"]["text"] == "449"
    assert web.api("/api/run", id="long", page=1, size=1000)["page"] == 1
    found = web.api("/api/run", id="long", at=321)  # the page holding a position (a block's)
    assert found["page"] == 1 and any(i["position"] == 321 for i in found["timeline"])
    assert web.get("/api/run?id=long&at=x").status == 400
    assert web.get("/api/run?id=long&size=5000").status == 400
    store.close()


def test_large_values_are_cut_and_can_be_read_whole(tmp_path: Path, serve: Any) -> None:
    store = SQLiteStore(tmp_path / "big.db")
    big = "x" * 5000 + "<end>"
    assert create(store, "big", "wf", json.dumps({"args": [big], "kwargs": {}}), "w") is None
    web = serve(store)
    args = web.api("/api/run", id="big")["run"]["args"]
    assert args["cut"] and len(args["text"]) == 2000 and args["length"] > 5000
    assert json.loads(web.api("/api/value", id="big", what="args")["text"]) == [big]
    assert web.get("/api/value?id=big&what=nonsense&seq=1").status == 400
    store.close()


def test_hostile_ids_and_arguments_come_back_exact(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    data = web.api("/api/run", id=HOSTILE_ID)
    assert data["run"]["run_id"] == HOSTILE_ID
    assert json.loads(data["run"]["args"]["text"]) == [HOSTILE_ARGS]
    raw = web.get("/api/run?id=" + urllib.parse.quote(HOSTILE_ID)).body
    assert b"<" not in raw and b"\x1b" not in raw  # JSON, ASCII only: \u003c is never needed
    assert raw.isascii()


def test_an_unknown_run_is_404(filled: Any, serve: Any) -> None:
    web = serve(filled[0])
    answer = web.get("/api/run?id=no-such-run")
    assert answer.status == 404 and answer.json() == {"error": "no run 'no-such-run' in this store"}
    assert web.get("/api/run").status == 400


def test_a_store_without_the_optional_reads_gives_the_same_answers(filled: Any, serve: Any) -> None:
    from replaygen import MemoryStore

    store, ids = filled
    plain = MemoryStore()  # no run_counts, last_entries or leases: the Store protocol only
    for r in reversed(store.runs()):
        plain.put(r, store.journal(r.run_id))
    fast, slow = serve(store), serve(plain)
    for path in ("/api/runs", "/api/runs?state=waiting", "/api/overview"):
        a, b = fast.api(path), slow.api(path)
        for d in (a, b):
            d.pop("now")
            for w in d.get("workers", ()):
                w.pop("lease_until")
        assert a == b, path


# ---- workflows and workers ---------------------------------------------------------------------------

def test_overview_counts_runs_per_workflow_and_state_and_lists_live_workers(filled: Any,
                                                                           serve: Any) -> None:
    store, ids = filled
    store.heartbeat("host-a|boot|ns|4242|99|abc", 60.0, workflows=["checkout", "nap"])
    data = serve(store).api("/api/overview")
    counts = {w["workflow"]: w["counts"] for w in data["workflows"]}
    assert counts["checkout"] == {"completed": 1, "waiting": 1}
    assert counts["legacy"] == {"blocked": 1}
    served = {w["workflow"]: w["served"] for w in data["workflows"]}
    assert served["checkout"] and served["nap"] and not served["refund"]
    worker = next(w for w in data["workers"] if w["owner"].startswith("host-a"))
    assert (worker["host"], worker["pid"], worker["workflows"]) == ("host-a", "4242", ["checkout", "nap"])
    assert worker["lease_until"] > data["now"]
    store.release("host-a|boot|ns|4242|99|abc")


def test_the_version_census_counts_unfinished_runs_per_branch(filled: Any, serve: Any) -> None:
    store, ids = filled
    data = serve(store).api("/api/versions")
    change = next(c for c in data["changes"] if c["change"] == "receipt-format")
    branches = {b["branch"]: b["runs"] for b in change["branches"]}
    assert branches[2] == 1  # order-1041 waits past its Version; the finished one is not counted
    assert data["ttl"] > 0


# ---- refusals -------------------------------------------------------------------------------------------

def test_actions_are_refused_while_they_are_off(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)
    for action in ("signal", "cancel", "terminate", "retry"):
        answer = web.act(action, {"run_id": ids["waiting"], "name": "shipped"})
        assert answer.status == 403 and "--allow-actions" in answer.json()["error"]
    assert store.signals(ids["waiting"]) == []
    record = store.get(ids["waiting"])
    assert record is not None and record.state == "waiting" and not record.cancel_requested


def test_a_refused_body_is_not_read_as_the_next_request(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store)  # actions off: the body is refused unread
    smuggled = b"POST /api/cancel HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    conn = http.client.HTTPConnection(web.netloc, timeout=30)
    conn.request("POST", "/api/cancel", body=smuggled, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 403 and response.headers["Connection"] == "close"
    response.read()
    conn.close()


def test_a_token_in_the_address_is_ignored_when_the_server_has_none(filled: Any, serve: Any) -> None:
    answer = serve(filled[0]).get("/?token=anything")
    assert answer.status == 200 and "Set-Cookie" not in answer.headers


def test_an_action_is_post_only(filled: Any, serve: Any) -> None:
    web = serve(filled[0], allow_actions=True)
    for action in ("signal", "cancel", "terminate", "retry"):
        answer = web.get(f"/api/{action}?run_id={filled[1]['waiting']}")
        assert answer.status == 405 and answer.headers["Allow"] == "POST"
    assert web.request("PUT", "/").status == 405
    assert web.request("POST", "/api/runs", {}).status == 405


@pytest.mark.parametrize("headers, words", [
    ({"X-CSRF-Token": None}, "X-CSRF-Token"),
    ({"X-CSRF-Token": "forged"}, "X-CSRF-Token"),
    ({"Origin": "http://evil.example"}, "cross-origin"),
    ({"Origin": "http://127.0.0.1:1"}, "cross-origin"),
    ({"Origin": None}, "no Origin or Referer"),
    ({"Origin": None, "Referer": "http://evil.example/page"}, "cross-origin"),
    ({"Origin": "null"}, "no Origin or Referer"),
    ({"Content-Type": "text/plain"}, "must be JSON"),
])
def test_an_action_without_the_page_s_origin_token_and_json_is_refused(
        filled: Any, serve: Any, headers: dict[str, str | None], words: str) -> None:
    store, ids = filled
    web = serve(store, allow_actions=True)
    answer = web.act("cancel", {"run_id": ids["waiting"]}, **headers)  # type: ignore[arg-type]
    assert answer.status == 403 and words in answer.json()["error"], answer.text
    record = store.get(ids["waiting"])
    assert record is not None and not record.cancel_requested


def test_a_same_origin_referer_stands_in_for_a_missing_origin(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    answer = web.act("cancel", {"run_id": ids["waiting"]}, Origin=None,  # type: ignore[arg-type]
                     Referer=f"http://{web.netloc}/run?id=x")
    assert answer.status == 200, answer.text


def test_with_a_token_every_request_must_carry_it(filled: Any, serve: Any) -> None:
    store, ids = filled
    web = serve(store, token=TOKEN, allow_actions=True)
    for path in ("/", "/workflows", "/static/app.js", "/api/runs", "/api/overview"):
        assert web.get(path).status == 401, path
        assert web.get(path, Cookie=f"{web.server.app.guard.cookie}=wrong-token").status == 401
        assert web.get(path, X_Replaygen_Token="wrong").status == 401
        assert web.get(path, X_Replaygen_Token=TOKEN).status == 200
    assert web.get("/?token=wrong").status == 401
    first = web.get(f"/run?id=x&token={TOKEN}")  # the link the operator opens once
    assert first.status == 303 and first.headers["Location"] == "/run?id=x"
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(f"{web.server.app.guard.cookie}={TOKEN};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = cookie.split(";")[0]
    assert web.get("/run?id=x", Cookie=jar).status == 200
    assert web.get("/api/runs", Cookie="other=1; " + jar).status == 200
    refused = web.act("cancel", {"run_id": ids["waiting"]})
    assert refused.status == 401  # the CSRF token and origin alone are not enough
    assert web.request("GET", "/api/cancel").status == 401  # nothing is said before the token


def test_without_a_token_only_loopback_host_names_are_answered(filled: Any, serve: Any) -> None:
    web = serve(filled[0])
    for host in ("evil.example", f"evil.example:{web.server.server_address[1]}", "10.0.0.5:8642", ""):
        answer = web.get("/api/runs", Host=host)
        assert answer.status == 403 and "loopback" in answer.json()["error"], host
    for host in ("localhost:9000", "127.0.0.1", "[::1]:8642", "app.localhost:1"):
        assert web.get("/api/runs", Host=host).status == 200, host


def test_a_host_other_than_loopback_needs_a_strong_token(filled: Any, serve: Any) -> None:
    with pytest.raises(UsageError, match="--token"):
        make_server(filled[0], host="0.0.0.0", port=0)
    with pytest.raises(UsageError, match="at least 16 characters"):
        make_server(filled[0], host="0.0.0.0", port=0, token="short")
    with pytest.raises(UsageError, match="at least 16 characters"):
        make_server(filled[0], port=0, token="a token; with spaces and a semicolon")
    web = serve(filled[0], host="0.0.0.0", token=TOKEN)
    assert web.get("/api/runs").status == 401
    assert web.get("/api/runs", X_Replaygen_Token=TOKEN, Host="runs.internal:8642").status == 200


# ---- actions --------------------------------------------------------------------------------------------

def test_signal_queues_the_payload_exactly_and_refuses_bad_json(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    sent = web.act("signal", {"run_id": ids["waiting"], "name": "shipped",
                              "payload": '{"carrier": "dhl", "n": 12345678901234567890}'})
    assert sent.status == 200 and sent.json()["ok"] and "queued" in sent.json()["message"]
    [queued] = store.signals(ids["waiting"])
    assert queued.name == "shipped" and json.loads(queued.payload) == {
        "carrier": "dhl", "n": 12345678901234567890}
    bad = web.act("signal", {"run_id": ids["waiting"], "name": "shipped", "payload": "{nope"})
    assert bad.status == 400 and "not JSON" in bad.json()["error"]
    finished = web.act("signal", {"run_id": ids["completed"], "name": "x", "payload": "1"})
    assert finished.status == 409 and "already completed" in finished.json()["error"]
    missing = web.act("signal", {"run_id": "no-such", "name": "x"})
    assert missing.status == 404
    assert web.act("signal", {"run_id": ids["waiting"]}).status == 400  # no name
    assert len(store.signals(ids["waiting"])) == 1


def test_a_signal_from_the_page_is_taken_by_a_worker(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    with Interpreter(store, WORKFLOWS) as worker:
        worker.recover()
        assert web.act("signal", {"run_id": ids["waiting"], "name": "shipped",
                                  "payload": '"by page"'}).status == 200
        until(lambda: worker.status(ids["waiting"]).state == "completed")
    result = web.api("/api/run", id=ids["waiting"])["run"]["result"]["text"]
    assert "via by page" in result


def test_cancel_requests_cancellation(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    answer = web.act("cancel", {"run_id": ids["sleeping"]})
    assert answer.status == 200 and "cancel requested" in answer.json()["message"]
    record = store.get(ids["sleeping"])
    assert record is not None and record.cancel_requested
    again = web.act("cancel", {"run_id": ids["completed"]})
    assert again.status == 200 and "already completed" in again.json()["message"]


def test_terminate_ends_the_run_as_cancelled_with_the_reason(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    answer = web.act("terminate", {"run_id": ids["timer"], "reason": "withdrawn <by ops>"})
    assert answer.status == 200 and answer.json()["state"] == "cancelled"
    error = web.api("/api/run", id=ids["timer"])["run"]["error"]
    assert (error["type"], error["message"]["text"]) == ("Terminated", "withdrawn <by ops>")


def test_retry_hands_a_blocked_run_to_any_worker(fresh: Any, serve: Any) -> None:
    store, ids = fresh
    web = serve(store, allow_actions=True)
    refused = web.act("retry", {"run_id": ids["waiting"]})
    assert refused.status == 400 and "not blocked" in refused.json()["error"]
    answer = web.act("retry", {"run_id": ids["blocked"]})
    assert answer.status == 200 and answer.json()["state"] == "pending"
    assert "no live worker knows its workflow" in answer.json()["message"]
    record = store.get(ids["blocked"])
    assert record is not None and (record.state, record.owner, record.error) == ("pending", None, None)
    assert [e[3] for e in store.journal(ids["blocked"])] == ["load", "go"]  # untouched
    with Interpreter(store, WORKFLOWS) as worker:  # the original code replays it
        worker.recover()
        until(lambda: worker.status(ids["blocked"]).state == "waiting")


# ---- the command ------------------------------------------------------------------------------------------

def _command(*args: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REPLAYGEN_STORE", "REPLAYGEN_UI_TOKEN")}
    return subprocess.Popen([sys.executable, "-m", "replaygen", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _refused(*args: str, cwd: Path) -> str:
    done = _command(*args, cwd=cwd)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_command_refuses_a_missing_file_and_an_open_host_without_a_token(tmp_path: Path) -> None:
    err = _refused("--store", "missing.db", "ui", cwd=tmp_path)
    assert "no database at" in err and not (tmp_path / "missing.db").exists()
    create(SQLiteStore(tmp_path / "runs.db"), "r", "wf", "[]", "o")
    err = _refused("--store", "runs.db", "ui", "--host", "0.0.0.0", cwd=tmp_path)
    assert "give --token" in err


@pytest.mark.postgres
def test_the_command_refuses_a_postgres_schema_that_does_not_exist(tmp_path: Path) -> None:
    import psycopg

    dsn, schema = postgres_dsn(), f"rgui_missing_{uuid.uuid4().hex[:8]}"
    err = _refused("--store", dsn, "--schema", schema, "ui", "--port", "0", cwd=tmp_path)
    assert f"no schema {schema!r}" in err
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone() is None


def _serving(proc: subprocess.Popen[str]) -> str:
    """The URL the command prints first."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"at (http://\S+/) ", line)
    assert found, (line, proc.stderr.read() if proc.stderr else "")
    return found.group(1)


def _fetch(url: str, path: str) -> Answer:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    conn.request("GET", path)
    r = conn.getresponse()
    answer = Answer(r.status, r.headers, r.read())
    conn.close()
    return answer


def test_the_command_serves_until_interrupted(filled: Any, tmp_path: Path) -> None:
    store = filled[0]
    where = getattr(store, "path", None)
    args = ["--store", where] if where else [
        "--store", postgres_dsn(), "--schema", store.schema]  # type: ignore[attr-defined]
    proc = _command(*args, "ui", "--port", "0", cwd=tmp_path)
    try:
        url = _serving(proc)
        runs = json.loads(_fetch(url, "/api/runs").body)["runs"]
        assert {r["run_id"] for r in runs} == set(filled[1].values())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out, (out, err)


def _dump(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)  # makes no -shm file
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def _serve_as_nobody(db: Path) -> tuple[int, int]:
    """Fork a child that drops root (as a user who may only read ``db`` would run it) and
    serves ``db`` with actions on; returns its pid and port. The child never returns."""
    import importlib.readers  # noqa: F401 - the child cannot read the interpreter's own files
    import replaygen.testing  # noqa: F401 - (root's), so what it imports later is imported now

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                server = make_server(SQLiteStore(db), port=0, allow_actions=True)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                os.write(w, f"{type(exc).__name__}: {exc}".encode())
                raise
            os.write(w, str(server.server_address[1]).encode())
            os.close(w)
            server.serve_forever(poll_interval=0.05)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    assert said.isdigit(), f"the child serving the read-only file did not start: {said}"
    return pid, int(said)


def test_a_read_only_file_is_served_and_left_as_it_was() -> None:
    folder = Path(tempfile.mkdtemp(prefix="replaygen-ui-"))  # pytest's tmp_path is root's only
    folder.chmod(0o755)
    try:
        db = folder / "runs.db"
        store = SQLiteStore(db)
        ids = populate(store)
        store.close()
        # The workers' watch connections (thread-locals of threads that have ended) hold the
        # -wal and -shm files open until they are collected.
        gc.collect()
        before, digest = _dump(db), hashlib.sha256(db.read_bytes()).hexdigest()
        db.chmod(0o444)
        folder.chmod(0o555)
        pid, port = _serve_as_nobody(db)
        try:
            url = f"http://127.0.0.1:{port}/"
            for path in ("/", "/api/runs", "/api/overview", "/api/versions",
                         "/api/run?id=" + urllib.parse.quote(ids["completed"])):
                assert _fetch(url, path).status == 200, path
            assert len(json.loads(_fetch(url, "/api/runs").body)["runs"]) == len(ids)
            csrf = re.search(r'rg-csrf" content="([^"]+)"', _fetch(url, "/").text)
            assert csrf
            conn = http.client.HTTPConnection(f"127.0.0.1:{port}", timeout=30)
            conn.request("POST", "/api/cancel", body=json.dumps({"run_id": ids["waiting"]}),
                         headers={"Origin": f"http://127.0.0.1:{port}", "Content-Type":
                                  "application/json", "X-CSRF-Token": csrf.group(1)})
            refused = conn.getresponse()
            assert refused.status == 503 and "read-only" in json.loads(refused.read())["error"]
            conn.close()
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert sorted(p.name for p in folder.iterdir()) == ["runs.db"]
        assert hashlib.sha256(db.read_bytes()).hexdigest() == digest and _dump(db) == before
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
