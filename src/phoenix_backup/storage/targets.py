"""Backends for the config's targets: `local`, `git`, `s3`, `r2`, each wrapped in the standard
retry and concurrency-limit stack.

Credentials for S3 and R2 come, in this order, from the config (`accessKeyId`/`secretAccessKey`),
the environment (R2 also reads `R2_ACCESS_KEY_ID`/`R2_SECRET_ACCESS_KEY`; both read
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` and `AWS_PROFILE`), then the AWS
SDK's usual chain (shared credentials file, SSO, instance roles). They are handed to the SDK and
never formatted into any message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from phoenix_backup.config import Config
from phoenix_backup.dirs import data_dir, make_dirs, write_private
from phoenix_backup.errors import AppendOnlyRefused, ConfigError, UsageError
from phoenix_backup.storage.appendonly import AppendOnlyBackend, refusal
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.local import LocalBackend, real_path
from phoenix_backup.storage.wrappers import MAX_ATTEMPTS, wrap

if TYPE_CHECKING:
    from phoenix_backup.storage.s3 import S3Settings

TARGET_NAMES = ("local", "git", "s3", "r2")
# Requests in flight per remote target: several uploads at once hide the latency of each.
REMOTE_CONNECTIONS = 8
LOCAL_CONNECTIONS = 16


def check_target_name(cfg: Config, name: str) -> None:
    enabled = cfg.targets.enabled_names()
    if name not in TARGET_NAMES:
        raise UsageError(f"unknown target {name!r}; use one of {', '.join(TARGET_NAMES)}")
    if name not in enabled:
        raise UsageError(
            f"target {name!r} is not enabled; set targets.{name}.enabled to true in the config, "
            f"or use one of the enabled targets: {', '.join(enabled)}"
        )


def backend_for(
    cfg: Config,
    name: str,
    env: Mapping[str, str],
    *,
    notice: Callable[[str], None] | None = None,
    thaw_timeout: float = 0.0,
    answer_seconds: float | None = None,
) -> Backend:
    """The backend of target `name` (which must be enabled), wrapped for retries and a
    concurrency limit. `answer_seconds`: a diagnosis's deadline (`phx doctor`): a remote target
    that does not answer within it fails at once, not retried; None: a backup's own timeouts."""
    attempts = 1 if answer_seconds is not None else MAX_ATTEMPTS
    check_target_name(cfg, name)
    t = cfg.targets
    inner: Backend
    if name == "local":
        return wrap(
            _restrained(cfg, name, LocalBackend(cfg.repository_path, notice)), limit=LOCAL_CONNECTIONS, notice=notice
        )
    if name == "git":
        from phoenix_backup.storage.git import GitBackend, clone_dir

        workdir = clone_dir(env, t.git.repo, t.git.branch)
        inner = GitBackend(
            t.git.repo, t.git.branch, t.git.auto_commit, workdir, env, notice, t.git.append_only, answer_seconds
        )
        return wrap(_restrained(cfg, name, inner), limit=REMOTE_CONNECTIONS, notice=notice, attempts=attempts)
    from phoenix_backup.storage.s3 import S3Backend, S3Settings, r2_endpoint

    if name == "s3":
        s3 = t.s3
        settings = S3Settings(
            target="s3",
            bucket=s3.bucket,
            prefix=s3.prefix,
            endpoint=s3.endpoint,
            region=s3.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            storage_class=s3.storage_class,
            thaw_timeout=thaw_timeout,
            max_connections=REMOTE_CONNECTIONS,
            object_lock_mode=s3.object_lock.mode if s3.object_lock else None,
            object_lock_days=s3.object_lock.days if s3.object_lock else 0,
            answer_seconds=answer_seconds,
        )
        _credentials(settings, s3.access_key_id, s3.secret_access_key, env, ())
    else:
        r2 = t.r2
        settings = S3Settings(
            target="r2",
            bucket=r2.bucket,
            prefix=r2.prefix,
            # The endpoint, when given, replaces the account's URL (then accountId is not needed).
            endpoint=r2.endpoint or r2_endpoint(r2.account_id or ""),
            region=r2.region or "auto",
            thaw_timeout=thaw_timeout,
            max_connections=REMOTE_CONNECTIONS,
            answer_seconds=answer_seconds,
        )
        _credentials(settings, r2.access_key_id, r2.secret_access_key, env, ("R2_",))
    inner = S3Backend(settings, notice)
    return wrap(_restrained(cfg, name, inner), limit=REMOTE_CONNECTIONS, notice=notice, attempts=attempts)


def _restrained(cfg: Config, name: str, backend: Backend) -> Backend:
    """`backend`, refusing deletes and overwrites when the target is append-only."""
    return AppendOnlyBackend(backend, name) if cfg.targets.append_only(name) else backend


# Where this user's Phoenix remembers the storage it has used as append-only (`remember_append_only`).
APPEND_ONLY_MARKS = "append-only.json"


def storage_keys(cfg: Config, name: str, env: Mapping[str, str]) -> list[str]:
    """What names target `name`'s storage whatever config or `--repo` spelling reaches it: the
    folder, the Git repository (storage/git.py `storage_identity`), the bucket and prefix (not
    the endpoint, which may be spelt many ways). Any one of them found in the record is enough."""
    t = cfg.targets
    if name == "local":
        return [f"local:{real_path(cfg.repository_path)}"]
    if name == "git":
        return _git_keys(t.git.repo, t.git.branch, env)
    # One key for both S3 targets: an R2 bucket is reachable through `s3` as well (R2's endpoint).
    target = t.s3 if name == "s3" else t.r2
    return [f"s3:{target.bucket}/{target.prefix.strip('/')}"]


def _git_keys(url: str, branch: str, env: Mapping[str, str]) -> list[str]:
    """`git:/real/path` for a repository on this machine, with `git-folder:<device>:<inode>` of
    that folder when it exists (so moving it, a decoy in its place or a bind mount of it is still
    it); `git-remote:host/path` for any other."""
    from phoenix_backup.storage.git import clone_dir, storage_identity

    identity = storage_identity(url, clone_dir(env, url, branch))  # git runs in the clone
    if not identity.startswith("/"):
        return [f"git-remote:{identity}"]
    keys = [f"git:{identity}"]
    with contextlib.suppress(OSError):
        st = os.stat(identity)
        keys.append(f"git-folder:{st.st_dev}:{st.st_ino}")
    return keys


def _canonical_marks(marks: Mapping[str, object], env: Mapping[str, str]) -> set[str]:
    """The keys of the record, each as `storage_keys` spells it now. Phoenix before 2026-12 kept a
    Git remote as written (`git:` and the URL); those are read in today's spelling too."""
    keys = set(marks)
    for key in marks:
        if key.startswith("git:"):
            with contextlib.suppress(OSError, ValueError):
                keys.update(_git_keys(key.removeprefix("git:"), "main", env))
    return keys


_RECORD_LIMIT = 1 << 20  # a record holds a line per storage: far below this


def _read_record(path: Path) -> bytes:
    """The record's bytes; a FIFO, a device or a file too large for a record is damage (ValueError),
    never a wait or a read without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _RECORD_LIMIT:
            raise ValueError("not a record")
        data = os.read(fd, _RECORD_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > _RECORD_LIMIT:
        raise ValueError("not a record")
    return data


def remember_append_only(cfg: Config, env: Mapping[str, str]) -> Config:
    """`cfg`, with every enabled target that this user's Phoenix has ever used as append-only
    marked append-only again, and the storage of its append-only targets remembered
    (`<data dir>/append-only.json`). A careless user, or an agent handed another config (or
    `--repo` naming the same storage), then meets the same refusal as under the config that made
    it append-only. Whoever controls the machine can edit that file: the store's own enforcement
    (Object Lock, a Git remote's guard) is what holds against them (docs/write-only.md)."""
    try:
        path = data_dir(env) / APPEND_ONLY_MARKS
    except ConfigError:
        return cfg  # a command that needs the data dir says what is wrong with it
    names = cfg.targets.enabled_names()
    try:
        doc = json.loads(_read_record(path))
        marks: dict[str, object] = doc["storage"]
        if not isinstance(marks, dict):
            raise ValueError("no storage mapping")
    except FileNotFoundError:
        marks = {}
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        # Damaged (a careless edit, a folder in its place): what it remembered is unknown, so
        # every target counts as append-only here, and the file stays for its owner to fix.
        return _append_only(cfg, names)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    keys = {n: storage_keys(cfg, n, env) for n in names}
    known = _canonical_marks(marks, env)
    new = {
        key: {"target": n, "since": now}
        for n in names
        if cfg.targets.append_only(n)
        for key in keys[n]
        if key not in marks
    }
    if new:
        # Only a reminder: a read-only data dir loses nothing; a record damaged meanwhile stays as it is.
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError, RecursionError):
            make_dirs(path.parent)
            _add_marks(path, new)
    return _append_only(cfg, [n for n in names if known.intersection(keys[n])])


def _add_marks(path: Path, new: Mapping[str, object]) -> None:
    """Add `new` to the record, read again under an exclusive lock on its folder: two commands
    adding at once (a watch, a backup under another config) each keep the other's entries."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            marks = json.loads(_read_record(path))["storage"]
        except FileNotFoundError:
            marks = {}
        if not isinstance(marks, dict):
            raise ValueError("no storage mapping")
        write_private(path, (json.dumps({"storage": {**marks, **new}}, indent=2, sort_keys=True) + "\n").encode())
    finally:
        os.close(folder)  # and the lock with it


def _append_only(cfg: Config, names: list[str]) -> Config:
    """`cfg` with the targets `names` marked append-only."""
    remembered = [n for n in names if not cfg.targets.append_only(n)]
    if not remembered:
        return cfg
    targets = cfg.targets
    for n in remembered:
        targets = dataclasses.replace(targets, **{n: dataclasses.replace(getattr(targets, n), append_only=True)})
    return dataclasses.replace(cfg, targets=targets)


def refuse_append_only(cfg: Config, names: list[str], command: str, why: str = "") -> dict[str, str]:
    """`phx COMMAND` (forget, prune: commands that delete; `why` says what it deletes or replaces)
    must not run against an append-only target: saying so first beats failing half-way. Returns
    {target: why} for those of `names` that refuse; raises AppendOnlyRefused when every one does."""
    named = f"`phx {command}`" + (f" ({why})" if why else "")
    refused = {name: refusal(name, named) for name in names if cfg.targets.append_only(name)}
    if refused and len(refused) == len(names):
        raise AppendOnlyRefused(next(iter(refused.values())))
    return refused


def _credentials(
    settings: S3Settings,
    key_id: str | None,
    secret: str | None,
    env: Mapping[str, str],
    env_prefixes: tuple[str, ...],
) -> None:
    """Fill the settings' keys: the config's, else the caller's environment (which may differ from
    this process's when Phoenix is used as a library), else leave them to the SDK's chain."""
    if key_id and secret:
        settings.access_key_id, settings.secret_access_key = key_id, secret
        return
    for prefix in (*env_prefixes, "AWS_"):
        env_id, env_secret = env.get(f"{prefix}ACCESS_KEY_ID"), env.get(f"{prefix}SECRET_ACCESS_KEY")
        if env_id and env_secret:
            settings.access_key_id, settings.secret_access_key = env_id, env_secret
            settings.session_token = env.get(f"{prefix}SESSION_TOKEN") or None
            return
    settings.profile = env.get("AWS_PROFILE") or None
