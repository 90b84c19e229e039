"""Validates a decoded config document into a `Config`, or raises one ConfigError naming a field."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

from phoenix_backup.config.defaults import (
    DEFAULT_CONFIG_PATHS,
    DEFAULT_EXCLUDE,
    DEFAULT_IDENTITY,
    DEFAULT_INCLUDE,
    DEFAULT_MEMORY,
    DEFAULT_SQLITE,
)
from phoenix_backup.config.model import (
    Algorithm,
    Components,
    Compression,
    Config,
    Databases,
    Encryption,
    EncryptionMethod,
    Gateway,
    GitTarget,
    Hooks,
    LocalTarget,
    Notifications,
    ObjectLock,
    ObjectLockMode,
    OnFailure,
    OnSuccess,
    PostgresDb,
    R2Target,
    RedisDb,
    Retention,
    S3Target,
    Schedule,
    Targets,
)
from phoenix_backup.errors import ConfigError
from phoenix_backup.redaction import redact_url

_T = TypeVar("_T")

_VAR = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Database names become folder names in a snapshot (`postgres/<name>/`), hence no slashes.
_DB_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
# restic's `--keep-within` syntax: numbers each followed by y, m, d or h.
_DURATION = re.compile(r"(?:[0-9]+[ymdh])+\Z")
_AGE_RECIPIENT = re.compile(r"age1[0-9a-z]{10,}\Z")
_TIME_OF_DAY = re.compile(r"(?:[01][0-9]|2[0-3]):[0-5][0-9]\Z")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?-]+\Z")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_R2_ACCOUNT = re.compile(r"[0-9a-fA-F]{32}\Z")
_CONNINFO_PASSWORD = re.compile(r"(?:^|\s)password\s*=")

_S3_STORAGE_CLASSES = (
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "GLACIER_IR",
    "DEEP_ARCHIVE",
)
# Typed maps rather than casts: the lookup itself turns a checked str into the Literal type.
_ALGORITHMS: dict[str, Algorithm] = {"zstd": "zstd", "gzip": "gzip"}
_LEVELS: dict[Algorithm, tuple[int, int]] = {"zstd": (-7, 22), "gzip": (1, 9)}
_ON_SUCCESS: dict[str, OnSuccess] = {"silent": "silent", "notify": "notify"}
_ON_FAILURE: dict[str, OnFailure] = {"alert": "alert", "silent": "silent"}
_METHODS: dict[str, EncryptionMethod] = {"passphrase": "passphrase", "age": "age", "gpg": "gpg"}
_SCHEDULE_WORDS = ("hourly", "daily", "weekly")
_REDIS_SCHEMES = ("redis", "rediss", "unix")

# Where the repository goes when no local path is configured; only used by the local target.
_FALLBACK_BACKUP_DIR = "~/backups/argent"

# A duration or day count longer than this is a typo (a cutoff before year 1 stopped backup and
# forget with an internal error); 1000 years keeps every snapshot ever made.
_MAX_DAYS = 365_250

_TOP_KEYS = (
    "workspace",
    "backupDir",
    "targets",
    "include",
    "exclude",
    "compression",
    "retention",
    "notifications",
    "encryption",
    "databases",
    "components",
    "gateway",
    "hooks",
    "schedule",
)
_RETENTION_RULES = ("hourly", "daily", "weekly", "monthly", "yearly", "last")


def _got(value: object, *, secret: bool = False) -> str:
    """The offending value for an error message; a secret's value is never shown, only its type."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if secret:
        return "a string" if isinstance(value, str) else "a non-string value"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:56] + '..."'


def _quoted_choices(choices: tuple[str, ...] | list[str]) -> str:
    quoted = [json.dumps(choice) for choice in choices]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _unknown_key(key: object, where: str, known: tuple[str, ...]) -> ConfigError:
    name = key if isinstance(key, str) else str(key)
    full = f"{where}.{name}" if where else name
    prefix = f"{where}." if where else ""
    import difflib  # a mistake's hint only: not loaded by every command (issue 20, peak memory)

    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return ConfigError(f'unknown key "{full}"; did you mean "{prefix}{close[0]}"?')
    return ConfigError(f'unknown key "{full}"; remove it (known keys: {", ".join(known)})')


@dataclass
class _Context:
    env: Mapping[str, str]
    home: str
    base: Path | None  # the config file's folder: relative paths are relative to it
    warnings: list[str] = field(default_factory=list)

    def expand(self, text: str, where: str, quote: Callable[[str], str] = str) -> str:
        """`text` with its `$NAME`s and leading `~` replaced; what they put in goes through `quote`
        (`glob.escape` for a glob pattern: a home folder named `[a]*?` is that folder, no pattern)."""

        def substitute(match: re.Match[str]) -> str:
            name = match["braced"] if match["braced"] is not None else match["bare"]
            if not _ENV_NAME.match(name):
                raise ConfigError(
                    f"{where} has a malformed variable reference ${{{name}}}; write it as $NAME or ${{NAME}}"
                )
            if name not in self.env:
                raise ConfigError(
                    f"{where} uses ${name}, which is not set in the environment; set it or write the value out"
                )
            return quote(self.env[name])

        if "${" in _VAR.sub("", text):
            # Left as written, "${HOME/backups" was a folder of that name beside the config.
            raise ConfigError(f"{where} has an unclosed variable reference ${{...; write it as $NAME or ${{NAME}}")
        text = _VAR.sub(substitute, text)
        if text == "~" or text.startswith("~/"):
            return quote(self.home) + text[1:]
        if text.startswith("~"):
            user, sep, rest = text.partition("/")
            return quote(os.path.expanduser(user)) + sep + rest  # ~user: only the password database knows
        return text

    def path(self, text: str, where: str) -> Path:
        expanded = self.expand(text, where)
        if expanded.startswith("~"):
            # expanduser leaves `~name` as it is when no such user exists: it would have been taken
            # as a folder named "~name" beside the config. Also when a variable put it there
            # ("$WS/ws", WS=~name): the leading ~ is expanded after the variables.
            user = expanded[1:].partition("/")[0]
            spelled = "" if text.startswith("~") else f" (as {text} expands)"
            raise ConfigError(
                f'{where} starts with ~{user}{spelled}, but there is no user "{user}" on this machine; '
                "fix the name or write the full path"
            )
        return self.resolve(expanded)

    def resolve(self, expanded: str) -> Path:
        path = Path(expanded)
        if not path.is_absolute() and self.base is not None:
            return self.base / path
        return path


class _Section:
    """One JSON object of the config, read key by key with its field path for error messages."""

    def __init__(self, data: object, where: str, known: tuple[str, ...], ctx: _Context) -> None:
        if not isinstance(data, dict):
            what = where or "the config"
            raise ConfigError(f"{what} must be a JSON object (got {_got(data)})")
        for key in data:
            if key not in known:
                raise _unknown_key(key, where, known)
        self._data: dict[str, object] = data
        self.where = where
        self.ctx = ctx

    def field(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def raw(self, key: str) -> object:
        """The value, or None when absent: JSON null means "use the default" everywhere."""
        return self._data.get(key)

    def has(self, key: str) -> bool:
        return self.raw(key) is not None

    def section(self, key: str, known: tuple[str, ...]) -> _Section:
        value = self.raw(key)
        return _Section({} if value is None else value, self.field(key), known, self.ctx)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self.field(key)} must be true or false (got {_got(value)})")
        return value

    def integer(self, key: str, default: int, minimum: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{self.field(key)} must be an integer >= {minimum} (got {_got(value)})")
        return value

    def string(self, key: str, default: str, *, secret: bool = False) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(f"{self.field(key)} must be a string (got {_got(value, secret=secret)})")
        return value

    def optional_string(self, key: str, *, secret: bool = False) -> str | None:
        # An empty string reads as "not set": `"region": ""` is how JSON users blank a field.
        return self.string(key, "", secret=secret) or None

    def choice(self, key: str, choices: Mapping[str, _T], default: _T) -> _T:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            raise ConfigError(f"{self.field(key)} must be {_quoted_choices(list(choices))} (got {_got(value)})")
        return choices[value]

    def env_name(self, key: str) -> str | None:
        name = self.optional_string(key)
        if name is not None and not _ENV_NAME.match(name):
            raise ConfigError(
                f"{self.field(key)} must name an environment variable such as PHX_PASSPHRASE (got {_got(name)})"
            )
        return name

    def path(self, key: str) -> Path | None:
        text = self.string(key, "")
        if not text:
            if self.raw(key) == "":
                raise ConfigError(f"{self.field(key)} must not be empty; set a path or remove it")
            return None
        return self.ctx.path(text, self.field(key))

    def strings(
        self,
        key: str,
        default: tuple[str, ...],
        *,
        expand: Literal["none", "leading", "all"] = "none",
        secret: bool = False,
    ) -> tuple[str, ...]:
        """A list of non-empty strings. expand: "none", "leading" (only entries starting with
        ~ or $, so glob patterns stay as written) or "all"."""
        value = self.raw(key)
        if value is None:
            value = list(default)
        if not isinstance(value, list):
            raise ConfigError(f"{self.field(key)} must be a list of strings (got {_got(value)})")
        items: list[str] = []
        for index, item in enumerate(value):
            where = f"{self.field(key)}[{index}]"
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{where} must be a non-empty string (got {_got(item, secret=secret)})")
            if expand == "all" or (expand == "leading" and item[:1] in ("~", "$")):
                item = self.ctx.expand(item, where)
            items.append(item)
        return tuple(items)

    def sections(self, key: str, known: tuple[str, ...]) -> list[_Section]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(f"{self.field(key)} must be a list of objects (got {_got(value)})")
        return [_Section(item, f"{self.field(key)}[{index}]", known, self.ctx) for index, item in enumerate(value)]


def parse_config(data: object, source: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Validate a decoded config document. `source` is the file it came from (for relative paths
    and the permission check); `env` supplies $VARS and HOME (default: the process environment)."""
    environment: Mapping[str, str] = os.environ if env is None else env
    home = environment.get("HOME") or str(Path.home())
    base = Path(os.path.abspath(source)).parent if source is not None else None
    ctx = _Context(environment, home, base)
    if not isinstance(data, dict):
        raise ConfigError(
            f'the config must be a JSON object such as {{"workspace": "~/argent", ...}} '
            f"(got {_got(data)}); `phx init` writes an example"
        )
    _reject_nul(data, "")
    root = _Section(data, "", _TOP_KEYS, ctx)

    workspace = root.path("workspace")
    if workspace is None:
        raise ConfigError('workspace is required; set it to the folder of the agent\'s workspace, e.g. "~/argent"')
    backup_dir = root.path("backupDir")
    targets = _targets(root.section("targets", ("local", "git", "s3", "r2")))
    local_path = targets.local.path
    if local_path is not None and backup_dir is not None:
        if os.path.normpath(local_path) != os.path.normpath(backup_dir):
            ctx.warnings.append(
                f"targets.local.path ({local_path}) differs from backupDir ({backup_dir}); using targets.local.path"
            )
    elif local_path is None and backup_dir is None and targets.local.enabled:
        raise ConfigError(
            "backupDir is required when targets.local.enabled is true; set backupDir "
            "(or targets.local.path) to the repository folder, or disable the local target"
        )
    if not targets.enabled_names():
        raise ConfigError(
            "no target is enabled in targets; set targets.local.enabled to true (or enable git, s3 or r2)"
        )
    resolved_backup_dir = backup_dir or local_path or ctx.path(_FALLBACK_BACKUP_DIR, "backupDir")

    include = root.strings("include", DEFAULT_INCLUDE, expand="leading")
    exclude = root.strings("exclude", DEFAULT_EXCLUDE, expand="leading")
    compression = _compression(root.raw("compression"), ctx)
    retention = _retention(
        root.section(
            "retention",
            (*_RETENTION_RULES, "within", "keepSafetyDays", "prune", "capturesWithin", "capturesHourlyWithin"),
        )
    )
    notifications = _notifications(root.section("notifications", ("enabled", "onSuccess", "onFailure", "urls")))
    encryption = _encryption(
        root.section(
            "encryption",
            (
                "enabled",
                "method",
                "keyId",
                "recipients",
                "identityFile",
                "passphraseEnv",
                "passphraseCommand",
                "writeOnly",
            ),
        )
    )
    databases = _databases(root.section("databases", ("sqlite", "postgres", "redis", "integrityCheckEvery")), workspace)
    components = _components(root.section("components", ("identity", "memory", "config", "databases")))
    gateway = _gateway(root.section("gateway", ("stop", "start", "timeoutSeconds")))
    hooks_section = root.section("hooks", ("preBackup", "postBackup", "timeoutSeconds"))
    hooks = Hooks(
        pre_backup=hooks_section.optional_string("preBackup"),
        post_backup=hooks_section.optional_string("postBackup"),
        timeout_seconds=_seconds(hooks_section, "hooks.timeoutSeconds", 600.0),
    )
    schedule = _schedule(root.section("schedule", ("every", "at")))

    if source is not None and _holds_secrets(data) and _readable_by_others(source):
        ctx.warnings.append(
            f"config file {source} holds secrets and is readable by others; run chmod 600 {shlex.quote(str(source))}"
        )
    if source is not None and (owner := _other_owner(source)) is not None:
        ctx.warnings.append(
            f"config file {source} belongs to another user (uid {owner}), who could make Phoenix run their commands "
            f"as you (hooks, gateway, passphraseCommand); run chown {os.geteuid()} {shlex.quote(str(source))} "
            "or use a config of your own"
        )
    elif source is not None and _writable_by_others(source):
        ctx.warnings.append(
            f"config file {source} can be changed by other users, who could make Phoenix run their commands as you "
            f"(hooks, gateway, passphraseCommand); run chmod go-w {shlex.quote(str(source))}"
        )
    elif source is not None and (folder := _open_folder(source)) is not None:
        ctx.warnings.append(
            f"config file {source} can be changed by other users: anyone may replace it in {folder}, and make Phoenix "
            f"run their commands as you (hooks, gateway, passphraseCommand); run chmod o-w {shlex.quote(str(folder))} "
            "or move the config"
        )
    return Config(
        source=source,
        workspace=workspace,
        backup_dir=resolved_backup_dir,
        targets=targets,
        include=include,
        exclude=exclude,
        compression=compression,
        retention=retention,
        notifications=notifications,
        encryption=encryption,
        databases=databases,
        components=components,
        gateway=gateway,
        hooks=hooks,
        schedule=schedule,
        warnings=tuple(ctx.warnings),
    )


def _reject_nul(data: object, where: str) -> None:
    """No string of the config may hold a NUL character: no path, command or name can (the
    operating system refuses it, which stopped commands with an internal error). Walked with a
    list, not recursion: a document nested as deep as the JSON decoder allows is still checked."""
    pending: list[tuple[object, str]] = [(data, where)]
    while pending:
        value, here = pending.pop()
        if isinstance(value, str) and "\x00" in value:
            raise ConfigError(f"{here or 'the config'} holds a NUL character (\\u0000); remove it")
        if isinstance(value, dict):
            for key, item in value.items():
                name = str(key).replace("\x00", "\\u0000")
                if name != key:
                    # Else "unknown key" with the raw NUL in the message, shown as nothing or a space.
                    raise ConfigError(f'the key "{name}" in {here or "the config"} holds a NUL character; remove it')
                pending.append((item, f"{here}.{name}" if here else name))
        elif isinstance(value, list):
            pending.extend((item, f"{here}[{index}]") for index, item in enumerate(value))


def _targets(section: _Section) -> Targets:
    local_section = section.section("local", ("enabled", "path", "appendOnly"))
    # No `local` object at all still means a local repository at backupDir, as in the seed.
    local = LocalTarget(
        enabled=local_section.boolean("enabled", True),
        path=local_section.path("path"),
        append_only=local_section.boolean("appendOnly", False),
    )

    git_section = section.section("git", ("enabled", "repo", "branch", "autoCommit", "appendOnly"))
    repo = git_section.string("repo", "")
    git = GitTarget(
        enabled=git_section.boolean("enabled", False),
        repo=git_section.ctx.expand(repo, git_section.field("repo")) if repo else "",
        branch=git_section.string("branch", "main"),
        auto_commit=git_section.boolean("autoCommit", True),
        append_only=git_section.boolean("appendOnly", False),
    )
    if git.enabled and not git.repo:
        raise ConfigError(
            "targets.git.repo is required when targets.git.enabled is true; "
            "set it to a Git URL or path, or disable the target"
        )
    if not git_branch_ok(git.branch):
        raise ConfigError(
            f'targets.git.branch must be a Git branch name such as "main" (got {_got(git.branch)}): '
            'no spaces, control characters, ~ ^ : ? * [ \\, ".." or "@{", no leading "-", "/" or ".", '
            'no trailing "/", "." or ".lock"'
        )

    common = ("enabled", "bucket", "prefix", "endpoint", "region", "accessKeyId", "secretAccessKey", "appendOnly")
    s3_section = section.section("s3", (*common, "storageClass", "objectLock"))
    storage_class = s3_section.string("storageClass", "STANDARD")
    if storage_class not in _S3_STORAGE_CLASSES:
        import difflib

        close = difflib.get_close_matches(storage_class.upper(), _S3_STORAGE_CLASSES, n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise ConfigError(
            f"targets.s3.storageClass must be one of {_quoted_choices(_S3_STORAGE_CLASSES)} "
            f"(got {_got(storage_class)}){hint}"
        )
    s3 = S3Target(
        enabled=s3_section.boolean("enabled", False),
        bucket=s3_section.string("bucket", ""),
        prefix=s3_section.string("prefix", ""),
        storage_class=storage_class,
        region=s3_section.optional_string("region"),
        endpoint=_endpoint(s3_section),
        access_key_id=s3_section.optional_string("accessKeyId"),
        secret_access_key=s3_section.optional_string("secretAccessKey", secret=True),
        append_only=s3_section.boolean("appendOnly", False),
        object_lock=_object_lock(s3_section),
    )
    if s3.object_lock is not None:
        # Retention forbids deleting anyway: Phoenix must not try (forget and prune run elsewhere).
        s3 = dataclasses.replace(s3, append_only=True)
    _check_bucket_and_keys(s3_section, s3.enabled, s3.bucket, s3.access_key_id, s3.secret_access_key)

    r2_section = section.section("r2", (*common, "accountId"))
    r2 = R2Target(
        enabled=r2_section.boolean("enabled", False),
        account_id=r2_section.optional_string("accountId"),
        bucket=r2_section.string("bucket", ""),
        prefix=r2_section.string("prefix", ""),
        endpoint=_endpoint(r2_section),
        region=r2_section.optional_string("region"),
        access_key_id=r2_section.optional_string("accessKeyId"),
        secret_access_key=r2_section.optional_string("secretAccessKey", secret=True),
        append_only=r2_section.boolean("appendOnly", False),
    )
    _check_bucket_and_keys(r2_section, r2.enabled, r2.bucket, r2.access_key_id, r2.secret_access_key)
    # An endpoint replaces the account-derived URL (DESIGN §8), so then the account is not needed.
    if r2.enabled and r2.endpoint is None:
        if r2.account_id is None:
            raise ConfigError(
                "targets.r2.accountId is required when targets.r2.enabled is true; set it to "
                "your Cloudflare account id, set targets.r2.endpoint, or disable the target"
            )
        if not _R2_ACCOUNT.match(r2.account_id):
            raise ConfigError(
                "targets.r2.accountId must be your 32-character Cloudflare account id "
                f"(got {_got(r2.account_id)}); copy it from the Cloudflare dashboard"
            )
    _refuse_shared_storage(s3, r2)
    return Targets(local=local, git=git, s3=s3, r2=r2)


def git_branch_ok(name: str) -> bool:
    """`git check-ref-format --branch`'s rules (git refused such a name only at init or the first
    push, with an error naming no field)."""
    if not name or name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock")):
        return False
    if any(char.isspace() or ord(char) < 32 or ord(char) == 127 or char in "~^:?*[\\" for char in name):
        return False
    if any(bad in name for bad in ("..", "@{", "//", "/.")):
        return False
    return not any(part.endswith(".lock") for part in name.split("/"))


def _storage_place(endpoint: str | None, bucket: str, prefix: str) -> tuple[str, str, str]:
    """Where an S3 or R2 target keeps its objects: (endpoint, bucket, prefix), the endpoint
    spelled one way (lower-case scheme and host, no default port, no trailing slash)."""
    if endpoint is None:
        return "Amazon S3", bucket, prefix.strip("/")  # bucket names are global there: any region
    try:
        parts = urlsplit(endpoint)
        port = parts.port if parts.port not in (None, {"http": 80, "https": 443}.get(parts.scheme)) else None
    except ValueError:
        return endpoint, bucket, prefix.strip("/")
    host = parts.hostname or ""
    host = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")  # IPv6 in brackets
    return f"{parts.scheme.lower()}://{host}{parts.path.rstrip('/')}", bucket, prefix.strip("/")


def _refuse_shared_storage(s3: S3Target, r2: R2Target) -> None:
    """An S3 and an R2 target that reach the same bucket at the same endpoint, one prefix equal to
    or inside the other, would write one repository twice (prune and locks of one interfering
    with the other's): refused at load, as the config is wrong."""
    if not (s3.enabled and r2.enabled):
        return
    r2_endpoint = r2.endpoint or (f"https://{r2.account_id}.r2.cloudflarestorage.com" if r2.account_id else None)
    a = _storage_place(s3.endpoint, s3.bucket, s3.prefix)
    b = _storage_place(r2_endpoint, r2.bucket, r2.prefix)
    if a[:2] != b[:2]:
        return
    inside = a[2] == b[2] or not a[2] or not b[2] or a[2].startswith(b[2] + "/") or b[2].startswith(a[2] + "/")
    if inside:
        raise ConfigError(
            f"targets.s3 (bucket {s3.bucket!r}, prefix {s3.prefix!r}) and targets.r2 (bucket {r2.bucket!r}, prefix "
            f"{r2.prefix!r}) reach the same storage at {redact_url(a[0], port=True)}, one prefix "
            "inside the other, so one repository would be written twice; give one of them another bucket or a "
            "prefix that does not overlap, or disable it"
        )


# S3 allows retention of up to 100 years; a longer one is a typo that would lock data for ever.
_OBJECT_LOCK_MODES: dict[str, ObjectLockMode] = {"governance": "governance", "compliance": "compliance"}
_OBJECT_LOCK_MAX_DAYS = 36500


def _object_lock(section: _Section) -> ObjectLock | None:
    if not section.has("objectLock"):
        return None
    lock = section.section("objectLock", ("mode", "days"))
    if not lock.has("mode") or not lock.has("days"):
        raise ConfigError(
            f'{section.field("objectLock")} needs "mode" ("governance" or "compliance") and "days" (how long each '
            'object is retained), e.g. {"mode": "governance", "days": 30}'
        )
    days = lock.integer("days", 0, 1)
    if days > _OBJECT_LOCK_MAX_DAYS:
        raise ConfigError(f"{lock.field('days')} must be at most {_OBJECT_LOCK_MAX_DAYS} (got {days})")
    return ObjectLock(mode=lock.choice("mode", _OBJECT_LOCK_MODES, "governance"), days=days)


def _endpoint(section: _Section) -> str | None:
    endpoint = section.optional_string("endpoint")
    if endpoint is not None and _scheme(endpoint) not in ("http", "https"):
        # Shown as every URL is: an endpoint may carry a user name and secret.
        raise ConfigError(
            f"{section.field('endpoint')} must be an http:// or https:// URL (got {_got(redact_url(endpoint))})"
        )
    return endpoint


def _scheme(url: str) -> str | None:
    """A URL's scheme; None when it is not a URL at all (an unclosed "[", say)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        return None


def _check_bucket_and_keys(
    section: _Section, enabled: bool, bucket: str, key_id: str | None, secret: str | None
) -> None:
    target = section.where
    if enabled and not bucket:
        raise ConfigError(f"{target}.bucket is required when {target}.enabled is true; set it or disable the target")
    if enabled and not _BUCKET.match(bucket):
        raise ConfigError(
            f"{target}.bucket must be a bucket name of 3 to 63 lowercase letters, digits, "
            f"dots and hyphens (got {_got(bucket)})"
        )
    # One key without the other is always a mistake: the provider chain would not fill the gap.
    if (key_id is None) != (secret is None):
        missing = "secretAccessKey" if secret is None else "accessKeyId"
        present = "accessKeyId" if secret is None else "secretAccessKey"
        raise ConfigError(
            f"{target}.{missing} is required when {target}.{present} is set; "
            "set both or neither (then the environment or provider chain supplies them)"
        )


def _compression(value: object, ctx: _Context) -> Compression:
    if value is None or value is True:
        return Compression()
    if value is False:
        return Compression(enabled=False)
    if isinstance(value, str) and value in _ALGORITHMS:
        return Compression(algorithm=_ALGORITHMS[value])
    if not isinstance(value, dict):
        raise ConfigError(
            f'compression must be true, false, "zstd", "gzip" or {{"algorithm", "level"}} (got {_got(value)})'
        )
    section = _Section(value, "compression", ("enabled", "algorithm", "level"), ctx)
    algorithm = section.choice("algorithm", _ALGORITHMS, "zstd")
    level: int | None = None
    if section.has("level"):
        low, high = _LEVELS[algorithm]
        raw = section.raw("level")
        if not isinstance(raw, int) or isinstance(raw, bool) or not low <= raw <= high:
            raise ConfigError(
                f"compression.level must be an integer from {low} to {high} for {algorithm} (got {_got(raw)})"
            )
        level = raw
    return Compression(enabled=section.boolean("enabled", True), algorithm=algorithm, level=level)


def _retention(section: _Section) -> Retention:
    defaults = Retention()
    within = section.optional_string("within") if section.has("within") else defaults.within
    if within is not None:
        _check_duration(within, "retention.within", 'such as "30d" or "1y6m"')
    return Retention(
        hourly=section.integer("hourly", defaults.hourly, -1),
        daily=section.integer("daily", defaults.daily, -1),
        weekly=section.integer("weekly", defaults.weekly, -1),
        monthly=section.integer("monthly", defaults.monthly, -1),
        yearly=section.integer("yearly", defaults.yearly, -1),
        last=section.integer("last", defaults.last, -1),
        within=within,
        keep_safety_days=_days(section, "keepSafetyDays", defaults.keep_safety_days),
        prune=section.boolean("prune", True),
        captures_within=_duration(section, "capturesWithin", defaults.captures_within),
        captures_hourly_within=_duration(section, "capturesHourlyWithin", defaults.captures_hourly_within),
    )


def _duration(section: _Section, key: str, default: str) -> str:
    value = section.optional_string(key) if section.has(key) else default
    if value is None:
        raise ConfigError(
            f"retention.{key} must be a duration of numbers with units y, m, d or h, "
            f'such as "1d" or "36h" (got {_got(value)})'
        )
    _check_duration(value, f"retention.{key}", 'such as "1d" or "36h"')
    return value


def _check_duration(value: str, name: str, example: str) -> None:
    """The one check of every duration field (restic's syntax): well-formed and at most _MAX_DAYS."""
    if not _DURATION.match(value):
        raise ConfigError(
            f"{name} must be a duration of numbers with units y, m, d or h, {example} (got {_got(value)})"
        )
    factors = {"y": 365.25, "m": 365.25 / 12, "d": 1, "h": 1 / 24}
    parts = re.findall(r"([0-9]+)([ymdh])", value)
    # A number of more than 9 digits is too long in any unit (and int() refuses 4,300 digits).
    if any(len(number.lstrip("0")) > 9 for number, _unit in parts) or (
        sum(int(number) * factors[unit] for number, unit in parts) > _MAX_DAYS
    ):
        raise ConfigError(f"{name} must be at most 1000 years (got {_got(value)}); write a shorter duration")


def _days(section: _Section, key: str, default: int) -> int:
    days = section.integer(key, default, 0)
    if days > _MAX_DAYS:
        raise ConfigError(f"{section.field(key)} must be at most {_MAX_DAYS} days (1000 years) (got {days})")
    return days


def _notifications(section: _Section) -> Notifications:
    urls = section.strings("urls", (), secret=True)
    for index, url in enumerate(urls):
        # Apprise URLs carry tokens, so the value itself is never echoed.
        if "://" not in url:
            raise ConfigError(
                f'notifications.urls[{index}] must be an Apprise URL such as "ntfy://topic"; fix that entry'
            )
    return Notifications(
        enabled=section.boolean("enabled", False),
        on_success=section.choice("onSuccess", _ON_SUCCESS, "silent"),
        on_failure=section.choice("onFailure", _ON_FAILURE, "alert"),
        urls=urls,
    )


def _encryption(section: _Section) -> Encryption:
    recipients = section.strings("recipients", ())
    for index, recipient in enumerate(recipients):
        if not _AGE_RECIPIENT.match(recipient):
            raise ConfigError(
                f'encryption.recipients[{index}] must be an age public key starting with "age1" '
                f"(got {_got(recipient)}); `age-keygen -y KEYFILE` prints it"
            )
    encryption = Encryption(
        enabled=section.boolean("enabled", False),
        method=section.choice("method", _METHODS, "passphrase"),
        key_id=section.optional_string("keyId"),
        recipients=recipients,
        identity_file=section.path("identityFile"),
        passphrase_env=section.env_name("passphraseEnv"),
        passphrase_command=section.optional_string("passphraseCommand", secret=True),
        write_only=section.boolean("writeOnly", False),
    )
    if encryption.write_only and not (encryption.enabled and encryption.method == "age"):
        raise ConfigError(
            'encryption.writeOnly needs encryption.enabled true and encryption.method "age" (the recipients of the '
            "machine you restore on); see docs/write-only.md"
        )
    if encryption.enabled and encryption.method == "gpg" and encryption.key_id is None:
        raise ConfigError(
            'encryption.keyId is required when encryption.method is "gpg"; set it to your GPG '
            "key id or fingerprint (gpg --list-keys), or choose another method"
        )
    if encryption.enabled and encryption.method == "age" and not encryption.recipients:
        raise ConfigError(
            'encryption.recipients is required when encryption.method is "age"; add at least '
            'one age public key ("age1...")'
        )
    return encryption


def _sqlite_glob(ctx: _Context, entry: str, folders: list[str]) -> str:
    """A `databases.sqlite` entry as a glob pattern in which only the glob characters written in
    it count: what `~` and `$NAME` put in is escaped, and so is the home folder's or workspace's
    path written out; "" when no glob character is left, for a path taken as written."""
    literal = ctx.expand(entry, "")
    pattern = ctx.expand(entry, "", glob.escape)
    for folder in sorted(folders, key=len, reverse=True):
        if literal.startswith(folder.rstrip("/") + "/") and pattern.startswith(folder.rstrip("/") + "/"):
            pattern = glob.escape(folder.rstrip("/")) + pattern[len(folder.rstrip("/")) :]
            break
    return "" if pattern == glob.escape(literal) else pattern


def _databases(section: _Section, workspace: Path) -> Databases:
    sqlite = section.strings("sqlite", DEFAULT_SQLITE, expand="all")
    folders = [section.ctx.home, str(workspace)]
    globs = tuple(_sqlite_glob(section.ctx, entry, folders) for entry in section.strings("sqlite", DEFAULT_SQLITE))
    postgres: list[PostgresDb] = []
    for item in section.sections(
        "postgres",
        (
            "name",
            "dsn",
            "host",
            "port",
            "database",
            "user",
            "passwordEnv",
            "pgDump",
            "agentId",
        ),
    ):
        dsn = item.optional_string("dsn", secret=True)
        if dsn is not None:
            clashing = [key for key in ("host", "port", "database", "user") if item.has(key)]
            if clashing:
                raise ConfigError(
                    f"{item.where} sets both dsn and {clashing[0]}; use dsn alone or host/port/database/user"
                )
        database = item.optional_string("database")
        if dsn is None and database is None:
            raise ConfigError(f"{item.where}.database is required when {item.where}.dsn is not set; set one of them")
        port = item.integer("port", 5433, 1)
        if port > 65535:
            raise ConfigError(f"{item.field('port')} must be a port from 1 to 65535 (got {port})")
        postgres.append(
            PostgresDb(
                name=_db_name(item),
                dsn=dsn,
                host=item.string("host", "localhost") or "localhost",
                port=port,
                database=database,
                user=item.optional_string("user"),
                password_env=item.env_name("passwordEnv"),
                # A bare program name is looked up on PATH later; only a path is made absolute.
                pg_dump=_program(item, "pgDump"),
                agent_id=item.optional_string("agentId"),
            )
        )
    redis: list[RedisDb] = []
    for item in section.sections("redis", ("name", "url", "match")):
        url = item.string("url", "redis://localhost:6380/0", secret=True)
        if _scheme(url) not in _REDIS_SCHEMES:
            raise ConfigError(f"{item.field('url')} must be a redis://, rediss:// or unix:// URL; fix it")
        match = item.string("match", "*")
        if not match:
            raise ConfigError(f'{item.field("match")} must not be empty; use "*" for every key')
        redis.append(RedisDb(name=_db_name(item), url=url, match=match))
    for kind, names in (
        ("postgres", [db.name for db in postgres]),
        ("redis", [db.name for db in redis]),
    ):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(
                f'databases.{kind} names the database "{duplicates[0]}" twice; give each entry a unique name'
            )
    every = section.string("integrityCheckEvery", Databases.integrity_check_every)
    _check_duration(every, "databases.integrityCheckEvery", 'such as "24h" or "7d" ("0h": at every backup)')
    return Databases(
        sqlite=sqlite, sqlite_globs=globs, postgres=tuple(postgres), redis=tuple(redis), integrity_check_every=every
    )


def _program(item: _Section, key: str) -> Path | None:
    text = item.string(key, "")
    if not text:
        return None
    expanded = item.ctx.expand(text, item.field(key))
    # A bare program name ("pg_dump-17") is looked up on PATH when run; only a path is resolved.
    return item.ctx.resolve(expanded) if "/" in expanded else Path(expanded)


def _db_name(item: _Section) -> str:
    name = item.string("name", "")
    if not name:
        raise ConfigError(f"{item.field('name')} is required; give the database a short name")
    # "." and ".." would escape the database's folder in a snapshot.
    if not _DB_NAME.match(name) or set(name) == {"."}:
        raise ConfigError(f"{item.field('name')} must use only letters, digits, '_', '.' and '-' (got {_got(name)})")
    # The name is a folder of the snapshot (postgres/NAME/): a longer one stopped every backup at
    # the snapshot writer's guard, whose fix (`exclude`) does not apply to a database.
    if len(name) > 255:
        raise ConfigError(f"{item.field('name')} must be at most 255 characters (got {len(name)}); give a shorter name")
    return name


def _components(section: _Section) -> Components:
    if section.has("databases"):
        raise ConfigError(
            "components.databases cannot be set because it is always every configured "
            "database; list the databases under databases instead"
        )
    return Components(
        identity=section.strings("identity", DEFAULT_IDENTITY, expand="leading"),
        memory=section.strings("memory", DEFAULT_MEMORY, expand="leading"),
        config=section.strings("config", DEFAULT_CONFIG_PATHS, expand="leading"),
    )


def _gateway(section: _Section) -> Gateway:
    return Gateway(
        stop=section.optional_string("stop"),
        start=section.optional_string("start"),
        timeout_seconds=_seconds(section, "gateway.timeoutSeconds", 60.0),
    )


def _seconds(section: _Section, name: str, default: float) -> float:
    """`timeoutSeconds` of a section: a number of seconds > 0."""
    value = section.raw("timeoutSeconds")
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0 (got {_got(value)})")
    return float(value)


def _schedule(section: _Section) -> Schedule:
    every = section.string("every", "daily")
    at = section.optional_string("at")
    is_word = every in _SCHEDULE_WORDS
    cron_fields = every.split()
    if not is_word and not (len(cron_fields) == 5 and all(_CRON_FIELD.match(part) for part in cron_fields)):
        raise ConfigError(
            f'schedule.every must be "hourly", "daily", "weekly" or a 5-field cron expression (got {_got(every)})'
        )
    if at is not None:
        if every not in ("daily", "weekly"):
            raise ConfigError(
                'schedule.at only applies when schedule.every is "daily" or "weekly"; '
                "remove it or put the time into the cron expression"
            )
        if not _TIME_OF_DAY.match(at):
            raise ConfigError(f'schedule.at must be a time "HH:MM" such as "02:00" (got {_got(at)})')
    return Schedule(every=every, at=at)


def _holds_secrets(data: Mapping[str, object]) -> bool:
    """Does the config file itself hold a secret: a key, a password in a URL or DSN, a Git URL's
    token, an Apprise URL (its token is part of it), or a command that prints the passphrase?"""
    targets = data.get("targets")
    if isinstance(targets, dict):
        for name in ("s3", "r2"):
            target = targets.get(name)
            if isinstance(target, dict) and target.get("secretAccessKey"):
                return True
        git = targets.get("git")
        repo = git.get("repo") if isinstance(git, dict) else None
        if isinstance(repo, str) and _url_credentials(repo):
            return True
    databases = data.get("databases")
    if isinstance(databases, dict):
        for entry in databases.get("postgres") or []:
            dsn = entry.get("dsn") if isinstance(entry, dict) else None
            if isinstance(dsn, str) and (_url_password(dsn) or _CONNINFO_PASSWORD.search(dsn)):
                return True
        for entry in databases.get("redis") or []:
            url = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(url, str) and _url_password(url):
                return True
    notifications = data.get("notifications")
    if isinstance(notifications, dict) and any(isinstance(u, str) and u for u in notifications.get("urls") or []):
        return True
    encryption = data.get("encryption")
    return isinstance(encryption, dict) and bool(encryption.get("passphraseCommand"))


def _url_credentials(url: str) -> bool:
    """A user name or password in an http(s) or ftp(s) URL (a Git host's token may stand in either
    place; ssh's `git@` names an account, not a secret)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https", "ftp", "ftps") and (
            parts.username is not None or parts.password is not None
        )
    except ValueError:
        return False


def _url_password(url: str) -> bool:
    """A password in a database URL: its user info, or (libpq and redis-py take it there too) its query."""
    try:
        parts = urlsplit(url)
        return bool(parts.password) or any(k.lower() == "password" for k, _v in parse_qsl(parts.query))
    except ValueError:
        return False


def _writable_by_others(path: Path) -> bool:
    return _mode_has(path, stat.S_IWGRP | stat.S_IWOTH)


def _other_owner(path: Path) -> int | None:
    """The owner of the config when it is neither this user nor root: whatever its mode, they can
    change it (root running a config a user owns would run that user's hooks as root)."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return None
    return uid if uid not in (os.geteuid(), 0) else None


def _open_folder(path: Path) -> Path | None:
    """The folder holding the config (or the file a link names) when anyone may rename entries in
    it: world-writable and not sticky (as /tmp is)."""
    for folder in dict.fromkeys((path.parent, path.resolve().parent)):
        try:
            mode = os.stat(folder).st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            return folder
    return None


def _readable_by_others(path: Path) -> bool:
    return _mode_has(path, stat.S_IRGRP | stat.S_IROTH)


def _mode_has(path: Path, bits: int) -> bool:
    try:
        return bool(os.stat(path).st_mode & bits)
    except OSError:
        return False
