"""The `phx` entry point: the application (its commands are imported when run, see `cli.app`),
and click's own errors turned into Phoenix's one-line format."""

from __future__ import annotations

import sys

import click

from phoenix_backup.cli.app import cli
from phoenix_backup.errors import ExitStatus

__all__ = ["cli", "main"]


def main() -> None:
    try:
        cli.main(prog_name="phx", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        sys.exit(int(ExitStatus.USAGE))
    except click.UsageError as exc:
        # One line in Phoenix's error format instead of click's usage block.
        hint = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else "; see `phx --help`"
        click.echo(f"phx: error: {exc.format_message().rstrip('.')}{hint}", err=True)
        sys.exit(int(ExitStatus.USAGE))
    except click.exceptions.Abort:
        click.echo("phx: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"phx: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
