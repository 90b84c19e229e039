"""`phx key`."""

from __future__ import annotations

import click

from phoenix_backup.cli import render
from phoenix_backup.cli.app import (
    Out,
    check_target,
    cli,
    command_group,
    common,
    identity_option,
    load_config,
    repo_option,
    target_option,
)
from phoenix_backup.errors import ExitStatus, UsageError, shown, shown_each
from phoenix_backup.ops import key as key_op
from phoenix_backup.ops.context import Environment


@cli.group()
@command_group
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
    listing = key_op.key_list(cfg, envx)
    rows = [[s.id, s.type, s.label, s.created, s.host, s.status, "*" if s.current else ""] for s in listing.slots]
    header = f"repository {listing.repository}, key fingerprint {listing.fingerprint}\n"
    out.result(
        [{**s.to_json(), "repository": listing.repository, "fingerprint": listing.fingerprint} for s in listing.slots],
        header + render.table(["ID", "TYPE", "LABEL", "CREATED", "HOST", "STATUS", "CURRENT"], rows),
        data=True,
    )
    return ExitStatus.OK


@key.command(name="trust")
@click.argument("fingerprint")
@target_option
@repo_option
@common
def key_trust(out: Out, envx: Environment, config_path: str | None, fingerprint: str, target: str | None) -> ExitStatus:
    """Trust the repository's key after you checked its fingerprint (a key rotated on another
    machine, a repository re-created on purpose, or before a first use on a new machine).

    Phoenix records each repository's key fingerprint the first time it opens it, and refuses a
    repository whose key changed. This opens it, and trusts it only if its key has FINGERPRINT.

    On a new machine with nothing but the repository, name it with --repo (as `phx list` does).

    Example: phx key trust 3f2a:91c0:5d7e:0b44:c1a9:7e20:8f53:6d1b
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    result = key_op.key_trust(cfg, envx, fingerprint)
    before = f" (was {result.previous})" if result.previous and result.previous != result.fingerprint else ""
    out.result(
        result.to_json(),
        f"trusting key {result.fingerprint}{before} for repository {result.repository} at {shown(result.location)}",
    )
    return ExitStatus.OK


@key.command(name="add")
@click.option("--method", type=click.Choice(["passphrase", "age", "gpg"]), required=True)
@click.option("--recipient", "recipients", multiple=True, help="age recipient (age1...).")
@click.option("--key-id", help="GPG key id.")
@click.option(
    "--write-only",
    is_flag=True,
    help="With --method age: make the repository write-only for the recipients (docs/write-only.md); no data is "
    "rewritten, every other key slot is removed.",
)
@identity_option
@common
def key_add(
    out: Out,
    envx: Environment,
    config_path: str | None,
    method: str,
    recipients: tuple[str, ...],
    key_id: str | None,
    write_only: bool,
) -> ExitStatus:
    """Add a key slot; a new passphrase comes from PHX_NEW_PASSPHRASE or a prompt.

    With --write-only (and --method age), the repository becomes write-only: this machine keeps a
    write key and the recipients, and only the recipients' identities read the repository, on
    another machine. Run it where the repository opens today (its passphrase, say), then remove
    that passphrase from this machine.

    Example: phx key add --method age --recipient age1...
    """
    cfg = load_config(out, envx, config_path)
    if write_only:
        if method != "age":
            raise UsageError("--write-only needs --method age: the repository is then read with age identities")
        done = key_op.key_add_write_only(cfg, envx, recipients)
        lines = [
            f"repository {done.repository} is write-only for {len(done.recipients)} recipient(s) (key slot "
            f"{done.slot.id}); no data was rewritten, {done.index_rewritten} index object(s) were replaced by one"
        ]
        if done.removed:
            lines.append(f"removed key slot(s) {', '.join(done.removed)}: only the recipients' identities open it now")
        if done.key_path is not None:
            lines.append(
                f"this machine's write key: {done.key_path} ({done.snapshots} snapshot(s) in its record); remove the "
                "old passphrase (or identity) from this machine: it opens nothing written from now on"
            )
        for name, report in done.targets.items():
            lines.append(f"target {name}: " + ("ok" if report.ok else f"failed ({report.error}); `phx sync` retries"))
        out.result(done.to_json(), shown_each(lines))
        return ExitStatus.of_targets([True, *(r.ok for r in done.targets.values())])
    slot = key_op.key_add(cfg, envx, method=method, recipients=recipients, key_id=key_id)
    out.result(slot.to_json(), f"added key slot {slot.id} ({shown(slot.label)})")
    return ExitStatus.OK


@key.command(name="remove")
@click.argument("slot_id")
@common
def key_remove(out: Out, envx: Environment, config_path: str | None, slot_id: str) -> ExitStatus:
    """Remove a key slot (never the last one).

    Example: phx key remove 0123456789abcdef
    """
    cfg = load_config(out, envx, config_path)
    key_op.key_remove(cfg, envx, slot_id)
    out.result({"removed": slot_id}, f"removed key slot {slot_id}")
    return ExitStatus.OK


@key.command(name="passwd")
@common
def key_passwd(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Change the passphrase: a new slot replaces the one that opened the repository.

    Example: PHX_PASSPHRASE=old PHX_NEW_PASSPHRASE=new phx key passwd
    """
    cfg = load_config(out, envx, config_path)
    slot = key_op.key_passwd(cfg, envx)
    out.result(slot.to_json(), f"passphrase changed (new key slot {slot.id})")
    return ExitStatus.OK


@key.command(name="rotate")
@common
def key_rotate(out: Out, envx: Environment, config_path: str | None) -> ExitStatus:
    """Replace the repository's encryption key: old key slots (and copies of them, such as a Git
    target's history) then open nothing written afterwards.

    Every blob a snapshot still needs is re-sealed into new packs, the index, the snapshots and
    the capture segments of `phx watch` (so `phx restore --at` keeps every point in time) are
    re-written, and the old objects and slots are deleted, under the exclusive lock; then every
    other target is brought over. Slots whose credential is not known here (other passphrases)
    are dropped and listed: add them again with `phx key add`. Other machines that use the
    repository must then trust the new fingerprint (`phx key trust`).

    Example: PHX_PASSPHRASE=... phx key rotate
    """
    from phoenix_backup.ops import key_rotate

    cfg = load_config(out, envx, config_path)
    result = key_rotate.rotate(cfg, envx)
    if result.finished_earlier:
        text = f"finished the interrupted key rotation: key fingerprint {result.fingerprint}"
    else:
        text = (
            f"rotated the key of repository {result.repository} in {result.seconds:.1f} s: {result.snapshots} "
            f"snapshot(s), {result.segments} capture segment(s), {result.blobs} blob(s) re-sealed into "
            f"{result.packs} pack(s)\n"
            f"new key fingerprint {result.fingerprint} (was {result.previous}); on every other machine that "
            f"uses this repository, check it and run `phx key trust {result.fingerprint}`"
        )
        if result.dropped:
            text += f"\ndropped key slot(s) {', '.join(result.dropped)}: add them again with `phx key add`"
    for name, report in result.targets.items():
        text += f"\ntarget {name}: " + ("ok" if report.ok else f"failed ({shown(report.error)}); `phx sync` retries")
    out.result(result.to_json(), text)
    return ExitStatus.of_targets([True, *(r.ok for r in result.targets.values())])
