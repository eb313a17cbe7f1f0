"""The plots of the side-by-side report, from its JSON (run by ``side_by_side.py`` with the
matplotlib of its own virtual environment).

    benchmarks/.venvs/plots/bin/python benchmarks/plot_side_by_side.py RESULTS.json OUTDIR

Writes ``throughput.png`` (completed per second against offered load, flat out at the
right), ``cpu.png`` (CPU microseconds per run against offered load: each peer's whole,
Nexus' own processes with PostgreSQL and Redis, and the emulator apart) and
``latency.png`` (p50 and p99 at each offered load), and ``side_by_side.md``, the runs as a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLOURS = {
    "nexus": "C0",
    "nexus-s3": "C4",
    "nexus-bulk": "C5",
    "dramatiq": "C1",
    "celery": "C2",
    "arq": "C3",
}


Points = list[tuple[float, float]]


def _series(runs: list[dict[str, Any]], key: str, flat_x: float) -> dict[str, Points]:
    found: dict[str, Points] = {}
    for run in runs:
        value = run
        for part in key.split("."):
            value = value.get(part, {}) if isinstance(value, dict) else {}
        if run.get("skipped") or "error" in run or not isinstance(value, int | float):
            continue
        x = run["offered_per_second"] or flat_x
        found.setdefault(run["system"], []).append((x, float(value)))
    return {k: sorted(v) for k, v in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", type=Path, help="the report's JSON")
    parser.add_argument("outdir", type=Path, help="where the PNGs go")
    args = parser.parse_args()
    import matplotlib  # only in the report's own environment (see side_by_side.py)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, outdir = args.source, args.outdir
    report = json.loads(source.read_text())
    runs = report["runs"]
    offered = [r["offered_per_second"] for r in runs if r["offered_per_second"]]
    flat_x = max(offered, default=1000) * 1.25
    machine, speed = report["machine"], report["timeit_ms_before"]
    title = f"{report['date']}, {machine['cpus']} cores, timeit {speed:.0f} ms"

    def axes(name: str, ylabel: str) -> tuple[Any, Any]:
        figure, ax = plt.subplots(figsize=(8, 5))
        ax.set_xlabel("offered load, runs or tasks per second (flat out at the right)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{name}\n{title}", fontsize=10)
        ax.axvline(flat_x * 0.92, color="grey", linewidth=0.5, linestyle=":")
        ax.grid(alpha=0.3)
        return figure, ax

    figure, ax = axes("Completed per second", "completed / s")
    for system, points in _series(runs, "completed_per_second", flat_x).items():
        ax.plot(*zip(*points, strict=True), "o-", label=system, color=COLOURS.get(system))
    ax.legend()
    figure.savefig(outdir / "throughput.png", dpi=110, bbox_inches="tight")

    figure, ax = axes("CPU per completed run", "CPU µs per run")
    for system, points in _series(runs, "cpu_us_per_run_total", flat_x).items():
        if system.startswith("nexus"):
            continue
        ax.plot(*zip(*points, strict=True), "o-", label=f"{system} (client, workers, Redis)",
                color=COLOURS.get(system))  # fmt: skip
    for key, style, what in (
        ("cpu_us_per_run_nexus", "o-", "own + PostgreSQL + Redis"),
        ("cpu_us_per_run_emulator", "s--", "emulator"),
    ):
        for system, points in _series(runs, key, flat_x).items():
            ax.plot(*zip(*points, strict=True), style, label=f"{system} {what}",
                    color=COLOURS.get(system))  # fmt: skip
    ax.axhline(500, color="C0", linewidth=0.6, linestyle=":")
    ax.axhline(200, color="C0", linewidth=0.6, linestyle="-.")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    figure.savefig(outdir / "cpu.png", dpi=110, bbox_inches="tight")

    figure, ax = axes("Latency, submission to result readable", "ms (log)")
    for percentile, style in (("p50", "o-"), ("p99", "^--")):
        for system, points in _series(runs, f"latency_ms.{percentile}", flat_x).items():
            ax.plot(*zip(*points, strict=True), style, label=f"{system} {percentile}",
                    color=COLOURS.get(system))  # fmt: skip
    ax.axhline(1000, color="grey", linewidth=0.6, linestyle=":")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=2)
    figure.savefig(outdir / "latency.png", dpi=110, bbox_inches="tight")
    (outdir / "side_by_side.md").write_text(table(report))
    return 0


def table(report: dict[str, Any]) -> str:
    """The runs as a Markdown table, for the README."""
    lines = [
        "| system | offered/s | completed/s | p50 / p99 ms | CPU µs per run |",
        "|---|---|---|---|---|",
    ]
    for run in sorted(report["runs"], key=lambda r: (r["offered_per_second"] or 1e9, r["system"])):
        offered = run["offered_per_second"]
        where = f"{offered:,.0f}" if offered else "flat out"
        if run.get("skipped") or "error" in run:
            problem = run.get("error", "skipped").splitlines()[0][:60]
            lines.append(f"| {run['system']} | {where} | {problem} | | |")
            continue
        latency = run.get("latency_ms", {})
        if run["system"].startswith("nexus"):
            cpu = (
                f"{run['cpu_us_per_run_nexus']:,.0f} Nexus + PostgreSQL + Redis,"
                f" {run['cpu_us_per_run_emulator']:,.0f} emulator,"
                f" {run['cpu_us_per_run_total']:,.0f} in all"
            )
        else:
            cpu = f"{run['cpu_us_per_run_total']:,.0f} (client, workers, Redis)"
        lines.append(
            f"| {run['system']} | {where} | {run['completed_per_second']:,.0f} |"
            f" {latency.get('p50', 0):,.0f} / {latency.get('p99', 0):,.0f} | {cpu} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
