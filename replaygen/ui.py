"""``replaygen ui``: a web view of a store's runs, served by the standard library.

    replaygen --store runs.db ui                          # http://127.0.0.1:8642/, read-only
    replaygen --store runs.db ui --allow-actions          # signal, cancel, terminate, retry
    replaygen --store postgresql://... ui --host 0.0.0.0 --token "$TOKEN"

Pages: the runs list (``/``), one run and its journal as a timeline (``/run?id=...``), and
workflows, workers and the version census (``/workflows``). The page is one HTML file, a
stylesheet and a script shipped in ``replaygen/ui_static`` (no framework, no CDN, no build
step); the script reads the JSON endpoints below and sets every value from the store as text.

The security model, in the order each request is checked:

1. With no ``--token`` (only allowed on a loopback address) the ``Host`` header must name a
   loopback host, so a page on another site cannot reach the server by rebinding its DNS
   name to 127.0.0.1.
2. With ``--token``, every request carries it: as a cookie, set when a page is first opened
   as ``/?token=...`` (then redirected to drop it from the address bar), or as the header
   ``X-Replaygen-Token`` (for scripts).
3. Actions are POST only (a GET is refused with 405) and off unless ``--allow-actions``;
   each needs the ``Origin`` (or ``Referer``) of this server, the per-server CSRF token the
   page was served with (header ``X-CSRF-Token``) and a JSON body. The page asks for
   confirmation before it sends one.
4. Every response carries a Content-Security-Policy without inline scripts or styles,
   ``frame-ancestors 'none'``, ``nosniff`` and a same-origin referrer policy.

This module never changes a run except through an action the operator confirmed, and then
only as the engine could: ``Client`` for signal, cancel and terminate, and a claim followed
by a fenced release for "retry" (see ``retry_blocked``).
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from ._identity import new_owner_id
from .client import DEFAULT_MAX_PAYLOAD, Client
from .commands import check_name
from .errors import ReplaygenError, RunFinished, RunNotFound, StoreUnavailable, UsageError
from .store import FINISHED, Store, Write
from .ui_model import View

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8642
TOKEN_MIN = 16
"""Shortest ``--token`` accepted: it is all that stands between the network and the runs."""
MAX_BODY = 4 * DEFAULT_MAX_PAYLOAD
"""Largest POST body read: a signal payload at the default limit, as JSON text inside JSON."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"), ("Cross-Origin-Resource-Policy", "same-origin"),
)
PAGES = ("/", "/run", "/workflows")
"""Every page is the same HTML file: the script draws the one its path names."""
ASSETS = {"/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8"),
          "/static/favicon.svg": ("favicon.svg", "image/svg+xml")}
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
log = logging.getLogger("replaygen.ui")


# ---- the checks ------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    """The host part of ``host[:port]`` (IPv6 in brackets included)."""
    return urllib.parse.urlsplit("//" + netloc).hostname or ""


def check_token(token: str | None, host: str) -> None:
    """Refuse a non-loopback ``host`` without a token, and a token that is weak or cannot
    travel in a cookie; a UsageError says what to do."""
    if token is None:
        if not is_loopback(host):
            raise UsageError(f"--host {host} is reachable from other machines: give --token "
                             f"(every request must then carry it), e.g. --token \"$(python3 -c "
                             f"'import secrets; print(secrets.token_urlsafe())')\"")
        return
    if len(token) < TOKEN_MIN or not _TOKEN_CHARS.fullmatch(token):
        raise UsageError(f"--token must be at least {TOKEN_MIN} characters of A-Z a-z 0-9 . _ ~ -"
                         f" (python3 -c 'import secrets; print(secrets.token_urlsafe())' makes "
                         f"one)")


@dataclass(frozen=True)
class Guard:
    """Who may ask what: the token, the Host check and the checks of an action."""

    token: str | None
    csrf: str
    cookie: str

    def host_refusal(self, headers: Message) -> str | None:
        """Without a token only loopback names may be asked for (DNS rebinding)."""
        if self.token is not None:
            return None
        host = headers.get("Host", "")
        if not host or not is_loopback(_hostname(host)):
            return (f"Host {host!r} is not a loopback name; without --token this server only "
                    f"answers http://127.0.0.1 or http://localhost")
        return None

    def token_ok(self, headers: Message, given: str | None = None) -> bool:
        """Whether the request carries the token (always, when there is none)."""
        if self.token is None:
            return True
        candidates = [given, headers.get("X-Replaygen-Token")]
        for morsel in (headers.get("Cookie") or "").split(";"):
            name, _, value = morsel.strip().partition("=")
            if name == self.cookie:
                candidates.append(value)
        return any(c is not None and hmac.compare_digest(c.encode(), self.token.encode())
                   for c in candidates)

    def action_refusal(self, headers: Message) -> str | None:
        """Why an action may not go ahead: another origin, no CSRF token, not JSON."""
        host = headers.get("Host", "")
        origin = headers.get("Origin")
        if origin is None or origin == "null":
            referer = headers.get("Referer")
            origin = None if referer is None else "{0.scheme}://{0.netloc}".format(
                urllib.parse.urlsplit(referer))
        if origin is None:
            return "no Origin or Referer header: cannot tell that the request comes from this page"
        if urllib.parse.urlsplit(origin).netloc.lower() != host.lower():
            return f"cross-origin request refused: Origin {origin!r} is not this server ({host!r})"
        given = headers.get("X-CSRF-Token") or ""
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            return "missing or wrong X-CSRF-Token: reload the page and try again"
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return "an action's body must be JSON (Content-Type: application/json)"
        return None


# ---- actions ---------------------------------------------------------------------------------

def retry_blocked(store: Store, run_id: str) -> str:
    """Hand a blocked run back to the workers: it becomes ``pending`` and unowned, and a live
    worker that knows its workflow replays it with the code it runs now (blocking it again,
    with a new message, if that code still disagrees with the journal). This is what a
    worker's ``recover()`` does for blocked runs, without the workflow code, which this
    process does not have: the run is claimed (fencing out anyone else), then released in
    one fenced write. Returns the state it was left in."""
    record = store.get(check_name("run_id", run_id))
    if record is None:
        raise RunNotFound(f"no run {run_id!r} in this store")
    if record.state != "blocked":
        raise UsageError(f"run {run_id!r} is {record.state}, not blocked: only a blocked run can "
                         f"be retried (the workers go on with the others by themselves)")
    me = new_owner_id()
    claims = store.claim(me, states=("blocked",), reset=True, run_ids=[run_id], limit=1)
    if not claims:
        raise UsageError(f"run {run_id!r} is held by a live worker; it goes on there")
    run = claims[0].run
    if run.state == "blocked":
        write = Write(run.run_id, me, run.fence, "pending", release=True)
    else:  # changed between the look and the claim: put it back as it is, only unowned
        write = Write(run.run_id, me, run.fence, run.state, wake_at=run.wake_at,
                      waiting_for=run.waiting_for, result=run.result, error=run.error,
                      release=True)
    if not store.commit([write])[0]:
        raise UsageError(f"run {run_id!r} was taken by a worker meanwhile; it goes on there")
    return write.state


@dataclass
class App:
    """What the handler serves: the store's view, a client for actions, the settings."""

    store: Store
    label: str
    guard: Guard
    allow_actions: bool
    view: View = field(init=False)
    client: Client = field(init=False)
    assets: dict[str, bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.view = View(self.store)
        self.client = Client(self.store)
        folder = resources.files("replaygen") / "ui_static"
        self.assets = {name: (folder / name).read_bytes() for name in
                       ("index.html", *(a for a, _ in ASSETS.values()))}

    def shell(self) -> bytes:
        """The page: index.html with the CSRF token, the store's name and the flags filled in
        (each escaped for an attribute)."""
        values = {"csrf": self.guard.csrf, "store": self.label,
                  "actions": "on" if self.allow_actions else "off"}
        text = self.assets["index.html"].decode()
        return _PLACEHOLDER.sub(lambda m: html.escape(values.get(m.group(1), ""), quote=True),
                                text).encode()

    # Each action takes the request's JSON object and answers a JSON object for the page.

    def signal(self, body: Mapping[str, Any]) -> dict[str, Any]:
        run_id, name = _text(body, "run_id"), _text(body, "name")
        raw = body.get("payload")
        if raw is not None and not isinstance(raw, str):
            raise UsageError("payload must be JSON text (a string holding JSON)")
        try:
            payload = json.loads(raw) if raw and raw.strip() else None
        except ValueError as exc:
            raise UsageError(f"the payload is not JSON: {exc}") from None
        self.client.deliver(run_id, name, payload)
        state = self.view.record(run_id).state
        return {"state": state, "message": f"signal {name!r} queued for run {run_id!r} ({state})"}

    def cancel(self, body: Mapping[str, Any]) -> dict[str, Any]:
        run_id = _text(body, "run_id")
        self.client.cancel(run_id)
        r = self.view.record(run_id)
        if r.state in FINISHED:
            message = f"run {run_id!r} is already {r.state}; nothing changed"
        elif r.state == "blocked":
            message = (f"cancel requested for blocked run {run_id!r}: it takes effect when code "
                       f"that replays the run runs it again; terminate ends it now")
        else:
            message = f"cancel requested: Cancelled is raised in run {run_id!r} at its current yield"
        return {"state": r.state, "message": message}

    def terminate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        run_id = _text(body, "run_id")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise UsageError("reason must be text")
        before = self.view.record(run_id).state
        status = self.client.terminate(run_id, reason or "terminated from replaygen ui")
        if before in FINISHED:
            return {"state": before, "message": f"run {run_id!r} is already {before}; nothing "
                                                f"changed"}
        return {"state": status.state, "message": f"run {run_id!r} terminated ({before} -> "
                                                   f"{status.state})"}

    def retry(self, body: Mapping[str, Any]) -> dict[str, Any]:
        run_id = _text(body, "run_id")
        state = retry_blocked(self.store, run_id)
        served = self.view.live()
        knows = served is None or any(
            names is None or self.view.record(run_id).workflow in names
            for names in served.values())
        note = "" if knows else ": no live worker knows its workflow yet, so it waits for one"
        return {"state": state, "message": f"run {run_id!r} is {state} for any worker{note}"}


def _text(body: Mapping[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} is missing (give it as a non-empty string)")
    return value


ACTIONS: dict[str, Callable[[App, Mapping[str, Any]], dict[str, Any]]] = {
    "/api/signal": App.signal, "/api/cancel": App.cancel, "/api/terminate": App.terminate,
    "/api/retry": App.retry,
}


# ---- reading -----------------------------------------------------------------------------------

def _one(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[-1] if values else None


def _api_runs(app: App, q: Mapping[str, list[str]]) -> dict[str, Any]:
    states = [s for v in q.get("state", ()) for s in v.split(",") if s] or None
    return app.view.runs_page(states=states, workflow=_one(q, "workflow"),
                              parent=_one(q, "parent"), run_id=_one(q, "q"),
                              page=_one(q, "page"), size=_one(q, "size"))


def _api_run(app: App, q: Mapping[str, list[str]]) -> dict[str, Any]:
    run_id = _one(q, "id")
    if not run_id:
        raise UsageError("give the run as ?id=RUN_ID")
    out = app.view.run_page(run_id, _one(q, "page"), _one(q, "size"), _one(q, "at"))
    out["actions"] = app.allow_actions
    return out


def _api_value(app: App, q: Mapping[str, list[str]]) -> dict[str, Any]:
    run_id = _one(q, "id")
    if not run_id:
        raise UsageError("give the run as ?id=RUN_ID")
    return app.view.value(run_id, _one(q, "what") or "", _one(q, "seq"))


def _api_versions(app: App, q: Mapping[str, list[str]]) -> dict[str, Any]:
    from .testing import census  # the testing kit: only this page needs it

    return app.view.versions(census)


READS: dict[str, Callable[[App, Mapping[str, list[str]]], dict[str, Any]]] = {
    "/api/runs": _api_runs, "/api/run": _api_run, "/api/value": _api_value,
    "/api/overview": lambda app, q: app.view.overview(), "/api/versions": _api_versions,
}


# ---- HTTP ----------------------------------------------------------------------------------------

@dataclass
class Reply:
    """A response: status, body, content type and any extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


_HTML_CHARS = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def json_reply(status: int, obj: Any) -> Reply:
    # ASCII only (U+2028 and the rest travel as escapes), and no < > & even inside strings:
    # a client that sniffs content despite nosniff finds no markup in a run id.
    text = json.dumps(obj, ensure_ascii=True).translate(_HTML_CHARS)
    return Reply(status, text.encode(), "application/json")


def refusal(status: int, message: str, api: bool) -> Reply:
    """An error as JSON for the script (``{"error": ...}``) or as text for a person."""
    if api:
        return json_reply(status, {"error": message})
    return Reply(status, (message + "\n").encode())


_STATUS = ((RunNotFound, HTTPStatus.NOT_FOUND), (RunFinished, HTTPStatus.CONFLICT),
           (StoreUnavailable, HTTPStatus.SERVICE_UNAVAILABLE), (UsageError, HTTPStatus.BAD_REQUEST))


def _status_of(exc: ReplaygenError) -> int:
    return next((int(code) for kind, code in _STATUS if isinstance(exc, kind)),
                int(HTTPStatus.CONFLICT))


class Handler(BaseHTTPRequestHandler):
    """One request: the checks in the module docstring's order, then the page, file, read or
    action its path names."""

    server: UIServer
    body_read: bool
    """Whether this request's body was read (a refused one's is not: the connection closes)."""
    protocol_version = "HTTP/1.1"
    server_version = "replaygen-ui"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle's algorithm holds the
        # body back until the client's delayed ACK, ~40 ms on every answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        self.body_read = False
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        api = url.path.startswith("/api/")
        try:
            reply = self._route(method, url.path, query, api)
        except ReplaygenError as exc:
            reply = refusal(_status_of(exc), str(exc), api)
        except Exception as exc:  # a bug or a store failure: say what, keep serving
            log.exception("replaygen ui: %s %s failed", method, url.path)
            reply = refusal(500, f"internal error: {type(exc).__name__}: {exc}", api)
        if not self.body_read and (self.headers.get("Content-Length") or "0") != "0":
            # A refused request's body was never read: it must not be taken for the next
            # request on this connection.
            self.close_connection = True
            reply.headers.append(("Connection", "close"))
        self._send(reply, method)

    def _route(self, method: str, path: str, query: Mapping[str, list[str]], api: bool) -> Reply:
        app = self.server.app
        if (why := app.guard.host_refusal(self.headers)) is not None:
            return refusal(403, why, api)
        given = _one(query, "token")
        if not app.guard.token_ok(self.headers, given):
            return refusal(401, "this server needs its token: open it as http://HOST:PORT/?token="
                                "TOKEN (or send the X-Replaygen-Token header)", api)
        if given is not None and app.guard.token is not None and method in ("GET", "HEAD") \
                and path in PAGES:
            return self._drop_token(path, query)
        if path in ACTIONS:
            if method != "POST":
                return Reply(405, b"actions are POST only\n", headers=[("Allow", "POST")])
            return self._act(app, path)
        if method not in ("GET", "HEAD"):
            return Reply(405, f"{method} is not served here\n".encode(),
                         headers=[("Allow", "GET, HEAD")])
        if path in PAGES:
            return Reply(200, app.shell(), "text/html; charset=utf-8")
        if path in ASSETS:
            name, kind = ASSETS[path]
            return Reply(200, app.assets[name], kind, [("Cache-Control", "no-cache")])
        if path in READS:
            return json_reply(200, READS[path](app, query))
        return refusal(404, f"nothing at {path}", api)

    def _drop_token(self, path: str, query: Mapping[str, list[str]]) -> Reply:
        """The token arrived in the address: keep it as a cookie, and take it out of the
        address (and so of the history and any Referer) by redirecting."""
        rest = urllib.parse.urlencode([(k, v) for k, vs in query.items() if k != "token"
                                       for v in vs])
        guard = self.server.app.guard
        cookie = f"{guard.cookie}={guard.token}; HttpOnly; SameSite=Strict; Path=/"
        return Reply(303, b"", headers=[("Location", path + ("?" + rest if rest else "")),
                                        ("Set-Cookie", cookie)])

    def _act(self, app: App, path: str) -> Reply:
        if not app.allow_actions:
            return refusal(403, "actions are off: start replaygen ui with --allow-actions", True)
        if (why := app.guard.action_refusal(self.headers)) is not None:
            return refusal(403, why, True)
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            return refusal(400, "bad Content-Length", True)
        if length > MAX_BODY:
            return refusal(413, f"the body is {length} bytes, over the limit of {MAX_BODY}", True)
        raw = self.rfile.read(length)
        self.body_read = True
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            return refusal(400, f"the body is not JSON: {exc}", True)
        if not isinstance(body, dict):
            return refusal(400, "the body must be a JSON object", True)
        out = ACTIONS[path](app, body)
        log.info("replaygen ui: %s %s: %s", path.rsplit("/", 1)[1], body.get("run_id"),
                 out["message"])
        return json_reply(200, {"ok": True, **out})

    def _send(self, reply: Reply, method: str) -> None:
        self.send_response(reply.status)
        for name, value in (*SECURITY_HEADERS, *reply.headers):
            self.send_header(name, value)
        if reply.content_type == "application/json" or reply.status >= 300:
            self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)


class UIServer(ThreadingHTTPServer):
    """The web view's HTTP server: one thread per request, over one ``App``."""

    daemon_threads = True

    def __init__(self, app: App, host: str, port: int) -> None:
        if ":" in host.strip("[]"):
            self.address_family = socket.AF_INET6
        self.app = app
        super().__init__((host.strip("[]"), port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def store_label(store: Store) -> str:
    """How the page names the store: a SQLite file's path, or a Postgres DSN (its password
    masked by the store) and schema."""
    if isinstance(path := getattr(store, "path", None), str):
        return path
    dsn, schema = getattr(store, "dsn", None), getattr(store, "schema", None)
    if isinstance(dsn, str):
        return f"{dsn} (schema {schema})" if schema else dsn
    return type(store).__name__


def make_server(store: Store, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                token: str | None = None, allow_actions: bool = False,
                label: str | None = None) -> UIServer:
    """A server for ``store``, bound and ready for ``serve_forever()`` (``port=0`` picks a
    free port: see ``.url``). Refuses a non-loopback host without a token."""
    check_token(token, host)
    app = App(store, label or store_label(store),
              Guard(token, secrets.token_urlsafe(32), f"replaygen_ui_{port}"), allow_actions)
    try:
        server = UIServer(app, host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose "
                         f"another --port or --host)") from None
    if port == 0:  # the cookie is named for the port the browser sees
        app.guard = Guard(token, app.guard.csrf, f"replaygen_ui_{server.server_address[1]}")
    return server


def serve(store: Store, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, allow_actions: bool = False, label: str | None = None,
          say: Callable[[str], None] = print, stop: threading.Event | None = None) -> None:
    """Serve the web view until interrupted (or ``stop`` is set); ``say`` prints where."""
    server = make_server(store, host=host, port=port, token=token, allow_actions=allow_actions,
                         label=label)
    mode = "actions ON (signal, cancel, terminate, retry)" if allow_actions else "read-only"
    say(f"replaygen ui: serving {server.app.label} at {server.url} ({mode}); Ctrl-C stops")
    if token is not None:
        say(f"replaygen ui: every request needs the token: open {server.url}?token=<--token>")
    if not is_loopback(host):
        say(f"replaygen ui: warning: listening on {host}, reachable from other machines over "
            f"plain HTTP; put it behind TLS if the network is not trusted")
    if stop is not None:
        def stopper() -> None:
            stop.wait()
            server.shutdown()

        threading.Thread(target=stopper, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.25)
    finally:
        server.server_close()


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "App", "Guard", "UIServer", "is_loopback",
           "make_server", "retry_blocked", "serve", "store_label"]
