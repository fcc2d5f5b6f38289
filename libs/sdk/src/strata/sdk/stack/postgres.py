"""PostgreSQL for the stack: Debian's server with a private data directory.

Postgres refuses to run as root, so as root the cluster belongs to, and runs as,
the Debian package's ``postgres`` user. The superuser reaches it over a private
unix socket (trust) to create the services' role and database; the services log in
over TCP with a password, as in production.

That user must reach the cluster's folder. A checkout in a private folder (mode
0700: root's home, a ``mktemp -d`` folder) does not let it, and opening the folder
up would weaken what its owner chose; so then the cluster lives outside the
checkout, in a folder of that user's own under :data:`CLUSTERS`, and the stack's
``postgres/cluster`` file records where, for ``down`` and ``status`` to find it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import asyncpg

import strata.core.postgres
from strata.core.reachability import probe
from strata.core.settings import PostgresSettings
from strata.sdk.stack.server import Listener, Server, StartError

CLUSTERS = Path("/var/lib/strata/stacks")
"""Clusters whose server user cannot reach the stack's home: one folder per home."""


class Postgres(Server):
    """Debian's PostgreSQL with a private data directory, run as an unprivileged user."""

    name = "postgres"
    programs = ("postgres", "initdb")  # the server titles its processes "postgres: ..."
    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients to leave
    superuser = "postgres"

    def __init__(self, home: Path, settings: PostgresSettings) -> None:
        super().__init__(home)
        self.settings = settings
        self.record = self.dir / "cluster"
        self.cluster = self.recorded_cluster() or self.dir
        """The folder holding ``data`` and ``run``: the server's own folder, unless recorded."""

    @property
    def data(self) -> Path:
        return self.cluster / "data"

    @property
    def sockets(self) -> Path:
        return self.cluster / "run"

    @property
    def address(self) -> str:
        return self.settings.address

    def listeners(self) -> list[Listener]:
        return [Listener(self.settings.host, self.settings.port, "STRATA_POSTGRES_PORT")]

    def run_as(self) -> str | None:
        """Postgres refuses to run as root; then it runs as the Debian package's user."""
        return self.superuser if os.geteuid() == 0 else None

    def places(self) -> list[Path]:
        return [self.dir, self.cluster]

    def recorded_cluster(self) -> Path | None:
        """Where an earlier ``up`` put the cluster outside the home, if it did."""
        try:
            return Path(self.record.read_text().strip())
        except OSError:
            return None

    def outside_home(self) -> Path:
        """The cluster's folder under :data:`CLUSTERS`, named by a hash of the stack's home."""
        home = self.dir.parent.resolve()
        return CLUSTERS / hashlib.sha256(str(home).encode()).hexdigest()[:16]

    def place_cluster(self, user: str) -> None:
        """Move the cluster out of the home when ``user`` cannot reach into it; record where.

        Without a record the home is new (or was deleted to start afresh), so a cluster
        left under :data:`CLUSTERS` by an earlier home of the same path goes too.
        """
        if self.record.exists() or reaches(user, self.dir.parent):
            return
        self.cluster = self.outside_home()
        shutil.rmtree(self.cluster, ignore_errors=True)
        self.cluster.mkdir(mode=0o700, parents=True)
        for folder in (CLUSTERS.parent, CLUSTERS):
            folder.chmod(0o755)  # the server's user passes through to its own folder
        (self.cluster / "stack-home").write_text(f"{self.dir.parent.resolve()}\n")
        self.record.write_text(f"{self.cluster}\n")

    def binary(self, program: str) -> str:
        """``program`` of the newest PostgreSQL Debian installed (/usr/lib/postgresql/<n>)."""
        installed = [
            p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()
        ]
        if not installed:
            raise StartError("PostgreSQL is not installed (/usr/lib/postgresql); run `make setup`")
        return str(max(installed, key=lambda bin_dir: int(bin_dir.parent.name)) / program)

    async def prepare(self) -> None:
        """Hand the cluster's folder to the server's user; ``initdb`` once, the first time."""
        user = self.run_as()
        if user:
            try:
                account = pwd.getpwnam(user)
            except KeyError:
                raise StartError(f"Postgres refuses root and no user {user!r} exists") from None
            self.place_cluster(user)
        self.sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sockets.chmod(0o700)  # only the server's user (and root) may use the socket
        if user:
            for path in [self.cluster, *self.cluster.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
        if (self.data / "PG_VERSION").exists():
            return
        initdb = [
            self.binary("initdb"),
            f"--pgdata={self.data}",
            f"--username={self.superuser}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ]
        with self.open_log() as log:
            initialising = await asyncio.create_subprocess_exec(
                *initdb,
                cwd=self.cluster,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
            if await initialising.wait() != 0:
                raise StartError("initdb failed")

    def command(self) -> list[str]:
        return [
            self.binary("postgres"),
            "-D",
            str(self.data),
            "-c",
            f"listen_addresses={self.settings.host}",
            "-c",
            f"port={self.settings.port}",
            "-c",
            f"unix_socket_directories={self.sockets}",
            "-c",
            "max_connections=200",
        ]

    async def ping(self, seconds: float) -> None:
        await strata.core.postgres.ping(self.settings, seconds)

    async def ping_bootstrap(self, seconds: float) -> None:
        """``SELECT 1`` as superuser over the private socket: no need for the services' role."""

        async def select_one() -> None:
            connection = await self.connect_superuser(seconds)
            try:
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

        failures = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
        await probe("Postgres", self.address, select_one, seconds, failures)

    async def connect_superuser(self, seconds: float = 5.0) -> asyncpg.Connection:
        """A superuser session over the private socket, which needs no password."""
        return await asyncpg.connect(
            host=str(self.sockets),
            port=self.settings.port,
            user=self.superuser,
            database="postgres",
            timeout=seconds,
        )

    async def provision(self) -> None:
        """Create (or update the password of) the services' role, and their database."""
        role, database = self.settings.user, self.settings.database
        password = self.settings.password.get_secret_value()
        connection = await self.connect_superuser()
        try:
            exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            verb = "ALTER" if exists else "CREATE"
            statement = await connection.fetchval(
                f"SELECT format('{verb} ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
                role,
                password,
            )
            await connection.execute(statement)
            if not await connection.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", database
            ):
                statement = await connection.fetchval(
                    "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                    database,
                    role,
                )
                await connection.execute(statement)
        finally:
            await connection.close()


def reaches(user: str, folder: Path) -> bool:
    """Whether ``user`` may enter ``folder``: every folder above it must let them through.

    Asked of the kernel by running ``test -x`` as that user, so ACLs and groups count
    exactly as they will for the server.
    """
    entering = subprocess.run(
        ["test", "-x", str(folder)],
        user=user,
        group=user,
        extra_groups=[],
        cwd="/",
        check=False,
    )
    return entering.returncode == 0
