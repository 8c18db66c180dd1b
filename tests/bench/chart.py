"""Draw steps/s against concurrent runs from the suite's JSON lines (needs matplotlib).

    python tests/bench/chart.py RESULTS.jsonl SUITE_ID OUT.png

run.py calls it with whichever Python has matplotlib (this one, or the DBOS bench venv);
matplotlib is never a dependency of replaygen.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    path, suite, out = sys.argv[1:4]
    points: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("suite") != suite or r.get("workload") not in ("sweep", "W2"):
                continue
            if r["system"] not in ("replaygen", "dbos") or "concurrent" not in r:
                continue
            points[f"{r['system']} ({r['store']})"][r["concurrent"]].append(r["steps_per_s"])
    if not points:
        print("no sweep results in this suite: no chart")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in sorted(points):
        xs = sorted(points[label])
        meds = [statistics.median(points[label][x]) for x in xs]
        lo = [meds[i] - min(points[label][x]) for i, x in enumerate(xs)]
        hi = [max(points[label][x]) - meds[i] for i, x in enumerate(xs)]
        ax.errorbar(xs, meds, yerr=[lo, hi], marker="o", capsize=3, label=label,
                    linestyle="--" if label.startswith("dbos") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent runs (no-op steps, ~100-byte results)")
    ax.set_ylabel("durable steps per second (median, min–max)")
    ax.set_title(f"replaygen vs DBOS Transact 3.4.0 — suite {suite}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"chart written to {out}")


if __name__ == "__main__":
    main()
