"""`phx prune`: free the data no snapshot references, on every target (the engine is
repo/prune.py); and the retention a backup applies afterwards: forget, then prune when due."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phoenix_backup.config import Config
from phoenix_backup.errors import (
    AppendOnlyRefused,
    ExitStatus,
    IdentityRequired,
    PhoenixError,
    RepositoryError,
    RepositoryLocked,
)
from phoenix_backup.ops.context import Environment, open_repository, require_identity, target_names
from phoenix_backup.repo.prune import PruneState, TargetPrune, prune_due, prune_repository
from phoenix_backup.repo.repository import Repository
from phoenix_backup.state import record_forgotten, state_path
from phoenix_backup.storage.appendonly import refusal
from phoenix_backup.storage.targets import refuse_append_only


@dataclass
class PruneResult:
    dry_run: bool
    targets: dict[str, TargetPrune]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.targets.values())

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.of_targets(t.ok for t in self.targets.values())

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "freed": sum(t.bytes_freed - t.bytes_written for t in self.targets.values()),
            "targets": {name: t.to_json() for name, t in self.targets.items()},
        }


def prune(cfg: Config, envx: Environment, *, dry_run: bool = False, target: str | None = None) -> PruneResult:
    """Prune every enabled target (or one), each under its own exclusive lock."""
    state = PruneState.for_home(envx.home)
    result = PruneResult(dry_run, {})
    names = target_names(cfg, only=target)
    refused = {} if dry_run else refuse_append_only(cfg, names, "prune")
    for name in names:
        report = TargetPrune(name)
        try:
            if name in refused:
                raise AppendOnlyRefused(refused[name])
            repo = open_repository(cfg, envx, target=name)
            try:
                require_identity(repo, "every snapshot's trees (prune keeps what they use)")
                prune_repository(repo, report, dry_run=dry_run, state=state, now=time.time(), progress=envx.progress)
            finally:
                repo.close()
        except IdentityRequired:
            raise  # the same on every target: said once
        except PhoenixError as exc:
            report.ok = False
            report.error = str(exc)
        result.targets[name] = report
    if not dry_run:
        state.save()
    return result


# -- after a backup -----------------------------------------------------------------------


@dataclass
class RetentionOutcome:
    """What retention did after a backup: forget on every target, prune when due."""

    skipped: str | None = None
    forgotten: dict[str, int] = field(default_factory=dict)
    pruned: dict[str, int] = field(default_factory=dict)  # target -> bytes freed
    prune_skipped: str | None = None
    busy: list[str] = field(default_factory=list)  # targets skipped because another process held a lock
    errors: list[str] = field(default_factory=list)
    # target -> [{id, name, time, why}]: every snapshot forgotten, and why no rule kept it
    removed: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # clock skew: snapshots dated in the future
    elsewhere: dict[str, str] = field(default_factory=dict)  # target -> why its retention runs on another machine

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "skipped": self.skipped,
            "forgotten": self.forgotten,
            "pruned": self.pruned,
            "pruneSkipped": self.prune_skipped,
            "busy": self.busy,
            "errors": self.errors,
            "removed": self.removed,
            "notices": self.notices,
            "elsewhere": self.elsewhere,
        }


def retention_after_backup(
    cfg: Config,
    envx: Environment,
    first: Repository,
    outcomes: dict[str, Any],
    *,
    now: float | None = None,
    protect: tuple[str, ...] = (),
) -> RetentionOutcome:
    """Forget (and prune, when `retention.prune` and the last prune is a day old) on every target,
    only when the backup reached every target: a target that missed the snapshot would otherwise
    forget by a different history. Replicas are opened with the first target's keys (they hold
    the same repository), so nothing is asked twice. `protect`: the snapshot the backup just made,
    never forgotten by the run it triggers. Every snapshot forgotten is reported with its reason."""
    from phoenix_backup.ops.forget import TargetForget, forget_repository
    from phoenix_backup.repo.retention import Policy

    out = RetentionOutcome()
    if not first.can_read:
        out.skipped = (
            "this machine backs up a write-only repository without its identity: `phx forget` and `phx prune` run on "
            "a machine with it"
        )
        return out
    failed = sorted(name for name, o in outcomes.items() if not getattr(o, "ok", False))
    if failed:
        out.skipped = f"not every target received the snapshot (failed: {', '.join(failed)})"
        return out
    policy = Policy.from_config(cfg.retention)
    moment = time.time() if now is None else now
    state = PruneState.for_home(envx.home)
    first_name = next(iter(outcomes), None)
    for name in outcomes:
        repo: Repository | None = None
        if cfg.targets.append_only(name):
            out.elsewhere[name] = refusal(name, "retention (`phx forget`, `phx prune`)")
            continue
        try:
            repo = first if name == first_name else _replica(cfg, envx, first, name)
            due = cfg.retention.prune and prune_due(state, repo, name, moment)
            # Forget and the day's prune run under one exclusive lock: one lock written, listed and
            # removed instead of two, and no backup can start in the moment between them (it made
            # the day's prune skip as busy, leaving the forgotten data another day).
            with (
                repo.lock(exclusive=True, command="forget and prune", ran="backup") if due else contextlib.nullcontext()
            ):
                if not policy.empty:
                    report = TargetForget(name)
                    forget_repository(
                        repo,
                        policy,
                        report,
                        dry_run=False,
                        now=datetime.fromtimestamp(moment, UTC),
                        protect=protect,
                        compactor=(cfg, envx),
                        locked=due,
                    )
                    out.forgotten[name] = len(report.removed)
                    if report.removed:
                        record_forgotten(name, report.left, "phx backup (retention)", state_path(envx.home))
                    out.removed[name] = [
                        {"id": snap.id, "name": snap.name, "time": snap.time, "why": why}
                        for snap, why in report.removals()
                        if snap.id in report.removed
                    ]
                    out.notices += [n for n in report.plan.notices if n not in out.notices] if report.plan else []
                    if report.thinned is not None:  # compactions that failed, thinned as before
                        out.notices += [f"target {name}: {n}" for n in report.thinned.notices]
                    if report.error:  # the capture segments could not be thinned
                        out.notices.append(f"target {name}: {report.error}")
                if not cfg.retention.prune:
                    out.prune_skipped = "retention.prune is false"
                elif not due:
                    out.prune_skipped = "the last prune ran less than a day ago"
                else:
                    pruned = prune_repository(
                        repo, TargetPrune(name), dry_run=False, state=state, now=moment, locked=True
                    )
                    out.pruned[name] = pruned.bytes_freed - pruned.bytes_written
        except RepositoryLocked as exc:
            # Another phx (a backup, a restore) is busy there: retention waits for a later backup
            # rather than failing this one.
            out.busy.append(name)
            envx.notice(f"retention on target {name} skipped this time: {exc}")
        except PhoenixError as exc:
            out.errors.append(f"retention on target {name} failed: {exc}")
        finally:
            if repo is not None and repo is not first:
                repo.close()
    state.save()
    return out


def _replica(cfg: Config, envx: Environment, first: Repository, name: str) -> Repository:
    from phoenix_backup.ops.context import target_backend

    backend = target_backend(cfg, envx, name)
    config = Repository.read_config(backend)
    if config.id != first.config.id:
        raise RepositoryError(
            f"target {name} holds another repository (id {config.id[:8]}); point targets.{name} at this repository"
        )
    # The replica's config is not checked against the key here, and replication has just made it
    # the first target's: anything else (encryption turned off, say) was changed since.
    if config.raw != first.config.raw:
        raise RepositoryError(
            f"the config of target {name} differs from the first target's (changed since it was copied); "
            "run `phx sync` to copy it again"
        )
    return first.sibling(backend, config)
