"""`phx forget`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, cli, common, complete_snapshots, identity_option, load_config
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import forget as forget_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.retention import Candidate, render_plan


@cli.command()
@click.argument("ids", nargs=-1, metavar="[ID]...", shell_complete=complete_snapshots)
@click.option("--dry-run", is_flag=True, help="Show what would be kept and removed, and why; remove nothing.")
@click.option("--target", help="Apply retention on this target only (default: every enabled target).")
@identity_option
@common
def forget(
    out: Out, envx: Environment, config_path: str | None, ids: tuple[str, ...], dry_run: bool, target: str | None
) -> ExitStatus:
    """Apply the retention policy (remove the snapshots no rule keeps), or forget the snapshots named.

    Each snapshot is listed with keep or remove and the rules that keep it, or why none does.
    A snapshot with a tag of yours is kept by the policy: name it (ID: id, unique prefix or name)
    to forget it. Only snapshot objects are removed; `phx prune` then frees the data they alone used.

    Example: phx forget --dry-run

    Example: phx forget 3f2a9c1e
    """
    cfg = load_config(out, envx, config_path)
    result = forget_op.forget(cfg, envx, dry_run=dry_run, target=target, ids=ids)
    out.result(result.to_json(), render(result), data=result.exit_status != ExitStatus.OK)
    out.failed_targets(result.targets)
    for t in result.targets.values():
        for line in t.locks_left:
            out.problem(f"target {t.target}: {line}")
    return result.exit_status


def _label(s: Candidate) -> str:
    return f"{s.id[:8]}  {s.name:<19} {s.time}"


def render(r: forget_op.ForgetResult) -> str:
    lines = [f"policy: {r.policy.describe()}"]
    for name, t in r.targets.items():
        if not t.ok:
            lines.append(f"target {name}: FAILED: {t.error}")
            continue
        if t.named or (t.plan is None and t.notices):
            verb = "would remove" if r.dry_run else "removed"
            lines += [f"target {name}: {verb} {_label(s)}" for s in t.named]
            lines += [f"target {name}: {n}" for n in t.notices]
            continue
        plan = t.plan
        if plan is None or not plan.decisions:
            lines.append(f"target {name}: no snapshots")
            continue
        lines.append(f"target {name}:")
        lines += [f"  {line}" for line in render_plan(plan, _label)]
        lines += [f"  notice: {n}" for n in t.notices]
        removed = len(plan.remove)
        if r.dry_run:
            lines.append(f"  would remove {removed} of {len(plan.decisions)} snapshots (dry run: nothing removed)")
        else:
            lines.append(
                f"  removed {len(t.removed)} of {len(plan.decisions)} snapshots; run `phx prune` to free space"
            )
        if t.thinned is not None:
            lines += [f"  {line}" for line in t.thinned.lines(r.dry_run)]
    return shown_each(lines)
