"""Redis for the stack: Debian's ``redis-server`` with append-only persistence.

Only the config differs from the other servers; it is written from
:class:`RedisSettings` at every start so a moved port or a password takes effect.
"""

from __future__ import annotations

from pathlib import Path

import strata.core.redis
from strata.core.settings import RedisSettings
from strata.sdk.stack.server import Listener, Server


class Redis(Server):
    """Debian's redis-server with append-only persistence."""

    name = "redis"
    programs = ("redis-server",)

    def __init__(self, home: Path, settings: RedisSettings) -> None:
        super().__init__(home)
        self.settings = settings
        self.config = self.dir / "redis.conf"

    @property
    def address(self) -> str:
        return self.settings.address

    def listeners(self) -> list[Listener]:
        return [Listener(self.settings.host, self.settings.port, "STRATA_REDIS_PORT")]

    async def prepare(self) -> None:
        # The process is already detached by launch() (own session, no terminal), so
        # it does not daemonize itself: staying our child lets `up` see it die early.
        lines = [
            f"bind {self.settings.host}",
            f"port {self.settings.port}",
            f"dir {self.dir}",
            "daemonize no",
            f"pidfile {self.pid_file}",
            f"logfile {self.log}",
            "appendonly yes",
            "appendfsync everysec",
        ]
        if self.settings.password:
            lines.append(f"requirepass {self.settings.password.get_secret_value()}")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)  # may hold the password

    def command(self) -> list[str]:
        return ["redis-server", str(self.config)]

    async def ping(self, seconds: float) -> None:
        await strata.core.redis.ping(self.settings, seconds)
