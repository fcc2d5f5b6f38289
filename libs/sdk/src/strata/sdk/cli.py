"""The ``strata`` command line; for now ``strata stack up|down|status``.

The stack's modules (and the clients they import: aiokafka, asyncpg, boto) load
only when a stack command runs, so ``strata --help`` and the commands still to
come do not pay for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from strata.core.errors import ConfigError

if TYPE_CHECKING:
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


def main() -> None:
    """Entry point of the ``strata`` script and of ``python -m strata.sdk.cli``."""
    app(prog_name="strata")


if __name__ == "__main__":
    main()
