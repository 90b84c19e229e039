"""`phx sync [--target NAME]` and the replication after every backup: the first target's
repository copied to every other enabled target in parallel, each by repo/replicate.py."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, PhoenixError, UsageError
from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, target_backend
from phoenix_backup.repo.replicate import TargetReport, replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.reporting import Reporter
from phoenix_backup.state import TargetOutcome
from phoenix_backup.storage.base import Backend


@dataclass
class SyncResult:
    source: str
    targets: dict[str, TargetReport] = field(default_factory=dict)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.of_targets(t.ok for t in self.targets.values())

    def to_json(self) -> dict[str, object]:
        return {
            "ok": all(t.ok for t in self.targets.values()),
            "source": self.source,
            "targets": {k: v.to_json() for k, v in self.targets.items()},
        }


def replicate_all(
    repo: Repository, cfg: Config, envx: Environment, *, ran: str, only: str | None = None
) -> dict[str, TargetReport]:
    """Replicate from `repo` (the first target) to every other enabled target (or `only`), all
    targets in parallel, under a shared lock on the first target so a prune there cannot remove
    what is being copied."""
    replicas = enabled_targets(cfg)[1:]
    names = [n for n in replicas if only is None or n == only]
    if not names:
        return {}
    try:
        # An older copy of the first target put back (found by the listing this command made):
        # copied from, the replicas lost what is newer there and the first target lacks (the key
        # slots added since were deleted as removed ones: the new passphrase opened no target).
        repo.refuse_if_rolled_back("copying to the replicas", "would delete from them the key slots added since")
    except PhoenixError as exc:
        return {name: TargetReport(name, ok=False, error=str(exc)) for name in names}
    reports: dict[str, TargetReport] = {}
    backends: dict[str, Backend] = {}
    for name in names:
        try:
            backends[name] = target_backend(cfg, envx, name)
        except PhoenixError as exc:
            reports[name] = TargetReport(name, ok=False, error=str(exc))
    # Where a pack the first target lost may be found (each replica's own thread asks the others
    # only then; with `only`, the others are opened for that alone).
    others = dict(backends)
    for name in replicas:
        if name not in others:
            with contextlib.suppress(PhoenixError):
                others[name] = target_backend(cfg, envx, name)
    uploads = _Uploads(envx.progress, f"uploading to {', '.join(backends)}")
    try:
        with repo.lock(exclusive=False, command="replicate", ran=ran):
            repo.load_index()
            stopping = threading.Event()
            with ThreadPoolExecutor(max_workers=len(backends) or 1, thread_name_prefix="phx-replicate") as pool:
                futures = {
                    name: pool.submit(replicate, repo, name, b, envx.notice, uploads, stopping, ran, others)
                    for name, b in backends.items()
                }
                try:
                    for name, fut in futures.items():
                        reports[name] = fut.result()
                except BaseException:
                    # A stop (Ctrl-C, SIGTERM): each replica ends after the objects under way,
                    # publishing nothing, instead of the pool's exit waiting for every copy.
                    stopping.set()
                    raise
    except PhoenixError as exc:
        # The first target itself could not be read or locked (say a prune holds it): every
        # replica missed this round, and a later backup or `phx sync` catches them up.
        for name in backends:
            if name not in reports:
                reports[name] = TargetReport(name, backends[name].location, ok=False, error=str(exc))
    finally:
        for b in others.values():
            b.close()
    return {name: reports[name] for name in names}


class _Uploads:
    """Every replica's upload as one phase of the command's progress: the objects each replica
    lacks add to the phase's totals, and every object copied counts."""

    def __init__(self, report: Reporter, label: str) -> None:
        self.report = report
        self.label = label
        self.files = self.size = 0
        self.lock = threading.Lock()
        report.phase(label)

    def phase(self, name: str, *, files: int = 0, size: int = 0, unit: str = "files") -> None:
        with self.lock:
            self.files += files
            self.size += size
            self.report.phase(self.label, files=self.files, size=self.size, unit=unit)

    def working(self, what: str | None) -> None:
        self.report.working(what)

    def advance(self, *, files: int = 0, size: int = 0) -> None:
        self.report.advance(files=files, size=size)


def commit_first_target(repo: Repository, name: str, snapshot_id: str, snapshot_name: str) -> TargetOutcome:
    """After a backup wrote its snapshot into the first target: a store that records units (Git)
    commits it, naming the snapshot, and publishes it (push). The snapshot is safe in the store
    either way; a failed push is the target's error (exit 3), and the next run pushes again."""
    try:
        repo.backend.checkpoint(f"phoenix snapshot {snapshot_name} ({snapshot_id[:8]})")
        repo.backend.publish()
    except PhoenixError as exc:
        return TargetOutcome(False, str(exc))
    return TargetOutcome(True)


def sync(cfg: Config, envx: Environment, *, target: str | None = None) -> SyncResult:
    """`phx sync`: copy what each replica (or `target` alone) lacks from the first target."""
    names = enabled_targets(cfg)
    first = names[0]
    if len(names) == 1:
        raise UsageError(
            f"only one target ({first}) is enabled, so there is nothing to sync; enable targets.git, s3 or r2"
        )
    if target is not None:
        if target == first:
            raise UsageError(
                f"{first} is the first enabled target, the one sync copies from; name a replica: {', '.join(names[1:])}"
            )
        target_backend(cfg, envx, target).close()  # UsageError for an unknown or disabled target
    repo = open_repository(cfg, envx, target=first)
    try:
        # A sync reads only the snapshots a replica lacks: an older copy of the first target put
        # back is looked for in its listing (all read only when a snapshot this machine saw there
        # is gone), and refused by replicate_all.
        repo.check_rollback_listed()
        reports = replicate_all(repo, cfg, envx, ran="sync", only=target)
    finally:
        repo.close()
    return SyncResult(first, reports)
