"""The event catalog: every Kafka topic Strata uses, its partitions and its key.

The local stack creates these topics (and their dead-letter topics) at start-up;
production creates them from the same list. A dead-letter topic is named
``<topic>.dlq`` and has one partition: it is read by people and tools, not by hot
paths, and one partition keeps its records in arrival order.
"""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    """One Kafka topic of the catalog."""

    name: str
    partitions: int
    key: str
    """What the producer keys messages by, which fixes their order."""

    @property
    def dead_letters(self) -> str:
        return dead_letter_topic(self.name)


def dead_letter_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}{DLQ_SUFFIX}"


DATA_ARRIVED = Topic("strata.data.arrived", 3, key="dataset name")
TASKS_REQUESTED = Topic("strata.tasks.requested", 6, key="run id")
TASKS_EVENTS = Topic("strata.tasks.events", 6, key="run id")
RUNS_EVENTS = Topic("strata.runs.events", 6, key="run id")
NODES_EVENTS = Topic("strata.nodes.events", 3, key="node id")
FEATURES_EVENTS = Topic("strata.features.events", 3, key="feature view name")
MODELS_EVENTS = Topic("strata.models.events", 3, key="model name")
PREDICTIONS = Topic("strata.predictions", 6, key="entity key")

CATALOG: tuple[Topic, ...] = (
    DATA_ARRIVED,
    TASKS_REQUESTED,
    TASKS_EVENTS,
    RUNS_EVENTS,
    NODES_EVENTS,
    FEATURES_EVENTS,
    MODELS_EVENTS,
    PREDICTIONS,
)
