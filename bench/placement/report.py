"""The tables a run prints, and the files it leaves under ``bench/results/``.

Every figure comes from this run; the JSON file keeps them unrounded (every
round, every burst, both simulated outcomes, the machine facts).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.placement.kube_side import Binding
from bench.placement.plan import Plan
from bench.placement.simulation import Outcome
from bench.placement.strata_side import Round
from bench.results import RESULTS, header, write

RERUN = "make bench  # or: uv run --frozen python -m bench.placement"

RATIO_AIM = 3.0
"""Durable placements per second over tuned kube-scheduler's bound pods per second."""
RATE_AIM = 1_000.0
"""Durable placements per second at the largest fleet."""
PLACE_CPU_AIM = 1.0
"""CPU seconds of ``place()`` alone for the burst on the largest fleet: well under it."""
NODE_HOURS_AIM = 0.25
"""Share of node-hours usage-aware placement saves over request-based placement."""
RETRIED_AIM = 0.01
TUNED_QPS = 5_000.0


@dataclass(frozen=True)
class Report:
    started: datetime
    seconds: float
    command: str
    machine: dict[str, str]
    plan: Plan
    rounds: dict[int, list[Round]]
    """Strata's rounds by fleet size."""
    place_cpu: dict[int, float]
    """CPU seconds of place() alone by fleet size."""
    bindings: list[Binding]
    """kube-scheduler's bursts (empty when the Kubernetes side was skipped)."""
    kube_version: str
    simulated: tuple[Outcome, Outcome]
    """Request-based, then usage-aware."""
    trace_runs: int

    def markdown(self) -> str:
        return "\n".join(
            [
                *header(self.started, self.seconds, self.command, self.machine),
                *self.placement_table(),
                "",
                *self.simulation_table(),
            ]
        )

    def placement_table(self) -> list[str]:
        peer = f"kube-scheduler {self.kube_version}"
        rows: list[tuple[str, ...]] = [("measure", "Strata", peer, "Strata / kube", "aim")]
        largest = max(self.plan.node_counts)
        for nodes in self.plan.node_counts:
            rounds = self.rounds[nodes]
            ours = statistics.median(r.rate for r in rounds)
            tuned = self._binding(nodes, TUNED_QPS)
            ratio = "not measured" if tuned is None else _verdict(ours / tuned.rate >= RATIO_AIM)
            aims = [f"≥ {RATIO_AIM:g} x kube: {ratio}"]
            if nodes == largest:
                aims.append(f"≥ {RATE_AIM:,.0f}/s: " + _verdict(ours >= RATE_AIM))
            rows.append(
                (
                    f"{nodes:,} nodes, {self.plan.attempts:,} waiting: Strata durable "
                    f"placements/s (median of {len(rounds)} rounds, each committed in one "
                    f"transaction) vs pods bound/s (client QPS and burst {TUNED_QPS:,.0f})",
                    f"{ours:,.0f} ({_seconds(rounds)})",
                    _kube_cell(tuned),
                    f"{ours / tuned.rate:.1f}" if tuned is not None else "",
                    "; ".join(aims),
                )
            )
        for binding in self.bindings:
            if binding.qps == TUNED_QPS:
                continue
            rows.append(
                (
                    f"{binding.nodes:,} nodes, {binding.pods:,} pending pods, kube-scheduler "
                    f"with its default client rate limit (QPS {binding.qps:g}, burst "
                    f"{binding.burst}), pods bound/s",
                    "",
                    _kube_cell(binding),
                    "",
                    "",
                )
            )
        cpu = self.place_cpu[largest]
        rows.append(
            (
                f"`place()` alone (no database), {self.plan.attempts:,} attempts onto "
                f"{largest:,} nodes, CPU s",
                f"{cpu:.2f}",
                "",
                "",
                f"well under {PLACE_CPU_AIM:g} s: " + _verdict(cpu < PLACE_CPU_AIM / 2),
            )
        )
        return _markdown(rows)

    def simulation_table(self) -> list[str]:
        request, usage = self.simulated
        saved = 1 - usage.node_hours / request.node_hours
        rows: list[tuple[str, ...]] = [
            (
                f"simulated {self.plan.sim_days:g} days, {self.trace_runs:,} task runs "
                f"(seed {self.plan.sim_seed})",
                "reserve the request",
                "reserve measured usage",
                "usage / request",
                "aim",
            ),
            (
                "node-hours",
                f"{request.node_hours:,.0f}",
                f"{usage.node_hours:,.0f}",
                f"{usage.node_hours / request.node_hours:.2f} ({saved:.1%} fewer)",
                f"≥ {NODE_HOURS_AIM:.0%} fewer: " + _verdict(saved >= NODE_HOURS_AIM),
            ),
            _pair(
                "memory used / node memory", request.memory_utilisation, usage.memory_utilisation
            ),
            _pair("memory reserved / node memory", request.reserved_share, usage.reserved_share),
            (
                "memory reserved by attempts, TiB-hours",
                f"{_tib_hours(request.reserved_memory_seconds):,.1f}",
                f"{_tib_hours(usage.reserved_memory_seconds):,.1f}",
                f"{usage.reserved_memory_seconds / request.reserved_memory_seconds:.2f}",
                "",
            ),
            _pair("CPU used / node CPU", request.cpu_utilisation, usage.cpu_utilisation),
            (
                "attempts retried for memory (node out of memory + own limit) / attempts",
                _retried(request),
                _retried(usage),
                "",
                f"≤ {RETRIED_AIM:.0%}: " + _verdict(usage.retried_share <= RETRIED_AIM),
            ),
            (
                "most nodes at once",
                f"{request.peak_nodes:,}",
                f"{usage.peak_nodes:,}",
                "",
                "",
            ),
            (
                "mean wait, arrival → start of the attempt that finished, s",
                f"{request.mean_wait:,.0f}",
                f"{usage.mean_wait:,.0f}",
                "",
                "",
            ),
        ]
        return _markdown(rows)

    def _binding(self, nodes: int, qps: float) -> Binding | None:
        for binding in self.bindings:
            if binding.nodes == nodes and binding.qps == qps:
                return binding
        return None

    def raw(self) -> dict[str, Any]:
        fields = dataclasses.asdict(self)
        fields["simulated"] = [
            {
                **dataclasses.asdict(o),
                "node_hours": o.node_hours,
                "memory_utilisation": o.memory_utilisation,
                "cpu_utilisation": o.cpu_utilisation,
                "reserved_share": o.reserved_share,
                "retried_share": o.retried_share,
            }
            for o in self.simulated
        ]
        return {"rerun": RERUN, **fields}

    def write(self, folder: Path = RESULTS) -> tuple[Path, Path]:
        """Write ``placement-<time>.json`` and ``.md``; return their paths."""
        return write("placement", self.started, self.raw(), self.markdown(), folder)


def _kube_cell(binding: Binding | None) -> str:
    if binding is None:
        return "not measured"
    return (
        f"{binding.rate:,.0f} ({binding.bound:,} pods, first to last bind "
        f"{binding.seconds:.1f} s; {binding.from_start:.1f} s from the scheduler's start)"
    )


def _seconds(rounds: Sequence[Round]) -> str:
    return "rounds of " + ", ".join(f"{r.seconds:.2f}" for r in rounds) + " s"


def _pair(what: str, request: float, usage: float) -> tuple[str, ...]:
    return (what, f"{request:.1%}", f"{usage:.1%}", f"{usage / request:.2f}", "")


def _tib_hours(byte_seconds: float) -> float:
    return byte_seconds / 1024**4 / 3600


def _retried(outcome: Outcome) -> str:
    return (
        f"{outcome.retried_share:.2%} ({outcome.evicted:,} + {outcome.out_of_memory:,} "
        f"of {outcome.attempts:,})"
    )


def _verdict(met: bool) -> str:
    return "met" if met else "missed"


def _markdown(rows: Sequence[Sequence[str]]) -> list[str]:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
