"""The tables a run prints, and the files it leaves under ``bench/results/``.

Every figure in the tables comes from the result objects of this run; the JSON file
keeps them unrounded, with every round and the machine facts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench.features.freshness import FreshnessResult, ThroughputResult
from bench.features.online import OnlineResult, Side
from bench.features.plan import Plan
from bench.features.training import TrainingResult
from bench.results import RESULTS, header, write

RERUN = "make bench  # or: uv run --frozen python -m bench.features"

FEAST_SPEEDUP_AIM = 20.0
DUCKDB_RATIO_AIM = 1.5
LIBRARY_RATIO_AIM = 1.3
SERVER_SPEEDUP_AIM = 3.0
FRESHNESS_P99_AIM_MS = 100.0
THROUGHPUT_AIM = 20_000.0


@dataclass(frozen=True)
class Report:
    started: datetime
    seconds: float
    command: str
    machine: dict[str, str]
    plan: Plan
    training: TrainingResult
    online: OnlineResult
    freshness: FreshnessResult
    throughput: ThroughputResult

    def markdown(self) -> str:
        """The aims table and the value check, with the run's date, machine and command."""
        return "\n".join(
            [
                *header(self.started, self.seconds, self.command, self.machine),
                *aims_table(self),
                "",
                *value_checks(self),
            ]
        )

    def write(self, folder: Path = RESULTS) -> tuple[Path, Path]:
        """Write ``features-<time>.json`` and ``features-<time>.md``; return their paths."""
        raw = {"rerun": RERUN, **dataclasses.asdict(self)}
        return write("features", self.started, raw, self.markdown(), folder)


def aims_table(report: Report) -> list[str]:
    training, plan = report.training, report.plan
    local, remote = report.online.library_vs_hgetall, report.online.grpc_vs_feast
    fresh, through = report.freshness, report.throughput
    server_speedup = 1 / remote.p50_ratio
    size = f"{training.labels:,} labels x {training.rows:,} rows, {training.entities:,} entities"
    rounds = f"median of {plan.training_rounds}"
    rows = [
        ("measure", "Strata", "peer", "ratio", "aim"),
        (
            f"point-in-time training set, s ({size}; {rounds})",
            f"{training.median['strata']:.2f}",
            f"{training.median['feast']:.2f} (Feast {_feast(report)}, file offline store)",
            f"Feast / Strata {training.feast_over_strata:.1f}",
            _aim(training.feast_over_strata >= FEAST_SPEEDUP_AIM, f"≥ {FEAST_SPEEDUP_AIM:g}"),
        ),
        (
            f"point-in-time training set, s ({rounds})",
            f"{training.median['strata']:.2f}",
            f"{training.median['duckdb']:.2f} (raw DuckDB ASOF JOIN)",
            f"Strata / DuckDB {training.strata_over_duckdb:.2f}",
            _aim(training.strata_over_duckdb <= DUCKDB_RATIO_AIM, f"≤ {DUCKDB_RATIO_AIM:g}"),
        ),
        (
            "online read in process, 1 entity x 3 features, ms p50 / p99 "
            f"({plan.online_rounds} x {plan.online_samples:,} sequential)",
            _cell(local.ours),
            f"{_cell(local.peer)} (raw Redis HGETALL)",
            f"{local.p50_ratio:.2f} / {local.p99_ratio:.2f}",
            _aim(local.p50_ratio <= LIBRARY_RATIO_AIM, f"p50 ≤ {LIBRARY_RATIO_AIM:g}"),
        ),
        (
            "online read over the network, 1 entity x 3 features, ms p50 / p99 "
            f"({plan.online_rounds} x {plan.network_samples:,} sequential)",
            f"{_cell(remote.ours)} (GetOnlineFeatures, gRPC)",
            f"{_cell(remote.peer)} (feast serve, HTTP)",
            f"Feast / Strata {server_speedup:.2f} / {1 / remote.p99_ratio:.2f}",
            _aim(server_speedup >= SERVER_SPEEDUP_AIM, f"p50 ≥ {SERVER_SPEEDUP_AIM:g}"),
        ),
        (
            f"streaming freshness, produced → readable in Redis, ms p50 / p90 / p99 "
            f"({fresh.samples:,} events at {fresh.target_rate:,.0f}/s, keyspace notifications)",
            fresh.latency.brief(),
            "",
            "",
            _aim(fresh.latency.p99 <= FRESHNESS_P99_AIM_MS, f"p99 ≤ {FRESHNESS_P99_AIM_MS:g} ms"),
        ),
        (
            f"streaming throughput, one streamer, events/s ({through.timed_events:,} of a "
            f"{through.backlog:,}-event backlog)",
            f"{through.rate:,.0f}",
            "",
            "",
            _aim(through.rate >= THROUGHPUT_AIM, f"≥ {THROUGHPUT_AIM:,.0f}"),
        ),
    ]
    return _table(rows)


def value_checks(report: Report) -> list[str]:
    """What the run compared, in sentences the code fills in."""
    training, online, fresh = report.training, report.online, report.freshness
    lines = []
    for peer, comparison in training.comparisons.items():
        differing = ", ".join(f"{n} {c:,}" for n, c in comparison.differing.items())
        line = (
            f"Training set, Strata against {peer}: values differing per feature: {differing}; "
            f"labels missing from {peer}'s answer: {comparison.missing:,}"
        )
        if comparison.missing:
            line += f" ({comparison.missing_null:,} of them null in Strata's answer)"
        lines.append(line + f"; extra labels in {peer}'s answer: {comparison.extra:,}.")
    lines.append(
        f"Strata's answer has {training.nulls:,} labels with no value (no row at or before "
        "the label time, or a driver without rows)."
    )
    wrong = ", ".join(f"{side} {count}" for side, count in online.wrong.items())
    lines.append(
        f"Online values checked for {online.checked:,} drivers against the served table: "
        f"drivers answered wrongly: {wrong}."
    )
    lines.append(
        f"Freshness: {fresh.produced_rate:,.0f} events/s produced; events never seen written: "
        f"{fresh.lost}. Throughput: {report.throughput.seconds:.2f} s timed, the streamer "
        f"used {report.throughput.cpu_seconds:.2f} s of CPU in that span."
    )
    return [f"- {line}" for line in lines]


def _feast(report: Report) -> str:
    return report.machine.get("feast", "")


def _cell(side: Side) -> str:
    return f"{side.all.p50:.3f} / {side.all.p99:.3f}"


def _aim(met: bool, aim: str) -> str:
    return f"{aim}: {'met' if met else 'missed'}"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = [f"| {' | '.join(rows[0])} |", f"|{'---|' * len(rows[0])}"]
    lines += [f"| {' | '.join(row)} |" for row in rows[1:]]
    return lines
