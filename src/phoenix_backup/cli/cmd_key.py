"""`phx key`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import Out, cli, common, load_config
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import manage
from phoenix_backup.ops.context import Environment


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
