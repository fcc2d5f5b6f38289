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

from bench.results import RESULTS, header, write
from bench.serving.inprocess import InProcess
from bench.serving.plan import Plan
from bench.serving.predict import PredictResult
from bench.serving.sidebyside import SideBySide
from bench.serving.swap import Swap

RERUN = "make bench  # or: uv run --frozen python -m bench.serving"

RPS_RATIO_AIM = 3.0
P50_AIM_MS = 1.0
PREDICT_P50_AIM_MS = 1.0
PREDICT_P99_AIM_MS = 3.0


@dataclass(frozen=True)
class Report:
    started: datetime
    seconds: float
    command: str
    machine: dict[str, str]
    plan: Plan
    compared: int
    """Rows both servers answered before the timing, to prove they serve the same model."""
    agreement: float
    """Largest difference between the gateway's and MLServer's answers on the same rows."""
    side_by_side: SideBySide
    in_process: InProcess
    swap: Swap
    predict: PredictResult

    @property
    def gateway_overhead_us(self) -> float:
        """Gateway ModelInfer p50 (one client) over ONNX Runtime's in-process p50."""
        return (
            self.side_by_side.strata_latency.overall.p50 - self.in_process.onnx_runtime.p50
        ) * 1000

    @property
    def peer_overhead_us(self) -> float:
        """MLServer ModelInfer p50 (one client) over scikit-learn's in-process p50."""
        return (
            self.side_by_side.peer_latency.overall.p50 - self.in_process.scikit_learn.p50
        ) * 1000

    def markdown(self) -> str:
        """The tables, with the run's date, machine and command above them."""
        return "\n".join(
            [
                *header(self.started, self.seconds, self.command, self.machine),
                *self._side_by_side(),
                "",
                *self._predict(),
                "",
                *self._swap(),
                "",
                f"Same model on both: the largest difference between the gateway's and "
                f"MLServer's answers on {self.compared} rows was {self.agreement:.2e}; "
                f"between Predict's and Feast + MLServer's, {self.predict.agreement:.2e}.",
            ]
        )

    def _side_by_side(self) -> list[str]:
        s, p, inp = self.side_by_side, self.side_by_side.peer_latency, self.in_process
        ours = s.strata_latency
        return _markdown(
            [
                ("measure", "Strata gateway", "MLServer", "Strata / MLServer", "aim"),
                (
                    f"ModelInfer, 1 client, ms p50 / p90 / p99 "
                    f"({self.plan.latency_rounds} x {self.plan.latency_samples:,} sequential)",
                    ours.overall.brief(),
                    p.overall.brief(),
                    f"{s.p50_ratio:.2f} / {s.p99_ratio:.2f} (p50 / p99)",
                    f"p50 ≤ {P50_AIM_MS:g} ms: "
                    f"{'met' if ours.overall.p50 <= P50_AIM_MS else 'missed'}",
                ),
                (
                    f"ModelInfer, {s.clients} concurrent clients, requests/s "
                    f"(median of {self.plan.load_rounds} x {self.plan.load_seconds:g} s)",
                    f"{s.strata_rps.median:,.0f}",
                    f"{s.peer_rps.median:,.0f}",
                    f"{s.rps_ratio:.2f}",
                    f"≥ {RPS_RATIO_AIM:g}x MLServer: "
                    f"{'met' if s.rps_ratio >= RPS_RATIO_AIM else 'missed'}",
                ),
                (
                    f"the client's CPU per answered call in those rounds, µs "
                    f"(one process, {s.clients} channels)",
                    f"{s.strata_client_cpu_us:,.0f}",
                    f"{s.peer_client_cpu_us:,.0f}",
                    "",
                    "",
                ),
                (
                    "the model in-process, one row, µs p50 / p99 (ONNX Runtime; scikit-learn)",
                    f"{inp.onnx_runtime.p50 * 1000:,.0f} / {inp.onnx_runtime.p99 * 1000:,.0f}",
                    f"{inp.scikit_learn.p50 * 1000:,.0f} / {inp.scikit_learn.p99 * 1000:,.0f}",
                    "",
                    "",
                ),
                (
                    "server and client over the model in-process, µs at p50",
                    f"{self.gateway_overhead_us:,.0f}",
                    f"{self.peer_overhead_us:,.0f}",
                    f"{self.gateway_overhead_us / self.peer_overhead_us:.2f}",
                    "",
                ),
            ]
        )

    def _predict(self) -> list[str]:
        r = self.predict
        ours, theirs = r.strata_latency.overall, r.peer_latency.overall
        met = ours.p50 <= PREDICT_P50_AIM_MS and ours.p99 <= PREDICT_P99_AIM_MS
        return _markdown(
            [
                (
                    "measure",
                    "Strata Predict (features + model + log)",
                    "Feast server, then MLServer",
                    "Strata / peers",
                    "aim",
                ),
                (
                    f"one driver, 1 client, ms p50 / p90 / p99 "
                    f"({self.plan.latency_rounds} x {self.plan.latency_samples:,} sequential)",
                    ours.brief(),
                    theirs.brief(),
                    f"{r.p50_ratio:.2f} / {r.p99_ratio:.2f} (p50 / p99)",
                    f"p50 ≤ {PREDICT_P50_AIM_MS:g} ms, p99 ≤ {PREDICT_P99_AIM_MS:g} ms: "
                    f"{'met' if met else 'missed'}",
                ),
                (
                    f"one driver, {r.clients} concurrent clients, requests/s "
                    f"(median of {self.plan.load_rounds} x {self.plan.load_seconds:g} s)",
                    f"{r.strata_rps.median:,.0f}",
                    f"{r.peer_rps.median:,.0f}",
                    f"{r.rps_ratio:.2f}",
                    "",
                ),
            ]
        )

    def _swap(self) -> list[str]:
        w = self.swap
        return _markdown(
            [
                ("champion swap under load (Strata gateway)", "value", "aim"),
                (
                    "failed requests, of all calls during the run",
                    f"{w.failed} of {w.calls:,}"
                    + (f" (first: {w.first_failure})" if w.failed else ""),
                    f"0: {'met' if w.failed == 0 else 'missed'}",
                ),
                (
                    f"ms p50 / p90 / p99 during the swap ({w.during.count:,} calls)",
                    w.during.brief(),
                    "",
                ),
                (
                    f"ms p50 / p90 / p99 before it ({w.baseline.count:,} calls)",
                    w.baseline.brief(),
                    "",
                ),
                (
                    "promotion to the first answer from version 2, ms",
                    f"{w.promote_to_new_ms:,.0f}",
                    "",
                ),
                (
                    "answers from version 1 to calls started after that first answer",
                    f"{w.old_after_new}",
                    "",
                ),
            ]
        )

    def write(self, folder: Path = RESULTS) -> tuple[Path, Path]:
        """Write ``serving-<time>.json`` and ``serving-<time>.md``; return their paths."""
        raw = {
            "rerun": RERUN,
            **dataclasses.asdict(self),
            "gateway_overhead_us": self.gateway_overhead_us,
            "peer_overhead_us": self.peer_overhead_us,
        }
        return write("serving", self.started, raw, self.markdown(), folder)


def _markdown(rows: Sequence[Sequence[str]]) -> list[str]:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]
