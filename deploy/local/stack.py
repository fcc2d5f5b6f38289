"""The local stack: real Kafka, Postgres, Redis and S3 servers on loopback ports.

``python deploy/local/stack.py up|down|status`` (``make stack-up`` and friends).
Ports, heap and the stack's home folder come from :mod:`strata.core.settings`, so
``STRATA_*`` variables move a whole stack elsewhere (the integration tests run a
second stack that way). Each server keeps its data, log and pid file in
``<home>/<server>/`` and runs as a plain background process in its own session:
no Docker, nothing installed outside the project's own ``make setup``.

``up`` is idempotent: a server that runs is left alone, one that crashed is
started again, and a port held by a process that is not ours stops everything
before anything starts. ``down`` stops each server gracefully, then makes sure
no process of the stack is left.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, ClassVar, cast

import aioboto3
import asyncpg
from aiobotocore.config import AioConfig
from aiokafka.admin import NewTopic
from botocore.exceptions import BotoCoreError, ClientError

import strata.core.blobs
import strata.core.kafka
import strata.core.postgres
import strata.core.redis
from strata.core.errors import ConfigError, UnreachableError
from strata.core.reachability import probe
from strata.core.settings import (
    REPO_ROOT,
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    StackSettings,
    load,
)
from strata.core.topics import CATALOG

if TYPE_CHECKING:
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType

STOP_TIMEOUT = 30.0
"""Seconds a server gets to stop after its stop signal before it is killed."""

LOG_TAIL_LINES = 30
POLL_INTERVAL = 0.25
PING_TIMEOUT = 2.0
TOPIC_ERROR_ALREADY_EXISTS = 36


class StartError(Exception):
    """A server did not start or did not answer; the message says why in one line."""


# --------------------------------------------------------------------------- processes


def proc_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def proc_argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").rstrip("\0").split("\0") if raw else []


def proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def proc_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")


def all_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe_socket.bind((host, port))
        except OSError:
            return False
    return True


async def wait_for_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while proc_alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def terminate(pid: int, stop_signal: signal.Signals, grace: float) -> None:
    """Send ``stop_signal``; SIGKILL when ``pid`` still runs after ``grace`` seconds."""
    try:
        os.kill(pid, stop_signal)
    except ProcessLookupError:
        return
    if not await wait_for_exit(pid, grace):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        await wait_for_exit(pid, 5.0)


# --------------------------------------------------------------------------- servers


class Server:
    """One server of the stack: how to prepare, launch, check, provision and spot it."""

    name: ClassVar[str]
    programs: ClassVar[tuple[str, ...]]
    """How the first word of each of this server's processes starts (its title may change)."""
    main_argument: ClassVar[str | None] = None
    """A word each of its processes has on its command line, for interpreters (java, python)."""
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, home: Path) -> None:
        self.dir = home / self.name
        self.log = self.dir / f"{self.name}.log"
        self.pid_file = self.dir / f"{self.name}.pid"
        self.process: subprocess.Popen[bytes] | None = None

    # What each server defines.
    @property
    def address(self) -> str:
        raise NotImplementedError

    def ports(self) -> list[tuple[str, int, str]]:
        """(host, port, the STRATA_* variable that moves it) for each port it listens on."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Write config files and initialise data on first start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    async def ping(self, seconds: float) -> None:
        """Raise UnreachableError unless the server answers as the services will use it."""
        raise NotImplementedError

    async def ping_bootstrap(self, seconds: float) -> None:
        """Like ping, but passes before provisioning (no role or bucket needed yet)."""
        await self.ping(seconds)

    async def provision(self) -> None:
        """Create what services expect to find (topics, role, bucket); idempotent."""

    async def settle(self, deadline: float) -> None:
        """Wait until the server answers, provision it (also when it already ran), recheck."""
        await answer_within(self, self.ping_bootstrap, deadline)
        await provision_within(self, deadline)
        await answer_within(self, self.ping, deadline)

    def run_as(self) -> str | None:
        """The user the server runs as, when not the caller."""
        return None

    # Shared behaviour.
    def owns(self, pid: int) -> bool:
        """Whether ``pid`` is a process of this server (matched by command line and folder)."""
        argv = proc_argv(pid)
        if not argv or not Path(argv[0]).name.startswith(self.programs):
            return False  # e.g. `tail -f .stack/kafka/kafka.log` is not the broker
        if self.main_argument and self.main_argument not in argv:
            return False
        cwd = proc_cwd(pid)
        return str(self.dir) in " ".join(argv) or (cwd is not None and cwd.is_relative_to(self.dir))

    def running_pid(self) -> int | None:
        """The pid in the pid file if that process runs and is ours; else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if proc_alive(pid) and self.owns(pid) else None

    def leftovers(self) -> list[int]:
        me = os.getpid()
        return [pid for pid in all_pids() if pid != me and proc_alive(pid) and self.owns(pid)]

    def port_conflicts(self) -> list[str]:
        return [
            f"{self.name}: port {port} on {host} is already in use by a process that is not "
            f"part of this stack; stop it or move {self.name} with {variable}=<port>"
            for host, port, variable in self.ports()
            if not port_is_free(host, port)
        ]

    def open_log(self) -> IO[bytes]:
        log = self.log.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n==== stack.py starting {self.name} at {stamp} ====\n".encode())
        log.flush()
        return log

    def launch(self) -> int:
        """Start the server detached (own session, output to its log); write its pid file."""
        user = self.run_as()
        with self.open_log() as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        self.pid_file.write_text(f"{self.process.pid}\n")
        return self.process.pid

    def exited(self) -> int | None:
        """The exit status if the process this run launched has ended."""
        return self.process.poll() if self.process else None

    def log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            return "(no log)"
        return "\n".join(lines)


class Kafka(Server):
    """Apache Kafka, one KRaft node acting as broker and controller, on the machine's Java."""

    name = "kafka"
    programs = ("java",)  # the broker, and kafka.tools.StorageTool on first start
    libs = REPO_ROOT / "deploy" / "local" / "kafka" / "target" / "libs"

    def __init__(self, home: Path, settings: KafkaSettings) -> None:
        super().__init__(home)
        self.settings = settings
        self.data = self.dir / "data"
        self.properties = self.dir / "server.properties"
        self.log_config = self.dir / "log4j2.properties"

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def ports(self) -> list[tuple[str, int, str]]:
        host = self.settings.host
        return [
            (host, self.settings.port, "STRATA_KAFKA_PORT"),
            (host, self.settings.controller_port, "STRATA_KAFKA_CONTROLLER_PORT"),
        ]

    def cluster_id(self) -> str:
        """A fixed id (base64 of a UUID, as KRaft wants): the stack has one cluster."""
        raw = uuid.uuid5(uuid.NAMESPACE_URL, "strata-local-stack").bytes
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def java(self, heap: str, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            # The JVM flags of Kafka's own kafka-run-class.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log_config}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    async def prepare(self) -> None:
        if not any(self.libs.glob("kafka_2.13-*.jar")):
            raise StartError(f"no Kafka jars in {self.libs}; run `make setup`")
        self.properties.write_text(self.server_properties())
        self.log_config.write_text(self.log4j2_properties())
        if (self.data / "meta.properties").exists():
            return
        format_storage = self.java(
            "256m",
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            self.cluster_id(),
            "--config",
            str(self.properties),
            "--ignore-formatted",
        )
        with self.open_log() as log:
            formatting = await asyncio.create_subprocess_exec(
                *format_storage, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT
            )
            if await formatting.wait() != 0:
                raise StartError("formatting the KRaft storage failed")

    def server_properties(self) -> str:
        host, port, controller = (
            self.settings.host,
            self.settings.port,
            self.settings.controller_port,
        )
        return f"""# Written by deploy/local/stack.py at each start; edit settings, not this file.
node.id=1
process.roles=broker,controller
controller.quorum.voters=1@{host}:{controller}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller}
advertised.listeners=PLAINTEXT://{host}:{port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={self.data}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
"""

    def log4j2_properties(self) -> str:
        return f"""# Broker log for the local stack: one file, INFO and up.
appender.file.type=File
appender.file.name=FILE
appender.file.fileName={self.log}
appender.file.append=true
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=FILE
logger.request.name=kafka.request.logger
logger.request.level=WARN
logger.authorizer.name=kafka.authorizer.logger
logger.authorizer.level=WARN
"""

    def command(self) -> list[str]:
        heap = self.settings.heap
        return self.java(heap, "kafka.Kafka", str(self.properties))

    async def ping(self, seconds: float) -> None:
        await strata.core.kafka.ping(self.settings, seconds)

    async def provision(self) -> None:
        """Create each catalog topic and its dead-letter topic unless it exists.

        Then ask for a group and a transaction coordinator: the broker creates its
        internal offsets and transaction topics on that first request, so the first
        consumer group of a test does not wait for them.
        """
        admin = strata.core.kafka.admin(self.settings)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [topic for topic in self.catalog() if topic.name not in existing]
            if missing:
                response = await admin.create_topics(missing)
                failed = [
                    f"{topic}: error {code} {' '.join(map(str, detail))}"
                    for topic, code, *detail in response.topic_errors
                    if code not in (0, TOPIC_ERROR_ALREADY_EXISTS)
                ]
                if failed:
                    raise StartError("creating topics failed: " + "; ".join(failed))
            await admin.find_coordinator("strata-stack", coordinator_type=0)
            await admin.find_coordinator("strata-stack", coordinator_type=1)
        finally:
            await admin.close()

    @staticmethod
    def catalog() -> list[NewTopic]:
        """Every topic of the event catalog and its one-partition dead-letter topic."""
        topics = [NewTopic(topic.name, topic.partitions, 1) for topic in CATALOG]
        return topics + [NewTopic(topic.dead_letters, 1, 1) for topic in CATALOG]


class Postgres(Server):
    """Debian's PostgreSQL with a private data directory, run as an unprivileged user."""

    name = "postgres"
    programs = ("postgres", "initdb")  # the server titles its processes "postgres: ..."
    stop_signal = signal.SIGINT  # "fast" shutdown: do not wait for clients to leave
    superuser = "postgres"

    def __init__(self, home: Path, settings: PostgresSettings) -> None:
        super().__init__(home)
        self.settings = settings
        self.data = self.dir / "data"
        self.sockets = self.dir / "run"

    @property
    def address(self) -> str:
        return self.settings.address

    def ports(self) -> list[tuple[str, int, str]]:
        return [(self.settings.host, self.settings.port, "STRATA_POSTGRES_PORT")]

    def run_as(self) -> str | None:
        """Postgres refuses to run as root; then it runs as the Debian package's user."""
        return self.superuser if os.geteuid() == 0 else None

    def binary(self, program: str) -> str:
        """``program`` of the newest PostgreSQL Debian installed (/usr/lib/postgresql/<n>)."""
        installed = [
            p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()
        ]
        if not installed:
            raise StartError("PostgreSQL is not installed (/usr/lib/postgresql); run `make setup`")
        return str(max(installed, key=lambda bin_dir: int(bin_dir.parent.name)) / program)

    async def prepare(self) -> None:
        self.sockets.mkdir(exist_ok=True)
        self.sockets.chmod(0o700)  # only the server's user (and root) may use the socket
        user = self.run_as()
        if user:
            try:
                account = pwd.getpwnam(user)
            except KeyError:
                raise StartError(f"Postgres refuses root and no user {user!r} exists") from None
            for path in [self.dir, *self.dir.rglob("*")]:
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
                cwd=self.dir,
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

    def ports(self) -> list[tuple[str, int, str]]:
        return [(self.settings.host, self.settings.port, "STRATA_REDIS_PORT")]

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


class S3(Server):
    """moto's S3 server (objects in memory; see deploy/local/README.md for why moto)."""

    name = "s3"
    programs = ("python",)
    main_argument = "moto.server"

    def __init__(self, home: Path, settings: BlobSettings) -> None:
        super().__init__(home)
        self.settings = settings.model_copy(update={"backend": "s3"})
        # One session for every client: a new session parses botocore's S3 model again,
        # which blocks the event loop that waits for the other servers.
        self.session = aioboto3.Session()

    @property
    def address(self) -> str:
        return f"{self.settings.s3_host}:{self.settings.s3_port}"

    def ports(self) -> list[tuple[str, int, str]]:
        return [(self.settings.s3_host, self.settings.s3_port, "STRATA_BLOB_S3_PORT")]

    def command(self) -> list[str]:
        host, port = self.settings.s3_host, str(self.settings.s3_port)
        return [sys.executable, "-m", "moto.server", "-H", host, "-p", port]

    def client(self, seconds: float = 5.0) -> ClientCreatorContext[S3Client]:
        return self.session.client(
            "s3",
            endpoint_url=self.settings.endpoint_url,
            region_name=self.settings.s3_region,
            aws_access_key_id=self.settings.s3_access_key.get_secret_value(),
            aws_secret_access_key=self.settings.s3_secret_key.get_secret_value(),
            config=AioConfig(
                connect_timeout=seconds,
                read_timeout=seconds,
                retries={"mode": "standard", "total_max_attempts": 1},
            ),
        )

    async def ping(self, seconds: float) -> None:
        await strata.core.blobs.ping(self.settings, seconds)

    async def ping_bootstrap(self, seconds: float) -> None:
        """List the buckets: answers before the services' bucket exists."""

        async def list_buckets() -> None:
            async with self.client(seconds) as s3:
                await s3.list_buckets()

        failures = (BotoCoreError, ClientError, OSError)
        await probe("S3", self.settings.endpoint_url, list_buckets, seconds, failures)

    async def provision(self) -> None:
        async with self.client() as s3:
            buckets = (await s3.list_buckets()).get("Buckets", [])
            if any(bucket.get("Name") == self.settings.bucket for bucket in buckets):
                return
            if self.settings.s3_region == "us-east-1":  # the one region S3 takes no location for
                await s3.create_bucket(Bucket=self.settings.bucket)
            else:
                region = cast("BucketLocationConstraintType", self.settings.s3_region)
                await s3.create_bucket(
                    Bucket=self.settings.bucket,
                    CreateBucketConfiguration={"LocationConstraint": region},
                )


# --------------------------------------------------------------------------- commands


def servers() -> list[Server]:
    home = load(StackSettings).home
    return [
        Kafka(home, load(KafkaSettings)),
        Postgres(home, load(PostgresSettings)),
        Redis(home, load(RedisSettings)),
        S3(home, load(BlobSettings)),
    ]


def say(server: Server, message: str) -> None:
    print(f"{server.name:<9} {server.address:<22} {message}", flush=True)


async def answer_within(
    server: Server, check: Callable[[float], Awaitable[None]], deadline: float
) -> None:
    """Retry ``check`` until it passes; fail when the process dies or time runs out."""
    while True:
        try:
            await check(PING_TIMEOUT)
            return
        except UnreachableError as unreachable:
            last = unreachable.reason
        status = server.exited()
        if status is not None:
            raise StartError(f"exited with status {status} while starting")
        if time.monotonic() > deadline:
            raise StartError(f"no answer on {server.address} in time (last: {last})")
        await asyncio.sleep(POLL_INTERVAL)


async def provision_within(server: Server, deadline: float) -> None:
    """Provision, retrying while the server settles (a new broker elects itself first)."""
    while True:
        try:
            await server.provision()
            return
        except StartError:
            raise
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StartError(f"provisioning failed: {exc}") from None
        await asyncio.sleep(POLL_INTERVAL)


async def bring_up(server: Server, seconds: float) -> bool:
    """Start ``server`` unless it runs; return once it answers and is provisioned."""
    began = time.monotonic()
    deadline = began + seconds
    pid = server.running_pid()
    try:
        if pid:
            await server.settle(deadline)
            say(server, f"already running (pid {pid}), answers")
            return True
        say(server, "starting…")
        server.dir.mkdir(parents=True, exist_ok=True)
        await server.prepare()
        pid = server.launch()
        await server.settle(deadline)
    except StartError as failure:
        say(server, f"FAILED on {server.address}: {failure}")
        print(f"---- last lines of {server.log} ----\n{server.log_tail()}\n----", flush=True)
        return False
    say(server, f"ready in {time.monotonic() - began:.1f}s (pid {pid})")
    return True


async def up() -> int:
    stack = servers()
    idle = [server for server in stack if server.running_pid() is None]
    conflicts = [line for server in idle for line in server.port_conflicts()]
    if conflicts:
        print("\n".join(conflicts), file=sys.stderr)
        print("nothing was started", file=sys.stderr)
        return 1
    timeout = load(StackSettings).start_timeout
    results = await asyncio.gather(*(bring_up(server, timeout) for server in stack))
    return 0 if all(results) else 1


async def bring_down(server: Server) -> bool:
    """Stop the server gracefully, then any process of it that is left; True if none is."""
    began = time.monotonic()
    pid = server.running_pid()
    if pid:
        await terminate(pid, server.stop_signal, STOP_TIMEOUT)
    strays = server.leftovers()
    await asyncio.gather(*(terminate(stray, signal.SIGTERM, 5.0) for stray in strays))
    server.pid_file.unlink(missing_ok=True)
    remaining = server.leftovers()
    if remaining:
        say(server, f"FAILED to stop pids {remaining}")
        return False
    if pid or strays:
        killed = f", {len(strays)} stray process(es)" if strays else ""
        say(server, f"stopped (pid {pid}{killed}) in {time.monotonic() - began:.1f}s")
    else:
        say(server, "not running")
    return True


async def down() -> int:
    results = await asyncio.gather(*(bring_down(server) for server in servers()))
    return 0 if all(results) else 1


async def status() -> int:
    stack = servers()

    async def answers(server: Server) -> bool:
        try:
            await server.ping(PING_TIMEOUT)
        except UnreachableError:
            return False
        return True

    answered = await asyncio.gather(*(answers(server) for server in stack))
    healthy, total_rss = True, 0
    for server, answer in zip(stack, answered, strict=True):
        pid = server.running_pid()
        rss = sum(proc_rss(process) for process in server.leftovers())
        total_rss += rss
        state = "up" if pid else "down"
        yes_no = "yes" if answer else "no"
        say(server, f"{state:<5} pid {pid or '-':<8} answers {yes_no:<4} rss {rss >> 20} MiB")
        healthy &= bool(pid) and answer
    print(f"{'total':<9} {'':<22} resident memory of every stack process: {total_rss >> 20} MiB")
    return 0 if healthy else 1


@contextlib.contextmanager
def exclusive(home: Path) -> Iterator[None]:
    """Let one ``up`` or ``down`` act on a stack at a time (two test sessions may race)."""
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another stack.py working on {home}…", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    command = parser.parse_args(argv).command
    # aiokafka logs every refused connection while the broker starts; the waits here
    # report failures themselves, in one line each.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        home = load(StackSettings).home
        if command == "status":
            return asyncio.run(status())
        with exclusive(home):
            return asyncio.run(up() if command == "up" else down())
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
