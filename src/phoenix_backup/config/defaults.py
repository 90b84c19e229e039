"""Where the config file is looked for, and the defaults it starts from (the ArgentOS example config)."""

from __future__ import annotations

from collections.abc import Sequence

from phoenix_backup.errors import ConfigError

# Kept unexpanded: `~` is resolved at call time so a changed HOME (tests, sudo -u) is honoured.
SEARCH_PATHS: tuple[str, ...] = (
    "~/.argentos/backup.json",
    "~/.argentos/phoenix.json",
    "~/.config/argentos/backup.json",
)

# The ArgentOS SQLite stores (the ArgentOS backup documentation, "Database Backup").
DEFAULT_SQLITE: tuple[str, ...] = (
    "~/.argentos/observations.db",
    "~/.argentos/memory.db",
    "~/.argentos/data/dashboard.db",
)

# The ArgentOS example `include`/`exclude`; also what a config without those keys gets. A full
# backup adds every component (below) to `include`, so these need not list them.
DEFAULT_INCLUDE: tuple[str, ...] = (
    "MEMORY.md",
    "SOUL.md",
    "USER.md",
    "AGENTS.md",
    "IDENTITY.md",
    "memory/*.md",
    "scripts/",
    "config/",
    "~/.argentos/observations.db",
)
DEFAULT_EXCLUDE: tuple[str, ...] = ("*.log", "node_modules/", ".git/", "*.tmp", ".DS_Store")

# DESIGN §3 `components`.
DEFAULT_IDENTITY: tuple[str, ...] = (
    "SOUL.md",
    "IDENTITY.md",
    "USER.md",
    "AGENTS.md",
    "HEARTBEAT.md",
    "CONTEMPLATION.md",
    "TOOLS.md",
    ".argent-alignment-integrity.json",
)
DEFAULT_MEMORY: tuple[str, ...] = (
    "MEMORY.md",
    "memory/",
    "~/.argentos/observations.db",
    "~/.argentos/memory.db",
)
DEFAULT_CONFIG_PATHS: tuple[str, ...] = ("config/", "~/.argentos/argent.json")

ENCRYPTION_CHOICES: tuple[str, ...] = ("none", "passphrase", "age", "gpg")


def default_config_dict(
    *,
    workspace: str = "~/argent",
    repo: str = "~/backups/argent",
    encryption: str = "passphrase",
    recipients: Sequence[str] = (),
    key_id: str | None = None,
    identity_file: str | None = None,
) -> dict[str, object]:
    """The ArgentOS example config with `workspace`/`repo` filled in, plus `databases` and the
    retention defaults spelled out.

    `recipients` (age) and `key_id` (gpg) are written when given; without them an age or gpg
    config does not validate yet, which is right: `phx init` must supply the key it set up.
    """
    if encryption not in ENCRYPTION_CHOICES:
        raise ConfigError(f"encryption must be none, passphrase, age or gpg (got {encryption!r}); pick one of those")
    encryption_section: dict[str, object] = {
        "enabled": encryption != "none",
        # The ArgentOS example says "gpg" for a disabled section; keep it so `init` matches the docs.
        "method": "gpg" if encryption == "none" else encryption,
    }
    if encryption == "age":
        encryption_section["recipients"] = list(recipients)
        if identity_file is not None:
            encryption_section["identityFile"] = identity_file
    if encryption == "gpg" and key_id is not None:
        encryption_section["keyId"] = key_id
    return {
        "workspace": workspace,
        "backupDir": repo,
        "targets": {
            "local": {"enabled": True, "path": repo},
            "git": {
                "enabled": False,
                "repo": "git@github.com:youruser/agent-backup.git",
                "branch": "main",
                "autoCommit": True,
            },
            "s3": {
                "enabled": False,
                "bucket": "my-agent-backups",
                "prefix": "argent/",
                "storageClass": "STANDARD_IA",
            },
            "r2": {
                "enabled": False,
                "accountId": "YOUR_CLOUDFLARE_ACCOUNT_ID",
                "bucket": "agent-backups",
                "prefix": "argent/",
            },
        },
        "include": list(DEFAULT_INCLUDE),
        "exclude": list(DEFAULT_EXCLUDE),
        "compression": True,
        "retention": {"within": "1d", "last": 10, "daily": 7, "weekly": 4, "monthly": 12},
        "notifications": {"enabled": False, "onSuccess": "silent", "onFailure": "alert"},
        "encryption": encryption_section,
        "databases": {"sqlite": list(DEFAULT_SQLITE), "postgres": [], "redis": []},
    }
