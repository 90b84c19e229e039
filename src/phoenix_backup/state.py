"""The state file `~/.argentos/backup/.last-backup`: the seed's `BackupState`, extended.

Seed fields: timestamp (Unix seconds), date (ISO), backupPath, compression, success.
Added: snapshotId, snapshotName, error, targets ({name: {ok, error}}), scope, lastSuccess (the
seed fields of the last successful run, so a failure never hides when the last good backup was),
targetsLastSuccess ({name: {timestamp, date, snapshotId}}: when each target last received a
snapshot), lastFailure ({timestamp, date, error}: the last run that failed, was partial or
reached only some targets), and for a partial run (a snapshot was made, but something it should
hold was not saved: an unreadable file or folder, a database that could not be dumped) `partial:
true` with `notSaved` ([{path, error}], logical paths such as `workspace/memory` or
`postgres/main`); a partial run is not a success.
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
    path: Path | None = None,
    not_saved: list[dict[str, str]] | None = None,
) -> None:
    """Write atomically; a state file that cannot be written never fails the backup itself."""
    from datetime import UTC, datetime

    target = path or state_path()
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
        "partial": bool(not_saved),
        "notSaved": list(not_saved or []),
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
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".last-backup.tmp{os.getpid()}")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError:
        pass
