"""The ``strata`` command line: ``strata dev``, ``strata stack up|down|status``,
``strata workflow apply|list|run|status|logs|cancel|backfill``,
``strata features apply|list|get|online|training-set|delete|backfill``,
``strata models list|show|promote|audit``,
``strata nodes list|drain|placements|classes``,
``strata queues list|show|apply``,
``strata lineage``, ``strata skew``, ``strata predict batch``.

The stack's modules (and the clients they import: aiokafka, asyncpg, boto) load
only when a stack command runs, so ``strata --help`` and the commands still to
come do not pay for them.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from strata.core.errors import ConfigError
from strata.sdk import predict

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from rich.console import Console

    from strata.sdk.stack.commands import Command

app = typer.Typer(
    help="Strata: the ML infrastructure platform.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a local variable may hold a password
)
stack = typer.Typer(
    help="The local stack: real Kafka, Postgres, Redis and S3 servers on loopback ports.",
    no_args_is_help=True,
)
app.add_typer(stack, name="stack")
workflow = typer.Typer(
    help="Workflows: declare them in Python, apply them to the scheduler, list them.",
    no_args_is_help=True,
)
app.add_typer(workflow, name="workflow")
features = typer.Typer(
    help="Feature views: declare them in Python, apply them to the streamer, read them.",
    no_args_is_help=True,
)
app.add_typer(features, name="features")
models = typer.Typer(
    help="Models: their versions and artifacts in the registry, and the aliases served.",
    no_args_is_help=True,
)
app.add_typer(models, name="models")
nodes = typer.Typer(
    help="Nodes: the machines whose agents run tasks, their capacity and what is reserved.",
    no_args_is_help=True,
)
app.add_typer(nodes, name="nodes")
queues = typer.Typer(
    help="Queues: quotas, weights and per-user caps, what they use and who waits, and why.",
    no_args_is_help=True,
)
app.add_typer(queues, name="queues")
app.add_typer(predict.predict, name="predict")


@app.command()
def dev() -> None:
    """The local stack and all six services in the foreground, with their logs.

    Ctrl-C stops the services and the stack servers this command started (a stack
    that was already running is left running). Exits 1 if a service exits by itself.
    """
    from strata.sdk import dev

    try:
        code = dev.main(_out())
    except ConfigError as error:
        typer.echo(str(error), err=True)
        code = 2
    raise typer.Exit(code)


@stack.command()
def up() -> None:
    """Start every server that is not running; return once each answers and is provisioned.

    Exits 1 when a server fails or a port is held by another process (then nothing
    starts), 2 when a STRATA_* setting is invalid.
    """
    _run_stack("up")


@stack.command()
def down() -> None:
    """Stop every server of the stack; exits 1 if any process of it is left."""
    _run_stack("down")


@stack.command()
def status() -> None:
    """One line per server: address, up/down, pid, answers, memory; exits 1 unless all are up."""
    _run_stack("status")


def _run_stack(command: Command) -> None:
    """Run a stack command and exit with its status; 2 for invalid settings."""
    from strata.sdk.stack import commands

    try:
        code = commands.run(command)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        code = 2
    raise typer.Exit(code)


@workflow.command("apply")
def workflow_apply(
    file: Annotated[Path, typer.Argument(help="Python file declaring one or more Workflow.")],
    paused: Annotated[bool, typer.Option(help="Keep its triggers from starting runs.")] = False,
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="Check and compare; store nothing.")
    ] = False,
) -> None:
    """Apply the workflows FILE declares: an unchanged one keeps its version, a changed
    one gets the next. Exits 1 with one line naming the problem when one is refused.
    """
    from strata.sdk.workflows import commands

    _run(commands.apply(file, paused=paused, validate_only=validate_only, out=_out()))


@workflow.command("list")
def workflow_list() -> None:
    """The current version of every workflow, by name."""
    from strata.sdk.workflows import commands

    _run(commands.list_workflows(_out()))


@workflow.command("run")
def workflow_run(
    name: Annotated[str, typer.Argument(help="Workflow to run (its current version).")],
    param: Annotated[
        list[str] | None,
        typer.Option(help="A run parameter as key=value (JSON values are typed); repeatable."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Show every task live until the run ends.")
    ] = False,
) -> None:
    """Start a run of NAME. With --follow, exits 1 unless the run SUCCEEDED."""
    from strata.sdk.workflows import commands

    _run(commands.run(name, param or [], follow=follow, out=_out()))


@workflow.command("status")
def workflow_status(run_id: Annotated[str, typer.Argument(help="Run id.")]) -> None:
    """A run and each of its tasks: state, attempt, node, duration and why."""
    from strata.sdk.workflows import commands

    _run(commands.status(run_id, _out()))


@workflow.command("logs")
def workflow_logs(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    task: Annotated[str | None, typer.Argument(help="Only this task's attempts.")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep printing new output until interrupted.")
    ] = False,
) -> None:
    """What each attempt of a run printed (stdout, then stderr), from the blob store."""
    from strata.sdk.workflows import logs

    _run(logs.show(run_id, task, follow=follow, out=_out()))


@workflow.command("cancel")
def workflow_cancel(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the run.")] = "",
) -> None:
    """Cancel a run: pending tasks are cancelled, running attempts told to stop."""
    from strata.sdk.workflows import commands

    _run(commands.cancel(run_id, reason, _out()))


@workflow.command("backfill")
def workflow_backfill(
    name: Annotated[str, typer.Argument(help="Workflow with a cron trigger.")],
    start: Annotated[str, typer.Option("--from", help="First time, ISO 8601 (UTC if no offset).")],
    end: Annotated[str, typer.Option("--to", help="Last time, ISO 8601 (UTC if no offset).")],
    max_concurrent: Annotated[
        int, typer.Option(help="Most of its runs active at once; 0: the workflow's limit.")
    ] = 0,
    dataset: Annotated[
        str, typer.Option(help="Run per partition of this dataset that arrived in the range.")
    ] = "",
) -> None:
    """One run per cron tick of NAME from --from to --to (or per partition of --dataset
    that arrived then), ticks and partitions already run excepted."""
    from strata.sdk.workflows import commands

    _run(
        commands.backfill(
            name, start, end, max_concurrent=max_concurrent, dataset=dataset, out=_out()
        )
    )


@features.command("apply")
def features_apply(
    file: Annotated[Path, typer.Argument(help="Python file declaring one or more FeatureView.")],
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="Check and compare; store nothing.")
    ] = False,
) -> None:
    """Apply the feature views FILE declares: an unchanged one keeps its version, a changed
    one gets the next. Exits 1 with one line naming the problem when one is refused.
    """
    from strata.sdk.features import commands

    _run(commands.apply(file, validate_only=validate_only, out=_out()))


@features.command("list")
def features_list() -> None:
    """The current version of every feature view you may read, by name."""
    from strata.sdk.features import commands

    _run(commands.list_views(_out()))


@features.command("get")
def features_get(
    name: Annotated[str, typer.Argument(help="Feature view name.")],
    version: Annotated[int, typer.Option(help="A past version; 0: the current one.")] = 0,
) -> None:
    """One feature view: source, entities, TTL, transforms and its features."""
    from strata.sdk.features import commands

    _run(commands.get(name, version, _out()))


@features.command("online")
def features_online(
    name: Annotated[str, typer.Argument(help="Feature view name.")],
    entity: Annotated[
        list[str], typer.Option(help="An entity key as key=value; one per key of the view.")
    ],
) -> None:
    """The online values of every feature of NAME for one entity, with status and event time."""
    from strata.sdk.features import commands

    _run(commands.online(name, entity, _out()))


@features.command("delete")
def features_delete(name: Annotated[str, typer.Argument(help="Feature view name.")]) -> None:
    """Delete the feature view NAME, every version: its streams stop and its online values
    go; the offline partitions its streams landed stay in the blob store."""
    from strata.sdk.features import commands

    _run(commands.delete(name, _out()))


@features.command("backfill")
def features_backfill(
    name: Annotated[str, typer.Argument(help="Feature view name.")],
    start: Annotated[
        str | None, typer.Option("--from", help="Earliest event time read, ISO 8601 (UTC).")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="Latest event time read, ISO 8601 (UTC).")
    ] = None,
) -> None:
    """Rebuild the online values of NAME from its offline partitions (after losing Redis, or
    for a view whose topic no longer holds its history)."""
    from strata.sdk.features import commands

    _run(commands.backfill(name, start, end, _out()))


@features.command("training-set")
def features_training_set(
    views: Annotated[
        list[str], typer.Argument(help="Feature views (all their features) or view:feature.")
    ],
    labels: Annotated[
        Path, typer.Option(help="Label file (Parquet or CSV): entity keys, time, labels.")
    ],
    out: Annotated[Path, typer.Option(help="Where to write the training set (Parquet).")],
    time_column: Annotated[
        str, typer.Option(help="Column of LABELS holding each row's time.")
    ] = "event_time",
) -> None:
    """A point-in-time training set: each label row with the values VIEWS had at its time."""
    from strata.sdk.features import training

    _run(training.training_set(views, labels, out, time_column, _out()))


@models.command("list")
def models_list() -> None:
    """Every model: its latest version, its aliases and who created it."""
    from strata.sdk.models import commands

    _run(commands.list_models(_out()))


@models.command("show")
def models_show(
    reference: Annotated[
        str, typer.Argument(help="NAME (the latest version), NAME:VERSION or NAME@ALIAS.")
    ],
) -> None:
    """One version with everything the registry holds for it."""
    from strata.sdk.models import commands

    _run(commands.show(reference, _out()))


@models.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="The version the alias should point at.")],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "champion",
    reason: Annotated[str, typer.Option(help="Why, recorded in the audit log.")] = "",
) -> None:
    """Point ALIAS of NAME at VERSION; the gateway swaps to it. Exits 1 when refused."""
    from strata.sdk.models import commands

    _run(commands.promote(name, version, alias, reason, _out()))


@models.command("audit")
def models_audit(
    name: Annotated[str, typer.Argument(help="Model name.")],
    limit: Annotated[int, typer.Option(help="Most entries to show, newest first.")] = 50,
) -> None:
    """Every change made to NAME: versions registered, artifacts uploaded, aliases moved."""
    from strata.sdk.models import commands

    _run(commands.audit(name, limit, _out()))


@nodes.command("list")
def nodes_list(
    state: Annotated[
        list[str] | None,
        typer.Option(help="Only nodes in this state (ready, draining, drained, lost); repeatable."),
    ] = None,
) -> None:
    """Every node but lost ones (unless asked): reserved of capacity, attempts, labels."""
    from strata.sdk import nodes as node_commands

    _run(node_commands.list_nodes(state or [], _out()))


@nodes.command("drain")
def nodes_drain(
    node_id: Annotated[str, typer.Argument(help="Node id, as strata nodes list shows it.")],
    reason: Annotated[str, typer.Option(help="Why, told to the agent and recorded.")] = "",
    shutdown: Annotated[
        bool, typer.Option(help="The agent exits once its last attempt has ended.")
    ] = False,
) -> None:
    """Place nothing more on a node; what runs there finishes (admins only). The drain
    holds when the agent reconnects, until the node is lost."""
    from strata.sdk import nodes as node_commands

    _run(node_commands.drain_node(node_id, reason, shutdown, _out()))


@nodes.command("placements")
def nodes_placements(
    node: Annotated[str, typer.Option(help="Only attempts on this node.")] = "",
    run: Annotated[str, typer.Option(help="Only attempts of this run.")] = "",
) -> None:
    """The attempts placed now, oldest first: node, queue, user, reserved, running or not."""
    from strata.sdk import nodes as node_commands

    _run(node_commands.list_placements(node, run, _out()))


@nodes.command("classes")
def nodes_classes() -> None:
    """The node classes started on demand: provider, size, min/max, nodes starting and up."""
    from strata.sdk import queues as queue_commands

    _run(queue_commands.list_node_classes(_out()))


@queues.command("list")
def queues_list() -> None:
    """Every queue: quota, what it reserves, weight, per-user cap, running and waiting."""
    from strata.sdk import queues as queue_commands

    _run(queue_commands.list_queues(_out()))


@queues.command("show")
def queues_show(
    name: Annotated[str, typer.Argument(help="Queue name.")] = "default",
) -> None:
    """One queue, who runs in it, and each waiting attempt in placement order with why."""
    from strata.sdk import queues as queue_commands

    _run(queue_commands.show_queue(name, _out()))


@queues.command("apply")
def queues_apply(
    name: Annotated[str, typer.Argument(help="Queue name: lowercase letters, digits, dashes.")],
    quota: Annotated[
        list[str] | None,
        typer.Option(help="A limit as RESOURCE=AMOUNT (cpu=4, memory=8Gi, gpu=1); repeatable."),
    ] = None,
    weight: Annotated[
        float, typer.Option(help="Share of contended capacity against other queues.")
    ] = 1.0,
    max_running_per_user: Annotated[
        int, typer.Option(help="Most attempts one user may have placed or running; 0: no cap.")
    ] = 0,
) -> None:
    """Create a queue or change its quota, weight and per-user cap (admins only)."""
    from strata.sdk import queues as queue_commands

    _run(queue_commands.apply_queue(name, quota or [], weight, max_running_per_user, _out()))


@app.command()
def lineage(prediction_id: Annotated[str, typer.Argument(help="Prediction id.")]) -> None:
    """Where a prediction came from: model version, run and attempts, training set,
    partitions, feature view versions, code bundle, and the features as served."""
    from strata.sdk import lineage as lineage_commands

    _run(lineage_commands.show(prediction_id, _out()))


@app.command()
def skew(
    model: Annotated[str, typer.Argument(help="Model name.")],
    since: Annotated[
        str,
        typer.Option(help="Only predictions served from this ISO 8601 time (UTC if no offset)."),
    ] = "",
    limit: Annotated[int, typer.Option(help="Most predictions to compare.")] = 10_000,
    tolerance: Annotated[
        float, typer.Option(help="Numbers differ past tolerance * max(1, |batch|).")
    ] = 1e-6,
    settle: Annotated[
        float, typer.Option(help="Seconds a prediction waits before it is compared (landing).")
    ] = 30.0,
    fail_on: Annotated[
        float | None, typer.Option(help="Exit 1 when a feature differs in more than this share.")
    ] = None,
) -> None:
    """Features as served vs the batch path at the same time, per feature and model version."""
    from strata.sdk import skew as skew_commands

    _run(
        skew_commands.show(
            model,
            since=since,
            limit=limit,
            tolerance=tolerance,
            settle=settle,
            fail_on=fail_on,
            out=_out(),
        )
    )


def _out() -> Console:
    from rich.console import Console

    return Console()


def _run(command: Coroutine[None, None, None]) -> None:
    """Run a command; its failures are one line on stderr and exit 1 (2: bad settings).

    Whatever the command left to the garbage collector is freed before the exit:
    a failure's traceback holds the command's frames in reference cycles, and in them
    its gRPC channels. Freed only at interpreter shutdown, the last channel stops
    grpc's asyncio engine (its poller thread) mid-finalization, which can abort the
    process (SIGABRT) instead of letting it exit with its code.
    """
    failure = _failure(command)
    gc.collect()
    if failure is not None:
        message, code = failure
        typer.echo(message, err=True)
        raise typer.Exit(code)


def _failure(command: Coroutine[None, None, None]) -> tuple[str, int] | None:
    """Run ``command``; the message and exit code of its failure, None if it succeeded
    (only the message outlives the exception)."""
    from strata.sdk.client import CommandError

    try:
        asyncio.run(command)
    except CommandError as error:
        return str(error), 1
    except ConfigError as error:
        return str(error), 2
    return None


def main() -> None:
    """Entry point of the ``strata`` script and of ``python -m strata.sdk.cli``."""
    app(prog_name="strata")


if __name__ == "__main__":
    main()
