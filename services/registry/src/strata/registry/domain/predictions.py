"""Served predictions as the registry keeps them, and the lineage assembled around one.

The gateway logs each prediction as ``PredictionLogged`` on ``strata.predictions``;
the registry keeps it as a ``PredictionRecord`` stamped with the time it was served
(the log event's time). A lineage answer joins the record to the version that
answered and to the scheduler's view of the run that trained it: only the attempts
the version's lineage names, each with its node and times when the scheduler knows
the run, and a note saying why not when it does not.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from strata.api.gateway.v1.gateway_pb2 import PredictionLogged
from strata.api.registry.v1 import registry_pb2 as pb
from strata.api.scheduler.v1 import scheduler_pb2 as spb
from strata.core.errors import InvalidArgumentError, NotFoundError, StrataError
from strata.core.paging import position_after, token_of


class PredictionNotFoundError(NotFoundError):
    """NOT_FOUND for a prediction id the registry holds no record of, saying why that
    may be: the log is asynchronous, and old records are pruned."""

    def __init__(self, prediction_id: str) -> None:
        StrataError.__init__(
            self,
            f"prediction {prediction_id!r} not found: the registry holds no record of it. "
            "The prediction log is asynchronous: a prediction served a moment ago may still "
            "be on its way (ask again shortly); records older than the retention are pruned.",
        )
        self.what = f"prediction {prediction_id!r}"


def record_of(logged: PredictionLogged, served_at: Timestamp) -> pb.PredictionRecord:
    """The record kept of a logged prediction served at ``served_at``."""
    return pb.PredictionRecord(
        prediction_id=logged.prediction_id,
        request_id=logged.request_id,
        entity_key=logged.entity_key,
        model_name=logged.model_name,
        model_version=logged.model_version,
        alias=logged.alias,
        features=logged.features,
        feature_views=logged.feature_views,
        outputs=logged.outputs,
        served_at=served_at,
    )


def check_prediction_id(value: str, field: str = "prediction_id") -> str:
    """The id in its canonical spelling; InvalidArgumentError when it is not a UUID."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgumentError(
            field, f"expected a prediction id (a UUID, as Predict returned it), got {value!r}"
        ) from None


def page_position(token: str) -> tuple[datetime, str] | None:
    """Where a page of ListPredictions starts: after (served_at, prediction_id)."""
    position = position_after(token)
    if not position:
        return None
    served, _, prediction_id = position.partition("|")
    try:
        return datetime.fromisoformat(served), str(uuid.UUID(prediction_id))
    except ValueError:
        raise InvalidArgumentError(
            "page_token", "is not a token this server returned (next_page_token)"
        ) from None


def page_token(last: pb.PredictionRecord) -> str:
    """The token of a page that ended at ``last``."""
    served = last.served_at.ToDatetime(tzinfo=UTC).isoformat()
    return token_of(f"{served}|{last.prediction_id}")


def attempts(lineage: pb.Lineage, run: spb.Run | None) -> list[pb.TaskAttempt]:
    """The attempts ``lineage`` names, with node, times and resources (asked for,
    reserved, used at peak) where ``run`` has them.

    The scheduler keeps the latest attempt of each task: an earlier attempt the
    lineage names keeps only its reference.
    """
    tasks = {(run.run_id, task.task_id): task for task in run.tasks} if run is not None else {}
    found = []
    for ref in lineage.task_attempts:
        attempt = pb.TaskAttempt(attempt=ref)
        task = tasks.get((ref.run_id, ref.task_id))
        if task is not None and task.attempt == ref.attempt:
            attempt.node_id = task.node_id
            attempt.state = spb.TaskState.Name(task.state).removeprefix("TASK_STATE_")
            if task.HasField("started_at"):
                attempt.started_at.CopyFrom(task.started_at)
            if task.HasField("finished_at"):
                attempt.finished_at.CopyFrom(task.finished_at)
            if task.HasField("started_at") and task.HasField("finished_at"):
                attempt.duration.FromTimedelta(
                    task.finished_at.ToDatetime() - task.started_at.ToDatetime()
                )
            for field in ("requested", "reserved", "peak_usage"):
                if task.HasField(field):
                    getattr(attempt, field).CopyFrom(getattr(task, field))
        found.append(attempt)
    return found
