"""`phx init`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, cli, common, given_once
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import init as init_op
from phoenix_backup.ops.context import Environment

# What the key of each method is called when saying that losing it loses the backups.
_SECRET = {"passphrase": "passphrase", "age": "age identity", "gpg": "GPG key"}


@cli.command()
@click.option("--workspace", help="The agent workspace (default ~/argent).")
@click.option(
    "--repo", multiple=True, callback=given_once, help="Where the local repository lives (default ~/backups/argent)."
)
@click.option(
    "--encryption",
    type=click.Choice(["passphrase", "age", "gpg", "none"]),
    help="How the repository is encrypted (default passphrase; none stores everything readable, with a warning).",
)
@click.option("--recipient", "recipients", multiple=True, help="age recipient (age1...) for --encryption age.")
@click.option("--key-id", help="GPG key id for --encryption gpg.")
@click.option("--identity-file", help="age identity file used to open the repository.")
@click.option(
    "--write-only",
    is_flag=True,
    help="With --encryption age: this machine keeps only the recipients and a write key; reading happens where the "
    "identity is (docs/write-only.md).",
)
@click.option("--force", is_flag=True, help="Replace an existing config file (never the repository).")
@common
def init(
    out: Out,
    envx: Environment,
    config_path: str | None,
    workspace: str | None,
    repo: str | None,
    encryption: str | None,
    recipients: tuple[str, ...],
    key_id: str | None,
    identity_file: str | None,
    write_only: bool,
    force: bool,
) -> ExitStatus:
    """Write a config with the ArgentOS defaults and create the encrypted repository.

    The passphrase is asked twice on a terminal, else read from PHX_PASSPHRASE or
    PHX_PASSPHRASE_FILE. With an existing config file (and no option that shapes a new one),
    init creates that config's repository. Only init creates the first target's repository:
    a backup never does, so a disk that is not mounted is an error, not a new repository.

    Example: PHX_PASSPHRASE=... phx init --workspace ~/argent --repo ~/backups/argent
    """
    result = init_op.init(
        envx,
        config_path=config_path,
        workspace=workspace,
        repo=repo,
        encryption=encryption,
        force=force,
        recipients=recipients,
        key_id=key_id,
        identity_file=identity_file,
        write_only=write_only,
    )
    out.result(result.to_json(), render(result))
    return ExitStatus.OK


def render(r: init_op.InitResult) -> str:
    lines = [f"wrote {r.config_path}" if r.config_written else f"using the existing config {r.config_path}"]
    if r.repository_created:
        lines.append(f"created repository {r.repository} (encryption: {r.encryption})")
    else:
        lines.append(f"kept existing repository {r.repository}")
    lines.append(f"key fingerprint: {r.fingerprint} (note it: a new machine can check it with `phx key trust`)")
    secret = _SECRET.get(r.encryption)
    if secret is not None:
        lines.append(
            f"Keep the {secret} safe, apart from this machine: a lost {secret} cannot be recovered, "
            "and without it no backup can be read."
        )
    else:
        lines.append(
            "warning: the repository is NOT encrypted; `phx init --force --encryption passphrase` "
            "with a new --repo starts an encrypted one"
        )
    lines += [
        "next steps:",
        *([f"  mkdir -p {r.workspace}             the workspace does not exist yet"] if not r.workspace_exists else []),
        "  phx backup --dry-run      what a backup will save, per component",
        "  phx backup                take the first snapshot",
        "  phx schedule install      back up every day at 02:00",
        "  phx drill                 prove that the snapshot restores",
    ]
    return shown_each(lines)
