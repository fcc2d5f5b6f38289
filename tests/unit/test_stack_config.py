"""The two ways to run the local stack stay in step, the broker follows its settings,
and the tests run on a stack of their own.

``docker-compose.yml`` (machines with Docker) and ``strata stack up`` (plain
processes) must give services the same servers: the same ports, the same topics
with the same partitions, the same broker behaviour and Kafka version. Both are
written by hand, so these checks catch the one that was forgotten in a change.
``tests/conftest.py`` moves every test onto its own stack; it is run here in a
fresh interpreter, as pytest runs it first, to see what it leaves in the environment.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


CONFTEST = REPO_ROOT / "tests" / "conftest.py"
SHOW_ENVIRONMENT = """
import json, os, runpy, sys
runpy.run_path(sys.argv[1])
print(json.dumps({name: value for name, value in os.environ.items() if name.startswith("STRATA_")}))
"""


def environment_of_tests(**environ: str) -> subprocess.CompletedProcess[str]:
    """Run tests/conftest.py in a fresh interpreter with ``environ``; it prints STRATA_*."""
    return subprocess.run(
        [sys.executable, "-c", SHOW_ENVIRONMENT, str(CONFTEST)],
        env={"PATH": os.environ["PATH"], **environ},
        capture_output=True,
        text=True,
        check=False,
    )


def shown(**environ: str) -> dict[str, str]:
    ran = environment_of_tests(**environ)
    assert ran.returncode == 0, ran.stderr
    variables: dict[str, str] = json.loads(ran.stdout)
    return variables


def default_ports() -> dict[str, int]:
    """The shared stack's ports: what a service loads with no STRATA_* variable set."""
    kafka = load(KafkaSettings)
    return {
        "STRATA_KAFKA_PORT": kafka.port,
        "STRATA_KAFKA_CONTROLLER_PORT": kafka.controller_port,
        "STRATA_POSTGRES_PORT": load(PostgresSettings).port,
        "STRATA_REDIS_PORT": load(RedisSettings).port,
        "STRATA_BLOB_S3_PORT": load(BlobSettings).s3_port,
    }


def test_tests_run_on_a_stack_apart_from_the_shared_one() -> None:
    tests = shown()

    assert Path(tests["STRATA_STACK_HOME"]) != load(StackSettings).home
    for variable, shared_port in default_ports().items():
        assert int(tests[variable]) != shared_port, variable
    assert tests["STRATA_MODE"] == "development"


def test_a_developers_port_variable_does_not_move_the_tests_onto_their_stack() -> None:
    alone = shown()

    beside_a_moved_stack = shown(STRATA_KAFKA_PORT="19092", STRATA_STACK_HOME="/elsewhere")

    assert beside_a_moved_stack["STRATA_KAFKA_PORT"] == alone["STRATA_KAFKA_PORT"]
    assert beside_a_moved_stack["STRATA_STACK_HOME"] == alone["STRATA_STACK_HOME"]


def test_a_test_port_variable_moves_the_tests_stack() -> None:
    tests = shown(STRATA_TEST_KAFKA_PORT="39092", STRATA_TEST_BLOB_S3_PORT="39000")

    assert tests["STRATA_KAFKA_PORT"] == "39092"
    assert tests["STRATA_BLOB_S3_PORT"] == "39000"


def test_a_bad_test_port_is_refused_naming_the_variable() -> None:
    ran = environment_of_tests(STRATA_TEST_REDIS_PORT="63-79")

    assert ran.returncode != 0
    assert "STRATA_TEST_REDIS_PORT='63-79': expected a port number" in ran.stderr


def test_a_test_home_variable_gives_a_second_session_a_stack_of_its_own() -> None:
    tests = shown(STRATA_TEST_STACK_HOME="/tmp/second-session")

    assert tests["STRATA_STACK_HOME"] == "/tmp/second-session"
