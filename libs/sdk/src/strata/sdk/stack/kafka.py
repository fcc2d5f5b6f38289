"""Apache Kafka for the stack: one KRaft node acting as broker and controller.

The broker's jars come from Maven Central (``deploy/local/kafka/pom.xml``, resolved by
``make setup``) and run on the machine's Java, so no Kafka distribution or Docker
image is needed. Its config is written from :class:`KafkaSettings` at every start:
settings are the one place ports live.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import uuid
from pathlib import Path

from aiokafka.admin import NewTopic

import strata.core.kafka
from strata.core.settings import REPO_ROOT, KafkaSettings
from strata.core.topics import CATALOG
from strata.sdk.stack.server import Listener, Server, StartError

LIBS = REPO_ROOT / "deploy" / "local" / "kafka" / "target" / "libs"
"""Where ``make setup`` puts the broker's jars."""

TOPIC_ERROR_ALREADY_EXISTS = 36


class Kafka(Server):
    """Apache Kafka, one KRaft node acting as broker and controller, on the machine's Java."""

    name = "kafka"
    programs = ("java",)  # the broker, and kafka.tools.StorageTool on first start
    libs = LIBS

    def __init__(self, home: Path, settings: KafkaSettings) -> None:
        super().__init__(home)
        self.settings = settings
        self.data = self.dir / "data"
        self.properties = self.dir / "server.properties"
        self.log_config = self.dir / "log4j2.properties"

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def listeners(self) -> list[Listener]:
        host = self.settings.host
        return [
            Listener(host, self.settings.port, "STRATA_KAFKA_PORT"),
            Listener(host, self.settings.controller_port, "STRATA_KAFKA_CONTROLLER_PORT"),
        ]

    def cluster_id(self) -> str:
        """A fixed id (base64 of a UUID, as KRaft wants): the stack has one cluster."""
        raw = uuid.uuid5(uuid.NAMESPACE_URL, "strata-local-stack").bytes
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def java(self, heap: str, main: str, *args: str) -> list[str]:
        """A Java command line for ``main`` on the broker's classpath and log config."""
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
        """Write the config; format the KRaft storage once, the first time."""
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
        """The broker's config: one node, replication 1 everywhere, no auto-created topics."""
        host, port, controller = (
            self.settings.host,
            self.settings.port,
            self.settings.controller_port,
        )
        return f"""# Written by `strata stack up` at each start; edit settings, not this file.
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
        """The broker's logging: one file, the server's log, so ``up`` can show its tail."""
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
        return self.java(self.settings.heap, "kafka.Kafka", str(self.properties))

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
            missing = [topic for topic in catalog() if topic.name not in existing]
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


def catalog() -> list[NewTopic]:
    """Every topic of the event catalog and its one-partition dead-letter topic."""
    topics = [NewTopic(topic.name, topic.partitions, 1) for topic in CATALOG]
    return topics + [NewTopic(topic.dead_letters, 1, 1) for topic in CATALOG]
