"""`phx dump`."""

from __future__ import annotations

import base64
import io
import sys

import click

from phoenix_backup.cli.app import (
    Out,
    check_target,
    cli,
    common,
    complete_snapshots,
    latest_options,
    load_config,
    reader_gone,
    repo_option,
    target_option,
    thaw_option,
)
from phoenix_backup.errors import ExitStatus, OutputFailed
from phoenix_backup.ops import dump as dump_op
from phoenix_backup.ops.context import Environment


@cli.command()
@click.argument("ref", metavar="ID", shell_complete=complete_snapshots)
@click.argument("path")
@target_option
@thaw_option
@latest_options
@repo_option
@common
def dump(
    out: Out,
    envx: Environment,
    config_path: str | None,
    ref: str,
    path: str,
    target: str | None,
    thaw_timeout: float,
) -> ExitStatus:
    """Write one file of a snapshot to stdout, byte for byte (a database as its consistent copy).

    Nothing is written unless the whole file matches the snapshot's SHA-256. With --json, stdout
    holds one JSON document with the file's metadata and its bytes in base64 (`contentBase64`).

    Example: phx dump 2026-03-15-14-30 MEMORY.md > MEMORY-then.md
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    envx.thaw_timeout = thaw_timeout
    if out.as_json:
        buf = io.BytesIO()
        result = dump_op.dump(cfg, envx, ref=ref, path=path, out=buf, target=target)
        doc = {**result.to_json(), "contentBase64": base64.b64encode(buf.getvalue()).decode("ascii")}
        out.result(doc, "")
    elif sys.stdout is None:  # closed: the file would be read and lost
        raise OutputFailed("stdout is closed")
    else:
        try:
            dump_op.dump(cfg, envx, ref=ref, path=path, out=sys.stdout.buffer, target=target)
        except BrokenPipeError:
            reader_gone()
    return ExitStatus.OK
