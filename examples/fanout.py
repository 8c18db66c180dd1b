"""Fan-out/fan-in: ask every supplier for a quote at once with ``All``, then pick the best.

    python examples/fanout.py

The quotes run concurrently; each is journaled as it finishes, so after a
crash only the unfinished ones run again.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from replaygen import All, Do, Interpreter

PRICES = {"acme": 120, "globex": 95, "initech": 110}


def quote(supplier: str, item: str, delay: float) -> dict[str, Any]:
    time.sleep(delay)  # a slow remote call; all of them overlap
    return {"supplier": supplier, "item": item, "price": PRICES[supplier]}


def best_quote(item: str, delay: float = 0.5) -> Generator[Any, Any, dict[str, Any]]:
    quotes = yield All(*(Do(f"quote {s}", quote, s, item, delay) for s in sorted(PRICES)))
    best = min(quotes, key=lambda q: q["price"])
    yield Do("order", print, f"ordering {item} from {best['supplier']} at {best['price']}")
    return best


workflows = [best_quote]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="fanout.db")
    args = p.parse_args(argv)
    from replaygen.stores.sqlite import SQLiteStore

    with Interpreter(SQLiteStore(args.db), workflows) as interp:
        interp.recover()
        started = time.monotonic()
        best = interp.run(best_quote, "widgets")
        print(f"best: {best} ({time.monotonic() - started:.1f}s for {len(PRICES)} quotes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
