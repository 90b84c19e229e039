"""`phx list`: the snapshots, each with the enabled targets that hold it."""

from __future__ import annotations

from dataclasses import dataclass

from phoenix_backup.config import Config
from phoenix_backup.errors import PhoenixError
from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, target_backend
from phoenix_backup.repo.repository import rollback_warning, still_there
from phoenix_backup.repo.snapshot import Snapshot


@dataclass(frozen=True)
class SnapshotSummary:
    snapshot: Snapshot
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        s = self.snapshot
        return {
            "id": s.id,
            "shortId": s.id[:8],
            "name": s.name,
            "time": s.time,
            "host": s.host,
            "username": s.username,
            "scope": s.scope,
            "tags": list(s.tags),
            "files": s.stats.files,
            "size": s.stats.size,
            "added": s.stats.added,
            "databases": [d.path for d in s.databases],
            "incomplete": len(s.incomplete),
            "targets": list(self.targets),
            "parent": s.parent,
        }


def list_snapshots(cfg: Config, envx: Environment, *, target: str | None = None) -> list[SnapshotSummary]:
    """Snapshots of the first target, each with the enabled targets that hold it; with `target`
    (or `envx.target`), the snapshots of that target alone. A target that cannot be listed is
    reported as a notice and simply holds nothing in the column."""
    name = target or envx.target
    repo = open_repository(cfg, envx, target=name)
    try:
        snaps = repo.list_snapshots()
        repo.damaged_snapshots_notice()
    finally:
        repo.close()
    if name is not None:
        return [SnapshotSummary(s, (name,)) for s in snaps]
    names = enabled_targets(cfg)
    holders: dict[str, list[str]] = {s.id: [names[0]] for s in snaps}
    times = {s.id: s.time for s in snaps}
    for other in names[1:]:
        backend = target_backend(cfg, envx, other)
        try:
            held = {info.name.split("/")[-1] for info in backend.list("snapshots/")}
            # A replica's copy is checked as the first target's was: against what this machine saw there.
            lost = (
                repo.pins.observe(
                    repo.config.id, backend.location, {sid: times.get(sid) for sid in held}, still_there(backend)
                )
                if repo.pins is not None
                else []
            )
        except PhoenixError as exc:
            envx.notice(f"could not list target {other}: {exc}")
            continue
        finally:
            backend.close()
        if lost:
            envx.notice(f"warning: {rollback_warning(backend.location, lost, repo.fingerprint, other)}")
        for sid, where in holders.items():
            if sid in held:
                where.append(other)
        if held and not snaps:  # a new machine's `phx init` continued a replica: the first target starts empty
            envx.notice(
                f"target {names[0]} holds no snapshots yet, but target {other} holds {len(held)}: "
                f"`phx list --target {other}`, and read them with `--target {other}`"
            )
    return [SnapshotSummary(s, tuple(holders[s.id])) for s in snaps]
