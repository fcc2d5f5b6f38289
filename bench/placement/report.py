"""The tables a run prints, and the files it leaves under ``bench/results/``.

Every figure comes from this run; the JSON file keeps them unrounded (every
round, every burst, both simulated outcomes, the machine facts).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
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
    simulated: tuple[Outcome, ...]
    """Request-based first, then each usage-aware way (peaks, means)."""
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
        request, *aware = self.simulated
        head = (
            f"simulated {self.plan.sim_days:g} days, {self.trace_runs:,} task runs "
            f"(seed {self.plan.sim_seed})",
            "reserve the request",
            *(f"reserve measured {_SIDES[o.policy]}" for o in aware),
            *(f"{_SIDES[o.policy]} / request" for o in aware),
            "aim",
        )
        rows: list[tuple[str, ...]] = [
            head,
            (
                "node-hours",
                *(f"{o.node_hours:,.0f}" for o in self.simulated),
                *(_saved(o.node_hours / request.node_hours) for o in aware),
                f"≥ {NODE_HOURS_AIM:.0%} fewer: "
                + _sides(aware, lambda o: 1 - o.node_hours / request.node_hours >= NODE_HOURS_AIM),
            ),
            self._shares("memory used / node memory", lambda o: o.memory_utilisation),
            self._shares("memory reserved / node memory", lambda o: o.reserved_share),
            (
                "memory reserved by attempts, TiB-hours",
                *(f"{_tib_hours(o.reserved_memory_seconds):,.1f}" for o in self.simulated),
                *(
                    f"{o.reserved_memory_seconds / request.reserved_memory_seconds:.2f}"
                    for o in aware
                ),
                "",
            ),
            self._shares("CPU used / node CPU", lambda o: o.cpu_utilisation),
            (
                "attempts retried for memory (node out of memory + own limit) / attempts",
                *(_retried(o) for o in self.simulated),
                *("" for _ in aware),
                f"≤ {RETRIED_AIM:.0%}: " + _sides(aware, lambda o: o.retried_share <= RETRIED_AIM),
            ),
            (
                "most nodes at once",
                *(f"{o.peak_nodes:,}" for o in self.simulated),
                *("" for _ in aware),
                "",
            ),
            (
                "mean wait, arrival → start of the attempt that finished, s",
                *(f"{o.mean_wait:,.0f}" for o in self.simulated),
                *("" for _ in aware),
                "",
            ),
        ]
        return _markdown(rows)

    def _shares(self, what: str, share: Callable[[Outcome], float]) -> tuple[str, ...]:
        request, *aware = self.simulated
        return (
            what,
            *(f"{share(o):.1%}" for o in self.simulated),
            *(f"{share(o) / share(request):.2f}" for o in aware),
            "",
        )

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


_SIDES = {"peak": "peaks", "mean": "means"}
"""What each usage-aware way reserves memory from, as the tables name it."""


def _saved(ratio: float) -> str:
    return f"{ratio:.2f} ({1 - ratio:.1%} fewer)"


def _sides(aware: Sequence[Outcome], met: Callable[[Outcome], bool]) -> str:
    """The verdict for each usage-aware way, named."""
    return "; ".join(f"{_SIDES[o.policy]} " + _verdict(met(o)) for o in aware)


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
