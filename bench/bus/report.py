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

from bench.bus.dedup import DedupResult
from bench.bus.flow import FlowResult
from bench.bus.overhead import PEER, OverheadResult, VariantResult
from bench.bus.plan import Plan
from bench.bus.relay import RelayResult
from bench.results import RESULTS, header, write

RERUN = "make bench  # or: uv run --frozen python -m bench.bus"

RELAY_AIM = 5_000
CONSUMER_AIM = 2_000
COMMIT_TO_HANDLED_AIM_MS = 20.0
OVERHEAD_AIM = 1.10


@dataclass(frozen=True)
class Report:
    started: datetime
    seconds: float
    command: str
    machine: dict[str, str]
    plan: Plan
    relay: RelayResult
    dedup: DedupResult
    flow: FlowResult
    overhead: OverheadResult

    def markdown(self) -> str:
        """Both tables, with the run's date, machine and command above them."""
        return "\n".join(
            [
                *header(self.started, self.seconds, self.command, self.machine),
                *aims_table(self),
                "",
                *hop_table(self.overhead, self.plan),
            ]
        )

    def write(self, folder: Path = RESULTS) -> tuple[Path, Path]:
        """Write ``bus-<time>.json`` and ``bus-<time>.md``; return their paths."""
        raw = {"rerun": RERUN, **dataclasses.asdict(self)}
        return write("bus", self.started, raw, self.markdown(), folder)


def aims_table(report: Report) -> list[str]:
    relay, dedup, plan = report.relay, report.dedup, report.plan
    flow = report.flow.commit_to_handled
    peers = {v.pace: v for v in report.overhead.variants if v.name == PEER}
    rows = [
        ("measure", "Strata", "peer", "Strata / peer", "aim"),
        (
            f"outbox relay, events/s (median of {plan.throughput_rounds} x {relay.events:,})",
            f"{relay.relay.median:,.0f}",
            f"{relay.bare.median:,.0f} (aiokafka, same records)",
            f"{relay.ratio:.2f}",
            _at_least(relay.relay.median, RELAY_AIM),
        ),
        (
            "outbox enqueue, 1,000 events a transaction, events/s",
            f"{relay.enqueue.median:,.0f}",
            "",
            "",
            "",
        ),
        (
            f"de-duplicating consumer, Bus `on_batch` + `claim_many`, events/s "
            f"(median of {plan.throughput_rounds} x {dedup.records:,}, 10 % repeats)",
            f"{dedup.bus_batch.median:,.0f}",
            f"{dedup.batch.median:,.0f} (aiokafka batch, same work)",
            f"{dedup.ratio:.2f}",
            _at_least(dedup.bus_batch.median, CONSUMER_AIM),
        ),
        (
            f"de-duplicating consumer, Bus per event + `claim`, events/s "
            f"(median of {plan.per_event_rounds} x {dedup.per_event_records:,}, 10 % repeats)",
            f"{dedup.per_event.median:,.0f}",
            f"{dedup.handler_alone.median:,.0f} (its handler alone, 1 caller a partition)",
            f"{dedup.per_event_ratio:.2f}",
            _at_least(dedup.per_event.median, CONSUMER_AIM),
        ),
        (
            f"commit → handled through relay and Bus consumer, ms p50 / p90 / p99 "
            f"({flow.count:,} sequential)",
            flow.brief(),
            "",
            "",
            _at_most(flow.p50, COMMIT_TO_HANDLED_AIM_MS, "p50 ≤ 20 ms"),
        ),
        *(
            _hop_aim_row(variant, peers[variant.pace])
            for variant in report.overhead.variants
            if variant.name != PEER
        ),
    ]
    return _markdown(rows)


def _hop_aim_row(variant: VariantResult, peer: VariantResult) -> tuple[str, ...]:
    return (
        f"one hop ({variant.pace}), {variant.name}, ms p50",
        f"{variant.hop.p50:.2f}",
        f"{peer.hop.p50:.2f} ({PEER})",
        f"{variant.p50_ratio:.2f}",
        _at_most(variant.p50_ratio, OVERHEAD_AIM, "≤ 1.10"),
    )


def hop_table(overhead: OverheadResult, plan: Plan) -> list[str]:
    rows = [
        (
            f"one hop, {plan.hop_samples:,} sequential each",
            "pace",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "CPU µs/hop",
            "p50 / peer",
            "p99 / peer",
            "CPU / peer",
        )
    ]
    for v in overhead.variants:
        rows.append(
            (
                v.name,
                v.pace,
                f"{v.hop.p50:.2f}",
                f"{v.hop.p90:.2f}",
                f"{v.hop.p99:.2f}",
                f"{v.cpu_us_per_hop:,.0f}",
                f"{v.p50_ratio:.2f}",
                f"{v.p99_ratio:.2f}",
                f"{v.cpu_ratio:.2f}",
            )
        )
    notes = (
        f"Spans exported in the 'spans recorded and exported' rounds: "
        f"{overhead.spans_exported:,}. "
        f"The envelope and spans alone, back to back without Kafka: "
        f"{overhead.hot_added_us:,.0f} µs of CPU per event over the bare path's own work."
    )
    return [*_markdown(rows), "", notes]


def _at_least(value: float, aim: float) -> str:
    return f"≥ {aim:,}: {'met' if value >= aim else 'missed'}"


def _at_most(value: float, aim: float, label: str) -> str:
    return f"{label}: {'met' if value <= aim else 'missed'}"


def _markdown(rows: Sequence[Sequence[str]]) -> list[str]:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
