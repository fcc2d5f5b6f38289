"""What the envelope and tracing add to one hop, against bare aiokafka in the same run.

Four variants, each timing a hop from just before its send to its handler, one
event at a time: bare aiokafka (the peer), aiokafka with the envelope and the
Bus's spans, the Bus with traces ``off`` (every service's default: spans that
would not be recorded are not made), and the Bus recording every span and
exporting it (batch processor into memory). Each variant runs at two paces:

- ``idle``: a pause after each hop (:data:`bench.bus.arrivals.SETTLE`), so each
  event meets an idle pipeline, as on a quiet dispatch path. Between events the
  broker and the other processes run, so the Python code of each hop starts on
  cold CPU caches: the same work then takes several times longer than back to back.
- ``back to back``: the next send as soon as the handler ran: warm caches, as
  under steady traffic.

Rounds rotate the order of the variants, so drift in the machine's load hits all
of them alike. Besides latency, each variant's process CPU time per hop is
recorded: it counts the producer and consumer work of this process, not the broker's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from bench.bus import hops
from bench.bus.arrivals import SETTLE, Arrivals
from bench.bus.plan import Plan
from bench.bus.stage import Stage
from bench.bus.stats import Distribution
from bench.bus.tracing import SpanShipping
from bench.bus.workload import state_change
from strata.api.scheduler.v1.scheduler_pb2 import TaskStateChanged

Path = Callable[[Stage, Arrivals], AbstractAsyncContextManager[hops.Send]]


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    export: bool = False


VARIANTS = (
    Variant("aiokafka, bare", hops.bare),
    Variant("aiokafka + envelope + spans", hops.enveloped),
    Variant("Bus, traces off", hops.bus),
    Variant("Bus, spans recorded and exported", hops.bus, export=True),
)
PEER = VARIANTS[0].name
PACES = {"idle": SETTLE, "back to back": 0.0}
"""Pause after each hop, by the name of the pace."""


@dataclass
class Tally:
    """The samples and CPU seconds one variant gathered over all rounds."""

    samples: list[float] = field(default_factory=list)
    cpu: float = 0.0


@dataclass(frozen=True)
class VariantResult:
    name: str
    pace: str
    hop: Distribution
    cpu_us_per_hop: float
    p50_ratio: float
    p99_ratio: float
    cpu_ratio: float
    """Each ratio is this variant's figure over the bare peer's."""


@dataclass(frozen=True)
class OverheadResult:
    variants: list[VariantResult]
    spans_exported: int
    hot_added_us: float
    """CPU µs per event that the envelope and spans add when run back to back."""


@dataclass(frozen=True)
class Received:
    """The parts of a consumer record the Bus reads, for the loop without Kafka."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: list[tuple[str, bytes]]


async def measure(stage: Stage, plan: Plan, shipping: SpanShipping) -> OverheadResult:
    """Open every path, warm each up, then run the interleaved rounds at both paces."""
    arrivals = Arrivals()
    tallies = {(pace, v.name): Tally() for pace in PACES for v in VARIANTS}
    counter = itertools.count()
    async with contextlib.AsyncExitStack() as stack:
        sends = {}
        for path in dict.fromkeys(v.path for v in VARIANTS):
            sends[path] = await stack.enter_async_context(path(stage, arrivals))
        for variant in VARIANTS:
            await _hops(sends[variant.path], arrivals, counter, plan.warmup, SETTLE)
        spans = 0
        per_round = plan.hop_samples // plan.hop_rounds
        for round_number in range(plan.hop_rounds):
            for pace, pause in PACES.items():
                for variant in _rotated(VARIANTS, round_number):
                    shipping.on = variant.export
                    started = time.process_time()
                    taken = await _hops(sends[variant.path], arrivals, counter, per_round, pause)
                    tallies[pace, variant.name].cpu += time.process_time() - started
                    tallies[pace, variant.name].samples.extend(taken)
                    shipping.on = False
                    spans += shipping.drain()
    return OverheadResult(
        _results(tallies), spans_exported=spans, hot_added_us=hot_added_cost(plan.throughput_events)
    )


def hot_added_cost(events: int) -> float:
    """CPU µs per event of the enveloped path's own work minus the bare path's, no I/O.

    Run back to back, so code and data stay in the CPU caches: the floor of what the
    envelope and spans cost, to set beside the per-hop difference measured above.
    """
    topic = "bench.hot"
    started = time.process_time()
    for number in range(events):
        change = state_change(number)
        with hops.sending_traced(topic, change.attempt.run_id, change) as (value, headers):
            pass
        hops.handle_traced(Received(topic, 0, number, value, headers), _ignore)
    enveloped = time.process_time() - started
    started = time.process_time()
    for number in range(events):
        TaskStateChanged.FromString(state_change(number).SerializeToString())
    bare = time.process_time() - started
    return (enveloped - bare) / events * 1e6


def _ignore(key: str) -> None:
    """Nobody waits for events of the loop without Kafka."""


async def _hops(
    send: hops.Send, arrivals: Arrivals, counter: Iterator[int], count: int, pause: float
) -> list[float]:
    """``count`` hops one after another, each under a key never used before."""
    taken = []
    for _ in range(count):
        number = next(counter)
        key = f"run-{number}"
        arrival = arrivals.expect(key)
        started = time.perf_counter()
        await send(key, state_change(number))
        taken.append(await arrivals.wait(arrival, key) - started)
        if pause:
            await asyncio.sleep(pause)
    return taken


def _rotated(variants: tuple[Variant, ...], steps: int) -> tuple[Variant, ...]:
    steps %= len(variants)
    return variants[steps:] + variants[:steps]


def _results(tallies: dict[tuple[str, str], Tally]) -> list[VariantResult]:
    """Each variant at each pace, with its ratios to the peer at the same pace."""
    results = []
    for (pace, name), tally in tallies.items():
        peer = tallies[pace, PEER]
        peer_hop = Distribution.of(peer.samples)
        hop = Distribution.of(tally.samples)
        results.append(
            VariantResult(
                name=name,
                pace=pace,
                hop=hop,
                cpu_us_per_hop=tally.cpu / len(tally.samples) * 1e6,
                p50_ratio=hop.p50 / peer_hop.p50,
                p99_ratio=hop.p99 / peer_hop.p99,
                cpu_ratio=tally.cpu / peer.cpu,
            )
        )
    return results
