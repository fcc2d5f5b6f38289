"""``strata workflow apply|list``: the scheduler's workflow calls, printed for people.

Each failure becomes one line naming what to fix (the file and field, the workflow
and field the scheduler refused, or the scheduler's address), never a traceback.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc
from rich.console import Console
from rich.table import Table

from strata.api.scheduler.v1 import scheduler_pb2 as pb
from strata.api.scheduler.v1.scheduler_pb2_grpc import SchedulerServiceStub
from strata.core.errors import StrataError
from strata.core.rpc.client import channel
from strata.core.rpc.status import field_violations
from strata.core.rpc.tls import channel_credentials
from strata.core.settings import AuthSettings, ModeSettings, ServiceSettings, TlsSettings, load
from strata.sdk.workflows.loading import load_workflows

SCHEDULER = "strata.scheduler.v1.SchedulerService"
T = TypeVar("T")


class CommandError(Exception):
    """A failure to print as one line; the command exits 1."""


async def apply(path: Path, *, paused: bool, validate_only: bool, out: Console) -> None:
    """Apply every workflow ``path`` declares; one line per workflow with its version."""
    try:
        specs = [workflow.to_spec() for workflow in load_workflows(path)]
    except StrataError as error:
        raise CommandError(f"{path}: {error}") from None
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        for spec in specs:
            request = pb.ApplyWorkflowRequest(spec=spec, paused=paused, validate_only=validate_only)
            reply: pb.ApplyWorkflowResponse = await _call(
                stub.ApplyWorkflow(request), f"workflow {spec.name!r}"
            )
            what = "changed" if reply.changed else "unchanged"
            verb = "would be" if validate_only else "is"
            out.print(f"{spec.name}: {verb} version {reply.workflow.version} ({what})")


async def list_workflows(out: Console) -> None:
    """A table of every workflow's current version."""
    table = Table("name", "version", "tasks", "triggers", "paused", "applied", "by")
    token = ""
    async with _channel() as chan:
        stub = SchedulerServiceStub(chan)
        while True:
            request = pb.ListWorkflowsRequest(page_token=token)
            page: pb.ListWorkflowsResponse = await _call(stub.ListWorkflows(request), "list")
            for w in page.workflows:
                table.add_row(
                    w.spec.name,
                    str(w.version),
                    str(len(w.spec.tasks)),
                    ", ".join(_trigger(t) for t in w.spec.triggers) or "-",
                    "yes" if w.paused else "no",
                    w.applied_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"),
                    w.applied_by,
                )
            token = page.next_page_token
            if not token:
                break
    out.print(table)


def _trigger(trigger: pb.Trigger) -> str:
    if trigger.WhichOneof("kind") == "cron":
        return f"cron {trigger.cron.expression} {trigger.cron.time_zone or 'UTC'}"
    glob = trigger.data_arrival.partition_glob
    return f"data {trigger.data_arrival.dataset}" + (f" {glob}" if glob else "")


def _channel() -> grpc.aio.Channel:
    services = load(ServiceSettings)
    target = f"{services.host}:{services.scheduler_port}"
    try:
        return channel(
            target,
            load(AuthSettings),
            mode=load(ModeSettings).mode,
            credentials=channel_credentials(load(TlsSettings)),
            idempotent=(f"{SCHEDULER}/GetWorkflow", f"{SCHEDULER}/ListWorkflows"),
        )
    except StrataError as error:
        raise CommandError(str(error)) from None


async def _call(call: Awaitable[T], what: str) -> T:
    """The reply of ``call``, or a CommandError saying in one line what went wrong."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        violations = field_violations(error)
        if violations:
            fields = "; ".join(f"{field}: {problem}" for field, problem in violations.items())
            raise CommandError(f"{what} refused: {fields}") from None
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise CommandError(f"the scheduler is not reachable: {error.details()}") from None
        raise CommandError(f"{what}: {error.code().name}: {error.details()}") from None
