"""`phx init`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, cli, common
from phoenix_backup.errors import ExitStatus
from phoenix_backup.ops import manage
from phoenix_backup.ops.context import Environment


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
        f"created repository {result.repository} (encryption: {result.encryption})\n"
        f"key fingerprint {result.fingerprint} (note it: a new machine can check it with `phx key trust`)"
        if result.repository_created
        else f"kept existing repository {result.repository}"
    )
    out.result(result.to_json(), text)
    return ExitStatus.OK
