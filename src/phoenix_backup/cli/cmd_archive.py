"""`phx archive`."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from phoenix_backup.cli.app import (
    Out,
    check_target,
    cli,
    common,
    complete_snapshots,
    latest_options,
    load_config,
    repo_option,
    target_option,
    thaw_option,
)
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import archive as archive_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.units import human_size


@cli.command()
@click.argument("ref", metavar="ID", shell_complete=complete_snapshots)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False),
    help="The archive to write: FILE.zip, FILE.tar.gz or FILE.tgz.",
)
@target_option
@thaw_option
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@latest_options
@repo_option
@common
def archive(
    out: Out,
    envx: Environment,
    config_path: str | None,
    ref: str,
    output: str,
    target: str | None,
    thaw_timeout: float,
    force: bool,
) -> ExitStatus:
    """Write one snapshot as a plain zip or tar.gz, readable without Phoenix.

    Inside, below a folder phoenix-<name>/: the logical paths as folders (workspace/, home/, ...),
    databases as plain SQLite files, a SHA256SUMS file for `sha256sum -c` and phoenix-manifest.json.

    Example: phx archive latest --output ~/agent-2026-03-15.zip
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    envx.thaw_timeout = thaw_timeout
    result = archive_op.archive(
        cfg, envx, ref=ref, output=Path(os.path.abspath(Path(output).expanduser())), target=target, force=force
    )
    out.result(result.to_json(), text(result))
    return result.exit_status


def text(result: archive_op.ArchiveResult) -> str:
    """What `phx archive` says: the snapshot's name (a planted snapshot's: any text) on its line,
    and the command to copy quoted as one word, so that a name holding `; cmd` or `$(cmd)` runs
    nothing."""
    return shown_each(
        [
            f"archived {result.name} ({result.snapshot[:8]}) to {result.output}: {result.files} files, "
            f"{result.databases} databases, {result.symlinks} symlinks, {result.dirs} folders "
            f"({human_size(result.size)} in, {human_size(result.archive_size)} archive)",
            f"check it after extraction: cd {shlex.quote(result.top)} && sha256sum -c SHA256SUMS",
        ]
    )
