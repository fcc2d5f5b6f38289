"""The two ways to run the local stack stay in step, and the broker follows its settings.

``docker-compose.yml`` (machines with Docker) and ``strata stack up`` (plain
processes) must give services the same servers: the same ports, the same topics
with the same partitions, the same broker behaviour and Kafka version. Both are
written by hand, so these checks catch the one that was forgotten in a change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from strata.core.settings import (
    REPO_ROOT,
    BlobSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    load,
)
from strata.core.topics import CATALOG
from strata.sdk.stack.kafka import Kafka

COMPOSE = (REPO_ROOT / "docker-compose.yml").read_text()
POM = (REPO_ROOT / "deploy" / "local" / "kafka" / "pom.xml").read_text()

WHERE_IT_LISTENS_AND_STORES = {
    "controller.quorum.voters",
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "log.dirs",
}
"""Broker properties that differ on purpose: a container listens and stores elsewhere."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compare against the defaults, not the developer's STRATA_* variables."""
    for name in list(os.environ):
        if name.startswith("STRATA_"):
            monkeypatch.delenv(name)


def properties(text: str) -> dict[str, str]:
    lines = (line for line in text.splitlines() if line and not line.startswith("#"))
    return dict(line.split("=", 1) for line in lines)


def test_compose_creates_the_catalog_topics_with_their_partitions() -> None:
    loop = re.search(r"for entry in (.*?); do", COMPOSE, re.S)
    assert loop, "docker-compose.yml: the kafka-init topic loop is gone"

    entries = loop.group(1).replace("\\", " ").split()

    assert entries == [f"{topic.name}:{topic.partitions}" for topic in CATALOG]
    assert '"$$topic.dlq:1"' in COMPOSE, "each topic gets a one-partition dead-letter topic"


def test_compose_publishes_the_ports_the_settings_name() -> None:
    blobs = load(BlobSettings)
    expected = {
        load(KafkaSettings).port,
        load(PostgresSettings).port,
        load(RedisSettings).port,
        blobs.s3_port,
    }

    published = {int(port) for port in re.findall(r'"127\.0\.0\.1:(\d+):\d+"', COMPOSE)}

    assert published == expected


def test_compose_broker_agrees_with_the_local_broker(tmp_path: Path) -> None:
    local = properties(Kafka(tmp_path, load(KafkaSettings)).server_properties())
    compose = {
        name.removeprefix("KAFKA_").lower().replace("_", "."): value
        for name, value in re.findall(r'^\s+(KAFKA_[A-Z_]+): "?([^"\n]*?)"?$', COMPOSE, re.M)
    }

    shared = (local.keys() & compose.keys()) - WHERE_IT_LISTENS_AND_STORES
    differing = {key: (local[key], compose[key]) for key in shared if local[key] != compose[key]}

    assert len(shared) >= 15, f"too few broker settings matched: {sorted(shared)}"
    assert differing == {}
    heap = load(KafkaSettings).heap
    assert compose["heap.opts"] == f"-Xmx{heap} -Xms{heap}"


def test_compose_runs_the_kafka_version_the_local_stack_resolves() -> None:
    pom_version = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM)
    assert pom_version

    images = set(re.findall(r"image: apache/kafka:(\S+)", COMPOSE))

    assert images == {pom_version.group(1)}


def test_moved_ports_move_every_broker_listener(tmp_path: Path) -> None:
    settings = KafkaSettings(host="127.0.0.2", port=29092, controller_port=29093)

    rendered = properties(Kafka(tmp_path, settings).server_properties())

    assert rendered["listeners"] == "PLAINTEXT://127.0.0.2:29092,CONTROLLER://127.0.0.2:29093"
    assert rendered["advertised.listeners"] == "PLAINTEXT://127.0.0.2:29092"
    assert rendered["controller.quorum.voters"] == "1@127.0.0.2:29093"
    assert rendered["log.dirs"] == str(tmp_path / "kafka" / "data")
