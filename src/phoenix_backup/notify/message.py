"""The text of a backup notification, and the redaction that keeps secrets out of it."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.units import human_size

# user:password@ in any URL, and token-like query parameters.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
_QUERY_SECRET = re.compile(
    r"((?:[?&;]|\b)(?:token|key|secret|password|passwd|pass|apikey|api_key|sig|signature)=)[^&\s;]+", re.I
)
# A secret shorter than this is not searched for: "pw" would redact half the message.
_MIN_SECRET = 4
REDACTED = "***"


@dataclass(frozen=True)
class BackupEvent:
    """One backup run as a notification sees it."""

    ok: bool  # a complete success (exit 0)
    host: str = field(default_factory=socket.gethostname)
    scope: str = "full"
    snapshot_id: str | None = None
    snapshot_name: str | None = None
    size: int | None = None
    added: int | None = None
    duration: float | None = None
    targets_ok: tuple[str, ...] = ()
    failed_targets: Mapping[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()


def compose(event: BackupEvent, secrets: Iterable[str] = ()) -> tuple[str, str]:
    """(title, body) of the message, redacted."""
    if event.ok:
        title = f"Phoenix backup OK on {event.host}"
    elif event.snapshot_id:
        title = f"Phoenix backup INCOMPLETE on {event.host}"
    else:
        title = f"Phoenix backup FAILED on {event.host}"
    lines = []
    if event.snapshot_id:
        lines.append(f"Snapshot: {event.snapshot_name} ({event.snapshot_id[:8]}), scope {event.scope}")
    else:
        lines.append(f"No snapshot was saved (scope {event.scope}).")
    if event.size is not None:
        lines.append(f"Size: {human_size(event.size)}, added: {human_size(event.added or 0)}")
    if event.duration is not None:
        lines.append(f"Duration: {event.duration:.1f} s")
    if event.targets_ok:
        lines.append(f"Targets OK: {', '.join(event.targets_ok)}")
    if event.failed_targets:
        lines.append("Failed targets:")
        lines += [f"  {name}: {error}" for name, error in event.failed_targets.items()]
    if event.errors:
        lines.append("Errors:")
        lines += [f"  {error}" for error in event.errors]
    secret_list = list(secrets)
    return redact(title, secret_list), redact("\n".join(lines), secret_list)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _QUERY_SECRET.sub(rf"\1{REDACTED}", text)


def secrets_of(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """Every secret this run could know: passphrases, keys, passwords, the notification URLs."""
    out = [env.get("PHX_PASSPHRASE", ""), env.get("PHX_NEW_PASSPHRASE", "")]
    file = env.get("PHX_PASSPHRASE_FILE")
    if file:
        with contextlib.suppress(OSError):
            out.append(Path(file).read_text().rstrip("\r\n"))
    enc = cfg.encryption
    if enc.passphrase_env:
        out.append(env.get(enc.passphrase_env, ""))
    for target in (cfg.targets.s3, cfg.targets.r2):
        out += [target.secret_access_key or "", target.access_key_id or ""]
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        out.append(env.get(name, ""))
    for db in cfg.databases.postgres:
        out.append(db.dsn or "")
        if db.password_env:
            out.append(env.get(db.password_env, ""))
    for rdb in cfg.databases.redis:
        out.append(rdb.url)
    out += list(cfg.notifications.urls)
    return [s for s in out if s]
