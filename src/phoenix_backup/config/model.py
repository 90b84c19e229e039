"""The validated configuration: frozen dataclasses, snake_case twins of the camelCase JSON keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Algorithm = Literal["zstd", "gzip"]
OnSuccess = Literal["silent", "notify"]
OnFailure = Literal["alert", "silent"]
EncryptionMethod = Literal["passphrase", "age", "gpg"]
ObjectLockMode = Literal["governance", "compliance"]


@dataclass(frozen=True)
class LocalTarget:
    enabled: bool
    path: Path | None = None
    # Phoenix never deletes or overwrites an object there (locks aside): forget and prune run on
    # another machine (docs/write-only.md).
    append_only: bool = False


@dataclass(frozen=True)
class GitTarget:
    enabled: bool
    repo: str = ""
    branch: str = "main"
    auto_commit: bool = True
    append_only: bool = False


@dataclass(frozen=True)
class ObjectLock:
    """S3 Object Lock retention set on every object Phoenix writes (locks aside)."""

    mode: ObjectLockMode
    days: int


@dataclass(frozen=True)
class S3Target:
    enabled: bool
    bucket: str = ""
    prefix: str = ""
    storage_class: str = "STANDARD"
    region: str | None = None
    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    append_only: bool = False
    object_lock: ObjectLock | None = None  # implies append_only


@dataclass(frozen=True)
class R2Target:
    enabled: bool
    account_id: str | None = None
    bucket: str = ""
    prefix: str = ""
    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    append_only: bool = False


@dataclass(frozen=True)
class Targets:
    local: LocalTarget
    git: GitTarget
    s3: S3Target
    r2: R2Target

    def enabled_names(self) -> list[str]:
        """Enabled targets in the fixed order local, git, s3, r2: the first one is written, the
        others are replicated to (DESIGN §8), so the order is part of the behaviour."""
        candidates = (
            ("local", self.local.enabled),
            ("git", self.git.enabled),
            ("s3", self.s3.enabled),
            ("r2", self.r2.enabled),
        )
        return [name for name, enabled in candidates if enabled]

    def append_only(self, name: str) -> bool:
        """Whether Phoenix must never delete or overwrite objects on target `name`."""
        target: LocalTarget | GitTarget | S3Target | R2Target = getattr(self, name)
        return target.append_only


@dataclass(frozen=True)
class Compression:
    enabled: bool = True
    algorithm: Algorithm = "zstd"
    level: int | None = None


@dataclass(frozen=True)
class Retention:
    """Counts per rule: -1 keeps every period, 0 switches the rule off (restic's `forget`). The
    defaults (DESIGN §3) keep every snapshot of the last day and the last 10 besides daily 7,
    weekly 4 and monthly 12."""

    hourly: int = 0
    daily: int = 7
    weekly: int = 4
    monthly: int = 12
    yearly: int = 0
    last: int = 10
    within: str | None = "1d"
    keep_safety_days: int = 7
    prune: bool = True
    captures_within: str = "1d"  # phx watch's capture segments: every state kept this long ...
    captures_hourly_within: str = "7d"  # ... then one an hour up to this age, then one a day


@dataclass(frozen=True)
class Notifications:
    enabled: bool = False
    on_success: OnSuccess = "silent"
    on_failure: OnFailure = "alert"
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Encryption:
    enabled: bool = False
    method: EncryptionMethod = "passphrase"
    key_id: str | None = None
    recipients: tuple[str, ...] = ()
    identity_file: Path | None = None
    passphrase_env: str | None = None
    passphrase_command: str | None = None
    # age only: this machine backs up with the recipients and a write key, never the identity.
    write_only: bool = False


@dataclass(frozen=True)
class PostgresDb:
    name: str
    dsn: str | None = field(default=None, repr=False)
    host: str = "localhost"
    port: int = 5433  # the ArgentOS PostgreSQL port (seed 003), not PostgreSQL's 5432
    database: str | None = None
    user: str | None = None
    password_env: str | None = None
    pg_dump: Path | None = None
    agent_id: str | None = None


@dataclass(frozen=True)
class RedisDb:
    name: str
    url: str = field(default="redis://localhost:6380/0", repr=False)
    match: str = "*"


@dataclass(frozen=True)
class Databases:
    sqlite: tuple[str, ...] = ()  # each entry as written, `~` and `$NAME` replaced
    # Each `sqlite` entry as a glob pattern, what `~` and `$NAME` put in escaped (a home folder
    # named `[a]*?` is that folder); "" for an entry written without a glob character, a path.
    sqlite_globs: tuple[str, ...] = ()
    postgres: tuple[PostgresDb, ...] = ()
    redis: tuple[RedisDb, ...] = ()
    # How often each SQLite database gets a full `PRAGMA integrity_check` at backup (restic's
    # duration syntax, as retention.within); "0h": at every backup (docs/integrity-cadence.md).
    integrity_check_every: str = "24h"


@dataclass(frozen=True)
class Components:
    """Paths making up each partial-restore scope; `databases` is every configured database."""

    identity: tuple[str, ...]
    memory: tuple[str, ...]
    config: tuple[str, ...]


@dataclass(frozen=True)
class Gateway:
    stop: str | None = None
    start: str | None = None
    timeout_seconds: float = 60.0


@dataclass(frozen=True)
class Hooks:
    pre_backup: str | None = None
    post_backup: str | None = None
    timeout_seconds: float = 600.0


@dataclass(frozen=True)
class Schedule:
    every: str = "daily"
    at: str | None = None


@dataclass(frozen=True)
class Config:
    source: Path | None
    workspace: Path
    backup_dir: Path
    targets: Targets
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    compression: Compression
    retention: Retention
    notifications: Notifications
    encryption: Encryption
    databases: Databases
    components: Components
    gateway: Gateway
    hooks: Hooks
    schedule: Schedule
    warnings: tuple[str, ...] = ()
    # `--repo LOCATION` (config/location.py): the one target read from, as the user named it.
    location: str | None = None

    @property
    def repository_path(self) -> Path:
        """Where the local repository lives: `targets.local.path` wins over `backupDir`."""
        return self.targets.local.path if self.targets.local.path is not None else self.backup_dir
