"""The ``local`` provider: agent processes on this machine, within a budget.

Each node is ``python -m strata.agent`` (the provisioner's own interpreter) with
the node id and the class's capacity in its environment, its own state folder
and log file under the provider's folder, and the provisioner's environment
otherwise (so it reaches the same blob store and telemetry, and authenticates as
``local_agent_env`` says). Its gRPC and metrics ports are picked free, so any
number of them share the machine.

The budget (what all its agents may offer together) is the fleet's to respect
(:func:`strata.provisioner.domain.scaling.plan_scaling`); :meth:`largest` tells the
fleet that no class may be bigger than the whole budget. A process that exits
without being asked is reported GONE; one being stopped gets SIGTERM (the agent
lets its running attempts finish within its grace) and is waited for. The agents
cannot outlive the provisioner that started them (nothing would know them), so
:meth:`close` stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from strata.provisioner.domain.resources import Resources
from strata.provisioner.providers import NodeClassSpec, NodePhase, ObservedNode

log = structlog.stdlib.get_logger(__name__)

STOP_GRACE = 60.0
"""Most seconds a stopped agent gets to end after SIGTERM before it is killed."""
_DROPPED = ("STRATA_PROVISIONER_", "STRATA_SERVICE_PROVISIONER_")
"""The provisioner's own settings, which its agents must not take for theirs."""


@dataclass
class _Agent:
    node_class: str
    process: asyncio.subprocess.Process
    log: Path
    stopping: bool = False


class LocalProvider:
    """Starts and stops agent processes of node classes on this machine."""

    name = "local"

    def __init__(
        self,
        budget: Resources,
        provisioner_address: str,
        state_dir: Path,
        agent_env: Mapping[str, str] | None = None,
    ) -> None:
        self.budget = budget
        self._address = provisioner_address
        self._state_dir = state_dir
        self._agent_env = dict(agent_env or {})
        self._agents: dict[str, _Agent] = {}

    async def start(self, node_id: str, node_class: NodeClassSpec) -> None:
        """Start the agent of ``node_id``; one already running for it is left alone."""
        if node_id in self._agents and self._agents[node_id].process.returncode is None:
            return
        self._state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._state_dir / f"{node_id}.log"
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith(_DROPPED)},
            **self._agent_env,
            "STRATA_AGENT_NODE_ID": node_id,
            "STRATA_AGENT_CPU_MILLIS": str(node_class.capacity.cpu_millis),
            "STRATA_AGENT_MEMORY_BYTES": str(node_class.capacity.memory_bytes),
            "STRATA_AGENT_GPUS": str(node_class.capacity.gpus),
            "STRATA_AGENT_PROVISIONER": self._address,
            "STRATA_AGENT_STATE_DIR": str(self._state_dir / node_id),
            "STRATA_AGENT_LABELS": json.dumps({"strata.dev/node-class": node_class.name}),
            "STRATA_SERVICE_AGENT_PORT": "0",
            "STRATA_SERVICE_AGENT_METRICS_PORT": "0",
        }
        with log_path.open("ab") as sink:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "strata.agent",
                env=environment,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                start_new_session=True,
            )
        self._agents[node_id] = _Agent(node_class.name, process, log_path)
        log.info(
            "local agent started",
            node_id=node_id,
            node_class=node_class.name,
            pid=process.pid,
            log=str(log_path),
        )

    async def stop(self, node_id: str) -> None:
        """SIGTERM the node's agent and wait for it to end (killed past ``STOP_GRACE``)."""
        agent = self._agents.get(node_id)
        if agent is None:
            return
        agent.stopping = True
        if agent.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                agent.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(agent.process.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("local agent overstayed its stop, killing it", node_id=node_id)
                with contextlib.suppress(ProcessLookupError):
                    agent.process.kill()
                await agent.process.wait()
        self._agents.pop(node_id, None)
        log.info("local agent stopped", node_id=node_id, code=agent.process.returncode)

    async def observe(self) -> list[ObservedNode]:
        """RUNNING while the process lives; GONE, with its exit code and log, once it
        ended without being stopped."""
        observed = []
        for node_id, agent in self._agents.items():
            code = agent.process.returncode
            if code is None or agent.stopping:
                observed.append(ObservedNode(node_id, agent.node_class, NodePhase.RUNNING))
            else:
                observed.append(
                    ObservedNode(
                        node_id,
                        agent.node_class,
                        NodePhase.GONE,
                        f"its agent process exited with code {code} (log: {agent.log})",
                    )
                )
        return observed

    def forget(self, node_id: str) -> None:
        """Drop an agent that ended (the fleet declared its node lost)."""
        agent = self._agents.get(node_id)
        if agent is not None and agent.process.returncode is not None:
            del self._agents[node_id]

    async def check(self) -> str | None:
        """Serving while its folder can be written: that is all starting an agent needs."""
        try:
            self._state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{self._state_dir}: {exc.strerror or exc}"
        if not os.access(self._state_dir, os.W_OK):
            return f"{self._state_dir}: not writable"
        return None

    def largest(self) -> Resources | None:
        return self.budget

    async def close(self) -> None:
        """Stop every agent it started, together."""
        await asyncio.gather(*(self.stop(node_id) for node_id in list(self._agents)))
