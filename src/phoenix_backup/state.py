"""The state file `~/.argentos/backup/.last-backup`: the seed's `BackupState`, extended.

Seed fields: timestamp (Unix seconds), date (ISO), backupPath, compression, success.
Added: snapshotId, snapshotName, error, targets ({name: {ok, error}}), scope, lastSuccess (the
seed fields of the last successful run, so a failure never hides when the last good backup was),
targetsLastSuccess ({name: {timestamp, date, snapshotId}}: when each target last received a
snapshot), lastFailure ({timestamp, date, error}: the last run that failed, was partial or
reached only some targets) and lastFull ({timestamp, date, success, partial, failedParts, error}:
the last full-scope run, kept through narrower ones).

A partial backup (a snapshot was made, but some of its parts could not be saved: a PostgreSQL or
Redis database, a file; or a database was saved damaged, its integrity check failed) has
`success: false`, `partial: true` and `failedParts` ([{path, error}], logical paths such as
`postgres/main`); `lastSuccess` does not move. `failedParts` is empty and `partial` false
otherwise. `targets` are only ever the repository's targets, never a database.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def state_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / ".argentos" / "backup" / ".last-backup"


@dataclass(frozen=True)
class TargetOutcome:
    ok: bool
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error}


def read_state(path: Path | None = None) -> dict[str, Any] | None:
    try:
        data = json.loads((path or state_path()).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def failed_parts_text(state: dict[str, Any]) -> str:
    """The state's `failedParts` as one line (`path: error; ...`), for status and doctor."""
    parts = [p for p in state.get("failedParts") or [] if isinstance(p, dict)]
    return "; ".join(f"{p.get('path')}: {p.get('error')}" for p in parts)


def full_backup_problem(state: dict[str, Any]) -> str | None:
    """What the last full backup missed, when a narrower one ran since (its own outcome is the
    state's): a successful `--identity-only` run never makes a partial full backup look done."""
    full = state.get("lastFull")
    if state.get("scope") == "full" or not isinstance(full, dict) or full.get("success"):
        return None
    since = f"the {state.get('scope')} backup since does not cover them; fix the cause and run `phx backup`"
    if full.get("partial"):
        return f"the last full backup ({full.get('date')}) was partial, not saved: {failed_parts_text(full)}; {since}"
    return f"the last full backup ({full.get('date')}) failed: {full.get('error')}; {since}"


def write_state(
    *,
    timestamp: float,
    backup_path: str,
    compression: bool,
    success: bool,
    snapshot_id: str | None,
    snapshot_name: str | None,
    error: str | None,
    targets: dict[str, TargetOutcome],
    scope: str,
    failed_parts: list[dict[str, str]] | None = None,
    path: Path | None = None,
) -> None:
    """Write atomically; a state file that cannot be written never fails the backup itself.
    `success`: the run made its snapshot; with `failed_parts` it is recorded as partial."""
    from datetime import UTC, datetime

    target = path or state_path()
    parts = [{"path": str(p["path"]), "error": str(p["error"])} for p in failed_parts or []]
    partial = success and bool(parts)
    success = success and not parts
    doc: dict[str, Any] = {
        "timestamp": int(timestamp),
        "date": datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds"),
        "backupPath": backup_path,
        "compression": compression,
        "success": success,
        "snapshotId": snapshot_id,
        "snapshotName": snapshot_name,
        "error": error,
        "targets": {k: v.to_json() for k, v in targets.items()},
        "scope": scope,
        "partial": partial,
        "failedParts": parts,
    }
    previous = read_state(target) or {}
    if success:
        doc["lastSuccess"] = {k: doc[k] for k in ("timestamp", "date", "snapshotId", "snapshotName")}
    elif "lastSuccess" in previous:
        doc["lastSuccess"] = previous["lastSuccess"]
    per_target = previous.get("targetsLastSuccess")
    per_target = dict(per_target) if isinstance(per_target, dict) else {}
    for name, outcome in targets.items():
        if outcome.ok and snapshot_id:
            per_target[name] = {"timestamp": doc["timestamp"], "date": doc["date"], "snapshotId": snapshot_id}
    doc["targetsLastSuccess"] = per_target
    if not success or any(not t.ok for t in targets.values()):
        doc["lastFailure"] = {"timestamp": doc["timestamp"], "date": doc["date"], "error": error}
    elif "lastFailure" in previous:
        doc["lastFailure"] = previous["lastFailure"]
    # A narrower backup (--identity-only) proves nothing about what the last full one missed.
    if scope == "full":
        doc["lastFull"] = {k: doc[k] for k in ("timestamp", "date", "success", "partial", "failedParts", "error")}
    elif isinstance(previous.get("lastFull"), dict):
        doc["lastFull"] = previous["lastFull"]
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".last-backup.tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError:
        pass
