"""Draw the benchmark results as bar charts (rps and TTFT p99 per scenario) to a PNG.

Reads what ``../shared/bench/run.py`` writes (/tmp/gateway-bench.json by default)
and falls back to docs/data/benchmarks.json, the committed figures of
docs/benchmarks.md, when no run left a file. Needs the ``docs`` extra (matplotlib).

    .venv/bin/python scripts/plot_benchmarks.py [--input FILE] [--output PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, NullFormatter

matplotlib.use("Agg")  # no display needed: render straight to a file

ROOT = Path(__file__).resolve().parent.parent
RUN_OUTPUT = Path("/tmp/gateway-bench.json")
COMMITTED = ROOT / "docs" / "data" / "benchmarks.json"
OUTPUT = ROOT / "docs" / "images" / "benchmarks.png"
GATEWAY = "project"  # run.py's name for the candidate under test
LABELS = {GATEWAY: "gateway", "direct": "direct\n(no proxy)"}
GATEWAY_COLOR = "#d62728"
OTHER_COLOR = "#7f9fbf"

Results = dict[str, dict[str, dict[str, Any]]]


def default_input() -> Path:
    """Return the latest run's output when there is one, else the committed figures."""
    return RUN_OUTPUT if RUN_OUTPUT.exists() else COMMITTED


def load(path: Path) -> Results:
    """Read scenario -> candidate -> result (rps, ttft_ms.p99) from a run.py JSON file."""
    results: Results = json.loads(path.read_text())
    for scenario, candidates in results.items():
        for name, result in candidates.items():
            if "rps" not in result or "p99" not in result.get("ttft_ms", {}):
                raise ValueError(f"{path}: {scenario}/{name} lacks rps or ttft_ms.p99")
    return results


def ordered(candidates: dict[str, dict[str, Any]]) -> list[str]:
    """Return the candidates with the bare backend first and the gateway last."""
    rest = [n for n in candidates if n not in ("direct", GATEWAY)]
    return [n for n in ("direct",) if n in candidates] + rest + (
        [GATEWAY] if GATEWAY in candidates else [])


def bars(ax: Axes, names: list[str], values: list[float], fmt: str) -> None:
    """Draw one bar per candidate, the gateway's highlighted, each labelled with its value."""
    colors = [GATEWAY_COLOR if n == GATEWAY else OTHER_COLOR for n in names]
    drawn = ax.bar(range(len(names)), values, color=colors)
    ax.bar_label(drawn, labels=[fmt.format(v) for v in values], fontsize=8, padding=2)
    ax.set_xticks(range(len(names)), [LABELS.get(n, n) for n in names], fontsize=8,
                  rotation=30, ha="right")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def log_scale(ax: Axes, values: list[float]) -> None:
    """Put ``ax`` on a log scale that starts at the decade below the smallest value."""
    ax.set_yscale("log")
    ax.set_ylim(bottom=10 ** math.floor(math.log10(max(min(values), 0.1))))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot(results: Results, output: Path, source: str) -> None:
    """Draw rps (top row) and TTFT p99 (bottom row, log scale) for every scenario."""
    scenarios = list(results)
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.2 * len(scenarios), 7.5),
                             squeeze=False)
    for column, scenario in enumerate(scenarios):
        names = ordered(results[scenario])
        rps_ax, ttft_ax = axes[0][column], axes[1][column]
        bars(rps_ax, names, [results[scenario][n]["rps"] for n in names], "{:,.0f}")
        rps_ax.set_title(scenario, fontweight="bold")
        bars(ttft_ax, names, [results[scenario][n]["ttft_ms"]["p99"] for n in names], "{:,.0f}")
        log_scale(ttft_ax, [results[scenario][n]["ttft_ms"]["p99"] for n in names])
        if column == 0:
            rps_ax.set_ylabel("requests / s (higher is better)")
            ttft_ax.set_ylabel("TTFT p99, ms, log scale (lower is better)")
    fig.suptitle(f"Gateway vs. reference proxies ({source})", fontsize=11)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, read the results and write the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=None,
                        help=f"run.py JSON (default: {RUN_OUTPUT} if present, else {COMMITTED})")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"PNG (default: {OUTPUT})")
    args = parser.parse_args(argv)
    source = args.input or default_input()
    try:
        results = load(source)
    except (OSError, ValueError) as exc:
        print(f"cannot read benchmark results: {exc}", file=sys.stderr)
        return 1
    label = str(COMMITTED.relative_to(ROOT)) if source.resolve() == COMMITTED else str(source)
    plot(results, args.output, label)
    print(f"wrote {args.output} from {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
