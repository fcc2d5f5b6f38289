"""Every metric a Strata service exports, named once, in the Prometheus format.

Each service process builds one :class:`Metrics` (its own ``CollectorRegistry``,
so two runtimes in one test process never share counts) and hands it to the
parts that count: the gRPC edge, the bus consumers, the outbox relay and the
supervisor of background tasks. The runtime serves the registry over HTTP on the
service's metrics port (``/metrics``).

Names follow Prometheus conventions: a ``strata_`` prefix, base units (seconds),
``_total`` on counters. Labels are low-cardinality on purpose: a method, a topic,
a consumer group, a partition, a schema, a task name; never an id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RPC_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Sub-millisecond first: the hot paths (online features, predict) answer in about 1 ms."""

EVENT_OUTCOMES = ("handled", "skipped", "dead_lettered")
"""What became of a consumed event (label ``outcome`` of ``strata_events_total``)."""


class Metrics:
    """The metrics of one process; ``registry`` is what ``/metrics`` serves."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry(auto_describe=True)
        self.rpc_handled = Counter(
            "strata_grpc_server_handled",
            "gRPC calls finished, by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "strata_grpc_server_handling_seconds",
            "Time from a gRPC call's arrival to its status, by method.",
            ["method"],
            buckets=RPC_LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter(
            "strata_events",
            "Consumed events by topic, consumer group and outcome "
            "(handled, skipped, dead_lettered).",
            ["topic", "group", "outcome"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "strata_consumer_lag",
            "Records on a partition past the consumer's position.",
            ["topic", "group", "partition"],
            registry=r,
        )
        self.consumer_paused = Gauge(
            "strata_consumer_paused",
            "1 while a consumer waits for a dependency to come back (an outage, not poison).",
            ["topic", "group"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "strata_outbox_backlog",
            "Outbox rows waiting to be published, by schema.",
            ["schema"],
            registry=r,
        )
        self.outbox_published = Counter(
            "strata_outbox_published",
            "Outbox rows published to Kafka, by schema.",
            ["schema"],
            registry=r,
        )
        self.outbox_parked = Gauge(
            "strata_outbox_parked",
            "Outbox rows parked after the broker refused them too often, by schema.",
            ["schema"],
            registry=r,
        )
        self.task_restarts = Counter(
            "strata_background_task_restarts",
            "Background tasks restarted by the supervisor after they failed, by task.",
            ["task"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "strata_dependency_up",
            "1 while a dependency answers its health ping, 0 while it does not.",
            ["dependency"],
            registry=r,
        )
