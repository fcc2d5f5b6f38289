"""The tables a run prints, and the files it leaves under ``bench/results/``.

Every figure comes from this run's measurements; the JSON file keeps them
unrounded (every round, every hop and its stages, the machine facts).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.bus.stats import Distribution, paired_ratio
from bench.dispatch.analysis import STAGES, TAIL, Burst, Hop
from bench.dispatch.plan import Plan
from bench.results import RESULTS, header, write

RERUN = "make bench  # or: uv run --frozen python -m bench.dispatch"

RUN_AIM_S = 0.5
HOP_P50_AIM_MS = 10.0
HOP_P99_AIM_MS = 50.0
TRANSITIONS_AIM = 2_000
CONTEXT = (
    "Context from DESIGN.md, not measured here: Airflow 3 LocalExecutor ≈ 55 s for the "
    "chain of 50 (≈ 0.94 s between tasks) and ≈ 36 s for 200 independent tasks; Dagster "
    "in one process, nothing durable, ≈ 0.5 s and ≈ 1.8 s."
)


@dataclass(frozen=True)
class Report:
    started: datetime
    seconds: float
    command: str
    machine: dict[str, str]
    plan: Plan
    prefect: str
    """The peer's version."""
    chain: tuple[list[float], list[float]]
    """Seconds of each round, Strata's and Prefect's, trigger to finish."""
    fanout: tuple[list[float], list[float]]
    hops: list[Hop]
    """Every hop of every timed Strata chain."""
    prefect_hops: list[float]
    """Prefect's code → code seconds, every hop of every timed chain."""
    burst: Burst
    burst_seconds: float
    """First trigger of the burst to its last run's end."""

    def markdown(self) -> str:
        return "\n".join(
            [
                *header(self.started, self.seconds, self.command, self.machine),
                *self.aims_table(),
                "",
                *self.stage_table(),
                "",
                CONTEXT,
            ]
        )

    def aims_table(self) -> list[str]:
        plan, peer = self.plan, f"Prefect {self.prefect}"
        hop = Distribution.of([h.seconds for h in self.hops])
        ours = Distribution.of([h.code_to_code for h in self.hops])
        theirs = Distribution.of(self.prefect_hops)
        rows = [
            ("measure", "Strata", peer, "Strata / Prefect", "aim"),
            _run_row(f"{plan.chain} no-op tasks in a chain", self.chain, plan.rounds),
            _run_row(f"{plan.fanout} independent no-op tasks", self.fanout, plan.rounds),
            (
                f"one hop, upstream TaskFinished → downstream code running, ms p50 / p99 "
                f"({hop.count} hops)",
                f"{hop.p50:,.1f} / {hop.p99:,.1f}",
                "",
                "",
                "p50 ≤ 10 ms: "
                + _verdict(hop.p50 <= HOP_P50_AIM_MS)
                + "; p99 ≤ 50 ms: "
                + _verdict(hop.p99 <= HOP_P99_AIM_MS),
            ),
            (
                f"one hop, upstream code ran → downstream code ran, ms p50 / p99 "
                f"({ours.count} / {theirs.count} hops)",
                f"{ours.p50:,.1f} / {ours.p99:,.1f}",
                f"{theirs.p50:,.1f} / {theirs.p99:,.1f}",
                f"{ours.p50 / theirs.p50:.2f} (p50)",
                "",
            ),
            (
                f"durable task state transitions/s, {plan.burst_runs} runs x "
                f"{plan.burst_width} tasks triggered at once",
                f"{self.burst.rate:,.0f} (peak {self.burst.peak:,} in 1 s; "
                f"{self.burst.transitions:,} in {self.burst.seconds:.1f} s; "
                f"last run done {self.burst_seconds:.1f} s after the first trigger)",
                "",
                "",
                f"≥ {TRANSITIONS_AIM:,}: " + _verdict(self.burst.rate >= TRANSITIONS_AIM),
            ),
        ]
        return _markdown(rows)

    def stage_table(self) -> list[str]:
        hop_mean = statistics.fmean(h.seconds for h in self.hops)
        rows = [("stage of one chain hop", "p50 ms", "p90 ms", "p99 ms", "mean ms", "of mean hop")]
        for index, name in enumerate(STAGES):
            stage = Distribution.of([h.stages[index] for h in self.hops])
            rows.append(
                (
                    name,
                    f"{stage.p50:,.1f}",
                    f"{stage.p90:,.1f}",
                    f"{stage.p99:,.1f}",
                    f"{stage.mean:,.1f}",
                    f"{stage.mean / 1000 / hop_mean:.0%}",
                )
            )
        tail = Distribution.of([h.tail for h in self.hops])
        rows.append(
            (
                TAIL,
                f"{tail.p50:,.1f}",
                f"{tail.p90:,.1f}",
                f"{tail.p99:,.1f}",
                f"{tail.mean:,.1f}",
                "",
            )
        )
        return _markdown(rows)

    def write(self, folder: Path = RESULTS) -> tuple[Path, Path]:
        """Write ``dispatch-<time>.json`` and ``.md``; return their paths."""
        raw = {"rerun": RERUN, **dataclasses.asdict(self)}
        return write("dispatch", self.started, raw, self.markdown(), folder)


def _run_row(what: str, rounds: tuple[list[float], list[float]], count: int) -> tuple[str, ...]:
    ours, theirs = rounds
    ours_median = statistics.median(ours)
    return (
        f"{what}, trigger → run finished, s (median of {count})",
        f"{ours_median:,.2f}",
        f"{statistics.median(theirs):,.2f}",
        f"{paired_ratio(ours, theirs):.2f}",
        f"≤ {RUN_AIM_S} s: " + _verdict(ours_median <= RUN_AIM_S),
    )


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def _markdown(rows: Sequence[Sequence[str]]) -> list[str]:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
