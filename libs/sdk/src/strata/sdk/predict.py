"""``strata predict batch``: score a dataset partition with a registry version.

The work is :func:`strata.sdk.models.batch.predict_batch`; this module only reads
the command line and prints the one-line summary. Its modules load when the command
runs, so ``strata --help`` stays quick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

predict = typer.Typer(
    help="Predictions in batch: a dataset partition scored with a registry version.",
    no_args_is_help=True,
)


@predict.command("batch")
def batch(
    model: Annotated[
        str,
        typer.Argument(help="NAME (its champion), NAME:VERSION or NAME@ALIAS."),
    ],
    dataset: Annotated[str, typer.Argument(help="Dataset name.")],
    partition: Annotated[str, typer.Argument(help="Partition of the dataset, e.g. week=0001.")],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Blob key to write the predictions to; default "
            "predictions/NAME/vVERSION/DATASET/PARTITION/part-0.parquet.",
        ),
    ] = "",
    source: Annotated[
        str,
        typer.Option(
            "--from",
            help="Blob prefix holding the partition's Parquet files; default DATASET/PARTITION/.",
        ),
    ] = "",
    time_column: Annotated[
        str, typer.Option("--time-column", help="The rows' event time column.")
    ] = "event_time",
) -> None:
    """Score every row of DATASET's PARTITION with MODEL, the features read point in time
    from the offline store, and write the predictions as Parquet to the blob store."""
    from rich.console import Console

    from strata.sdk.cli import _run

    _run(_batch(model, dataset, partition, out, source, time_column, Console()))


async def _batch(
    model: str,
    dataset: str,
    partition: str,
    out: str,
    source: str,
    time_column: str,
    console: Console,
) -> None:
    from strata.sdk.models.batch import predict_batch
    from strata.sdk.models.commands import Reference

    reference = Reference.parse(model)
    written = await predict_batch(
        reference.name,
        dataset,
        partition,
        version=reference.version,
        alias=reference.alias,
        out=out,
        source=source,
        time_column=time_column,
    )
    console.print(written.summary(), soft_wrap=True)
