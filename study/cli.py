"""The ``study`` command line: one command per pipeline verb."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from study.errors import StudyError

app = typer.Typer(
    help="Subliminal-learning studies: teachers, filtered data, fine-tuned and in-context students, judges and analysis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)

# Modules that add commands through a register(app) function.
COMMAND_MODULES = (
    "study.commands",
    "study.judge.cli",
    "study.auxlogits.cli",
    "study.probes.cli",
    "study.suite.cli",
    "analysis.cli",
)


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_commands()


def main() -> None:
    try:
        app(standalone_mode=False)
    except StudyError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(130)
    except Exception as error:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
