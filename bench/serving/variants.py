"""Gateways with different settings side by side: ``python -m bench.serving.variants``.

For measuring one change to the gateway without the peers: each variant is a
gateway started with some ``STRATA_GATEWAY_*`` (or other) variables, all serving
the same logged model from one registry. Rounds alternate between them, as in
:mod:`bench.serving.sidebyside`, so a noisy neighbour hurts all alike: one client's
p50 and p99 over sequential calls, then 8 clients' requests/s and the gateway's own CPU per
answered call (user + system time of its process, read from psutil around each
round). Before timing, every variant must answer the same rows identically.

    uv run --frozen python -m bench.serving.variants \\
        thread:STRATA_GATEWAY_INLINE_BUDGET=0 inline:

prints one line per variant; nothing is written. Needs the local stack up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.bus.machine import load_average
from bench.serving import client, model, ours
from bench.serving.client import Target
from strata.core.logging import configure_logging
from strata.core.settings import TelemetrySettings, load

LOAD_WARMUP = 0.5


@dataclass
class Measured:
    """Each round's figures of one variant."""

    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    def line(self, name: str) -> str:
        def each(values: list[float], digits: int) -> str:
            rounds = ", ".join(f"{v:.{digits}f}" for v in values)
            return f"{statistics.median(values):.{digits}f} ({rounds})"

        return (
            f"{name}: 1 client p50 ms {each(self.p50_ms, 3)}, p99 ms {each(self.p99_ms, 3)}; "
            f"8 clients rps {each(self.rps, 0)}; "
            f"gateway CPU µs per call {each(self.cpu_us, 0)}"
        )


def parse(text: str) -> tuple[str, dict[str, str]]:
    """``name:VAR=value,VAR=value`` -> (name, variables); ``name:`` has none."""
    name, _, assignments = text.partition(":")
    if not name:
        raise ValueError(f"variant {text!r}: expected name:VAR=value,... (name required)")
    variables: dict[str, str] = {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {item!r} is not VAR=value")
        variables[key] = value
    return name, variables


def _gateway_process(address: str) -> psutil.Process:
    """The child gateway process listening on ``address``'s port."""
    port = address.rsplit(":", 1)[1]
    for child in psutil.Process().children():
        if child.environ().get("STRATA_SERVICE_GATEWAY_PORT") == port:
            return child
    raise RuntimeError(f"no gateway process of this run serves {address}")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def run(variants: dict[str, dict[str, str]], rounds: int, seconds: float) -> None:
    fitted = await asyncio.to_thread(model.fit, 1_000)
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as folder:
        root = Path(folder)
        async with ours.service("registry", root) as registry, AsyncExitStack() as stack:
            logged = await ours.log_versions(
                registry, fitted.first, fitted.second, fitted.rows[:64]
            )
            targets: dict[str, Target] = {}
            for name, variables in variants.items():
                (root / name).mkdir()
                saved = {key: os.environ.get(key) for key in variables}
                os.environ.update(variables)
                try:
                    gateway = ours.gateway(root / name, registry, logged)
                    targets[name] = await stack.enter_async_context(gateway)
                finally:
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key)
                        else:
                            os.environ[key] = value
                await client.until_ready(targets[name])
            answers = {n: await client.answers(t, fitted.rows[:32]) for n, t in targets.items()}
            if len({tuple(a) for a in answers.values()}) != 1:
                raise RuntimeError(f"the variants answer the same rows differently: {answers}")
            processes = {n: _gateway_process(t.address) for n, t in targets.items()}
            measured = {name: Measured() for name in targets}
            for _ in range(rounds):
                for name, target in targets.items():
                    took = await client.sequential(target, fitted.rows, 1_000, 100)
                    measured[name].p50_ms.append(statistics.median(took) * 1e3)
                    measured[name].p99_ms.append(statistics.quantiles(took, n=100)[98] * 1e3)
                for name, target in targets.items():
                    before = _cpu(processes[name])
                    done = await client.for_seconds(target, fitted.rows, 8, seconds, LOAD_WARMUP)
                    used = _cpu(processes[name]) - before
                    # the CPU spans the warm-up too: count its calls at the round's rate
                    calls = done.answered * (seconds + LOAD_WARMUP) / done.seconds
                    measured[name].rps.append(done.answered / done.seconds)
                    measured[name].cpu_us.append(used / calls * 1e6)
    for name, figures in measured.items():
        print(figures.line(name))
    print(f"load average at end: {load_average()}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.variants", description=__doc__)
    parser.add_argument("variants", nargs="+", help="name:VAR=value,... (name: for defaults)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one 8-client round")
    args = parser.parse_args()
    try:
        variants = dict(parse(text) for text in args.variants)
    except ValueError as exc:
        sys.exit(f"bench.serving.variants: {exc}")
    settings = load(TelemetrySettings)
    if "STRATA_TELEMETRY_LOG_LEVEL" not in os.environ:
        settings = settings.model_copy(update={"log_level": "WARNING"})
    configure_logging("bench.serving.variants", settings)
    asyncio.run(run(variants, args.rounds, args.seconds))


if __name__ == "__main__":
    main()
