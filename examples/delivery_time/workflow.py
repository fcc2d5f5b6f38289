"""The weekly retraining loop, declared once: last week's orders land, and the better of
two candidate models is answering requests by the end of the run.

    pull-orders → build-training-set → train-linear (A) ┐
                                     → train-boosting (B) ┴→ compare → deploy-a | deploy-b

Apply it with ``strata workflow apply workflow.py`` from this folder; the tasks
import their neighbours (``training``, ``project``) as top-level modules.
"""

from __future__ import annotations

from typing import Any

import training
from project import MAX_MAE_MINUTES, WEEKLY_DATASET, WORKFLOW

from strata.sdk.workflows import DataArrival, Retry, Workflow

weekly = Workflow(
    WORKFLOW,
    description="Retrain the delivery-time model when a week of orders lands; deploy the better.",
    triggers=[DataArrival(WEEKLY_DATASET, "week=*")],
    params={"max_mae_minutes": MAX_MAE_MINUTES},
    retry=Retry(attempts=2),
    max_active_runs=1,
)


@weekly.task(cpu=0.25, memory="512Mi")
def pull_orders(dataset: str, partition: str, uri: str, checksum: str, **_: Any) -> dict[str, Any]:
    return training.pull_orders(dataset, partition, uri, checksum)


@weekly.task(depends_on=[pull_orders], cpu=0.25, memory="512Mi")
def build_training_set(pull_orders: dict[str, Any], **_: Any) -> dict[str, Any]:
    return training.build_training_set(pull_orders)


@weekly.task(depends_on=[build_training_set], cpu=0.5, memory="768Mi")
def train_linear(
    build_training_set: dict[str, Any], dataset: str, partition: str, checksum: str, **_: Any
) -> dict[str, Any]:
    return training.train("linear", build_training_set, dataset, partition, checksum)


@weekly.task(depends_on=[build_training_set], cpu=1, memory="1Gi")
def train_boosting(
    build_training_set: dict[str, Any], dataset: str, partition: str, checksum: str, **_: Any
) -> dict[str, Any]:
    return training.train("boosting", build_training_set, dataset, partition, checksum)


@weekly.task(depends_on=[train_linear, train_boosting], cpu=0.25, memory="512Mi")
def compare(
    train_linear: dict[str, Any], train_boosting: dict[str, Any], max_mae_minutes: float, **_: Any
) -> dict[str, Any]:
    return training.compare(train_linear, train_boosting, max_mae_minutes)


@weekly.task(
    depends_on=[compare, train_linear, train_boosting],
    condition='outputs.compare.winner == "a"',
    cpu=0.25,
    memory="512Mi",
)
def deploy_a(
    train_linear: dict[str, Any], train_boosting: dict[str, Any], **_: Any
) -> dict[str, Any]:
    return training.deploy(champion=train_linear, challenger=train_boosting)


@weekly.task(
    depends_on=[compare, train_linear, train_boosting],
    condition='outputs.compare.winner == "b"',
    cpu=0.25,
    memory="512Mi",
)
def deploy_b(
    train_linear: dict[str, Any], train_boosting: dict[str, Any], **_: Any
) -> dict[str, Any]:
    return training.deploy(champion=train_boosting, challenger=train_linear)
