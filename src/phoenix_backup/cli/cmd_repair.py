"""`phx repair index|snapshots|objects`."""

from __future__ import annotations

import click

from phoenix_backup.cli.app import Out, check_target, cli, command_group, common, load_config, target_option
from phoenix_backup.errors import ExitStatus, shown_each
from phoenix_backup.ops import repair as repair_op
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo.repair import IndexRepair, SnapshotRepair


@cli.group()
@command_group
def repair() -> None:
    """Put a damaged repository back in order: rebuild the index, deal with snapshots whose data
    is lost, or copy lost objects back from another target.

    Example: phx repair objects --from s3 && phx repair snapshots
    """


@repair.command(name="index")
@click.option(
    "--read-data",
    is_flag=True,
    help="Also read every pack; leave out of the index the copies of a blob that do not prove while one does.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be done; write and delete nothing.")
@target_option
@common
def repair_index(
    out: Out, envx: Environment, config_path: str | None, read_data: bool, dry_run: bool, target: str | None
) -> ExitStatus:
    """Rebuild the index from the packs' own headers (after index objects or packs were lost).

    With --read-data, every pack is read: a wrong copy of a blob (it opens under the blob's id
    but holds other bytes, as `phx verify --read-data` names it) is left out of the index while
    another copy proves, and its pack replaced by one holding its other blobs. A blob no copy of
    which proves keeps every copy and is named as damaged (exit 1).

    A replica keeps the wrong copy `phx sync` gave it (sync never deletes a pack a replica holds
    that the first target lost): repair it with --target NAME.

    Example: phx repair index --read-data --dry-run
    """
    cfg = load_config(out, envx, config_path)
    check_target(target, cfg, envx)
    r = repair_op.repair_index(cfg, envx, read_data=read_data, dry_run=dry_run)
    out.result(r.to_json(), render_index(r))
    return r.exit_status


def render_index(r: IndexRepair) -> str:
    keep, leave = ("would keep", "would be left out") if r.dry_run else ("kept", "left out")
    lines = [
        f"notice: {name}: {why}; "
        + (f"{keep} the {r.kept[name]} blob(s) the old index listed in it" if name in r.kept else leave)
        for name, why in sorted(r.unreadable.items())
    ]
    lines += [
        f"{'would leave' if r.dry_run else 'left'} out the copy of blob {c.blob} in {c.pack}: it does not prove "
        f"({c.why}); {c.proving} holds a copy that proves"
        for c in r.left_out
    ]
    lines += [
        f"{'would remove' if r.dry_run else 'removed'} {name}, its other blobs copied into a new pack first"
        for name in r.removed
    ]
    lines += [
        f"notice: {name} stays: it also holds a copy of a blob no copy of which proves (kept, as every copy of it)"
        for name in r.kept_packs
    ]
    lines += [
        f"blob {blob} is damaged: no copy of it proves ({why}); every copy {'would be' if r.dry_run else 'was'} kept; "
        "run `phx repair snapshots --read-data` to see which snapshots lost data"
        for blob, why in sorted(r.damaged.items())
    ]
    if r.dry_run:
        lines.append(
            f"dry run: the index would be rebuilt from {r.packs} packs ({r.blobs} blobs), replacing {r.replaced} "
            "index object(s); nothing was written"
            + (f"; {r.dropped} blob(s) the old index listed are in no pack" if r.dropped else "")
        )
    else:
        lines.append(
            f"index rebuilt from {r.packs} packs ({r.blobs} blobs), replacing {r.replaced} index object(s)"
            + (f"; {r.dropped} blob(s) the old index listed are in no pack" if r.dropped else "")
        )
    if r.dropped or r.unreadable:
        lines.append("run `phx repair snapshots` to see which snapshots lost data")
    return shown_each(lines)


@repair.command(name="snapshots")
@click.option("--rewrite", is_flag=True, help="Write a repaired copy of each damaged snapshot, tagged 'repaired'.")
@click.option("--forget", is_flag=True, help="Forget the damaged snapshots (with --rewrite: once their copies exist).")
@click.option("--read-data", is_flag=True, help="Also read every blob they use (finds damaged bytes, not only loss).")
@common
def repair_snapshots(
    out: Out, envx: Environment, config_path: str | None, rewrite: bool, forget: bool, read_data: bool
) -> ExitStatus:
    """Name the snapshots whose data is lost, with the paths affected; forget or rewrite them.

    Without --rewrite or --forget nothing changes (exit 1 when a snapshot lost data). A repaired
    copy leaves out the files whose data is lost and keeps unreadable folders empty; each is
    listed as incomplete in the copy.

    Example: phx repair snapshots --rewrite --forget
    """
    cfg = load_config(out, envx, config_path)
    r = repair_op.repair_snapshots(cfg, envx, rewrite=rewrite, forget=forget, read_data=read_data)
    out.result(r.to_json(), render_snapshots(r))
    return r.exit_status


def render_snapshots(r: SnapshotRepair) -> str:
    lines = []
    if r.index_rebuilt:
        lines.append("index rebuilt from the packs first (as `phx repair index` does)")
    elif r.unindexed:
        lines.append(
            f"notice: {r.unindexed} pack(s) that no index lists were read from their own headers (their data is "
            "not lost); run `phx repair index` so that every command finds it"
        )
    if not r.damaged:
        return shown_each([*lines, f"{r.checked} snapshot(s) checked: none refers to lost data"])
    for d in r.damaged:
        head = f"snapshot {d.id[:8]} {d.name}"
        if d.unreadable:
            lines.append(f"{head}: the snapshot object cannot be read ({d.unreadable})")
        else:
            lines.append(f"{head}: data lost for {len(d.lost)} path(s):")
            lines += [f"  {p}" for p in d.lost[:20]] + (
                [f"  ... and {len(d.lost) - 20} more"] if len(d.lost) > 20 else []
            )
        if d.repaired_as:
            lines.append(f"  repaired copy written: {d.repaired_as[:8]}")
        elif r.rewrite and not d.forgotten:
            lines.append("  nothing of it can be read, so no copy was written; --forget removes it")
        if d.forgotten:
            lines.append("  forgotten")
    if not (r.rewrite or r.forget):
        lines.append(
            f"{len(r.damaged)} of {r.checked} snapshot(s) refer to lost data; copy it back with "
            "`phx repair objects --from TARGET` if another target has it, else run again with --rewrite "
            "(keep what is left) and/or --forget"
        )
    return shown_each(lines)


@repair.command(name="objects")
@click.option("--from", "source", required=True, metavar="TARGET", help="The target to copy from (a replica).")
@click.option("--read-data", is_flag=True, help="Also hash every pack here to find damaged bytes.")
@common
def repair_objects(out: Out, envx: Environment, config_path: str | None, source: str, read_data: bool) -> ExitStatus:
    """Copy back from another target what the first target lost or holds damaged.

    The config and key slots when they cannot be read, damaged snapshot and index objects, and
    every pack holding data a snapshot needs that is missing here, truncated, or (with
    --read-data) does not match its name; then the index is rebuilt.

    Example: phx repair objects --from s3 --read-data
    """
    cfg = load_config(out, envx, config_path)
    r = repair_op.repair_objects(cfg, envx, source=source, read_data=read_data)
    lines = [f"notice: {n}" for n in r.notices]
    lines += [f"copied {name} from {r.source}" for name in r.copied]
    lines += [f"deleted damaged {name} (its data was copied from {r.source})" for name in r.deleted]
    if r.index is not None:
        lines.append(f"index rebuilt from {r.index.packs} packs")
    if r.unrecoverable:
        lines.append(
            f"{r.unrecoverable} blob(s) that snapshots need are intact on neither target; "
            "run `phx repair snapshots` to see which snapshots lost data"
        )
    elif not r.copied and not r.deleted:
        lines.append(f"nothing to repair: target {r.target} holds every object its snapshots need")
    out.result(r.to_json(), shown_each(lines))
    return r.exit_status
