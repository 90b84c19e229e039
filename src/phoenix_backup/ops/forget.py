"""`phx forget`: apply the retention policy (repo/retention.py) on every target, saying why each
snapshot is kept. Only snapshot objects are deleted; `prune` frees the data they alone used.

Each target applies the same policy to its own snapshots (DESIGN §8), so a snapshot forgotten
on one target is forgotten on all of them and replication never brings it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from phoenix_backup.config import Config
from phoenix_backup.errors import (
    AppendOnlyRefused,
    ExitStatus,
    IdentityRequired,
    PhoenixError,
    RetentionRefused,
    SnapshotNotFound,
)
from phoenix_backup.ops.context import Environment, open_repository, require_identity, target_names
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Candidate, Plan, Policy, apply_policy
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.storage.targets import refuse_append_only

# -- results ------------------------------------------------------------------------------


@dataclass
class TargetForget:
    target: str
    ok: bool = True
    error: str | None = None
    plan: Plan | None = None
    removed: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    named: list[Snapshot] = field(default_factory=list)  # `phx forget ID...`: the snapshots named

    def removals(self) -> list[tuple[Snapshot | Candidate, str]]:
        """Each snapshot removed (or, in a dry run, to be removed) with the reason, for printing."""
        if self.named:
            return [(s, "named on the command line") for s in self.named]
        return [(d.snapshot, d.removal_text()) for d in self.plan.remove] if self.plan else []

    def to_json(self) -> dict[str, object]:
        plan = self.plan
        return {
            "ok": self.ok,
            "error": self.error,
            "keep": len(plan.keep) if plan else 0,
            "remove": len(plan.remove) if plan else len(self.named),
            "removed": self.removed,
            "snapshots": [d.to_json() for d in plan.decisions] if plan else [],
            "named": [{"id": s.id, "name": s.name, "time": s.time} for s in self.named],
            "notices": self.notices,
        }


@dataclass
class ForgetResult:
    dry_run: bool
    policy: Policy
    targets: dict[str, TargetForget]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets.values())

    @property
    def removed(self) -> int:
        return sum(len(t.removed) for t in self.targets.values())

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.of_targets(t.ok for t in self.targets.values())

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "policy": self.policy.to_json(),
            "description": self.policy.describe(),
            "targets": {name: t.to_json() for name, t in self.targets.items()},
        }


# -- the use case -------------------------------------------------------------------------


def forget(
    cfg: Config,
    envx: Environment,
    *,
    dry_run: bool = False,
    target: str | None = None,
    now: datetime | None = None,
    ids: tuple[str, ...] = (),
) -> ForgetResult:
    """Apply the retention policy on every target (or `target`); with `ids`, forget exactly those
    snapshots instead (by id, unique prefix or name): the only way a snapshot carrying a user's tag
    is ever forgotten."""
    policy = Policy.from_config(cfg.retention)
    result = ForgetResult(dry_run, policy, {})
    when = now or datetime.now(UTC)
    missing = SnapshotNotFound("no snapshot to forget")
    names = target_names(cfg, only=target)
    refused = {} if dry_run else refuse_append_only(cfg, names, "forget")
    for name in names:
        report = TargetForget(name)
        try:
            if name in refused:
                raise AppendOnlyRefused(refused[name])
            repo = open_repository(cfg, envx, target=name)
            try:
                require_identity(repo, "every snapshot (forget decides on all of them)")
                if ids:
                    forget_named(repo, ids, report, dry_run=dry_run)
                else:
                    forget_repository(repo, policy, report, dry_run=dry_run, now=when)
            finally:
                repo.close()
        except (RetentionRefused, IdentityRequired):
            raise  # the same on every target: say so once
        except SnapshotNotFound as exc:
            if not ids:
                raise
            missing = exc  # a replica that never received it (or forgot it already)
            report.notices.append(f"target {name} does not hold it: {exc}")
        except PhoenixError as exc:
            report.ok = False
            report.error = str(exc)
        result.targets[name] = report
    if ids and not any(t.named for t in result.targets.values()) and all(t.ok for t in result.targets.values()):
        raise missing  # no target holds what was named: the caller's mistake, said once
    return result


def forget_named(repo: Repository, refs: tuple[str, ...], report: TargetForget, *, dry_run: bool) -> TargetForget:
    """Forget the snapshots `refs` names, whatever the retention rules and tags say."""
    with repo.lock(exclusive=not dry_run, command="forget --dry-run" if dry_run else "forget"):
        snapshots = repo.list_snapshots()
        chosen = {}
        for ref in refs:
            snap = repo.find_snapshot(ref, snapshots)
            chosen[snap.id] = snap
        report.named = [chosen[sid] for sid in sorted(chosen, key=lambda sid: chosen[sid].time)]
        if not dry_run:
            for sid in chosen:
                repo.delete_snapshot(sid)
                report.removed.append(sid)
    if report.removed:
        repo.publish_changes(f"phoenix forget: {len(report.removed)} snapshot(s) removed")
    return report


def forget_repository(
    repo: Repository,
    policy: Policy,
    report: TargetForget,
    *,
    dry_run: bool,
    now: datetime,
    protect: tuple[str, ...] = (),
) -> TargetForget:
    """Decide on every snapshot of `repo` and, unless `dry_run`, delete those not kept; `protect`
    holds the ids that are kept whatever the rules say (the snapshot a backup just made)."""
    # Forget deletes snapshot objects: exclusive, like restic, so no backup picks a parent that
    # is being removed. A dry run only reads.
    with repo.lock(exclusive=not dry_run, command="forget --dry-run" if dry_run else "forget"):
        snapshots = repo.list_snapshots()
        for name, problem in sorted(repo.problems.snapshots.items()):
            report.notices.append(f"{name} cannot be read and was left alone: {problem}")
        report.plan = apply_policy(snapshots, policy, now, protect=protect)
        report.notices += report.plan.notices
        if not dry_run:
            for decision in report.plan.remove:
                repo.delete_snapshot(decision.snapshot.id)
                report.removed.append(decision.snapshot.id)
    if report.removed:
        repo.publish_changes(f"phoenix forget: {len(report.removed)} snapshot(s) removed")
    return report
