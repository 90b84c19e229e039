"""`phx demo`."""

from __future__ import annotations

from pathlib import Path

import click

from phoenix_backup.cli.app import Out, cli, common
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops.context import Environment


@cli.command()
@click.option(
    "--dir", "directory", type=click.Path(file_okay=False), help="Where to build the demo (default: a new temp folder)."
)
@click.option("--size", default="tiny", show_default=True, help="Sample size: tiny, small, medium or large.")
@common
def demo(out: Out, envx: Environment, config_path: str | None, directory: str | None, size: str) -> ExitStatus:
    """Generate a sample agent workspace, back it up, list, verify and restore it, and compare.

    Example: phx demo --size small
    """
    from phoenix_backup.ops import demo as demo_op

    result = demo_op.run(envx, Path(directory) if directory else None, size, out.notice)
    out.result(result.to_json(), result.text())
    return ExitStatus.OK if result.ok else ExitStatus.FAILURE
