"""OpenTelemetry tracing from replaygen's observer events, without the core depending on it.

    pip install opentelemetry-sdk
    python examples/otel.py                            # prints the spans of one run
    replaygen worker examples.otel:make_interpreter    # a worker that traces every run

Each stretch of a run's execution (from the moment it starts or wakes until
it parks, blocks or ends) is a span ``run <workflow>``; each step try is a
child span ``step <name>`` with the try number and its error. Without
``opentelemetry-api`` installed the example says so and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import Do, Event, Interpreter, Retry, Store, current_step

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:
    trace = None  # type: ignore[assignment]


class SpanObserver:
    """An ``Observer`` (a callable taking an ``Event``) that opens and closes spans.

    Events arrive on the interpreter's threads, so spans are kept by run and
    position rather than in the current context.
    """

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self._lock = threading.Lock()  # guards both span tables
        self._runs: dict[str, Any] = {}
        self._steps: dict[tuple[str | None, int | None], Any] = {}

    def __call__(self, e: Event) -> None:
        with self._lock:
            if e.kind == "run_started":
                self._run_span(e)
            elif e.kind == "step_started":
                parent = self._run_span(e)
                context = trace.set_span_in_context(parent) if trace is not None else None
                self._steps[(e.run_id, e.position)] = self._tracer.start_span(
                    f"step {e.step}", context=context, attributes={
                        "replaygen.run_id": e.run_id or "", "replaygen.step": e.step or "",
                        "replaygen.position": e.position or 0, "replaygen.attempt": e.attempt or 1})
            elif e.kind == "step_returned":
                span = self._steps.pop((e.run_id, e.position), None)
                if span is not None:
                    _end(span, e.error)
            elif e.kind in ("step_retrying", "signal_taken") and e.run_id in self._runs:
                self._runs[e.run_id].add_event(e.kind, {"replaygen.step": e.step or ""})
            elif e.kind in ("run_parked", "run_finished", "run_blocked"):
                span = self._runs.pop(e.run_id or "", None)
                if span is not None:
                    span.set_attribute("replaygen.state", e.state or "blocked")
                    _end(span, e.error)

    def _run_span(self, e: Event) -> Any:
        """The run's open span; a run that woke from a sleep or wait gets a new one."""
        span = self._runs.get(e.run_id or "")
        if span is None:
            span = self._runs[e.run_id or ""] = self._tracer.start_span(
                f"run {e.workflow}", attributes={"replaygen.run_id": e.run_id or "",
                                                 "replaygen.workflow": e.workflow or ""})
        return span


def _end(span: Any, error: str | None) -> None:
    if error and trace is not None:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def lookup(user: str) -> dict[str, str]:
    if current_step().attempt == 1:
        raise ConnectionError("directory unreachable")  # one transient failure, retried
    return {"user": user, "email": f"{user}@example.com"}


def welcome(user: str) -> Generator[Any, Any, str]:
    profile = yield Do("lookup", lookup, user, retry=Retry(3, backoff=0.05))
    yield Do("send mail", lambda p: f"mailed {p['email']}", profile)
    return profile["email"]


workflows = [welcome]


def make_interpreter(store: Store) -> Interpreter:
    """For ``replaygen worker examples.otel:make_interpreter``: trace when OpenTelemetry is here."""
    if trace is None:
        logging.getLogger("replaygen").warning("opentelemetry-api is not installed; not tracing")
        return Interpreter(store, workflows)
    return Interpreter(store, workflows, observer=SpanObserver(trace.get_tracer("replaygen")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="otel.db")
    args = p.parse_args(argv)
    if trace is None:
        print("this example needs OpenTelemetry: pip install opentelemetry-sdk (it brings "
              "opentelemetry-api); replaygen itself never depends on it")
        return 0
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        print("opentelemetry-sdk is not installed: spans go to the API's no-op tracer; "
              "pip install opentelemetry-sdk to print them")
    else:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        trace.set_tracer_provider(provider)
    from replaygen.stores.sqlite import SQLiteStore

    with make_interpreter(SQLiteStore(args.db)) as interp:
        print("result:", interp.run(welcome, "ada"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
