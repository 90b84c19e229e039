"""The state file `~/.argentos/backup/.last-backup`: the seed's `BackupState`, extended.

Seed fields: timestamp (Unix seconds), date (ISO), backupPath, compression, success.
Added: snapshotId, snapshotName, error, targets ({name: {ok, error}}), scope, lastSuccess (the
seed fields of the last successful run, so a failure never hides when the last good backup was),
targetsLastSuccess ({name: {timestamp, date, snapshotId}}: when each target last received a
snapshot), lastFailure ({timestamp, date, error}: the last run that failed, was partial or
reached only some targets) and lastFull ({timestamp, date, success, partial, failedParts, error}:
the last full-scope run, kept through narrower ones) and integrityChecks ({logical path: {time,
checkedAt, result, snapshotId, by}}: the last full `PRAGMA integrity_check` of each SQLite database,
by a backup or a drill; `time` is when the checked state was captured, which the cadence counts
from, see docs/integrity-cadence.md) and forgotten ({target: {snapshotId, timestamp, date, command}}:
this machine's `phx forget`, or a backup's retention, removed the snapshot `targetsLastSuccess`
names for that target; doctor and status then warn instead of calling it lost).

A partial backup (a snapshot was made, but some of its parts could not be saved: a PostgreSQL or
Redis database, a file; or a database was saved damaged, its integrity check failed) has
`success: false`, `partial: true` and `failedParts` ([{path, error}], logical paths such as
`postgres/main`); `lastSuccess` does not move. `failedParts` is empty and `partial` false
otherwise. `targets` are only ever the repository's targets, never a database.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
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
    """The state file, each field of a type Phoenix never writes left out (`load_state`)."""
    return load_state(path)[0]


def load_state(path: Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """The state file and, when it is damaged (hand-edited, cut short, another program's), what is
    wrong with it in one sentence: a file that is no JSON object is None, and a field of another
    type than Phoenix writes (`failedParts` not a list, a timestamp no clock can show) is left out,
    so that every reader (status, doctor, the next backup) sees it as never recorded."""
    where = path or state_path()
    try:
        data = json.loads(where.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, RecursionError) as exc:
        why = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON" if isinstance(exc, ValueError) else exc
        return None, f"the state file {where} cannot be read ({why}); the next `phx backup` writes it anew"
    if not isinstance(data, dict):
        return None, f"the state file {where} is not a JSON object; the next `phx backup` writes it anew"
    bad: list[str] = []
    clean = _checked(data, _FIELDS, "", bad)
    if not bad:
        return clean, None
    return clean, (
        f"the state file {where} has fields of the wrong type or out of range ({', '.join(bad[:5])}); "
        "they are ignored, and the next `phx backup` writes them anew"
    )


LAST_TIMESTAMP = 253402214400  # 9999-12-31T00:00Z: before year 10000 in every time zone (UTC+14 too)


def _timestamp(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < LAST_TIMESTAMP


NESTED_AT_MOST = 32  # levels of a field's value; Phoenix writes 3 at most


def _plain(v: object) -> bool:
    """No NaN or Infinity in `v`, nested `NESTED_AT_MOST` levels at most: Python's JSON reads a
    NaN and 900 levels, but no JSON reader of `phx status --json` takes a NaN, and writing the
    document out again (status passes `targets`, `failedParts`, `lastFailure` on as they are)
    ran out of Python's recursion, 'unexpected internal error (RecursionError)'."""
    todo = [(v, 0)]  # a stack, not recursion
    while todo:
        x, depth = todo.pop()
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if isinstance(x, dict | list) and depth >= NESTED_AT_MOST:
            return False
        if isinstance(x, dict):
            todo += ((y, depth + 1) for y in x.values())
        elif isinstance(x, list):
            todo += ((y, depth + 1) for y in x)
    return True


def _opt_str(v: object) -> bool:
    return v is None or isinstance(v, str)


def _parts(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(p, dict) for p in v)


def _dict_of_dicts(v: object) -> bool:
    return isinstance(v, dict) and all(isinstance(d, dict) for d in v.values())


_Check = Any  # a predicate, or a dict of the fields of a nested object
_FIELDS: dict[str, _Check] = {
    "timestamp": _timestamp,
    "date": _opt_str,
    "success": lambda v: isinstance(v, bool),
    "partial": lambda v: isinstance(v, bool),
    "snapshotId": _opt_str,
    "snapshotName": _opt_str,
    "error": _opt_str,
    "scope": _opt_str,
    "targets": _dict_of_dicts,
    "failedParts": _parts,
    "lastSuccess": {"timestamp": _timestamp, "date": _opt_str, "snapshotId": _opt_str, "snapshotName": _opt_str},
    "lastFailure": {"timestamp": _timestamp, "date": _opt_str, "error": _opt_str},
    "lastFull": {
        "timestamp": _timestamp,
        "date": _opt_str,
        "success": lambda v: isinstance(v, bool),
        "partial": lambda v: isinstance(v, bool),
        "failedParts": _parts,
        "error": _opt_str,
    },
    "targetsLastSuccess": _dict_of_dicts,
    "integrityChecks": lambda v: isinstance(v, dict),
    "forgotten": lambda v: isinstance(v, dict) and all(_forgetting(r) for r in v.values()),
    "workspaces": lambda v: isinstance(v, dict) and all(isinstance(b, bool) for b in v.values()),
    "lastNotification": {
        "timestamp": _timestamp,
        "date": _opt_str,
        "sent": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "problems": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    },
}


def _forgetting(v: object) -> bool:
    """A `forgotten` record: the snapshot id, when and by which command."""
    return (
        isinstance(v, dict)
        and isinstance(v.get("snapshotId"), str)
        and _timestamp(v.get("timestamp"))
        and isinstance(v.get("command"), str)
        and _opt_str(v.get("date"))
        and _opt_str(v.get("left"))
    )


def _checked(data: dict[str, Any], fields: dict[str, _Check], at: str, bad: list[str]) -> dict[str, Any]:
    """`data` without the fields that fail their check in `fields` (named in `bad`)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        check = fields.get(key)
        if isinstance(check, dict):
            if isinstance(value, dict):
                out[key] = _checked(value, check, f"{at}{key}.", bad)
                continue
        elif (check is None or check(value)) and _plain(value):
            out[key] = value
            continue
        bad.append(at + key)
    if fields is _FIELDS and isinstance(out.get("targetsLastSuccess"), dict):
        per = {}
        for name, record in out["targetsLastSuccess"].items():
            if _timestamp(record.get("timestamp")) or "timestamp" not in record:
                per[name] = record
            else:
                bad.append(f"targetsLastSuccess.{name}.timestamp")
        out["targetsLastSuccess"] = per
    return out


def failed_parts_text(state: dict[str, Any]) -> str:
    """The state's `failedParts` as one line (`path: error; ...`), for status and doctor."""
    parts = [p for p in state.get("failedParts") or [] if isinstance(p, dict)]
    return "; ".join(f"{p.get('path')}: {p.get('error')}" for p in parts)


# A last success dated later than this past the clock now: the clock went back (or was ahead when
# the backup ran), and every age measured from it is negative, so no overdue warning would come
# until the clock caught up (a year, for a clock a year ahead).
FUTURE_TOLERANCE = 3600


def future_success_problem(timestamp: float, now: float) -> str | None:
    """Why a last success dated `timestamp` cannot be judged on this clock (`now`), or None."""
    if timestamp - now <= FUTURE_TOLERANCE:
        return None
    from datetime import datetime

    def iso(t: float) -> str:
        return datetime.fromtimestamp(t).astimezone().isoformat(timespec="minutes")

    return (
        f"the last successful backup is dated {iso(timestamp)}, after this machine's clock ({iso(now)}): the clock "
        "is wrong now, or was when that backup ran, so its age (and a missed backup) cannot be told; set the clock "
        "right (`timedatectl set-ntp true`), then run `phx backup`"
    )


def last_snapshot_on(state: dict[str, Any], target: str) -> str | None:
    """The id of the last snapshot a successful backup wrote to `target` (its `targetsLastSuccess`
    record; else the last success's, from a state file written before those records)."""
    per_target = state.get("targetsLastSuccess") or {}
    entry = per_target.get(target) if per_target else state.get("lastSuccess")
    sid = entry.get("snapshotId") if isinstance(entry, dict) else None
    return sid if isinstance(sid, str) else None


def _forgot(record: object, forgotten: object) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(forgotten, dict)
        and record.get("snapshotId") == forgotten.get("snapshotId")
    )


def forgotten_here(state: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The record of this machine's forget that removed the last snapshot a successful backup wrote
    to `target` (`record_forgotten`), or None: that snapshot gone from the target is then no loss."""
    record = (state.get("forgotten") or {}).get(target)
    sid = last_snapshot_on(state, target)
    return record if isinstance(record, dict) and sid is not None and record.get("snapshotId") == sid else None


def forgotten_text(record: dict[str, Any]) -> str:
    """When and by which command this machine removed it, for doctor and status."""
    return f"this machine's `{record.get('command')}` removed it on {record.get('date')}"


def forgotten_loss(record: dict[str, Any], holds: Callable[[str], bool], where: str) -> str | None:
    """Why the forget `record` (`forgotten_here`) excuses nothing: it left no snapshot of this
    machine in the target (no backup to restore), or the one it left is gone since (`holds`: the
    target holds that snapshot id; it may raise). None: the newest backup there is the one it
    left. A record written before it named what it left (no `left`) excuses as it did."""
    if "left" not in record:
        return None
    left = record.get("left")
    if not isinstance(left, str):
        return f"{forgotten_text(record)}, and {where} holds no other snapshot of this machine: no backup to restore"
    if holds(left):
        return None
    return (
        f"snapshot {left[:8]}, the newest one {forgotten_text(record).replace(' removed it ', ' left ')}, is no "
        f"longer in {where} (forgotten, pruned or lost)"
    )


def record_forgotten(target: str, left: Mapping[str, str | None], command: str, path: Path | None = None) -> None:
    """Record that this machine's `command` (`phx forget`, a backup's retention) removed the last
    snapshot a successful backup wrote to `target`, when `left` (each removed id: the newest
    snapshot of its host the target still holds, or None) holds it: doctor and status then say so
    as a warning, not as a lost backup, while the snapshot the forget left (`left` in the record)
    is there. A later forget of that one names the next. Nothing else is recorded."""
    from datetime import UTC, datetime

    where = path or state_path()
    with _locked(where):
        doc = read_state(where)
        sid = last_snapshot_on(doc, target) if doc is not None else None
        if doc is None or sid is None:
            return
        record = (doc.get("forgotten") or {}).get(target)
        if sid in left:
            kept = left[sid]
        elif isinstance(record, dict) and record.get("snapshotId") == sid and record.get("left") in left:
            kept = left[record["left"]]  # what the earlier forget left is gone now too, deliberately
        else:
            return
        now = time.time()
        forgotten = dict(doc.get("forgotten") or {})
        forgotten[target] = {
            "snapshotId": sid,
            "timestamp": int(now),
            "date": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "command": command,
            "left": kept,
        }
        doc["forgotten"] = forgotten
        _write(where, doc)


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
    `success`: the run made its snapshot; with `failed_parts` it is recorded as partial.
    Under the state file's lock (`_locked`), like every read-modify-write of it."""
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
    with _locked(target):
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
        # A forget's record holds while the target's last snapshot is still the one it removed.
        kept = {n: r for n, r in (previous.get("forgotten") or {}).items() if _forgot(per_target.get(n), r)}
        if kept:
            doc["forgotten"] = kept
        if not success or any(not t.ok for t in targets.values()):
            doc["lastFailure"] = {"timestamp": doc["timestamp"], "date": doc["date"], "error": error}
        elif "lastFailure" in previous:
            doc["lastFailure"] = previous["lastFailure"]
        for carried in ("integrityChecks", "lastNotification", "workspaces"):
            if isinstance(previous.get(carried), dict):
                doc[carried] = previous[carried]
        # A narrower backup (--identity-only) proves nothing about what the last full one missed.
        if scope == "full":
            doc["lastFull"] = {k: doc[k] for k in ("timestamp", "date", "success", "partial", "failedParts", "error")}
        elif isinstance(previous.get("lastFull"), dict):
            doc["lastFull"] = previous["lastFull"]
        _write(target, doc)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock (fcntl) on `<state file>.lock` while the state file is read, changed and
    written: a `phx watch` recording its base's check and a backup writing its outcome at the
    same moment would otherwise each write what it read, and one record would be lost. The lock
    is on a file of its own (the state file is replaced by a rename). A lock that cannot be
    taken (a read-only folder) does not stop the run: the state file never fails it."""
    fd = -1
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(target.with_name(target.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lock


def _write(target: Path, doc: dict[str, Any]) -> None:
    """Atomically; a state file that cannot be written never fails the run."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".last-backup.tmp{os.getpid()}")
        # Mode 0600 whatever the umask: the folder may be another program's (ArgentOS's), open to
        # others, and under umask 000 the file was writable by every user (a leaf: no `dirs`).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)  # a temp file a killed run left, with its mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, target)
    except OSError:
        pass


@dataclass(frozen=True)
class IntegrityCheck:
    """One full `PRAGMA integrity_check` of a SQLite database's state."""

    time: str  # RFC 3339: when the checked state was captured (the snapshot's time)
    result: str  # "ok" or the problems
    snapshot_id: str
    by: str  # "backup", "watch" (a `phx watch` base) or "drill"
    checked_at: str = ""  # RFC 3339: when the check ran

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "checkedAt": self.checked_at,
            "result": self.result,
            "snapshotId": self.snapshot_id,
            "by": self.by,
        }

    @classmethod
    def from_json(cls, d: object) -> IntegrityCheck | None:
        """None for anything that is not a record (a damaged state file: the check is then due)."""
        if not isinstance(d, dict):
            return None
        fields = [d.get(k) for k in ("time", "result", "snapshotId", "by", "checkedAt")]
        if not all(isinstance(v, str) for v in fields[:4]):
            return None
        return cls(*(str(v or "") for v in fields))


def integrity_checks(path: Path | None = None) -> dict[str, IntegrityCheck]:
    """The last full integrity check of each SQLite database (by logical path)."""
    raw = (read_state(path) or {}).get("integrityChecks")
    out: dict[str, IntegrityCheck] = {}
    for logical, record in raw.items() if isinstance(raw, dict) else ():
        check = IntegrityCheck.from_json(record)
        if check is not None:
            out[str(logical)] = check
    return out


def rename_snapshots(renamed: dict[str, str], path: Path | None = None) -> None:
    """Replace each old snapshot id in the state file by its new one (`phx key rotate` re-seals
    every snapshot under a new id, the hash of its sealed bytes, and deletes the old): doctor and
    status look the last success's id up in the repository, and would call a backup that is still
    there lost."""
    if not renamed:
        return
    target = path or state_path()
    with _locked(target):
        doc = read_state(target)
        if doc is None:
            return
        records = [doc, doc.get("lastSuccess"), *(doc.get("targetsLastSuccess") or {}).values()]
        records += list((doc.get("integrityChecks") or {}).values())
        changed = False
        for record in records:
            if isinstance(record, dict) and record.get("snapshotId") in renamed:
                record["snapshotId"] = renamed[record["snapshotId"]]
                changed = True
        if changed:
            _write(target, doc)


def record_integrity_checks(checks: dict[str, IntegrityCheck], path: Path | None = None) -> None:
    """Record full integrity checks, each replacing the database's record unless that one is of a
    newer state (a drill of an old snapshot does not move the cadence back); a failure always
    replaces it, so the next backup checks again, and so does a backup's (or a watch base's)
    check: it read the database as it is now, so a record "newer" than it is from a clock that
    went back."""
    if not checks:
        return
    target = path or state_path()
    with _locked(target):
        doc = read_state(target) or {}
        known = integrity_checks(target)
        merged = {k: v.to_json() for k, v in known.items()}
        for logical, check in checks.items():
            old = known.get(logical)
            if old is None or check.result != "ok" or check.by != "drill" or _instant(check.time) >= _instant(old.time):
                merged[logical] = check.to_json()
        doc["integrityChecks"] = merged
        _write(target, doc)


def _instant(text: str) -> float:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def record_notification(timestamp: float, sent: int, problems: list[str], path: Path | None = None) -> None:
    """Record the last notification a run tried to send (`lastNotification`): how many URLs took
    it and why the others did not. A channel that is down says so in `phx status`, before the
    failure it should have told of goes unheard."""
    from datetime import UTC, datetime

    target = path or state_path()
    with _locked(target):
        doc = read_state(target) or {}
        doc["lastNotification"] = {
            "timestamp": int(timestamp),
            "date": datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds"),
            "sent": sent,
            "problems": [str(p) for p in problems],
        }
        _write(target, doc)


def notification_problem(state: dict[str, Any]) -> str | None:
    """What `phx status` says when the last notification a run tried to send did not reach every URL."""
    last = state.get("lastNotification")
    if not isinstance(last, dict) or not last.get("problems"):
        return None
    return (
        f"the last notification ({last.get('date')}) was not sent: {'; '.join(last['problems'])}; "
        "failures may go unheard: fix notifications.urls (a test: `phx backup` with onSuccess notify)"
    )


def record_workspace(workspace: str, held: bool, path: Path | None = None) -> None:
    """Record whether the workspace folder held anything when a backup of it succeeded
    (`workspaces`, by the folder's path): only a folder that held something and is now empty
    is the mount point of a disk that is not mounted; one empty from the start is a new agent's."""
    target = path or state_path()
    with _locked(target):
        doc = read_state(target) or {}
        seen = doc.get("workspaces")
        seen = dict(seen) if isinstance(seen, dict) else {}
        if seen.get(workspace) is held:
            return
        seen[workspace] = held
        doc["workspaces"] = seen
        _write(target, doc)
