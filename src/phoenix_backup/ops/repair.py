"""`phx repair index|snapshots|objects`: the repair engines of repo/repair.py run under an
exclusive lock (a shared one when only looking), on the first target; `objects` copies from a
replica."""

from __future__ import annotations

from phoenix_backup.config import Config
from phoenix_backup.errors import PhoenixError, RepositoryError, RepositoryNotFound, UsageError
from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, pins, target_backend
from phoenix_backup.repo import captures
from phoenix_backup.repo.repair import (
    IndexRepair,
    ObjectsRepair,
    SnapshotRepair,
    rebuild_index,
    repair_config_and_keys,
    repair_data,
    scan_snapshots,
)
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.targets import refuse_append_only


def repair_index(cfg: Config, envx: Environment, *, read_data: bool = False, dry_run: bool = False) -> IndexRepair:
    if not dry_run:  # the target repaired: `--target` (envx.target), else the first
        refuse_append_only(
            cfg,
            [envx.target or enabled_targets(cfg)[0]],
            "repair index",
            "it deletes the index objects it replaces",
        )
    repo = open_repository(cfg, envx)
    try:
        # `--read-data` may write packs: a run that fails removes those no index names.
        with repo.lock(exclusive=not dry_run, command="repair index"), repo.removing_unindexed():
            return rebuild_index(repo, read_data=read_data, dry_run=dry_run)
    finally:
        repo.close()


def repair_snapshots(
    cfg: Config, envx: Environment, *, rewrite: bool = False, forget: bool = False, read_data: bool = False
) -> SnapshotRepair:
    changing = rewrite or forget
    if changing:
        refuse_append_only(cfg, enabled_targets(cfg)[:1], "repair snapshots --rewrite/--forget", "it deletes")
    repo = open_repository(cfg, envx)
    try:
        # `--rewrite` writes trees: a run that fails removes those no index names.
        with repo.lock(exclusive=changing, command="repair snapshots"), repo.removing_unindexed():
            return scan_snapshots(repo, rewrite=rewrite, forget=forget, read_data=read_data)
    finally:
        repo.close()


def repair_objects(cfg: Config, envx: Environment, *, source: str, read_data: bool = False) -> ObjectsRepair:
    names = enabled_targets(cfg)
    first = names[0]
    if source not in names or source == first:
        others = ", ".join(names[1:]) or "none"
        raise UsageError(
            f"--from names the target to copy from: an enabled target other than {first} (enabled replicas: {others})"
        )
    refuse_append_only(cfg, [first], "repair objects", "it replaces damaged objects")
    src = target_backend(cfg, envx, source)
    dest = target_backend(cfg, envx, first)
    try:
        if not src.exists():
            raise RepositoryNotFound(f"target {source} holds no repository at {src.location}; nothing to copy from")
        report = ObjectsRepair(source, first)
        previous = repair_config_and_keys(src, dest, report, pins(envx).id_at(dest.location))
        try:
            repo = open_repository(cfg, envx)
        except PhoenixError as exc:
            if "config" not in report.copied:
                raise
            # Nothing here said which repository this is (no readable config, no pin): the
            # copied config does not open with the key slots here, so it goes again.
            if previous is None:
                dest.delete("config")
            else:
                dest.write("config", previous)
            raise RepositoryError(
                f"the config of target {source} does not open the repository at {dest.location} ({exc}); "
                "it was not kept"
            ) from exc
        other = repo.sibling(src, Repository.read_config(src))
        try:
            with repo.lock(exclusive=True, command="repair objects"):
                repair_data(repo, other, report, read_data=read_data)
                if "config" in report.copied and next(iter(repo.backend.list(captures.PREFIX)), None) is not None:
                    # A replica's config from before the watch marked this target (format 4): the
                    # segments here make it format 5 again (docs/repository-format.md, Version 5).
                    repo.mark_captures()
        finally:
            repo.close()
            other.close()
        return report
    finally:
        src.close()
        dest.close()
