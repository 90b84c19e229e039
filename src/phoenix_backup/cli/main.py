"""The `phx` command: parse arguments, call one use case, print text or JSON, map errors to exit
codes. Results go to stdout; notices, progress and errors to stderr."""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from phoenix_backup import __version__
from phoenix_backup.cli import render
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, PhoenixError
from phoenix_backup.ops import backup as backup_op
from phoenix_backup.ops import manage
from phoenix_backup.ops import restore as restore_op
from phoenix_backup.ops import verify as verify_op
from phoenix_backup.ops.context import Environment, is_tty

F = TypeVar("F", bound=Callable[..., Any])


class Out:
    """Where a command's output goes, and how (plain text or one JSON document)."""

    def __init__(self, as_json: bool, verbose: bool) -> None:
        self.as_json = as_json
        self.verbose = verbose

    def notice(self, message: str) -> None:
        click.echo(f"phx: {message}", err=True)

    def result(self, doc: object, text: str) -> None:
        if self.as_json:
            click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        elif text:
            click.echo(text)


def make_env(out: Out) -> Environment:
    tty = is_tty()

    def progress(phase: str, done: int, total: int) -> None:
        if total:
            sys.stderr.write(f"\r{phase}: {done}/{total} ({100 * done // total}%)")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return Environment(
        env=dict(os.environ),
        interactive=tty,
        prompt=(lambda q: getpass.getpass(q)) if tty else None,
        confirm=(lambda q: click.confirm(q, default=False, err=True)) if tty else None,
        notice=out.notice,
        progress=progress if sys.stderr.isatty() and not out.as_json else None,
    )


def common(f: F) -> F:
    """--config, --json and --verbose on every command (DESIGN §2), and one error mapping."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        help="Config file (overrides PHX_CONFIG and the search paths).",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("--verbose", "-v", is_flag=True, help="More detail; tracebacks on errors.")
    @functools.wraps(f)
    def wrapper(*args: Any, config_path: str | None, as_json: bool, verbose: bool, **kwargs: Any) -> None:
        out = Out(as_json, verbose)
        envx = make_env(out)
        try:
            status = f(*args, out=out, envx=envx, config_path=config_path, **kwargs)
        except PhoenixError as exc:
            if verbose:
                traceback.print_exc()
            click.echo(f"phx: error: {exc}", err=True)
            if as_json:
                click.echo(json.dumps({"ok": False, "error": str(exc), "errorType": type(exc).__name__}))
            sys.exit(int(exc.exit_status))
        except KeyboardInterrupt:
            click.echo("phx: interrupted; the repository is unchanged unless a snapshot was reported", err=True)
            sys.exit(130)
        sys.exit(int(status or ExitStatus.OK))

    return wrapper  # type: ignore[return-value]


def load_config(out: Out, envx: Environment, config_path: str | None) -> Config:
    cfg = manage.load(envx, config_path)
    for warning in cfg.warnings:
        out.notice(f"warning: {warning}")
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phx")
def cli() -> None:
    """Phoenix: consistent, deduplicated, encrypted backups of an AI agent's workspace.

    \b
    Quick start:
      phx init --workspace ~/argent --repo ~/backups/argent
      phx backup && phx list && phx verify
      phx restore --latest --to /tmp/restored
    """


@cli.command()
@click.option("--workspace", help="The agent workspace (default ~/argent).")
@click.option("--repo", help="Where the local repository lives (default ~/backups/argent).")
@click.option(
    "--encryption", type=click.Choice(["none", "passphrase", "age", "gpg"]), default="none", show_default=True
)
@click.option("--recipient", "recipients", multiple=True, help="age recipient (age1...) for --encryption age.")
@click.option("--key-id", help="GPG key id for --encryption gpg.")
@click.option("--identity-file", help="age identity file used to open the repository.")
@click.option("--force", is_flag=True, help="Replace an existing config file (never the repository).")
@common
def init(
    out: Out,
    envx: Environment,
    config_path: str | None,
    workspace: str | None,
    repo: str | None,
    encryption: str,
    recipients: tuple[str, ...],
    key_id: str | None,
    identity_file: str | None,
    force: bool,
) -> ExitStatus:
    """Write a config with the seed's defaults and create the repository.

    Example: PHX_PASSPHRASE=... phx init --encryption passphrase --workspace ~/argent
    """
    result = manage.init(
        envx,
        config_path=config_path,
        workspace=workspace,
        repo=repo,
        encryption=encryption,
        force=force,
        recipients=recipients,
        key_id=key_id,
        identity_file=identity_file,
    )
    text = f"wrote {result.config_path}\n" + (
        f"created repository {result.repository} (encryption: {result.encryption})"
        if result.repository_created
        else f"kept existing repository {result.repository}"
    )
    out.result(result.to_json(), text)
    return ExitStatus.OK


def scope_options(f: F) -> F:
    f = click.option("--memory-only", "scope", flag_value="memory", help="Memory files and memory databases only.")(f)
    f = click.option("--databases-only", "scope", flag_value="databases", help="Databases only.")(f)
    f = click.option(
        "--identity-only", "scope", flag_value="identity", help="Identity files only (SOUL.md, IDENTITY.md, ...)."
    )(f)
    return f


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be saved, with sizes; write nothing.")
@scope_options
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option("--time", "time_text", help="Record this time (RFC 3339 with offset) instead of now.")
@common
def backup(
    out: Out,
    envx: Environment,
    config_path: str | None,
    dry_run: bool,
    scope: str | None,
    tags: tuple[str, ...],
    time_text: str | None,
) -> ExitStatus:
    """Take one snapshot of the workspace and its databases.

    Example: phx backup --tag nightly
    """
    cfg = load_config(out, envx, config_path)
    result = backup_op.backup(cfg, envx, scope=scope or "full", tags=tags, time_text=time_text, dry_run=dry_run)  # type: ignore[arg-type]
    out.result(result.to_json(), render.backup(result, out.verbose))
    return result.exit_status


@cli.command(name="list")
@click.option("--target", help="Read from this target only (only `local` in this version).")
@common
def list_cmd(out: Out, envx: Environment, config_path: str | None, target: str | None) -> ExitStatus:
    """List snapshots: id, name, time, size, bytes added, files, databases, tags, targets.

    Example: phx list --json
    """
    cfg = load_config(out, envx, config_path)
    _check_target(target)
    snaps = manage.list_snapshots(cfg, envx)
    out.result([s.to_json() for s in snaps], render.snapshots(snaps))
    return ExitStatus.OK


@cli.command()
@click.option("--latest", "latest", is_flag=True, help="Restore the most recent snapshot.")
@click.option("--backup", "ref", help="Snapshot id, unique id prefix or name (2026-03-15-14-30).")
@scope_options
@click.option("--config-only", "scope", flag_value="config", help="Configuration files only.")
@click.option("--path", "paths", multiple=True, help="Only paths matching this glob (repeatable).")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Restore below this folder instead of in place.")
@click.option("--target", help="Read from this target only (only `local` in this version).")
@click.option("--dry-run", is_flag=True, help="Show the plan; write nothing.")
@click.option("--yes", "--force", "yes", is_flag=True, help="Do not ask before overwriting.")
@common
def restore(
    out: Out,
    envx: Environment,
    config_path: str | None,
    latest: bool,
    ref: str | None,
    scope: str | None,
    paths: tuple[str, ...],
    to: str | None,
    target: str | None,
    dry_run: bool,
    yes: bool,
) -> ExitStatus:
    """Restore all or part of a snapshot, in place or below --to.

    Example: phx restore --latest --to /tmp/agent-restored
    """
    from phoenix_backup.errors import UsageError

    if latest and ref:
        raise UsageError("give either --latest or --backup ID, not both")
    if not latest and not ref:
        raise UsageError("say which snapshot to restore: --latest or --backup ID (see `phx list`)")
    cfg = load_config(out, envx, config_path)
    _check_target(target)
    result = restore_op.restore(
        cfg,
        envx,
        ref=ref or "latest",
        scope=scope or "full",  # type: ignore[arg-type]
        paths=paths,
        to=Path(to).absolute() if to else None,
        dry_run=dry_run,
        yes=yes,
    )
    out.result(result.to_json(), render.restore(result, out.verbose))
    return result.exit_status


@cli.command()
@click.option("--backup", "ref", help="Check this snapshot only.")
@click.option("--target", help="Check this target only (only `local` in this version).")
@click.option("--read-data", is_flag=True, help="Read and check every byte of every pack.")
@common
def verify(
    out: Out, envx: Environment, config_path: str | None, ref: str | None, target: str | None, read_data: bool
) -> ExitStatus:
    """Check the repository's structure, or with --read-data every byte.

    Example: phx verify --read-data
    """
    cfg = load_config(out, envx, config_path)
    _check_target(target)
    result = verify_op.verify(cfg, envx, ref=ref, read_data=read_data)
    out.result(result.to_json(), render.verify(result))
    return result.exit_status


@cli.command()
@click.option(
    "--all", "remove_all", is_flag=True, help="Remove every lock, also fresh ones (only when no Phoenix runs)."
)
@common
def unlock(out: Out, envx: Environment, config_path: str | None, remove_all: bool) -> ExitStatus:
    """Remove locks left by crashed runs, saying whose they were.

    Example: phx unlock
    """
    cfg = load_config(out, envx, config_path)
    removed = manage.unlock(cfg, envx, remove_all=remove_all)
    text = "\n".join(f"removed {info.describe()}" for info in removed) or "no stale locks"
    out.result([{"name": i.name, "description": i.describe()} for i in removed], text)
    return ExitStatus.OK


@cli.group()
def key() -> None:
    """Manage the key slots (passphrase, age, gpg) that open the repository.

    Example: PHX_NEW_PASSPHRASE=... phx key add --method passphrase
    """


@key.command(name="list")
@common
def key_list(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """List key slots; `current` marks the one that opened the repository.

    Example: phx key list --json
    """
    cfg = load_config(out, envx, config_path)
    slots = manage.key_list(cfg, envx)
    rows = [[s.id, s.type, s.label, s.created, s.host, "*" if s.current else ""] for s in slots]
    out.result([s.to_json() for s in slots], render.table(["ID", "TYPE", "LABEL", "CREATED", "HOST", "CURRENT"], rows))
    return ExitStatus.OK


@key.command(name="add")
@click.option("--method", type=click.Choice(["passphrase", "age", "gpg"]), required=True)
@click.option("--recipient", "recipients", multiple=True, help="age recipient (age1...).")
@click.option("--key-id", help="GPG key id.")
@common
def key_add(
    out: Out, envx: Environment, config_path: str | None, method: str, recipients: tuple[str, ...], key_id: str | None
) -> ExitStatus:
    """Add a key slot; a new passphrase comes from PHX_NEW_PASSPHRASE or a prompt.

    Example: phx key add --method age --recipient age1...
    """
    cfg = load_config(out, envx, config_path)
    slot = manage.key_add(cfg, envx, method=method, recipients=recipients, key_id=key_id)
    out.result(slot.to_json(), f"added key slot {slot.id} ({slot.label})")
    return ExitStatus.OK


@key.command(name="remove")
@click.argument("slot_id")
@common
def key_remove(out: Out, envx: Environment, config_path: str | None, slot_id: str) -> ExitStatus:
    """Remove a key slot (never the last one).

    Example: phx key remove 0123456789abcdef
    """
    cfg = load_config(out, envx, config_path)
    manage.key_remove(cfg, envx, slot_id)
    out.result({"removed": slot_id}, f"removed key slot {slot_id}")
    return ExitStatus.OK


@key.command(name="passwd")
@common
def key_passwd(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Change the passphrase: a new slot replaces the one that opened the repository.

    Example: PHX_PASSPHRASE=old PHX_NEW_PASSPHRASE=new phx key passwd
    """
    cfg = load_config(out, envx, config_path)
    slot = manage.key_passwd(cfg, envx)
    out.result(slot.to_json(), f"passphrase changed (new key slot {slot.id})")
    return ExitStatus.OK


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


def _check_target(target: str | None) -> None:
    from phoenix_backup.errors import UsageError

    if target not in (None, "local"):
        raise UsageError(f"unknown target {target!r}; this version reads from the local target only")


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
