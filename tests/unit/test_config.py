"""The config package: search paths, the seed's defaults, validation, expansion, writing."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.config import (
    SEARCH_PATHS,
    Compression,
    Config,
    default_config_dict,
    find_config_path,
    load_config,
    parse_config,
    write_config,
)
from phoenix_backup.errors import ConfigError

# The ArgentOS example config (ArgentOS's backup documentation), verbatim.
ARGENTOS_EXAMPLE = """{
"workspace": "~/argent",
"backupDir": "~/backups/argent",
"targets": {
"local": {"enabled": true, "path": "~/backups/argent"},
"git": {"enabled": false, "repo": "git@github.com:youruser/agent-backup.git",
        "branch": "main", "autoCommit": true},
"s3": {"enabled": false, "bucket": "my-agent-backups", "prefix": "argent/",
       "storageClass": "STANDARD_IA"},
"r2": {"enabled": false, "accountId": "YOUR_CLOUDFLARE_ACCOUNT_ID", "bucket": "agent-backups",
       "prefix": "argent/"}
},
"include": ["MEMORY.md", "SOUL.md", "USER.md", "AGENTS.md", "IDENTITY.md", "memory/*.md",
            "scripts/", "config/", "~/.argentos/observations.db"],
"exclude": ["*.log", "node_modules/", ".git/", "*.tmp", ".DS_Store"],
"compression": true,
"retention": {"daily": 7, "weekly": 4, "monthly": 12},
"notifications": {"enabled": false, "onSuccess": "silent", "onFailure": "alert"},
"encryption": {"enabled": false, "method": "gpg"}
}
"""

ACCOUNT = "0123456789abcdef0123456789abcdef"
AGE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PHX_CONFIG", raising=False)
    return home


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), **extra}


def minimal(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"workspace": "/w", "backupDir": "/b"}
    data.update(overrides)
    return data


def parse(data: object, home: Path | None = None, **env: str) -> Config:
    return parse_config(data, env={"HOME": str(home or "/home/agent"), **env})


def config_error(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(data)
    return str(caught.value)


def set_path(data: dict[str, Any], dotted: str, value: object) -> dict[str, Any]:
    """A deep copy of `data` with `dotted` (e.g. "targets.s3.bucket") set to `value`."""
    result = copy.deepcopy(data)
    node = result
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return result


# --- finding the file ---------------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


def test_search_paths_are_the_seeds() -> None:
    assert SEARCH_PATHS == (
        "~/.argentos/backup.json",
        "~/.argentos/phoenix.json",
        "~/.config/argentos/backup.json",
    )


def test_search_order_takes_the_first_existing(home: Path) -> None:
    third = touch(home / ".config/argentos/backup.json")
    assert find_config_path() == third
    second = touch(home / ".argentos/phoenix.json")
    assert find_config_path() == second
    first = touch(home / ".argentos/backup.json")
    assert find_config_path() == first


def test_search_uses_home_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PHX_CONFIG", raising=False)
    for name in ("one", "two"):
        touch(tmp_path / name / ".argentos/backup.json")
    monkeypatch.setenv("HOME", str(tmp_path / "one"))
    assert find_config_path() == tmp_path / "one/.argentos/backup.json"
    monkeypatch.setenv("HOME", str(tmp_path / "two"))
    assert find_config_path() == tmp_path / "two/.argentos/backup.json"


def test_no_config_found_names_the_search_paths_and_init(home: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        find_config_path()
    message = str(caught.value)
    for path in SEARCH_PATHS:
        assert path in message
    assert "phx init" in message


def test_phx_config_overrides_search(home: Path, tmp_path: Path) -> None:
    touch(home / ".argentos/backup.json")
    chosen = touch(tmp_path / "elsewhere.json")
    assert find_config_path(env={"HOME": str(home), "PHX_CONFIG": str(chosen)}) == chosen


def test_explicit_overrides_phx_config(home: Path, tmp_path: Path) -> None:
    from_env = touch(tmp_path / "env.json")
    explicit = touch(tmp_path / "explicit.json")
    env = {"HOME": str(home), "PHX_CONFIG": str(from_env)}
    assert find_config_path(explicit, env=env) == explicit
    assert find_config_path(str(explicit), env=env) == explicit


def test_explicit_tilde_is_expanded(home: Path) -> None:
    config = touch(home / "my.json")
    assert find_config_path("~/my.json") == config


@pytest.mark.parametrize("via", ["explicit", "env"])
def test_missing_chosen_file_is_an_error(home: Path, tmp_path: Path, via: str) -> None:
    touch(home / ".argentos/backup.json")  # present, but must not be used instead
    missing = tmp_path / "x" / "y.json"
    with pytest.raises(ConfigError) as caught:
        if via == "explicit":
            find_config_path(missing)
        else:
            find_config_path(env={"HOME": str(home), "PHX_CONFIG": str(missing)})
    assert str(caught.value) == (
        f"config file {missing} does not exist; create one with `phx init --config {missing}` or fix the path"
    )


# --- defaults and the ArgentOS example ----------------------------------------------------------------------


def test_default_dict_is_the_argentos_example_encrypted_with_retention_and_databases() -> None:
    """`phx init` writes the example with passphrase encryption (issue 16.6), the retention
    defaults spelled out (16.4) and the databases."""
    expected = json.loads(ARGENTOS_EXAMPLE)
    expected["encryption"] = {"enabled": True, "method": "passphrase"}
    expected["retention"] = {"within": "1d", "last": 10, "daily": 7, "weekly": 4, "monthly": 12}
    expected["databases"] = {
        "sqlite": [
            "~/.argentos/observations.db",
            "~/.argentos/memory.db",
            "~/.argentos/data/dashboard.db",
        ],
        "postgres": [],
        "redis": [],
    }
    assert default_config_dict() == expected


def test_default_dict_round_trips_to_the_example_values(home: Path) -> None:
    config = parse(default_config_dict(), home)
    assert config.workspace == home / "argent"
    assert config.backup_dir == home / "backups/argent"
    assert config.repository_path == home / "backups/argent"
    assert config.targets.enabled_names() == ["local"]
    assert config.targets.git.repo == "git@github.com:youruser/agent-backup.git"
    assert config.targets.git.branch == "main"
    assert config.targets.git.auto_commit is True
    assert config.targets.s3.bucket == "my-agent-backups"
    assert config.targets.s3.prefix == "argent/"
    assert config.targets.s3.storage_class == "STANDARD_IA"
    assert config.targets.r2.account_id == "YOUR_CLOUDFLARE_ACCOUNT_ID"
    assert config.targets.r2.bucket == "agent-backups"
    assert config.include[-1] == str(home / ".argentos/observations.db")
    assert config.include[:6] == (
        "MEMORY.md",
        "SOUL.md",
        "USER.md",
        "AGENTS.md",
        "IDENTITY.md",
        "memory/*.md",
    )
    assert config.exclude == ("*.log", "node_modules/", ".git/", "*.tmp", ".DS_Store")
    assert config.compression == Compression(enabled=True, algorithm="zstd", level=None)
    retention = config.retention
    assert (retention.daily, retention.weekly, retention.monthly) == (7, 4, 12)
    assert (retention.hourly, retention.yearly, retention.last, retention.within) == (0, 0, 10, "1d")
    assert retention.keep_safety_days == 7 and retention.prune is True
    assert config.notifications.enabled is False
    assert config.notifications.on_success == "silent"
    assert config.notifications.on_failure == "alert"
    assert config.encryption.enabled is True and config.encryption.method == "passphrase"
    assert config.databases.sqlite == (
        str(home / ".argentos/observations.db"),
        str(home / ".argentos/memory.db"),
        str(home / ".argentos/data/dashboard.db"),
    )
    assert config.warnings == ()


def test_argentos_example_parses(home: Path) -> None:
    config = parse(json.loads(ARGENTOS_EXAMPLE), home)
    assert config.targets.local.path == home / "backups/argent"
    assert config.warnings == ()


def test_default_dict_takes_workspace_and_repo(home: Path) -> None:
    data = default_config_dict(workspace="/srv/agent", repo="/mnt/backups")
    assert data["workspace"] == "/srv/agent"
    assert data["backupDir"] == "/mnt/backups"
    config = parse(data, home)
    assert config.targets.local.path == Path("/mnt/backups")


@pytest.mark.parametrize(
    ("choice", "enabled", "method"),
    [("none", False, "gpg"), ("passphrase", True, "passphrase"), ("age", True, "age"),
     ("gpg", True, "gpg")],
)  # fmt: skip
def test_default_dict_encryption(choice: str, enabled: bool, method: str) -> None:
    section = default_config_dict(encryption=choice)["encryption"]
    assert isinstance(section, dict)
    assert section["enabled"] is enabled
    assert section["method"] == method


def test_default_dict_with_keys_validates(home: Path) -> None:
    age = parse(default_config_dict(encryption="age", recipients=[AGE_KEY]), home)
    assert age.encryption.recipients == (AGE_KEY,)
    gpg = parse(default_config_dict(encryption="gpg", key_id="ABCDEF0123456789"), home)
    assert gpg.encryption.key_id == "ABCDEF0123456789"
    passphrase = parse(default_config_dict(encryption="passphrase"), home)
    assert passphrase.encryption.enabled and passphrase.encryption.method == "passphrase"


def test_default_dict_rejects_unknown_encryption() -> None:
    with pytest.raises(ConfigError, match="encryption must be"):
        default_config_dict(encryption="rot13")


def test_absent_sections_get_their_defaults() -> None:
    config = parse(minimal(), Path("/home/agent"))
    assert config.targets.enabled_names() == ["local"]
    # DESIGN §3: the last day and the last 10 besides daily 7 / weekly 4 / monthly 12.
    r = config.retention
    assert (r.within, r.last, r.hourly, r.daily, r.weekly, r.monthly, r.yearly) == ("1d", 10, 0, 7, 4, 12, 0)
    assert config.compression.enabled and config.compression.algorithm == "zstd"
    assert not config.encryption.enabled
    assert config.components.identity[-1] == ".argent-alignment-integrity.json"
    assert "HEARTBEAT.md" in config.components.identity
    assert config.components.memory == (
        "MEMORY.md",
        "memory/",
        "/home/agent/.argentos/observations.db",
        "/home/agent/.argentos/memory.db",
    )
    assert config.components.config == ("config/", "/home/agent/.argentos/argent.json")
    assert len(config.databases.sqlite) == 3
    assert config.gateway.timeout_seconds == 60
    assert config.hooks.pre_backup is None
    assert config.schedule.every == "daily" and config.schedule.at is None


# --- validation ---------------------------------------------------------------------------------


def test_document_must_be_an_object() -> None:
    assert "must be a JSON object" in config_error(["workspace"])


def test_workspace_is_required() -> None:
    message = config_error({"backupDir": "/b"})
    assert message.startswith("workspace is required")


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("targets.s3", {"enabled": True},
         "targets.s3.bucket is required when targets.s3.enabled is true; "
         "set it or disable the target"),
        ("targets.r2", {"enabled": True, "accountId": ACCOUNT},
         "targets.r2.bucket is required when targets.r2.enabled is true"),
        ("targets.r2", {"enabled": True, "bucket": "b-1"}, "targets.r2.accountId is required"),
        ("targets.r2", {"enabled": True, "bucket": "b-1", "accountId": "YOUR_ACCOUNT_ID"},
         "targets.r2.accountId must be your 32-character Cloudflare account id"),
        ("targets.git", {"enabled": True}, "targets.git.repo is required"),
        ("targets.git.branch", "", "targets.git.branch must be a Git branch name"),
        ("targets.s3.storageClass", "STANDARD-IA",
         'targets.s3.storageClass must be one of "STANDARD"'),
        ("targets.s3.endpoint", "minio:9000", "targets.s3.endpoint must be an http:// or https://"),
        ("targets.s3", {"enabled": True, "bucket": "Bad_Bucket"},
         "targets.s3.bucket must be a bucket name"),
        ("targets.s3.accessKeyId", "AKIA1", "targets.s3.secretAccessKey is required when "
         "targets.s3.accessKeyId is set"),
        ("targets.local.enabled", "yes", 'targets.local.enabled must be true or false (got "yes")'),
        ("targets", [], "targets must be a JSON object (got a list)"),
        ("retention.daily", "seven", 'retention.daily must be an integer >= -1 (got "seven")'),
        ("retention.weekly", -2, "retention.weekly must be an integer >= -1 (got -2)"),
        ("retention.monthly", 1.5, "retention.monthly must be an integer >= -1 (got 1.5)"),
        ("retention.hourly", True, "retention.hourly must be an integer >= -1 (got true)"),
        ("retention.keepSafetyDays", -1, "retention.keepSafetyDays must be an integer >= 0"),
        ("retention.within", "30 days", "retention.within must be a duration"),
        ("retention.capturesWithin", "1 day", "retention.capturesWithin must be a duration"),
        ("retention.capturesHourlyWithin", 7, "retention.capturesHourlyWithin must be a string"),
        ("retention.prune", "no", "retention.prune must be true or false"),
        ("compression", 5,
         'compression must be true, false, "zstd", "gzip" or {"algorithm", "level"} (got 5)'),
        ("compression", "lz4", 'compression must be true, false, "zstd", "gzip"'),
        ("compression", {"algorithm": "lz4"}, 'compression.algorithm must be "zstd" or "gzip"'),
        ("compression", {"algorithm": "gzip", "level": 12},
         "compression.level must be an integer from 1 to 9 for gzip (got 12)"),
        ("compression", {"level": "max"}, "compression.level must be an integer from -7 to 22"),
        ("notifications.onSuccess", "loud",
         'notifications.onSuccess must be "silent" or "notify" (got "loud")'),
        ("notifications.onFailure", "email", 'notifications.onFailure must be "alert" or "silent"'),
        ("notifications.urls", "ntfy://x", "notifications.urls must be a list of strings"),
        ("notifications.urls", ["not a url"], "notifications.urls[0] must be an Apprise URL"),
        ("encryption", {"enabled": True, "method": "gpg"}, "encryption.keyId is required"),
        ("encryption", {"enabled": True, "method": "age"}, "encryption.recipients is required"),
        ("encryption.recipients", ["ssh-rsa AAAA"], "encryption.recipients[0] must be an age"),
        ("encryption.method", "aes", 'encryption.method must be "passphrase", "age" or "gpg"'),
        ("encryption.passphraseEnv", "MY-VAR", "encryption.passphraseEnv must name an environment"),
        ("include", "MEMORY.md", 'include must be a list of strings (got "MEMORY.md")'),
        ("exclude", ["*.log", 3], "exclude[1] must be a non-empty string (got 3)"),
        ("workspace", 42, "workspace must be a string (got 42)"),
        ("workspace", "", "workspace must not be empty"),
        ("databases.sqlite", [""], "databases.sqlite[0] must be a non-empty string"),
        ("databases.integrityCheckEvery", "daily",
         'databases.integrityCheckEvery must be a duration of numbers with units y, m, d or h, such as "24h"'),
        ("databases.integrityCheckEvery", 24, "databases.integrityCheckEvery must be a string (got 24)"),
        ("databases.integrityCheckEvery", "", "databases.integrityCheckEvery must be a duration"),
        ("databases.postgres", {}, "databases.postgres must be a list of objects"),
        ("databases.postgres", [{"database": "argent"}], "databases.postgres[0].name is required"),
        ("databases.postgres", [{"name": "main"}], "databases.postgres[0].database is required"),
        ("databases.postgres", [{"name": "a/b", "database": "x"}],
         "databases.postgres[0].name must use only letters"),
        ("databases.postgres", [{"name": "..", "database": "x"}],
         "databases.postgres[0].name must use only letters"),
        ("databases.postgres", [{"name": "n" * 256, "database": "x"}],
         "databases.postgres[0].name must be at most 255 characters (got 256)"),
        ("databases.redis", [{"name": "n" * 256, "url": "redis://localhost"}],
         "databases.redis[0].name must be at most 255 characters (got 256)"),
        ("databases.postgres", [{"name": "m", "database": "x", "port": 70000}],
         "databases.postgres[0].port must be a port from 1 to 65535"),
        ("databases.postgres", [{"name": "m", "dsn": "postgresql://h/db", "database": "x"}],
         "databases.postgres[0] sets both dsn and database"),
        ("databases.postgres", [{"name": "m", "database": "x"}, {"name": "m", "database": "y"}],
         'databases.postgres names the database "m" twice'),
        ("databases.redis", [{"name": "r", "url": "http://localhost"}],
         "databases.redis[0].url must be a redis://"),
        ("databases.redis", [{"name": "r"}, {"name": "r"}],
         'databases.redis names the database "r"'),
        ("components.databases", ["x"], "components.databases cannot be set"),
        ("components.identity", "SOUL.md", "components.identity must be a list of strings"),
        ("gateway.timeoutSeconds", 0, "gateway.timeoutSeconds must be a number of seconds > 0"),
        ("gateway.stop", ["systemctl"], "gateway.stop must be a string (got a list)"),
        ("hooks.preBackup", 1, "hooks.preBackup must be a string (got 1)"),
        ("schedule.every", "fortnightly", 'schedule.every must be "hourly", "daily", "weekly"'),
        ("schedule.every", "* * *", "schedule.every must be"),
        ("schedule.at", "25:00", 'schedule.at must be a time "HH:MM"'),
        ("schedule", {"every": "0 3 * * *", "at": "02:00"}, "schedule.at only applies"),
    ],
)  # fmt: skip
def test_validation_error_names_the_field(dotted: str, value: object, expected: str) -> None:
    message = config_error(set_path(minimal(), dotted, value))
    assert expected in message


def test_validation_messages_are_one_line() -> None:
    message = config_error(set_path(minimal(), "targets.s3", {"enabled": True}))
    assert "\n" not in message


def test_local_needs_a_path() -> None:
    message = config_error({"workspace": "/w"})
    assert "backupDir is required when targets.local.enabled is true" in message
    assert "targets.local.path" in message


def test_at_least_one_target() -> None:
    message = config_error(minimal(targets={"local": {"enabled": False}}))
    assert "targets" in message and "targets.local.enabled" in message


def test_other_target_alone_is_enough() -> None:
    config = parse(
        {
            "workspace": "/w",
            "targets": {
                "local": {"enabled": False},
                "s3": {"enabled": True, "bucket": "my-bucket", "region": "eu-west-1"},
                "r2": {"enabled": True, "bucket": "r2-bucket", "accountId": ACCOUNT},
                "git": {"enabled": True, "repo": "/srv/git/backup.git"},
            },
        }
    )
    assert config.targets.enabled_names() == ["git", "s3", "r2"]
    assert config.targets.s3.region == "eu-west-1"


def test_r2_endpoint_replaces_account_id() -> None:
    config = parse(minimal(targets={"r2": {"enabled": True, "bucket": "bkt", "endpoint": "http://127.0.0.1:9000"}}))
    assert config.targets.r2.account_id is None
    assert config.targets.enabled_names() == ["local", "r2"]


def test_append_only_and_object_lock() -> None:
    s3 = {"enabled": True, "bucket": "bkt", "objectLock": {"mode": "compliance", "days": 30}}
    config = parse(minimal(targets={"local": {"appendOnly": True}, "s3": s3, "git": {"appendOnly": False}}))
    assert config.targets.s3.object_lock is not None and config.targets.s3.object_lock.days == 30
    # Object Lock implies append-only: Phoenix must not even try to delete there.
    assert [n for n in ("local", "git", "s3", "r2") if config.targets.append_only(n)] == ["local", "s3"]


@pytest.mark.parametrize(
    ("lock", "needle"),
    [
        ({"mode": "compliance"}, 'needs "mode"'),
        ({"mode": "forever", "days": 3}, "targets.s3.objectLock.mode must be"),
        ({"mode": "governance", "days": 0}, "targets.s3.objectLock.days must be an integer >= 1"),
        ({"mode": "governance", "days": 99999}, "at most 36500"),
        ({"mode": "governance", "days": 3, "legalHold": True}, 'unknown key "targets.s3.objectLock.legalHold"'),
    ],
)
def test_a_wrong_object_lock_names_the_field(lock: dict[str, Any], needle: str) -> None:
    assert needle in config_error(minimal(targets={"s3": {"enabled": True, "bucket": "bkt", "objectLock": lock}}))


@pytest.mark.parametrize(
    ("data", "typo", "suggestion"),
    [
        (minimal(retension={"daily": 7}), '"retension"', '"retention"'),
        (minimal(backup_dir="/b"), '"backup_dir"', '"backupDir"'),
        (minimal(targets={"s3": {"buckett": "x"}}), '"targets.s3.buckett"', '"targets.s3.bucket"'),
        (minimal(retention={"dayly": 7}), '"retention.dayly"', '"retention.daily"'),
        (minimal(encryption={"keyID": "x"}), '"encryption.keyID"', '"encryption.keyId"'),
    ],
)
def test_unknown_key_suggests_the_nearest(data: object, typo: str, suggestion: str) -> None:
    message = config_error(data)
    assert f"unknown key {typo}; did you mean {suggestion}?" == message


def test_unknown_key_without_a_near_one_lists_the_known() -> None:
    message = config_error(minimal(targets={"ftp": {}}))
    assert 'unknown key "targets.ftp"' in message
    assert "local, git, s3, r2" in message


def test_unknown_key_in_list_items() -> None:
    message = config_error(minimal(databases={"redis": [{"name": "r", "pattern": "*"}]}))
    assert 'unknown key "databases.redis[0].pattern"' in message


# --- expansion ----------------------------------------------------------------------------------


def test_tilde_and_vars_expand_in_paths(home: Path) -> None:
    data = {
        "workspace": "~/argent",
        "backupDir": "$BACKUPS/argent",
        "targets": {"local": {"enabled": True, "path": "${BACKUPS}/argent"}},
        "include": ["MEMORY.md", "~/notes/*.md", "$EXTRA/x", "a$b"],
        "exclude": ["~/.cache/", "*.log"],
        "encryption": {"identityFile": "~/.age/key.txt"},
        "databases": {
            "sqlite": ["~/db/*.db", "$DATA/agent.db"],
            "postgres": [{"name": "pg", "database": "argent", "pgDump": "~/bin/pg_dump"}],
        },
        "components": {"memory": ["MEMORY.md", "$DATA/memory.db"]},
    }
    env = env_for(home, BACKUPS="/mnt/b", EXTRA="/opt/extra", DATA="/var/data")
    config = parse_config(data, env=env)
    assert config.workspace == home / "argent"
    assert config.backup_dir == Path("/mnt/b/argent")
    assert config.targets.local.path == Path("/mnt/b/argent")
    assert config.warnings == ()
    assert config.include == ("MEMORY.md", f"{home}/notes/*.md", "/opt/extra/x", "a$b")
    assert config.exclude == (f"{home}/.cache/", "*.log")
    assert config.encryption.identity_file == home / ".age/key.txt"
    assert config.databases.sqlite == (f"{home}/db/*.db", "/var/data/agent.db")
    assert config.databases.postgres[0].pg_dump == home / "bin/pg_dump"
    assert config.components.memory == ("MEMORY.md", "/var/data/memory.db")


def test_tilde_uses_env_home_not_import_time_home(tmp_path: Path) -> None:
    config = parse_config({"workspace": "~/w", "backupDir": "~"}, env={"HOME": str(tmp_path)})
    assert config.workspace == tmp_path / "w"
    assert config.backup_dir == tmp_path


def test_undefined_variable_names_field_and_variable() -> None:
    message = config_error(minimal(backupDir="$NOPE/backups"))
    assert "backupDir" in message and "$NOPE" in message
    message = config_error(minimal(include=["${MISSING}/x"]))
    assert "include[0]" in message and "$MISSING" in message


def test_bare_program_name_for_pg_dump_is_kept() -> None:
    config = parse(minimal(databases={"postgres": [{"name": "p", "dsn": "postgresql://h/db",
                                                    "pgDump": "pg_dump-17"}]}))  # fmt: skip
    assert config.databases.postgres[0].pg_dump == Path("pg_dump-17")
    assert config.databases.postgres[0].port == 5433


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    source = tmp_path / "conf" / "backup.json"
    config = parse_config({"workspace": "ws", "backupDir": "../repo"}, source=source, env={})
    assert config.workspace == tmp_path / "conf" / "ws"
    assert os.path.normpath(config.backup_dir) == str(tmp_path / "repo")


# --- backupDir and targets.local.path -----------------------------------------------------------


def test_local_path_wins_over_backup_dir_with_a_warning() -> None:
    config = parse(minimal(targets={"local": {"enabled": True, "path": "/elsewhere"}}))
    assert config.repository_path == Path("/elsewhere")
    assert config.backup_dir == Path("/b")
    assert config.warnings == ("targets.local.path (/elsewhere) differs from backupDir (/b); using targets.local.path",)


def test_same_path_spelled_differently_is_not_a_conflict() -> None:
    config = parse(minimal(backupDir="/b/", targets={"local": {"path": "/b/./"}}))
    assert config.warnings == ()


def test_backup_dir_alone_is_the_repository() -> None:
    config = parse(minimal())
    assert config.targets.local.path is None
    assert config.repository_path == Path("/b")


def test_local_path_alone_is_the_repository() -> None:
    config = parse({"workspace": "/w", "targets": {"local": {"path": "/r"}}})
    assert config.repository_path == Path("/r")
    assert config.backup_dir == Path("/r")


# --- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, Compression(True, "zstd", None)),
        (False, Compression(False, "zstd", None)),
        ("zstd", Compression(True, "zstd", None)),
        ("gzip", Compression(True, "gzip", None)),
        ({"algorithm": "zstd", "level": 3}, Compression(True, "zstd", 3)),
        ({"algorithm": "gzip", "level": 9}, Compression(True, "gzip", 9)),
        ({"level": 19}, Compression(True, "zstd", 19)),
        ({"level": -7}, Compression(True, "zstd", -7)),
        ({"enabled": False}, Compression(False, "zstd", None)),
        (None, Compression(True, "zstd", None)),
    ],
)
def test_compression_forms(value: object, expected: Compression) -> None:
    assert parse(minimal(compression=value)).compression == expected


# --- other sections -----------------------------------------------------------------------------


def test_retention_accepts_unlimited_and_within() -> None:
    retention = parse(
        minimal(retention={"daily": -1, "hourly": 24, "within": "1y2m", "keepSafetyDays": 0,
                           "prune": False})
    ).retention  # fmt: skip
    assert retention.daily == -1 and retention.hourly == 24
    assert retention.within == "1y2m"
    assert retention.keep_safety_days == 0 and retention.prune is False


def test_databases_full_form() -> None:
    databases = parse(
        minimal(
            databases={
                "sqlite": [],
                "postgres": [
                    {"name": "argent", "host": "db", "port": 5432, "database": "argent",
                     "user": "agent", "passwordEnv": "PGPASSWORD", "agentId": "main"},
                ],
                "redis": [{"name": "state"}, {"name": "cache", "url": "redis://h:6379/1",
                                              "match": "agent:*"}],
            }
        )
    ).databases  # fmt: skip
    assert databases.sqlite == ()
    pg = databases.postgres[0]
    assert (pg.host, pg.port, pg.database, pg.user) == ("db", 5432, "argent", "agent")
    assert pg.password_env == "PGPASSWORD" and pg.agent_id == "main" and pg.dsn is None
    assert databases.redis[0].url == "redis://localhost:6380/0"
    assert databases.redis[0].match == "*"
    assert databases.redis[1].match == "agent:*"


def test_gateway_hooks_schedule_notifications() -> None:
    config = parse(
        minimal(
            gateway={"stop": "argent gateway stop", "start": "argent gateway start",
                     "timeoutSeconds": 5.5},
            hooks={"preBackup": "argent pause", "postBackup": "argent resume"},
            schedule={"every": "weekly", "at": "02:30"},
            notifications={"enabled": True, "onSuccess": "notify", "urls": ["ntfy://phx"]},
        )
    )  # fmt: skip
    assert config.gateway.stop == "argent gateway stop" and config.gateway.timeout_seconds == 5.5
    assert config.hooks.post_backup == "argent resume"
    assert config.schedule.every == "weekly" and config.schedule.at == "02:30"
    assert config.notifications.on_success == "notify"
    assert config.notifications.urls == ("ntfy://phx",)
    cron = parse(minimal(schedule={"every": "15 3 * * 1-5"})).schedule
    assert cron.every == "15 3 * * 1-5"


def test_null_means_default() -> None:
    config = parse(minimal(retention={"daily": None}, encryption=None, compression=None))
    assert config.retention.daily == 7 and not config.encryption.enabled


# --- secrets ------------------------------------------------------------------------------------

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def secret_config(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "backup.json"
    data = minimal(
        targets={"s3": {"enabled": True, "bucket": "bkt", "accessKeyId": "AKIAEXAMPLE",
                        "secretAccessKey": SECRET}}
    )  # fmt: skip
    path.write_text(json.dumps(data))
    path.chmod(mode)
    return path


def test_secrets_in_a_readable_file_warn(tmp_path: Path) -> None:
    path = secret_config(tmp_path, 0o644)
    config = load_config(path, env={"HOME": str(tmp_path)})
    assert config.warnings == (f"config file {path} holds secrets and is readable by others; run chmod 600 {path}",)
    assert config.targets.s3.secret_access_key == SECRET
    assert SECRET not in repr(config)


def test_secrets_in_a_private_file_do_not_warn(tmp_path: Path) -> None:
    path = secret_config(tmp_path, 0o600)
    assert load_config(path, env={"HOME": str(tmp_path)}).warnings == ()


def test_dsn_password_counts_as_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    dsn = "postgresql://agent:hunter2@localhost:5433/argent"
    path.write_text(json.dumps(minimal(databases={"postgres": [{"name": "p", "dsn": dsn}]})))
    path.chmod(0o640)
    assert "holds secrets" in load_config(path, env={"HOME": str(tmp_path)}).warnings[0]


def test_secret_values_never_appear_in_errors() -> None:
    messages = [
        config_error(minimal(targets={"s3": {"secretAccessKey": SECRET}})),
        config_error(minimal(targets={"r2": {"secretAccessKey": SECRET, "buckett": "x"}})),
        config_error(minimal(databases={"redis": [{"name": "r", "url": f"http://:{SECRET}@h"}]})),
        config_error(minimal(notifications={"urls": [SECRET]})),
    ]
    for message in messages:
        assert SECRET not in message
    assert "12345" not in config_error(minimal(targets={"s3": {"secretAccessKey": 12345}}))


# --- load_config --------------------------------------------------------------------------------


def test_load_config_reports_json_syntax_with_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text('{\n  "workspace": "/w",\n  "backupDir": "/b"\n  "compression": true\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "line 4, column 3" in message


def test_load_config_prefixes_validation_errors_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(minimal(retention={"daily": "seven"})))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f'{path}: retention.daily must be an integer >= -1 (got "seven")'


def test_load_config_rejects_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text('{"workspace": "/a", "workspace": "/b", "backupDir": "/r"}')
    with pytest.raises(ConfigError, match='"workspace" appears twice'):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.json")


def test_load_config_sets_source(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text("\ufeff" + json.dumps(minimal()))  # with a BOM, as some editors write
    config = load_config(path, env={"HOME": str(tmp_path)})
    assert config.source == path


# --- write_config -------------------------------------------------------------------------------


def test_write_config_creates_private_file_and_folders(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "backup.json"
    data = default_config_dict()
    write_config(path, data)
    text = path.read_text()
    assert text == json.dumps(data, indent=2) + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["backup.json"]
    assert parse_config(json.loads(text), env={"HOME": str(tmp_path)}).workspace == (tmp_path / "argent")


def test_write_config_refuses_to_replace_without_force(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text("{}")
    with pytest.raises(ConfigError) as caught:
        write_config(path, {"workspace": "/w"})
    assert str(caught.value) == (
        f"config file {path} already exists; pass --force to replace it (the repository is left as it is)"
    )
    assert path.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.json"]


def test_write_config_replaces_with_force(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text("{}")
    path.chmod(0o644)
    write_config(path, {"workspace": "/w"}, force=True)
    assert json.loads(path.read_text()) == {"workspace": "/w"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.json"]


# Issue 14, point 10: every kind of secret a config may hold makes a readable file warn.
@pytest.mark.parametrize(
    "changes",
    [
        {"notifications": {"enabled": True, "urls": ["pbul://o.ACCESSTOKEN"]}},
        {"targets": {"git": {"enabled": True, "repo": "https://x-access-token:ghp_TOKEN@github.com/me/a.git"}}},
        {"targets": {"git": {"enabled": True, "repo": "https://ghp_TOKEN@github.com/me/a.git"}}},
        {"encryption": {"enabled": True, "method": "passphrase", "passphraseCommand": "echo hunter2"}},
        {"targets": {"git": {"enabled": True, "repo": "ftps://me:ghp_TOKEN@ftp.example.com/a.git"}}},
        # libpq and redis-py take a password from the query string too
        {"databases": {"postgres": [{"name": "main", "dsn": "postgresql://agent@db:5433/argentos?password=hunter2"}]}},
        {"databases": {"redis": [{"name": "state", "url": "redis://localhost:6380/0?password=hunter2"}]}},
    ],
)
def test_every_kind_of_secret_warns_in_a_readable_file(tmp_path: Path, changes: dict[str, Any]) -> None:
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(minimal(**changes)))
    path.chmod(0o644)
    warnings = load_config(path, env={"HOME": str(tmp_path)}).warnings
    assert warnings == (f"config file {path} holds secrets and is readable by others; run chmod 600 {path}",)
    path.chmod(0o600)
    assert load_config(path, env={"HOME": str(tmp_path)}).warnings == ()


def test_an_ssh_git_remote_is_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(minimal(targets={"git": {"enabled": True, "repo": "ssh://git@github.com/me/a.git"}})))
    path.chmod(0o644)
    assert load_config(path, env={"HOME": str(tmp_path)}).warnings == ()


def test_a_config_others_can_change_warns(tmp_path: Path) -> None:
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(minimal(hooks={"preBackup": "sync"})))
    path.chmod(0o666)
    (warning,) = load_config(path, env={"HOME": str(tmp_path)}).warnings
    assert "can be changed by other users" in warning and f"chmod go-w {path}" in warning


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user takes root")
def test_a_config_another_user_owns_warns_whatever_its_mode(tmp_path: Path) -> None:
    # Root's scheduled backup of a user's agent, run with the config the user owns: the user
    # could put any command in hooks.preBackup, and root would run it.
    path = tmp_path / "backup.json"
    path.write_text(json.dumps(minimal(hooks={"preBackup": "sync"})))
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    (warning,) = load_config(path, env={"HOME": str(tmp_path)}).warnings
    assert "belongs to another user (uid 65534)" in warning and f"chown 0 {path}" in warning
    os.chown(path, 0, 0)
    assert load_config(path, env={"HOME": str(tmp_path)}).warnings == ()


def test_a_config_in_a_folder_others_can_write_warns(tmp_path: Path) -> None:
    # A 0600 file in a folder anyone can write: anyone can rename it away and put their own there.
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "backup.json"
    path.write_text(json.dumps(minimal(hooks={"preBackup": "sync"})))
    path.chmod(0o600)
    shared.chmod(0o777)
    (warning,) = load_config(path, env={"HOME": str(tmp_path)}).warnings
    assert "can be changed by other users" in warning and f"chmod o-w {shared}" in warning
    shared.chmod(0o1777)  # sticky, as /tmp: others cannot replace the file
    assert load_config(path, env={"HOME": str(tmp_path)}).warnings == ()


@pytest.mark.parametrize(
    "changes",
    [
        {"targets": {"s3": {"enabled": True, "bucket": "bucket1", "endpoint": "htps//AK:CANARY@s3.example.com"}}},
        {"targets": {"s3": {"enabled": True, "bucket": "bucket1", "endpoint": "https://AK:CANARY@[::1:9/"}}},
        {"databases": {"redis": [{"name": "hot", "url": "redis://:CANARY@[::1/0"}]}},
    ],
)
def test_a_malformed_url_is_one_config_error_without_its_credentials(changes: dict[str, Any]) -> None:
    # An endpoint was echoed as it was (user name and secret included); an unclosed "[" in an
    # endpoint or a Redis url ended in a ValueError traceback.
    message = config_error(minimal(**changes))
    assert "CANARY" not in message and ("endpoint" in message or "url" in message), message


@pytest.mark.parametrize(
    ("s3", "r2", "refused"),
    [
        # The same endpoint (spelled two ways), bucket and prefix: one repository written twice.
        (
            {"endpoint": "https://minio.example:9000/", "prefix": "phx"},
            {"endpoint": "HTTPS://minio.example:9000", "prefix": "/phx/"},
            True,
        ),
        # One prefix inside the other, or no prefix at all on one of them.
        (
            {"endpoint": "http://minio:9000", "prefix": "phx"},
            {"endpoint": "http://minio:9000", "prefix": "phx/a"},
            True,
        ),
        ({"endpoint": "http://minio:9000"}, {"endpoint": "http://minio:9000", "prefix": "phx"}, True),
        # An S3 target given the R2 account's own endpoint.
        (
            {"endpoint": f"https://{ACCOUNT}.r2.cloudflarestorage.com", "prefix": "p"},
            {"accountId": ACCOUNT, "prefix": "p"},
            True,
        ),
        # Prefixes that only share their first letters, another bucket, another endpoint: fine.
        (
            {"endpoint": "http://minio:9000", "prefix": "phx"},
            {"endpoint": "http://minio:9000", "prefix": "phx2"},
            False,
        ),
        ({"endpoint": "http://minio:9000", "bucket": "other"}, {"endpoint": "http://minio:9000"}, False),
        ({"endpoint": "http://minio:9000"}, {"endpoint": "http://minio:9001"}, False),
        ({"region": "eu-west-1"}, {"accountId": ACCOUNT}, False),
    ],
)
def test_an_s3_and_an_r2_target_on_the_same_storage_are_refused(
    s3: dict[str, Any], r2: dict[str, Any], refused: bool
) -> None:
    """Before, both were accepted and every backup wrote the one repository twice, with the prune
    and the locks of one target acting on the other's objects."""
    targets = {
        "s3": {"enabled": True, "bucket": "phx-bucket", **s3},
        "r2": {"enabled": True, "bucket": "phx-bucket", **r2},
    }
    doc = {"workspace": "/w", "backupDir": "/b", "targets": targets}
    if refused:
        message = config_error(doc)
        assert message.startswith("targets.s3 (bucket ") and "and targets.r2 (bucket " in message, message
        assert "reach the same storage" in message and "one repository would be written twice" in message
    else:
        assert parse(doc).targets.enabled_names() == ["local", "s3", "r2"]


@pytest.mark.parametrize(
    ("s3_endpoint", "r2_endpoint", "shown"),
    [
        ("http://minio:9000", "HTTP://MINIO:9000/", "at http://minio:9000, one prefix"),
        ("https://minio:443", "https://minio", "at https://minio, one prefix"),  # the default port
        ("http://[::1]:9000", "http://[::1]:9000", "at http://[::1]:9000, one prefix"),
        ("http://u:CANARY@minio:9000/", "http://minio:9000", "at http://minio:9000, one prefix"),
    ],
)
def test_the_shared_storage_refusal_names_the_endpoint_with_its_port(
    s3_endpoint: str, r2_endpoint: str, shown: str
) -> None:
    """Before, the endpoint was named without its port ("at http://minio"), which did not say
    which of two servers on one host was meant; a default port is still left out."""
    targets = {
        "s3": {"enabled": True, "bucket": "phx-bucket", "endpoint": s3_endpoint},
        "r2": {"enabled": True, "bucket": "phx-bucket", "endpoint": r2_endpoint},
    }
    message = config_error({"workspace": "/w", "backupDir": "/b", "targets": targets})
    assert shown in message and "CANARY" not in message, message


@pytest.mark.parametrize("text", ['{"retention": ' + "1" * 5000 + "}", "[" * 50000 + "]" * 50000])
def test_a_config_with_a_5000_digit_number_or_nested_50000_deep_is_one_error(tmp_path: Path, text: str) -> None:
    # Before, json.loads's plain ValueError (more than 4,300 digits) and RecursionError escaped:
    # every command failed as an internal error.
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="is not valid JSON"):
        load_config(path, {})
