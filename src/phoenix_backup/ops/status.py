"""`phx status`: the last backup (state file) and its age, the next one due, each target's last
success, snapshot count, size and deduplication ratio, and a clear warning when the last
successful backup is older than the schedule implies.

Nothing here asks for a passphrase: sizes and snapshot counts come from object listings, which
need no key; the deduplication ratio needs the snapshots' logical sizes and is given only when
the repository opens without a prompt (PHX_PASSPHRASE, a passphrase file or command, age, gpg).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from phoenix_backup import schedule
from phoenix_backup.config import Config
from phoenix_backup.errors import ExitStatus, PhoenixError
from phoenix_backup.ops.context import (
    DIAGNOSIS_SECONDS,
    Environment,
    enabled_targets,
    given_passphrase,
    no_repository,
    open_repository,
    target_backend,
    with_given,
)
from phoenix_backup.repo import retired
from phoenix_backup.repo.repository import CAPTURES_PREFIX, CHECKS_PREFIX, RETIRED_PREFIX
from phoenix_backup.schedule.spec import ScheduleSpec
from phoenix_backup.state import (
    IntegrityCheck,
    failed_parts_text,
    forgotten_here,
    forgotten_loss,
    forgotten_text,
    full_backup_problem,
    future_success_problem,
    integrity_checks,
    last_snapshot_on,
    load_state,
    notification_problem,
    state_path,
)
from phoenix_backup.storage.base import ObjectInfo

# A scheduled run may start a little late or take a while: the warning waits this long (at most
# a quarter of the schedule's interval) after a due time before calling a backup missed.
MAX_GRACE = timedelta(hours=1)

# Every kind of object a repository stores but its locks (docs/repository-format.md §1): the size
# a target holds (a watch's capture segments and the check records too).
STORED = ("data/", "index/", "snapshots/", "keys/", "runkeys/", CAPTURES_PREFIX, CHECKS_PREFIX, RETIRED_PREFIX)


@dataclass
class TargetStatus:
    name: str
    last_success: float | None = None
    snapshots: int | None = None
    stored: int | None = None  # bytes of every object in the repository
    logical: int | None = None  # bytes the snapshots hold, before deduplication and compression
    error: str | None = None
    notice: str | None = None
    snapshot_ids: set[str] | None = None  # the ids its listing holds (not in the JSON)
    retired: list[ObjectInfo] = field(default_factory=list)  # its rotation records (not in the JSON)

    @property
    def dedup_ratio(self) -> float | None:
        if not self.logical or not self.stored:  # no snapshot yet: no ratio to speak of
            return None
        return self.logical / self.stored

    def to_json(self, now: float) -> dict[str, object]:
        return {
            "lastSuccess": _iso(self.last_success),
            "lastSuccessAge": _age(self.last_success, now),
            "snapshots": self.snapshots,
            "size": self.stored,
            "logicalSize": self.logical,
            "dedupRatio": round(self.dedup_ratio, 2) if self.dedup_ratio is not None else None,
            "error": self.error,
            "notice": self.notice,
        }


@dataclass
class StatusResult:
    now: float
    state: dict[str, Any] | None
    spec: ScheduleSpec
    schedule_installed: bool
    scheduler: str | None
    next_due: datetime | None
    targets: dict[str, TargetStatus] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    overdue: bool = False
    alert: str | None = None  # the overdue (or never-succeeded) warning, said first and loudest
    lost: str | None = None  # the last success's snapshot, missing from the first target
    home: Path = field(default_factory=Path.home)  # where the state file is

    @property
    def last_run(self) -> float | None:
        return _number((self.state or {}).get("timestamp"))

    @property
    def last_success(self) -> float | None:
        return _number(((self.state or {}).get("lastSuccess") or {}).get("timestamp"))

    @property
    def healthy(self) -> bool:
        state = self.state or {}
        return (
            not self.overdue
            and self.lost is None
            and bool(state.get("success"))
            and full_backup_problem(state) is None
            and not self.integrity_failures
        )

    @property
    def integrity_failures(self) -> dict[str, IntegrityCheck]:
        """The SQLite databases whose last full integrity check (by a backup or a drill) failed."""
        return {k: v for k, v in integrity_checks(state_path(self.home)).items() if v.result != "ok"}

    @property
    def exit_status(self) -> ExitStatus:
        # Scriptable: `phx status || alert` catches a failed or missed backup.
        return ExitStatus.OK if self.healthy else ExitStatus.FAILURE

    def to_json(self) -> dict[str, object]:
        state = self.state or {}
        last_success = state.get("lastSuccess") or {}
        return {
            "ok": self.healthy,
            "lastBackup": None
            if not state
            else {
                "time": _iso(self.last_run),
                "age": _age(self.last_run, self.now),
                "success": bool(state.get("success")),
                "partial": bool(state.get("partial")),
                "failedParts": state.get("failedParts") or [],
                "snapshotId": state.get("snapshotId"),
                "snapshotName": state.get("snapshotName"),
                "error": state.get("error"),
                "targets": state.get("targets", {}),
            },
            "lastSuccess": None
            if not last_success
            else {
                "time": _iso(self.last_success),
                "age": _age(self.last_success, self.now),
                "snapshotId": last_success.get("snapshotId"),
                "snapshotName": last_success.get("snapshotName"),
            },
            "lastFailure": state.get("lastFailure"),
            "lastNotification": state.get("lastNotification"),
            "schedule": {
                "installed": self.schedule_installed,
                "scheduler": self.scheduler,
                "every": self.spec.every,
                "at": self.spec.at,
                "description": self.spec.describe(),
                "nextDue": self.next_due.isoformat(timespec="seconds") if self.next_due else None,
            },
            "integrityChecks": {k: v.to_json() for k, v in integrity_checks(state_path(self.home)).items()},
            "overdue": self.overdue,
            "alert": self.alert,
            "targets": {name: t.to_json(self.now) for name, t in self.targets.items()},
            "warnings": self.warnings,
        }


def status(cfg: Config, envx: Environment, *, now: float | None = None) -> StatusResult:
    moment = time.time() if now is None else now
    state, damaged = load_state(state_path(envx.home))
    spec, recorded = schedule.expected_spec(cfg, envx.home)
    sched = schedule.status(envx.env, envx.home) if recorded else None
    when = datetime.fromtimestamp(moment).astimezone()
    result = StatusResult(
        now=moment,
        state=state,
        spec=spec,
        schedule_installed=recorded and sched is not None and bool(sched.installed),
        scheduler=sched.scheduler if sched else None,
        next_due=spec.next_after(when),
        home=envx.home,
    )
    for logical, check in result.integrity_failures.items():
        result.warnings.append(
            f"{logical} failed its last full integrity check ({check.by} of snapshot {check.snapshot_id[:8]}, "
            f"{check.checked_at or check.time}): {check.result}; restore it from the last snapshot that passed "
            "(docs: Integrity on its own cadence)"
        )
    if sched is not None and not sched.installed:
        result.warnings.append(
            "schedule.json says a schedule was installed but no scheduler holds it any more; "
            "run `phx schedule install` again"
        )
    elif not recorded:
        result.warnings.append(
            f"no schedule is installed; `phx schedule install` backs up {spec.describe()} (the config's schedule)"
        )
    if sched is not None and sched.unfinished is not None:
        result.warnings.append(_unfinished(sched.unfinished, sched.running, state))
    _check_age(result, when, notifying=cfg.notifications.enabled)
    if damaged is not None:
        if state is None:
            result.alert = damaged
        else:
            result.warnings.append(damaged)
    per_target = (state or {}).get("targetsLastSuccess") or {}
    # Status never asks, and a remote target that does not answer is said in seconds (not after a
    # backup's patience, 60 s a request, retried), all targets read at the same time.
    answer = envx.answer_seconds or DIAGNOSIS_SECONDS  # `--answer-timeout`: a slow link's own
    quiet = dataclasses.replace(envx, interactive=False, prompt=None, answer_seconds=answer)
    quiet = _asked_once(cfg, quiet)
    names = enabled_targets(cfg)
    for name in names:
        result.targets[name] = TargetStatus(name, last_success=_number((per_target.get(name) or {}).get("timestamp")))
    if names:
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="status-target") as pool:
            for done in [
                pool.submit(_inspect_target, cfg, dataclasses.replace(quiet), t) for t in result.targets.values()
            ]:
                done.result()
    for name, target in result.targets.items():
        if target.error:
            result.warnings.append(f"target {name}: {target.error}")
    _check_last_snapshot(result, enabled_targets(cfg))
    return result


def _asked_once(cfg: Config, envx: Environment) -> Environment:
    """`envx` with the passphrase read once (`with_given`): the targets, opened at the same time,
    never run passphraseCommand once each, all at once. Unchanged when none is given or its source
    fails (each target's opening then says why)."""
    if not (cfg.encryption.enabled and cfg.encryption.method == "passphrase"):
        return envx
    try:
        given = given_passphrase(cfg, envx)
    except PhoenixError:
        return envx
    return envx if given is None else with_given(envx, given)


def _check_last_snapshot(result: StatusResult, names: list[str]) -> None:
    """The state file's last success is a snapshot the first target still holds: one forgotten,
    pruned or lost with the store is no backup to restore, whatever its age says."""
    first = result.targets.get(names[0]) if names else None
    sid = last_snapshot_on(result.state, first.name) if result.state and first is not None else None
    if sid is None or first is None or first.snapshot_ids is None or sid in first.snapshot_ids:
        return
    forgot = forgotten_here(result.state, first.name) if result.state else None
    ids = first.snapshot_ids
    gone = forgotten_loss(forgot, ids.__contains__, f"target {first.name}") if forgot is not None else None
    if forgot is not None and gone is None:
        # This machine's own `phx forget` removed it: no loss, but the newest backup there is older.
        result.warnings.append(
            f"snapshot {sid[:8]}, the last a successful backup wrote to target {first.name}, is no longer in it: "
            f"{forgotten_text(forgot)}; run `phx backup` for a current snapshot (`phx list` shows what it holds)"
        )
        return
    written = first.last_success or result.last_success
    if written is not None and retired.rotated_after(first.retired, written):
        # `phx key rotate` since (on another machine: this one's state file was not told) gave every
        # snapshot a new id; status opens no rotation record to follow it, so no alert for it.
        result.warnings.append(
            f"snapshot {sid[:8]}, the last a successful backup wrote to target {first.name}, is not in it under that "
            "id, and a key rotation ran since (it renames every snapshot): the next `phx backup` here records the "
            "new one; `phx doctor` looks it up"
        )
        return
    result.lost = (
        f"snapshot {sid[:8]}, the last a successful backup wrote to target {first.name}, is no longer in it "
        "(forgotten, pruned or lost); run `phx backup` now, and `phx list` to see what the repository holds"
        if gone is None
        else f"snapshot {sid[:8]}, the last a successful backup wrote to target {first.name}, is no longer in it: "
        f"{gone}; run `phx backup` now, and `phx list` to see what the repository holds"
    )
    if result.alert is None:
        result.alert = result.lost
    else:
        result.warnings.append(result.lost)


def _unfinished(started: datetime, running: bool, state: dict[str, Any] | None) -> str:
    """What `phx status` says of the last scheduled run when its log has no end for it: still going
    (it holds its lock), or killed; and once a backup was recorded since it started, that one is
    the last backup, and "run `phx backup`" (done already) is not said again."""
    at = started.isoformat(timespec="minutes")
    log = "~/.argentos/backup/logs/backup.log"
    if running:
        return f"the scheduled backup that started at {at} is still running; see {log}"
    since = (state or {}).get("timestamp")
    if isinstance(since, int) and since >= started.timestamp():
        return (
            f"the scheduled backup that started at {at} was killed (out of memory, a reboot) before it "
            f"wrote its end to {log}; a backup was recorded since ({(state or {}).get('date')})"
        )
    return (
        f"the scheduled backup that started at {at} was killed (out of memory, a reboot) before it could "
        f"record anything; see {log} and run `phx backup`"
    )


def _check_age(result: StatusResult, when: datetime, *, notifying: bool = True) -> None:
    state = result.state
    if not state:
        result.overdue = True
        result.alert = "no backup has run yet (no state file); run `phx backup`"
        return
    targets = state.get("targets") or {}
    failed_targets = [f"{n}: {t.get('error')}" for n, t in targets.items() if isinstance(t, dict) and not t.get("ok")]
    if state.get("partial"):
        shown = failed_parts_text(state)
        result.warnings.append(
            f"the last backup was partial, these parts were not saved or are damaged: {shown}; "
            "fix the cause and run `phx backup`"
        )
    elif not state.get("success"):
        result.warnings.append(f"the last backup failed: {state.get('error')}")
    full = full_backup_problem(state)
    if full is not None:
        result.warnings.append(full)
    # Notifications turned off since: no run records one any more, and "fix notifications.urls"
    # would be said for ever after.
    unheard = notification_problem(state) if notifying else None
    if unheard is not None:
        result.warnings.append(unheard)
    if (state.get("success") or state.get("partial")) and failed_targets:
        result.warnings.append(f"the last backup reached only some targets: {'; '.join(failed_targets)}")
    last = result.last_success
    if last is None:
        result.overdue = True
        result.alert = "no backup has succeeded yet"
        return
    ahead = future_success_problem(last, result.now)
    if ahead is not None:
        result.overdue = True  # not known to be on time: alert as for a missed backup
        result.alert = ahead
        return
    grace = min(MAX_GRACE, result.spec.period(when) / 4)
    due = result.spec.previous_before(when - grace)
    last_dt = datetime.fromtimestamp(last).astimezone()
    if due is not None and last_dt < due - grace:
        result.overdue = True
        result.alert = (
            f"the last successful backup is {human_age(result.now - last)} old "
            f"({last_dt.isoformat(timespec='minutes')}), "
            f"but the schedule ({result.spec.describe()}) expected one at {due.isoformat(timespec='minutes')}; "
            "check the scheduler and ~/.argentos/backup/logs/backup.log"
        )


def _inspect_target(cfg: Config, envx: Environment, target: TargetStatus) -> None:
    try:
        backend = target_backend(cfg, envx, target.name)
        try:
            if not backend.exists():
                if target.name == enabled_targets(cfg)[0]:
                    # Perhaps a disk that is not mounted: never only "run `phx init`".
                    target.error = no_repository(backend, target.name, first=True)
                else:
                    target.error = "no repository there yet; the next backup or `phx sync` copies it there"
                return
            infos = [i for prefix in STORED for i in backend.list(prefix)]
            target.stored = sum(i.size for i in infos) + (_size(backend, "config"))
            target.snapshot_ids = {i.name.removeprefix("snapshots/") for i in infos if i.name.startswith("snapshots/")}
            target.snapshots = len(target.snapshot_ids)
            target.retired = [i for i in infos if i.name.startswith(RETIRED_PREFIX)]
        finally:
            backend.close()
    except PhoenixError as exc:
        target.error = f"cannot be read: {exc}"
        return
    try:
        repo = open_repository(cfg, envx, target=target.name)
        try:
            target.logical = sum(s.stats.size for s in repo.list_snapshots())
        finally:
            repo.close()
    except PhoenixError as exc:
        target.notice = f"deduplication ratio unknown: {exc}"


def _size(backend: Any, name: str) -> int:
    info = backend.stat(name)
    return int(info.size) if info is not None else 0


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds") if ts is not None else None


def _age(ts: float | None, now: float) -> float | None:
    return round(now - ts, 1) if ts is not None else None


def human_age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"
