"""`phx prune`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, cli, common, identity_option, load_config
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import prune as prune_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.units import human_size


@cli.command()
@click.option("--dry-run", is_flag=True, help="Show what would be freed; change nothing.")
@click.option("--target", help="Prune this target only (default: every enabled target).")
@identity_option
@common
def prune(out: Out, envx: Environment, config_path: str | None, dry_run: bool, target: str | None) -> ExitStatus:
    """Free the data no snapshot references, and repack mostly unreferenced packs.

    Runs under an exclusive lock; a crash at any point loses no referenced data.

    Example: phx forget && phx prune
    """
    cfg = load_config(out, envx, config_path)
    result = prune_op.prune(cfg, envx, dry_run=dry_run, target=target)
    out.result(result.to_json(), render(result), data=result.exit_status != ExitStatus.OK)
    out.failed_targets(result.targets)
    return result.exit_status


def render(r: prune_op.PruneResult) -> str:
    lines = []
    for name, t in r.targets.items():
        if not t.ok:
            lines.append(f"target {name}: FAILED: {t.error}")
            continue
        lines += [f"notice: {n}" for n in t.notices]
        freed = human_size(max(0, t.bytes_freed - t.bytes_written))
        if r.dry_run:
            what = (
                f"would delete {t.deleted_packs} unused packs, repack {t.repacked_packs} and remove "
                f"{t.leftover_packs} leftovers; would free {freed}, leaving {human_size(t.bytes_after)} "
                "(dry run: nothing changed)"
            )
        else:
            what = (
                f"deleted {t.deleted_packs} unused packs, repacked {t.repacked_packs}, removed {t.leftover_packs} "
                f"leftovers; freed {freed}, {human_size(t.bytes_after)} left"
            )
        lines.append(
            f"target {name}: {t.snapshots} snapshots, {t.packs_before} packs, {human_size(t.bytes_before)}; {what}"
        )
    return shown_each(lines)
