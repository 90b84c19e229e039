"""`phx doctor`: is this machine ready to back up and restore? One line per check, with the fix.

Checks, in order: the config; the workspace and every configured database; free disk space for
the repository and the cache; the tools the config needs (gpg, git, and pg_dump against each
configured PostgreSQL server); credentials; each target reachable and writable (a probe object
written, read back and deleted); stale locks; the age of the last successful backup and of the
last restore drill.

Each check is `ok`, `fail` (✗, with the fix; the command exits 1) or `warn` (!, advice that does
not fail the run, such as "no restore drill yet"). Database engines plug their own checks into
`DATABASE_CHECKS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import platformdirs

from phoenix_backup.config import Config, find_config_path
from phoenix_backup.config.model import PostgresDb
from phoenix_backup.errors import (
    ConfigNotAuthenticated,
    ExitStatus,
    KeyChanged,
    MissingCredentials,
    PhoenixError,
    RepositoryNotFound,
    SourceError,
    ToolMissing,
    WrongPassphrase,
)
from phoenix_backup.ops.context import (
    DIAGNOSIS_SECONDS,
    Environment,
    given_passphrase,
    load,
    open_repository,
    with_given,
)
from phoenix_backup.ops.drill import drills_dir, latest_reports
from phoenix_backup.ops.safety import SAFETY_SCOPE
from phoenix_backup.ops.selection import key_files_in_workspace, repository_in_workspace, workspace_in_own_folder
from phoenix_backup.repo import retired
from phoenix_backup.repo.crypto import zstandard_module
from phoenix_backup.repo.locks import HeldLock, unreadable_lock_fix
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sinks import postgres_roles
from phoenix_backup.sources.files import regular_head
from phoenix_backup.sources.scope import configured_databases, default_databases, glob_hint
from phoenix_backup.sources.sqlite import FREE_SPACE_MARGIN, planted_companion
from phoenix_backup.state import (
    failed_parts_text,
    forgotten_here,
    forgotten_loss,
    forgotten_text,
    full_backup_problem,
    future_success_problem,
    last_snapshot_on,
    load_state,
    state_path,
)
from phoenix_backup.units import human_size

if TYPE_CHECKING:
    from phoenix_backup.sources.postgres import PgConn

Status = Literal["ok", "fail", "warn"]

# A repository needs room for at least this much, whatever the databases' size.
MIN_REPOSITORY_FREE = 64 * 1024 * 1024
# The last backup is overdue after twice its schedule's interval.
INTERVALS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 31 * 86400}
# A restore drill a month, as seed 001 asks; older than this earns a warning.
DRILL_MAX_AGE = 35 * 86400
TOOL_TIMEOUT = 20


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.status != "fail",
            "message": self.message,
            "fix": self.fix,
        }


@dataclass
class DoctorResult:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK if self.ok else ExitStatus.FAILURE

    def add(self, name: str, status: Status, message: str, fix: str | None = None) -> None:
        self.checks.append(Check(name, status, message, fix))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": sum(1 for c in self.checks if c.status == "fail"),
            "warnings": sum(1 for c in self.checks if c.status == "warn"),
            "checks": [c.to_json() for c in self.checks],
        }


def doctor(envx: Environment, config_path: str | None = None) -> DoctorResult:
    result = DoctorResult()
    cfg = _config(envx, config_path, result)
    if cfg is None:
        return result
    _workspace(cfg, result)
    _repository_place(cfg, envx, result)
    _sqlite(cfg, envx, result)
    for check in DATABASE_CHECKS.values():
        check(cfg, envx, result)
    _disk(cfg, envx, result)
    _file_size_limit(result)
    _tools(cfg, envx, result)
    # A remote target that does not answer is said in seconds, not after a backup's patience
    # (60 s a request, retried), and the targets are checked at the same time.
    # (`--answer-timeout`: a slow link's own deadline.)
    answer = envx.answer_seconds or DIAGNOSIS_SECONDS
    envx = _credentials(cfg, dataclasses.replace(envx, answer_seconds=answer), result)
    repo = _targets(cfg, envx, result)
    try:
        _locks(repo, result)
        _last_backup(cfg, envx, result, repo)
    finally:
        if repo is not None:
            repo.backend.close()
    _schedule(envx, result)
    _last_drill(envx, result)
    _postgres_leftovers(result)
    return result


# --------------------------------------------------------------------------------------------
# Config, workspace, databases
# --------------------------------------------------------------------------------------------


def _config(envx: Environment, config_path: str | None, result: DoctorResult) -> Config | None:
    try:
        path = find_config_path(config_path, envx.env)
        cfg = load(envx, config_path)
    except PhoenixError as exc:
        message, _, fix = str(exc).partition("; ")
        result.add("config", "fail", message, fix or "fix the config file")
        return None
    result.add("config", "ok", f"{path} is valid")
    for warning in cfg.warnings:
        message, _, fix = warning.partition("; ")
        result.add("config", "warn", message, fix or None)
    return cfg


def _where(cfg: Config) -> str:
    return str(cfg.source) if cfg.source else "the config"


def _workspace(cfg: Config, result: DoctorResult) -> None:
    ws = cfg.workspace
    fix = f'create it, or set "workspace" in {_where(cfg)}'
    if not ws.exists():
        result.add("workspace", "fail", f"{ws} does not exist", fix)
    elif not ws.is_dir():
        result.add("workspace", "fail", f"{ws} is not a folder", fix)
    elif not os.access(ws, os.R_OK | os.X_OK):
        result.add("workspace", "fail", f"{ws} is not readable by this user", f"check the owner and mode of {ws}")
    else:
        result.add("workspace", "ok", f"{ws} exists and is readable")


def _repository_place(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    """The error a backup gives of a workspace inside a folder it never saves, and its warning of
    a local repository inside the workspace, said the same way."""
    holder = workspace_in_own_folder(cfg, envx.env)
    if holder is not None:
        message, _, fix = holder.partition("; ")
        result.add("workspace", "fail", message, fix)
        return
    inside = repository_in_workspace(cfg, envx.home)
    if inside is not None:
        message, _, fix = inside.rpartition("; ")
        result.add("repository", "warn", message, fix)
    for _path, warning in key_files_in_workspace(cfg, envx.env):
        message, _, fix = warning.rpartition("; ")
        result.add("key file", "warn", message, fix)


def _sqlite(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    defaults = default_databases(envx.home)
    for path in configured_databases(cfg):
        name = f"database {path}"
        if not path.exists():
            # The backup skips the ArgentOS default stores that do not exist; only a database the
            # user named is missed.
            if path not in defaults:
                result.add(
                    name,
                    "fail",
                    f"does not exist{glob_hint(cfg, envx.home, str(path))}",
                    f"create it, or remove it from databases.sqlite in {_where(cfg)}",
                )
            continue
        try:
            header = regular_head(path, 16)  # never waits on a FIFO planted in the database's place
        except OSError as exc:
            result.add(name, "fail", f"cannot be read ({exc.strerror})", f"check the owner and mode of {path}")
            continue
        if header is None:
            result.add(
                name,
                "fail",
                "is not a regular file (a named pipe, a device or a folder), so it is no SQLite database",
                f"remove it and put the database back, or fix the path in databases.sqlite in {_where(cfg)}",
            )
            continue
        if header != b"SQLite format 3\x00" and path.stat().st_size > 0:
            result.add(name, "fail", "is not a SQLite database", f"fix the path in databases.sqlite in {_where(cfg)}")
            continue
        planted = planted_companion(os.path.realpath(path))
        if planted is not None:  # the backup refuses it the same way
            result.add(name, "fail", planted)
            continue
        result.add(name, "ok", f"readable SQLite database ({human_size(path.stat().st_size)})")


def check_postgres(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    """For each configured PostgreSQL database: pg_dump present, its version, and a schema-only
    dump of no schema against the server, which connects and applies pg_dump's own version check
    (it refuses a server newer than itself)."""
    for i, db in enumerate(cfg.databases.postgres):
        where = f"databases.postgres[{i}] ({db.name})"
        if db.agent_id is not None:
            # One agent's rows are read over Phoenix's own connection, never by pg_dump, whose
            # session SETs (search_path '', row_security off) would go, between its statements, to
            # the other clients of a transaction pooler in front of the server.
            _postgres_agent_server(db, where, envx, result)
            continue
        program = str(db.pg_dump) if db.pg_dump else shutil.which("pg_dump", path=envx.env.get("PATH"))
        if not program or not (os.path.isfile(program) and os.access(program, os.X_OK)):
            result.add(
                "tool pg_dump",
                "fail",
                f"pg_dump not found (needed for {where})",
                "install the PostgreSQL client of the server's version or newer (apt-get install postgresql-client) "
                f"or set pgDump in {where}",
            )
            continue
        version = _version([program, "--version"], envx)
        result.add("tool pg_dump", "ok", f"{program}: {version}")
        _postgres_server(db, where, program, version, envx, result)


def _postgres_conn(db: PostgresDb, where: str, envx: Environment, result: DoctorResult) -> PgConn | None:
    """The entry's connection, or None with the failure said (its password's variable unset, an
    entry that names no connection)."""
    if db.password_env and not envx.env.get(db.password_env):
        result.add(
            f"postgres {db.name}", "fail", f"{db.password_env} is not set", f"export {db.password_env} ({where})"
        )
        return None
    from phoenix_backup.sources.postgres import connection_for

    try:
        return connection_for(db, envx.env)
    except SourceError as exc:
        result.add(f"postgres {db.name}", "fail", str(exc), f"fix {where}")
        return None


def _postgres_agent_server(db: PostgresDb, where: str, envx: Environment, result: DoctorResult) -> None:
    """An agent-scoped entry: the server answers Phoenix's own connection (which sets nothing on
    the server session)."""
    conn = _postgres_conn(db, where, envx, result)
    if conn is None:
        return
    import psycopg

    from phoenix_backup.sources.postgres import pg_reason, server_version

    server = f"{db.name} at {conn.where}"
    try:
        with conn.connect() as con:
            version, _ = server_version(con)
    except (SourceError, psycopg.Error) as exc:
        reason = str(exc) if isinstance(exc, SourceError) else f"cannot read {server}: {pg_reason(exc)}"
        fix = f"start the server, or fix host/port/database/user and passwordEnv in {where}"
        result.add(f"postgres {db.name}", "fail", reason, fix)
        return
    result.add(
        f"postgres {db.name}",
        "ok",
        f"{server} reachable (PostgreSQL {version}); agent {db.agent_id}'s rows are read over this connection, "
        "without pg_dump",
    )


def _postgres_server(
    db: PostgresDb, where: str, program: str, version: str, envx: Environment, result: DoctorResult
) -> None:
    # The connection string without its password (which goes into PGPASSWORD): a command line is
    # readable by every local user.
    conn = _postgres_conn(db, where, envx, result)
    if conn is None:
        return
    env = conn.tool_env()
    env["PGCONNECT_TIMEOUT"] = envx.env.get("PGCONNECT_TIMEOUT", "5")
    # Every schema excluded: pg_dump connects, applies its version check and reads the catalogs,
    # and dumps nothing (a pattern matching no table is refused: "no matching tables were found").
    args = [program, "--schema-only", "--exclude-schema=*", f"--dbname={conn.conninfo}"]
    server = f"{db.name} at {conn.where}"
    try:
        proc = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        result.add(f"postgres {db.name}", "fail", f"pg_dump did not answer: {exc}", f"check {where}")
        return
    if proc.returncode == 0:
        result.add(f"postgres {db.name}", "ok", f"{server} reachable; {version} can dump it")
        return
    err = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    # The first line says what failed ("connection to server at ... failed: Connection refused");
    # later lines are libpq's hints.
    detail = err[0] if err else f"exit {proc.returncode}"
    detail = re.sub(r"^pg_dump: (error: )?", "", detail)
    if "version mismatch" in proc.stderr:
        result.add(
            f"postgres {db.name}",
            "fail",
            f"{version} is older than the server {server}: {detail}",
            f"install pg_dump of the server's version or newer, or set pgDump in {where}",
        )
    else:
        result.add(
            f"postgres {db.name}",
            "fail",
            f"cannot dump {server}: {detail}",
            f"start the server, or fix host/port/database/user and passwordEnv in {where}",
        )


def _redis(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    """For each configured Redis database: the server answers as a backup connects to it (PING),
    and its version."""
    import redis as redis_lib

    from phoenix_backup.sources.redis import connect, server_info, where

    for db in cfg.databases.redis:
        try:
            client = connect(db)
        except SourceError as exc:
            result.add(f"redis {db.name}", "fail", str(exc), "start the server, or fix its url in databases.redis")
            continue
        try:
            version = server_info(client).get("redis_version", "?")
        except redis_lib.RedisError as exc:  # it answered PING: its INFO is only a detail
            version = f"? ({type(exc).__name__})"
        finally:
            client.close()
        result.add(f"redis {db.name}", "ok", f"{where(db.url)} reachable (Redis {version})")


# Checks per database engine beyond SQLite. PostgreSQL and Redis support replace or extend these.
DATABASE_CHECKS: dict[str, Callable[[Config, Environment, DoctorResult], None]] = {
    "postgres": check_postgres,
    "redis": _redis,
}


# --------------------------------------------------------------------------------------------
# Disk space and tools
# --------------------------------------------------------------------------------------------


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unwritable_folder(path: Path) -> str | None:
    """Why a backup cannot create or write the folder `path` (a file in its place or in its
    way, a read-only mount, a mode that forbids it), or None. Nothing is created: `path` may not
    exist yet, and a backup makes it."""
    found = _existing(path)
    if not found.is_dir():
        what = f"{found} is a file, not a folder" + ("" if found == path else f", on the way to {path}")
        return f"the cache folder cannot be created: {what}"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"the cache folder {path} cannot be written ({found} is read-only for this user)"
    return None


def _database_bytes(cfg: Config) -> int:
    total = 0
    for path in configured_databases(cfg):
        for p in (path, Path(f"{path}-wal")):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


def _disk(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    dbs = _database_bytes(cfg)
    places: list[tuple[str, Path, int, str]] = []
    if cfg.targets.local.enabled:
        places.append(
            (
                "disk (repository)",
                cfg.repository_path,
                max(MIN_REPOSITORY_FREE, dbs),
                "free some space there or move the repository (targets.local.path)",
            )
        )
    cache = Path(envx.env.get("PHX_CACHE_DIR") or platformdirs.user_cache_dir("phoenix"))
    places.append(
        (
            "disk (cache)",
            cache,
            FREE_SPACE_MARGIN,
            "free some space there, or set PHX_CACHE_DIR (or XDG_CACHE_HOME) to a larger disk",
        )
    )
    for name, path, need, fix in places:
        if name == "disk (cache)" and (unwritable := _unwritable_folder(path)) is not None:
            result.add("cache", "fail", unwritable, "set PHX_CACHE_DIR (or XDG_CACHE_HOME) to a writable folder")
        try:
            free = shutil.disk_usage(_existing(path)).free
        except OSError as exc:
            result.add(name, "fail", f"cannot read the free space of {path} ({exc.strerror})", fix)
            continue
        if free < need:
            result.add(
                name,
                "fail",
                f"only {human_size(free)} free for {path}; a backup needs about {human_size(need)} there",
                fix,
            )
        else:
            result.add(name, "ok", f"{human_size(free)} free for {path}")


def _file_size_limit(result: DoctorResult) -> None:
    """A file size limit on this process (`ulimit -f`, systemd's `LimitFSIZE=`) below a data
    pack's size: a backup with that much new data stops at its first full pack, while the free
    space checks above pass."""
    import resource

    from phoenix_backup.repo.pack import DATA_PACK_TARGET

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and limit < 2 * DATA_PACK_TARGET:
        result.add(
            "file size limit",
            "fail",
            f"this process may write files of at most {human_size(limit)} (`ulimit -f`), less than a data pack "
            f"({human_size(DATA_PACK_TARGET)} and more): a backup of that much new data fails",
            "raise it (`ulimit -f unlimited`; in a systemd unit, `LimitFSIZE=infinity`) where phx runs",
        )


def _version(args: list[str], envx: Environment) -> str:
    try:
        proc = subprocess.run(
            args, env=dict(envx.env), capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"version unknown ({exc})"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "version unknown"


def _tools(cfg: Config, envx: Environment, result: DoctorResult) -> None:
    path = envx.env.get("PATH")
    wanted = [
        (
            "gpg",
            cfg.encryption.enabled and cfg.encryption.method == "gpg",
            "encryption.method is gpg",
            "install GnuPG (apt-get install gnupg)",
        ),
        ("git", cfg.targets.git.enabled, "targets.git is enabled", "install Git (apt-get install git)"),
    ]
    for tool, needed, why, fix in wanted:
        program = shutil.which(tool, path=path)
        if program is None:
            if needed:
                result.add(f"tool {tool}", "fail", f"{tool} not found ({why})", fix)
            continue
        result.add(f"tool {tool}", "ok", f"{program}: {_version([program, '--version'], envx)}")
    # zstandard is loaded at its first use (issue 20), not at start-up, where one that cannot be
    # loaded stopped every command: the doctor loads it, or a broken install would pass.
    try:
        zstandard_module()
    except ToolMissing as exc:
        result.add("package zstandard", "fail", str(exc))


# --------------------------------------------------------------------------------------------
# Credentials, targets, locks
# --------------------------------------------------------------------------------------------


def _credentials(cfg: Config, envx: Environment, result: DoctorResult) -> Environment:
    """Credential sources present (the proof, the first target's repository opening, is
    `_open_first`). Returns the environment to open the targets with (a passphrase typed at the
    prompt is asked once)."""
    enc = cfg.encryption
    if enc.enabled and enc.method == "passphrase":
        try:
            given = given_passphrase(cfg, envx)
            if given is not None:
                envx = with_given(envx, given)
            else:
                result.add(
                    "credentials",
                    "fail",
                    "encryption is on and no passphrase is available",
                    "set PHX_PASSPHRASE or PHX_PASSPHRASE_FILE, or encryption.passphraseEnv/passphraseCommand",
                )
        except PhoenixError as exc:
            message, _, fix = str(exc).partition("; ")
            result.add("credentials", "fail", message, fix or None)
    if (
        enc.enabled
        and enc.method == "age"
        and enc.identity_file is not None
        and not os.access(enc.identity_file, os.R_OK)
    ):
        result.add(
            "credentials",
            "fail",
            f"the age identity file {enc.identity_file} cannot be read",
            "fix encryption.identityFile (a file of AGE-SECRET-KEY-1... lines)",
        )
    for name, key_id, secret in (
        ("s3", cfg.targets.s3.access_key_id, cfg.targets.s3.secret_access_key),
        ("r2", cfg.targets.r2.access_key_id, cfg.targets.r2.secret_access_key),
    ):
        if name in cfg.targets.enabled_names():
            _cloud_credentials(name, key_id, secret, envx, result)
    return envx


def _open_first(
    cfg: Config, envx: Environment, result: DoctorResult, said: bool
) -> tuple[Repository | None, PhoenixError | None]:
    """The proof of the credentials: the first target's repository opens. Returns it, or the
    error its target check reports (`said`: a credentials failure was reported already)."""
    first = cfg.targets.enabled_names()[0]
    try:
        repo = open_repository(cfg, envx, target=first)
    except RepositoryNotFound as exc:
        return None, exc  # the target check says so, with the fix
    except (MissingCredentials, WrongPassphrase) as exc:
        message, _, fix = str(exc).partition("; ")
        if not said:
            result.add("credentials", "fail", message, fix or None)
        return None, exc
    except (KeyChanged, ConfigNotAuthenticated) as exc:
        message, _, fix = str(exc).partition("; ")
        result.add("key", "fail", message, fix or None)
        return None, exc
    except PhoenixError as exc:
        return None, exc  # reported by the target check
    if not repo.can_read:
        result.add(
            "credentials",
            "ok",
            f"this machine backs up the write-only repository of target {first} with its write key and cannot "
            "read it (its identity is on another machine)",
        )
        result.add("key", "ok", f"repository {repo.config.id[:8]} is authenticated by this machine's write key")
        return repo, None
    slot = repo.opened_with or "?"
    result.add("credentials", "ok", f"the repository of target {first} opens (key slot {slot[:8]})")
    result.add("key", "ok", f"repository {repo.config.id[:8]} has the key this machine trusts: {repo.fingerprint}")
    return repo, None


def _cloud_credentials(
    name: str, key_id: str | None, secret: str | None, envx: Environment, result: DoctorResult
) -> None:
    env = envx.env
    if key_id and secret:
        source = "the config"
    elif env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        source = "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    elif env.get("AWS_PROFILE"):
        source = f"the AWS profile {env['AWS_PROFILE']}"
    elif (Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or envx.home / ".aws" / "credentials")).is_file():
        source = "the AWS credentials file"
    elif env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        source = "the environment's web identity or container role"
    else:
        result.add(
            f"credentials {name}",
            "fail",
            f"no credentials for targets.{name}",
            f"set targets.{name}.accessKeyId/secretAccessKey, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a profile",
        )
        return
    result.add(f"credentials {name}", "ok", f"credentials for targets.{name} from {source}")


def _targets(cfg: Config, envx: Environment, result: DoctorResult) -> Repository | None:
    """Each target reachable and writable, all at the same time (one that does not answer costs
    DIAGNOSIS_SECONDS, not that times the targets); the first one's opening is the proof of the
    credentials. Returns the first target's repository (the caller closes it), or None."""
    names = cfg.targets.enabled_names()
    if not names:
        result.add("targets", "fail", "no target is enabled", f"enable targets.local (or another) in {_where(cfg)}")
        return None
    said = any(c.name == "credentials" and c.status == "fail" for c in result.checks)
    parts = [DoctorResult() for _ in names]
    first: list[Repository | None] = [None]
    refused = [False for _ in names]  # a target whose repository the passphrase did not open

    def check(i: int, name: str) -> None:
        if i == 0:  # a prompt (an age identity) may be asked here, once
            own = dataclasses.replace(envx)
            first[0], failure = _open_first(cfg, own, parts[0], said)
            _target(cfg, own, parts[0], name, first[0], failure)
        else:  # never asks: a passphrase typed was asked once, before
            quiet = dataclasses.replace(envx, interactive=False, prompt=None)
            refused[i] = _target(cfg, quiet, parts[i], name, None, said_after=True)

    try:
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="doctor-target") as pool:
            for done in [pool.submit(check, i, name) for i, name in enumerate(names)]:
                done.result()
    except BaseException:
        if first[0] is not None:
            first[0].backend.close()
        raise
    for i, name in enumerate(names):
        if refused[i] and first[0] is not None:
            # The passphrase opened the first target: this one holds another repository (another
            # machine's, or under another passphrase), and every backup fails on it.
            parts[i].add(
                f"target {name}",
                "fail",
                f"the passphrase that opens target {names[0]} does not open the repository on target {name}: it "
                "holds another repository, or one with another passphrase",
                f"point targets.{name} at this machine's repository (an empty place: the next backup or `phx sync` "
                "copies it there), or add this passphrase to that repository (`phx key add`)",
            )
        elif refused[i]:
            parts[i].add(f"target {name}", "warn", _NOT_PROBED)
        result.checks += parts[i].checks
    return first[0]


_NOT_PROBED = "not probed: the repository cannot be opened without its key (see credentials)"


def _target(
    cfg: Config,
    envx: Environment,
    result: DoctorResult,
    name: str,
    repo: Repository | None,
    failure: PhoenixError | None = None,
    said_after: bool = False,
) -> bool:
    """One target: its repository opens (`repo`, opened already; `failure`, why it did not), a
    probe object is written, read back and deleted, and an append-only target's protection.
    True when a wrong passphrase refused it, said by the caller then when `said_after`."""
    check = f"target {name}"
    opened = repo is None
    if repo is None:
        try:
            if failure is not None:
                raise failure
            repo = open_repository(cfg, envx, target=name)
        except RepositoryNotFound as exc:
            # Its fix names the disk that may not be mounted: only `phx init` creates it.
            message, _, fix = str(exc).partition("; ")
            result.add(check, "fail", message, f"{fix}, or fix the target's path")
            return False
        except WrongPassphrase:
            if not said_after:
                result.add(check, "warn", _NOT_PROBED)
            return True
        except MissingCredentials:
            result.add(check, "warn", _NOT_PROBED)
            return False
        except PhoenixError as exc:
            message, _, fix = str(exc).partition("; ")
            result.add(check, "fail", message, fix or "check the target's settings")
            return False
    try:
        probe(repo, check, result)
        if repo.backend.append_only:
            _protection(repo, check, result)
    except PhoenixError as exc:  # a target that stops answering half-way
        message, _, fix = str(exc).partition("; ")
        result.add(check, "fail", message, fix or "check the target's settings")
    finally:
        if opened:
            repo.backend.close()
    return False


def _protection(repo: Repository, check: str, result: DoctorResult) -> None:
    """An append-only target: what the store itself enforces against these credentials."""
    try:
        found = repo.backend.protection()
    except PhoenixError as exc:
        message, _, fix = str(exc).partition("; ")
        result.add(f"{check} append-only", "fail", message, fix or None)
        return
    status: Status = "ok" if found.enforced else ("fail" if found.enforced is False else "warn")
    result.add(f"{check} append-only", status, found.message, found.fix)


def probe(repo: Repository, check: str, result: DoctorResult) -> None:
    """Write a probe object, read it back, delete it. The probe is a genuine shared lock (sealed,
    naming this process), so a backup running at the same moment is not disturbed by it, and a
    probe left behind by a killed doctor is removed like any dead process's lock."""
    name = f"locks/{secrets.token_hex(16)}"
    lock = HeldLock(repo.locks, name, False, "doctor (probe)")
    started = time.monotonic()
    where = repo.backend.location
    try:
        lock.write()
    except PhoenixError as exc:
        message, _, fix = str(exc).partition("; ")
        result.add(check, "fail", f"{where} is not writable: {message}", fix or f"check the owner and mode of {where}")
        return
    read_back: str | None = None
    try:
        info = repo.locks.read(name)
        if info.pid != os.getpid() or info.command != lock.command:
            read_back = "it differs from what was written"
    except PhoenixError as exc:
        read_back = str(exc)
    try:
        lock.release()
    except PhoenixError as exc:
        result.add(check, "fail", f"{where}: the probe object cannot be deleted: {exc}", f"check {where}")
        return
    if read_back is not None:
        result.add(check, "fail", f"{where}: a probe object written there does not read back: {read_back}")
        return
    if repo.backend.stat(name) is not None:
        result.add(check, "fail", f"{where}: the probe object is still there after deleting it", f"check {where}")
        return
    ms = (time.monotonic() - started) * 1000
    result.add(check, "ok", f"{where} reachable and writable (probe written, read back, deleted in {ms:.0f} ms)")


def _locks(repo: Repository | None, result: DoctorResult) -> None:
    if repo is None:
        return
    now = time.time()
    try:
        locks = repo.locks.all()
    except PhoenixError as exc:
        result.add("locks", "fail", f"cannot list the locks: {exc}")
        return
    try:
        # Judging a lock stale on the store's clock may write, stat and remove a probe lock there.
        old = {lk.name for lk in locks if repo.locks.stale(lk, now)}
    except PhoenixError as exc:
        result.add(
            "locks", "fail", f"cannot read the store's clock to judge the locks: {exc}", "run `phx doctor` again"
        )
        return
    stale = [lk for lk in locks if not lk.readable or lk.process_gone() or lk.name in old]
    for lk in stale:
        if not lk.readable:  # it blocks every command until it is removed
            if lk.name in old:
                fix = "`phx unlock` removes it"
            elif repo.locks.undated(lk, now):
                fix = repo.locks.undated_reason(lk, now)
            else:
                fix = unreadable_lock_fix(lk)
            result.add("locks", "fail", lk.describe(), fix)
            continue
        result.add(
            "locks",
            "fail",
            f"stale {lk.describe()}",
            f"`phx unlock` removes it (first make sure no Phoenix still runs on {lk.host})",
        )
    warned: set[str] = set()  # the locks a warning below names already
    for lk in locks:
        if lk not in stale and repo.locks.unjudged(lk, now):
            warned.add(lk.name)
            result.add(
                "locks",
                "warn",
                f"{lk.describe()}: {repo.locks.unjudged_reason(lk)}",
                f"`phx unlock --all` removes it now, only if no Phoenix runs on {lk.host} or anywhere else on "
                "this repository",
            )
        elif lk not in stale and repo.locks.undated(lk, now):
            # Never stale by any clock: it blocks prune until watched unchanged for STALE_SECONDS.
            warned.add(lk.name)
            result.add("locks", "warn", lk.describe(), repo.locks.undated_reason(lk, now))
        elif lk not in stale and lk.process_runs() and (note := repo.locks.watch_note(lk, now)):
            # Never judged stale (it runs here), so no other check names it: it blocks prune until it ends.
            warned.add(lk.name)
            result.add(
                "locks",
                "warn",
                f"{lk.describe()}{note}",
                f"`kill -CONT {lk.pid}` if it is a stopped Phoenix; else `phx unlock --all` removes it, only if no "
                "Phoenix runs anywhere on this repository",
            )
    active = [lk for lk in locks if lk not in stale]
    for lk in active:
        if lk.readable and lk.exclusive and lk.name not in warned:  # one warning a lock
            # A running prune, forget or key change: every backup started meanwhile fails with "the
            # repository is locked", so "none stale" alone would call backups possible now.
            result.add(
                "locks",
                "warn",
                f"{lk.describe()}: a backup started while it is held fails (the repository is locked)",
                # Fresh, it is not stale: plain `phx unlock` keeps it.
                f"wait for it to finish; if no Phoenix runs on {lk.host} any more, `phx unlock --all` removes it "
                "(only if no Phoenix runs anywhere on this repository)",
            )
    if not stale:
        held = f"{len(active)} held by running commands" if active else "none held"
        result.add("locks", "ok", f"no stale locks ({held})")


# --------------------------------------------------------------------------------------------
# Last backup, last drill
# --------------------------------------------------------------------------------------------


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, int(seconds // 60))} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _last_backup(cfg: Config, envx: Environment, result: DoctorResult, repo: Repository | None) -> None:
    path = state_path(envx.home)
    state, damaged = load_state(path)
    if damaged is not None:
        result.add("last backup", "warn", damaged, "run `phx backup`")
    last: dict[str, Any] | None = None
    if state is not None:
        last = state.get("lastSuccess") or (state if state.get("success") else None)
    if not last or not isinstance(last.get("timestamp"), (int, float)):
        result.add("last backup", "fail", f"no successful backup recorded ({path})", "run `phx backup`")
        return
    age = time.time() - float(last["timestamp"])
    every = cfg.schedule.every
    limit = 2 * INTERVALS.get(every, 86400)
    what = f"last successful backup {last.get('snapshotName') or ''} {_age(age)} ago".replace("  ", " ")
    first = cfg.targets.enabled_names()[0] if cfg.targets.enabled_names() else None
    record = ((state or {}).get("targetsLastSuccess") or {}).get(first) or last
    sid = last_snapshot_on(state, first) if state is not None and first else None
    forgot = forgotten_here(state, first) if state is not None and first else None
    lost = _snapshot_lost(repo, sid, float(record.get("timestamp", last["timestamp"])), forgot)
    ahead = future_success_problem(float(last["timestamp"]), time.time())
    if ahead is not None:
        message, _, fix = ahead.partition("; ")
        result.add("last backup", "fail", message, fix)
    elif isinstance(lost, Forgotten):
        # This machine's own forget removed it: no loss, but the newest backup there is older.
        result.add(
            "last backup",
            "warn",
            f"{what}, but its snapshot {str(sid)[:8]} is no longer in the first target: {lost.text}",
            "run `phx backup` for a current snapshot; `phx list` shows what the repository still holds",
        )
        if age > limit:
            result.add(
                "last backup",
                "fail",
                f"{what}, overdue for a {every} schedule",
                "run `phx backup`, and check the schedule (`phx schedule status`)",
            )
    elif lost is not None:
        result.add(
            "last backup",
            "fail",
            f"{what}, but {lost}",
            "run `phx backup` now; `phx list` shows what the repository still holds",
        )
    elif age > limit:
        result.add(
            "last backup",
            "fail",
            f"{what}, overdue for a {every} schedule",
            "run `phx backup`, and check the schedule (`phx schedule status`)",
        )
    else:
        result.add("last backup", "ok", what)
    if state is not None and state.get("partial"):
        shown = failed_parts_text(state) or state.get("error") or "not recorded"
        result.add(
            "last backup",
            "warn",
            f"the most recent run was partial, these parts were not saved or are damaged: {shown}",
            _partial_fix(state),
        )
    elif state is not None and state.get("success") is False:
        result.add(
            "last backup",
            "warn",
            f"the most recent run failed: {state.get('error') or 'see its output'}",
            "run `phx backup` to see the error",
        )
    full = full_backup_problem(state) if state is not None else None
    if full is not None:
        result.add("last backup", "warn", full, "make those paths readable, then run `phx backup`")


@dataclass(frozen=True)
class Forgotten:
    """The last success's snapshot is gone because this machine's `phx forget` (or a backup's
    retention) removed it (state.record_forgotten): `text` says when and by which command."""

    text: str


def _snapshot_lost(
    repo: Repository | None, snapshot_id: object, written: float, forgot: dict[str, Any] | None = None
) -> str | Forgotten | None:
    """Why the snapshot the state file records as the last success there (written at `written`) is
    not in the first target's repository (forgotten, pruned, or lost with the store; or the
    repository was made anew since, and never held it), or None: the state file alone would
    call the machine protected by a backup that can no longer be restored. `forgot`: this
    machine's record of forgetting it (state.forgotten_here): then it is `Forgotten`, no loss;
    a snapshot that went otherwise (deleted on the storage, another machine's forget) is lost."""
    if repo is None or not isinstance(snapshot_id, str) or not re.fullmatch(r"[0-9a-f]{64}", snapshot_id):
        return None
    try:
        if repo.backend.stat(f"snapshots/{snapshot_id}") is not None:
            return None
        # `phx key rotate` (here or on another machine) re-sealed it under a new id: its record
        # names the successor, and the backup is there.
        successor = retired.load(repo).moved.get(f"snapshots/{snapshot_id}") if repo.can_read else None
        if successor is not None and repo.backend.stat(successor) is not None:
            return None
        if not repo.can_read and retired.rotated_after(repo.backend.list(retired.PREFIX), written):
            return None  # a write-only machine cannot open the record: renamed by that rotation, not lost
    except PhoenixError as exc:
        return f"whether its snapshot {snapshot_id[:8]} is still in {repo.backend.location} cannot be read ({exc})"
    where = repo.backend.location
    with contextlib.suppress(ValueError):
        made = datetime.fromisoformat(repo.config.created)
        # Both to the second: `phx init && phx backup` may share one, and that repository held the backup.
        if made.timestamp() > int(written):
            return (
                f"the repository now at {repo.backend.location} was made after that backup "
                f"({made.astimezone().isoformat(timespec='minutes')}): it never held snapshot {snapshot_id[:8]}"
            )
    if forgot is not None:
        try:
            gone = forgotten_loss(forgot, lambda left: _holds(repo, left), where)
        except PhoenixError as exc:
            return f"whether the snapshot the forget left is still in {where} cannot be read ({exc})"
        return Forgotten(forgotten_text(forgot)) if gone is None else f"snapshot {snapshot_id[:8]} is gone: {gone}"
    return (
        f"snapshot {snapshot_id[:8]}, the last it wrote to the first target, is no longer in {repo.backend.location} "
        "(forgotten, pruned or lost)"
    )


def _holds(repo: Repository, snapshot_id: str) -> bool:
    """Whether `repo` holds the snapshot, under its id or, after a key rotation, its successor's."""
    if repo.backend.stat(f"snapshots/{snapshot_id}") is not None:
        return True
    successor = retired.load(repo).moved.get(f"snapshots/{snapshot_id}") if repo.can_read else None
    return successor is not None and repo.backend.stat(successor) is not None


def _partial_fix(state: dict[str, Any]) -> str:
    """The fix for a partial last backup: the cause its failed parts record where one names it (a
    PostgreSQL password variable that was not set), else the general one."""
    from phoenix_backup.sources.postgres import unset_password_variable

    general = "make those paths readable (or exclude them), or repair the damaged database"
    unset: list[str] = []
    others = False
    for part in state.get("failedParts") or []:
        # A PostgreSQL part's only: another part's error may quote a name anyone could give a file.
        postgres = isinstance(part, dict) and str(part.get("path")).startswith("postgres/")
        name = unset_password_variable(str(part.get("error"))) if postgres else None
        if name is None:
            others = True
        elif name not in unset:
            unset.append(name)
    if not unset:
        return f"{general}, then run `phx backup`"
    fix = f"set {', '.join(unset)} in the environment the backup runs in (the scheduler's too)"
    if others:
        fix += f"; for the other parts, {general}"
    return f"{fix}, then run `phx backup`"


def _schedule(envx: Environment, result: DoctorResult) -> None:
    """The backup schedule is recorded only when a scheduler took it; here doctor checks that the
    scheduler still runs it, and when it last did (the run log)."""
    from datetime import datetime

    from phoenix_backup import schedule

    record = schedule.read_record(envx.home)
    held = schedule.status(envx.env, envx.home)
    if record is None and not held.installed:
        idle = "".join(f"; {k} holds its files but does not run them" for k in held.inactive)
        result.add(
            "schedule", "warn", f"no backup schedule is installed: backups run only when started{idle}",
            "run `phx schedule install`",
        )  # fmt: skip
        return
    if not held.installed:
        states = ", ".join(f"{k}: {d.get('active')}" for k, d in held.inactive.items() if isinstance(d, dict))
        result.add(
            "schedule",
            "fail",
            f"a schedule was installed ({schedule.record_path(envx.home)}) but no scheduler runs it"
            + (f" ({states})" if states else ""),
            "run `phx schedule install` again (systemd: `systemctl --user enable --now phoenix-backup.timer`)",
        )
        return
    if twice := held.twice():
        result.add("schedule", "warn", twice, "run `phx schedule install --scheduler NAME` with the one to keep")
    scheduler = held.scheduler or "?"
    details = held.installed.get(scheduler)
    if (program := schedule.missing_program(scheduler, details, envx.home)) is not None:
        gone = "no longer exists (a virtualenv moved or removed)"
        why = "is not an executable file" if os.path.exists(program) else gone
        result.add(
            "schedule", "fail",
            f"the {scheduler} job runs {program}, which {why}: every scheduled backup fails before it starts",
            "run `phx schedule install` again with the phx you use now",
        )  # fmt: skip
        return
    if scheduler == "cron" and isinstance(details, dict) and not details.get("daemonRunning"):
        result.add(
            "schedule", "fail", "the crontab entry is installed, but no cron daemon runs on this machine",
            "start cron (`systemctl enable --now cron`, or `service cron start`)",
        )  # fmt: skip
        return
    now = datetime.now().astimezone()
    spec = held.spec
    what = f"active with {scheduler}: {spec.describe() if spec else 'schedule unknown'}"
    limit = 2 * spec.period(now) if spec is not None else None
    last = held.last_run
    if last is None:
        try:
            since = datetime.fromisoformat(str((record or {}).get("installed")))
        except ValueError:
            since = now
        if limit is not None and now - since > limit:
            ago = _age((now - since).total_seconds())
            result.add(
                "schedule", "fail", f"{what}, but it has not run since it was installed {ago} ago",
                "check the scheduler's own log and ~/.argentos/backup/logs/backup.log",
            )  # fmt: skip
        else:
            due = held.next_due.isoformat(timespec="minutes") if held.next_due else "?"
            result.add("schedule", "ok", f"{what}; not run yet, next run {due}")
        return
    age = (now - last).total_seconds()
    if limit is not None and now - last > limit:
        started = last.isoformat(timespec="minutes")
        result.add(
            "schedule", "fail", f"{what}, but the last scheduled run started {_age(age)} ago ({started})",
            "check the scheduler and ~/.argentos/backup/logs/backup.log",
        )  # fmt: skip
    else:
        result.add("schedule", "ok", f"{what}; last scheduled run {_age(age)} ago")


def _last_drill(envx: Environment, result: DoctorResult) -> None:
    folder = drills_dir(envx.home)
    # A drill of a safety snapshot proves nothing about the backups: only drills of backups count.
    reports = [r for r in latest_reports(folder) if r.get("scope") != SAFETY_SCOPE]
    if not reports:
        result.add(
            "last drill",
            "warn",
            "no restore drill yet: a backup you cannot restore is worthless",
            "run `phx drill` (monthly: `phx schedule install --drill monthly`)",
        )
        return
    newest = reports[0]
    try:
        from datetime import datetime

        age = time.time() - datetime.fromisoformat(str(newest["started"])).timestamp()
    except ValueError:
        age = float("inf")
    what = f"last drill ({newest.get('name')}) {_age(age)} ago"
    if not newest.get("ok"):
        errors = newest.get("errors")  # a list in every report a drill writes; a hand-edited one may hold anything
        result.add(
            "last drill",
            "fail",
            f"{what} FAILED with {len(errors) if isinstance(errors, list) else 'some'} error(s)",
            f"read {str(newest['_path']).removesuffix('.json')}.md, run `phx verify --read-data`, take a new backup",
        )
    elif age > DRILL_MAX_AGE:
        result.add("last drill", "warn", f"{what} passed, but is older than a month", "run `phx drill`")
    else:
        result.add("last drill", "ok", f"{what} passed")


def _postgres_leftovers(result: DoctorResult) -> None:
    """What killed (or stranded) PostgreSQL restores and drills left on a server, read from their
    kept journals (sinks/postgres_roles.py): roles with LOGIN and a snapshot's password, a half
    database. Only read: nothing is dropped, no journal is changed."""
    for run in postgres_roles.kept_runs():
        database = run.left_database
        if not run.roles and database is None:
            continue
        roles = f"role(s) {', '.join(sorted(run.roles))} (with LOGIN and the snapshot's password, if it had them)"
        what = " and ".join(([roles] if run.roles else []) + ([f"database {database}"] if database else []))
        statements = [postgres_roles.drop_statement("DATABASE", database)] if database else []
        statements += [postgres_roles.drop_statement("ROLE", role) for role in sorted(run.roles)]
        journal = postgres_roles.journal_dir() / run.name
        by_hand = (
            "on that server (SELECT system_identifier FROM pg_control_system(); tells which it is) run "
            f"{' '.join(statements)} and delete {journal}"
        )
        if run.restoring is not None and run.drill is None and (run.roles or run.creating):
            # A pg_restore fed the whole dump commits after the kill: its database may be whole.
            needs = " and needs those roles" if run.roles else ""
            kept = "them" if run.roles else "it"
            by_hand += (
                f" (if that restore's pg_restore had committed, {database or 'its database'} is restored{needs}: "
                f"keep {kept} while you use it)"
            )
        where = f"on the server with system identifier {run.server}"
        if run.damaged:
            result.add(
                "postgres leftovers",
                "warn",
                f"a killed PostgreSQL restore or drill left {what} {where}; its journal {journal} has a damaged line, "
                "so no restore or drill drops them",
                by_hand,
            )
        else:
            result.add(
                "postgres leftovers",
                "warn",
                f"a PostgreSQL restore or drill that was killed, or could not reach its server again, left {what} "
                f"{where}",
                "run a restore or drill against that server again (it drops them when they are provably that run's); "
                f"or {by_hand}",
            )
