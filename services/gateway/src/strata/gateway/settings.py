"""What the gateway serves and where it finds the registry (``STRATA_GATEWAY_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """The gateway's own settings; the shared ones (ports, auth, Kafka) are the runtime's."""

    model_config = SettingsConfigDict(env_prefix="STRATA_GATEWAY_", extra="ignore", frozen=True)

    models: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Models and the aliases served of each, e.g. {"eta": ["champion"]}.',
    )
    registry: str = Field(
        "127.0.0.1:50055", description="host:port of the model registry, the models' only source."
    )
    streamer: str = Field(
        "127.0.0.1:50054",
        description="host:port of the feature store (streamer), asked for the feature views "
        "of a version with feature bindings when it is loaded.",
    )
    log_buffer: int = Field(
        100_000,
        ge=1,
        description="Most predictions the prediction log holds while Kafka is slow or down; "
        "past it, predictions are dropped from the log (counted and logged).",
    )
    log_batch: int = Field(
        500, ge=1, description="Most predictions produced to Kafka in one batch."
    )
    log_linger: float = Field(
        1.0,
        ge=0,
        description="Seconds the prediction log waits after a prediction before sending, "
        "so one produce request carries the predictions of that span rather than one each; "
        "the log reaches Kafka this much later, requests never wait. 0: send at once.",
    )
    shadow_queue: int = Field(
        1_000,
        ge=1,
        description="Most Predict calls waiting for their challenger's shadow answer; past "
        "it, shadows are dropped (counted) and the predictions logged without them.",
    )
    batch_rows: int = Field(
        32,
        ge=1,
        description="Most rows that concurrent calls of one model version gather into one "
        "ONNX Runtime run (adaptive batching); a call of this many rows runs alone.",
    )
    batch_wait: float = Field(
        0.001,
        ge=0,
        description="Most seconds a call waits for company while its model is busy; a "
        "call finding its model idle runs at once.",
    )
    inline_budget: float = Field(
        0.0002,
        ge=0,
        description="Most seconds a model run may take on the event loop instead of a worker "
        "thread, judged from the model's one-row run time measured at load; a thread hop "
        "costs more than a run of a small model. A call run on the loop runs at once, "
        "unbatched; batching serves the models run in threads. 0: every run in a thread.",
    )
    model_threads: int = Field(
        1,
        ge=1,
        description="ONNX Runtime threads for one model run. 1 runs each batch on the thread "
        "that calls it: concurrent calls are batched already, and a pool's idle threads "
        "take cores the event loop needs (2 threads cost ~0.5 ms of CPU per call and half "
        "the 8-client throughput on a 2-core machine). Raise it for large batches on many "
        "cores; idle pool threads then wait without spinning.",
    )
    http_port: int = Field(
        8080,
        ge=0,
        le=65535,
        description="Port of the Open Inference Protocol's REST API (/v2); 0 picks a free "
        "one, logged at start. gRPC keeps the service port.",
    )
    reconcile_interval: float = Field(
        30.0,
        gt=0,
        description="Seconds between re-reading each served alias from the registry, "
        "which catches changes whose event was missed.",
    )
