"""Small use cases: `init`, `list`, `unlock`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phoenix_backup.config import (
    Config,
    default_config_dict,
    find_config_path,
    load_config,
    write_config,
)
from phoenix_backup.config.defaults import SEARCH_PATHS
from phoenix_backup.errors import ConfigError
from phoenix_backup.ops.context import Environment, local_backend, open_repository
from phoenix_backup.repo.locks import LockInfo
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    config_written: bool
    repository: str
    repository_created: bool
    encryption: str

    def to_json(self) -> dict[str, object]:
        return {
            "config": str(self.config_path),
            "configWritten": self.config_written,
            "repository": self.repository,
            "repositoryCreated": self.repository_created,
            "encryption": self.encryption,
        }


def init(
    envx: Environment,
    *,
    config_path: str | None = None,
    workspace: str | None = None,
    repo: str | None = None,
    encryption: str = "none",
    force: bool = False,
    recipients: tuple[str, ...] = (),
    key_id: str | None = None,
    identity_file: str | None = None,
) -> InitResult:
    """Write the seed's example config and create the repository at its local target."""
    target = Path(config_path or envx.env.get("PHX_CONFIG") or str(envx.home / SEARCH_PATHS[0].removeprefix("~/")))
    kwargs: dict[str, object] = {}
    if recipients:
        kwargs["recipients"] = list(recipients)
    if key_id:
        kwargs["key_id"] = key_id
    if identity_file:
        kwargs["identity_file"] = identity_file
    data = default_config_dict(
        workspace=workspace or "~/argent",
        repo=repo or "~/backups/argent",
        encryption=encryption,
        **kwargs,  # type: ignore[arg-type]
    )
    existed = target.exists()
    if existed and not force:
        raise ConfigError(
            f"config file {target} already exists; pass --force to replace it (the repository is left as it is)"
        )
    from phoenix_backup.config import parse_config

    cfg = parse_config(data, target, envx.env)  # validate before writing anything
    backend = local_backend(cfg)
    created = False
    if not backend.exists():
        # Raises RepositoryExists for a non-empty folder that holds no repository.
        open_repository(cfg, envx, create=True)
        created = True
    else:
        envx.notice(f"a repository already exists at {backend.location}; it was left as it is")
    write_config(target, data, force=force)
    return InitResult(target, True, backend.location, created, encryption)


def load(envx: Environment, config_path: str | None) -> Config:
    return load_config(find_config_path(config_path, envx.env), envx.env)


@dataclass(frozen=True)
class SnapshotSummary:
    snapshot: Snapshot
    targets: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        s = self.snapshot
        return {
            "id": s.id,
            "shortId": s.id[:8],
            "name": s.name,
            "time": s.time,
            "host": s.host,
            "username": s.username,
            "scope": s.scope,
            "tags": list(s.tags),
            "files": s.stats.files,
            "size": s.stats.size,
            "added": s.stats.added,
            "databases": [d.path for d in s.databases],
            "incomplete": len(s.incomplete),
            "targets": list(self.targets),
            "parent": s.parent,
        }


def list_snapshots(cfg: Config, envx: Environment) -> list[SnapshotSummary]:
    repo = open_repository(cfg, envx)
    return [SnapshotSummary(s, ("local",)) for s in repo.list_snapshots()]


def unlock(cfg: Config, envx: Environment, *, remove_all: bool = False) -> list[LockInfo]:
    repo: Repository = open_repository(cfg, envx)
    return repo.locks.unlock(remove_all=remove_all)
