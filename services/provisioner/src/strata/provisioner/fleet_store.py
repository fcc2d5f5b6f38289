"""The fleet's SQL: the nodes it asked providers for and the attempts waiting for room
(a node it is about to stop is drained through :mod:`strata.provisioner.draining`).

The fleet reads ``pending`` and ``nodes`` (owned by :mod:`strata.provisioner.store`)
through its own queries here, and writes only ``provisioned_nodes`` and drops the
node rows of the nodes it retires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from strata.api.provisioner.v1.provisioner_pb2 import (
    NODE_STATE_DRAINED,
    NODE_STATE_DRAINING,
    NODE_STATE_READY,
    NodeState,
)
from strata.api.scheduler.v1.scheduler_pb2 import TaskRequested
from strata.core.migrations import DbConnection, quote_schema
from strata.provisioner.domain.resources import Resources

CONNECTED = (NODE_STATE_READY, NODE_STATE_DRAINING, NODE_STATE_DRAINED)
"""Node states of an agent that is registered and not lost."""


@dataclass(frozen=True)
class ProvisionedNode:
    """A node the fleet asked a provider for, with its agent's node row when it has one."""

    node_id: str
    node_class: str
    provider: str
    message: str
    requested_at: datetime
    idle_since: datetime | None
    state: NodeState.ValueType | None
    """Its agent's node state; ``None`` before it registered."""
    lost: bool
    last_seen_at: datetime | None
    placements: int

    @property
    def connected(self) -> bool:
        return self.state in CONNECTED and not self.lost

    @property
    def draining(self) -> bool:
        """Connected and taking no new work: DRAINING, or DRAINED already."""
        return self.connected and self.state in (NODE_STATE_DRAINING, NODE_STATE_DRAINED)


class FleetStore:
    """``provisioned_nodes`` of ``schema``, and what the fleet reads beside it."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._s = quote_schema(schema)

    async def waiting_for_room(self) -> list[Resources]:
        """What each attempt waiting for room on a node needs: what placement sized it to
        reserve, else its request."""
        rows = await self._pool.fetch(
            f"SELECT request, reserve_cpu_millis, reserve_memory_bytes, reserve_gpus "
            f"FROM {self._s}.pending WHERE for_capacity ORDER BY sequence"
        )
        needs = []
        for row in rows:
            if row["reserve_cpu_millis"] is not None:
                needs.append(
                    Resources(
                        row["reserve_cpu_millis"], row["reserve_memory_bytes"], row["reserve_gpus"]
                    )
                )
            else:
                r = TaskRequested.FromString(row["request"]).resources
                needs.append(Resources(r.cpu_millis, r.memory_bytes, r.gpus))
        return needs

    async def provisioned(self) -> list[ProvisionedNode]:
        """Every node the fleet asked for and has not stopped or lost, by id."""
        rows = await self._pool.fetch(
            f"SELECT p.*, n.state, n.lost_at, n.last_seen_at, "
            f"(SELECT count(*) FROM {self._s}.placements pl WHERE pl.node_id = p.node_id) "
            f"AS placements "
            f"FROM {self._s}.provisioned_nodes p LEFT JOIN {self._s}.nodes n "
            "ON n.node_id = p.node_id ORDER BY p.node_id"
        )
        return [
            ProvisionedNode(
                node_id=r["node_id"],
                node_class=r["node_class"],
                provider=r["provider"],
                message=r["message"],
                requested_at=r["requested_at"],
                idle_since=r["idle_since"],
                state=r["state"],
                lost=r["lost_at"] is not None,
                last_seen_at=r["last_seen_at"],
                placements=r["placements"],
            )
            for r in rows
        ]

    async def requested(self, node_id: str, node_class: str, provider: str, now: datetime) -> None:
        """Record that ``node_id`` was asked of ``provider``; idle from now until it gets work."""
        await self._pool.execute(
            f"INSERT INTO {self._s}.provisioned_nodes (node_id, node_class, provider, "
            "requested_at, idle_since) VALUES ($1, $2, $3, $4, $4)",
            node_id,
            node_class,
            provider,
            now,
        )

    async def forget(self, node_id: str) -> None:
        """The node is stopped or lost: the fleet no longer counts it."""
        await self._pool.execute(
            f"DELETE FROM {self._s}.provisioned_nodes WHERE node_id = $1", node_id
        )

    async def said(self, node_id: str, message: str) -> None:
        """Keep the provider's last word on the node."""
        await self._pool.execute(
            f"UPDATE {self._s}.provisioned_nodes SET message = $2 "
            "WHERE node_id = $1 AND message <> $2",
            node_id,
            message,
        )

    async def mark_idle(self, now: datetime) -> None:
        """Nodes with placements are not idle; the others are idle since they last had one
        (or since ``now``, for those that just lost their last)."""
        await self._pool.execute(
            f"UPDATE {self._s}.provisioned_nodes p SET idle_since = CASE "
            f"WHEN EXISTS (SELECT 1 FROM {self._s}.placements pl WHERE pl.node_id = p.node_id) "
            "THEN NULL ELSE coalesce(p.idle_since, $1) END",
            now,
        )

    async def retire(self, node_id: str) -> None:
        """The node was stopped after draining: drop it and its agent's node row (it ran
        nothing, so nothing is lost and no lease should declare it so)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"DELETE FROM {self._s}.nodes n WHERE n.node_id = $1 AND NOT EXISTS "
                f"(SELECT 1 FROM {self._s}.placements pl WHERE pl.node_id = n.node_id)",
                node_id,
            )
            await conn.execute(
                f"DELETE FROM {self._s}.provisioned_nodes WHERE node_id = $1", node_id
            )

    async def lock_unlost(self, conn: DbConnection, node_id: str) -> datetime | None:
        """When the node was last heard from, its row locked, if it is registered and not
        declared lost yet; else None."""
        last_seen_at: datetime | None = await conn.fetchval(
            f"SELECT last_seen_at FROM {self._s}.nodes WHERE node_id = $1 AND lost_at IS NULL "
            "FOR UPDATE",
            node_id,
        )
        return last_seen_at
