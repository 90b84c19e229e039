"""The text of a backup notification, and the redaction that keeps secrets out of it."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from phoenix_backup.config import Config
from phoenix_backup.dirs import (
    PASSPHRASE_COMMAND_SECRET,
    env_path,
    passphrase_text,
    remembered_secret,
    secret_file_again,
)
from phoenix_backup.errors import shown, shown_each
from phoenix_backup.redaction import redact
from phoenix_backup.units import human_size


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
    """(title, body) of the message, redacted; each line one line of text (`shown_each`): a file
    name's newline would forge a line of its own ("Targets OK: ...") in the alert, its escape
    sequence or bidi override would reach whatever shows the message."""
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
    # Redacted first: a secret is found as it is, before its characters are escaped.
    return shown(redact(title, secret_list)), shown_each(redact(line, secret_list) for line in lines)


def env_secrets(env: Mapping[str, str]) -> list[str]:
    """The secrets this run's environment holds, known before any config is read: the
    passphrases (and the passphrase file's), AWS keys, a Git password."""
    out = [env.get(name, "") for name in ("PHX_PASSPHRASE", "PHX_NEW_PASSPHRASE", "PHX_GIT_PASSWORD")]
    # Each passphrase as given, as an earlier Phoenix used it (line breaks left out) and as
    # Phoenix uses it now (`passphrase_text`: the byte-order mark it may start with left out too).
    passphrases = [env.get(name, "") for name in ("PHX_PASSPHRASE", "PHX_NEW_PASSPHRASE")]
    file = env_path(env, "PHX_PASSPHRASE_FILE")
    if file is not None:
        # A file that cannot be read or is too large gives no passphrase to the run either.
        # The bytes this run read (its passphrase) and the file as it is now (rotated since?).
        for raw in dict.fromkeys((remembered_secret(os.fspath(file)), secret_file_again(file))):
            if raw is not None:
                passphrases.append(raw.decode("utf-8", "surrogateescape"))
    given = remembered_secret(PASSPHRASE_COMMAND_SECRET)  # the config's command, once it ran
    if given is not None:
        passphrases.append(given.decode("utf-8", "surrogateescape"))
    out += [form for p in passphrases for form in _forms(p)]
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        out.append(env.get(name, ""))
    return [s for s in out if s]


def _forms(passphrase: str) -> list[str]:
    """A passphrase as given, without its trailing line breaks, and as Phoenix uses it."""
    return [passphrase, passphrase.rstrip("\r\n"), passphrase_text(passphrase)]


def secrets_of(cfg: Config, env: Mapping[str, str]) -> list[str]:
    """Every secret this run could know: passphrases, keys, passwords, the notification URLs."""
    out = env_secrets(env)
    enc = cfg.encryption
    if enc.passphrase_env:
        out += _forms(env.get(enc.passphrase_env, ""))
    for target in (cfg.targets.s3, cfg.targets.r2):
        out += [target.secret_access_key or "", target.access_key_id or ""]
    out += _url_credentials(cfg.targets.git.repo)  # a token quoted alone (a hook's or git's text)
    for db in cfg.databases.postgres:
        out += [db.dsn or "", *_url_credentials(db.dsn or "")]
        if db.password_env:
            out.append(env.get(db.password_env, ""))
    for rdb in cfg.databases.redis:
        out += [rdb.url, *_url_credentials(rdb.url)]
    out += list(cfg.notifications.urls)
    return [s for s in out if s]


def _url_credentials(url: str) -> list[str]:
    """The password of a URL (`https://user:TOKEN@host`, or the query's `password=` libpq and
    redis-py read too), as written, decoded, and encoded as a library writes it again: every byte
    but letters, digits and `-._~` encoded, in upper or lower hex (`p%2fss` quoted back as
    `p%2Fss`, `p@ss` as `p%40ss`)."""
    try:
        parts = urlsplit(url)
        password = parts.password if "@" in url else None
    except ValueError:
        return []
    written = [password] if password else []
    written += [quote(v, safe="") for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    out: list[str] = []
    for form in written:
        decoded = unquote(form)
        encoded = [form, quote(decoded, safe="")]
        hexes = [_PERCENT.sub(lambda m: m.group(0).lower(), f) for f in encoded]
        hexes += [_PERCENT.sub(lambda m: m.group(0).upper(), f) for f in encoded]
        out += [decoded, *encoded, *hexes]
    return list(dict.fromkeys(out))


_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
