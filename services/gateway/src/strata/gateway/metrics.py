"""The gateway's own metrics, beside the runtime's (``strata.core.metrics``).

They are built with the service spec, before the runtime has a registry, and
:meth:`GatewayMetrics.attach` adds them to the process's registry (served on
``/metrics``) when the first part that counts gets its context.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class GatewayMetrics:
    """Counts of the prediction log, adaptive batching and shadow predictions."""

    def __init__(self) -> None:
        self.logged = Counter(
            "strata_gateway_predictions_logged",
            "Predictions produced to strata.predictions (acknowledged by Kafka).",
            registry=None,
        )
        self.dropped = Counter(
            "strata_gateway_predictions_dropped",
            "Predictions not logged: the log's buffer was full (Kafka down too long), or "
            "the record was too large for Kafka.",
            registry=None,
        )
        self.buffered = Gauge(
            "strata_gateway_prediction_log_buffered",
            "Predictions waiting in the log's buffer for Kafka.",
            registry=None,
        )
        self.log_failures = Counter(
            "strata_gateway_prediction_log_failures",
            "Batches of the prediction log that Kafka refused or did not acknowledge (retried).",
            registry=None,
        )
        self.session_runs = Counter(
            "strata_gateway_session_runs",
            "ONNX Runtime runs, by model and version; with adaptive batching one run serves "
            "several calls.",
            ["model", "version"],
            registry=None,
        )
        self.batched_calls = Counter(
            "strata_gateway_batched_calls",
            "ModelInfer and Predict calls (and shadow runs) served by those runs, by model "
            "and version.",
            ["model", "version"],
            registry=None,
        )
        self.shadows = Counter(
            "strata_gateway_shadow_predictions",
            "Challenger answers for logged predictions, by outcome (answered, failed, "
            "dropped: the shadow queue was full).",
            ["outcome"],
            registry=None,
        )
        self._attached: set[int] = set()
        self._runs: dict[tuple[str, int], tuple[Counter, Counter]] = {}

    def attach(self, registry: CollectorRegistry) -> None:
        """Serve these metrics from ``registry``; again with the same registry is a no-op."""
        if id(registry) in self._attached:
            return
        self._attached.add(id(registry))
        collectors = (
            self.logged,
            self.dropped,
            self.buffered,
            self.log_failures,
            self.session_runs,
            self.batched_calls,
            self.shadows,
        )
        for collector in collectors:
            registry.register(collector)

    def count_run(self, model: str, version: int, calls: int) -> None:
        """One session run of ``model`` ``version`` served ``calls`` calls.

        Every call runs this, so each version's labelled counters are looked up once
        and kept (``labels`` takes a lock and builds its key each time).
        """
        counters = self._runs.get((model, version))
        if counters is None:
            labels = (model, str(version))
            counters = self.session_runs.labels(*labels), self.batched_calls.labels(*labels)
            self._runs[model, version] = counters
        runs, batched = counters
        runs.inc()
        batched.inc(calls)
