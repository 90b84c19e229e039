"""`phx init`: write a config with the ArgentOS defaults and create the first target's repository."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from phoenix_backup.config import Config, default_config_dict, load_config, write_config
from phoenix_backup.config.defaults import SEARCH_PATHS
from phoenix_backup.errors import ConfigError, UsageError
from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, target_backend


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    config_written: bool
    repository: str
    repository_created: bool
    encryption: str
    fingerprint: str = ""  # the repository's key fingerprint (`MasterSecrets.fingerprint`)
    workspace: Path | None = None
    workspace_exists: bool = True

    def to_json(self) -> dict[str, object]:
        return {
            "config": str(self.config_path),
            "configWritten": self.config_written,
            "repository": self.repository,
            "repositoryCreated": self.repository_created,
            "encryption": self.encryption,
            "fingerprint": self.fingerprint,
            "workspace": str(self.workspace) if self.workspace is not None else None,
            "workspaceExists": self.workspace_exists,
        }


# Options that shape a new config file: given with an existing config, they need --force.
_CONFIG_OPTIONS = ("workspace", "repo", "encryption", "recipients", "key_id", "identity_file", "write_only")


def init(
    envx: Environment,
    *,
    config_path: str | None = None,
    workspace: str | None = None,
    repo: str | None = None,
    encryption: str | None = None,
    force: bool = False,
    recipients: tuple[str, ...] = (),
    key_id: str | None = None,
    identity_file: str | None = None,
    kdf_params: Mapping[str, int] | None = None,
    write_only: bool = False,
) -> InitResult:
    """Write a config with the ArgentOS defaults (passphrase encryption unless `encryption` says
    otherwise) and create the repository at its first target: the only command that creates a
    first target's repository, so a backup never makes one on a disk that is not mounted.

    With an existing config file and none of the options that shape a new one, the repository of
    that config is created (a hand-written or restored config). `kdf_params` are the scrypt
    parameters of a passphrase slot (default n=2**15, r=8, p=1)."""
    target = Path(config_path or envx.env.get("PHX_CONFIG") or str(envx.home / SEARCH_PATHS[0].removeprefix("~/")))
    given: dict[str, object] = {
        "workspace": workspace,
        "repo": repo,
        "encryption": encryption,
        "recipients": recipients,
    }
    given |= {"key_id": key_id, "identity_file": identity_file, "write_only": write_only}
    # A key option of another method was dropped without a word: `phx init --recipient age1...`
    # (no --encryption) made a passphrase repository, exit 0, and wrote no recipient anywhere.
    method = encryption or "passphrase"
    for option, value, wants in (
        ("--recipient", recipients, "age"),
        ("--key-id", key_id, "gpg"),
        ("--identity-file", identity_file, "age"),
    ):
        if value and method != wants:
            raise UsageError(
                f"{option} is for --encryption {wants}, and this init would make a {method} repository "
                f"(--encryption {encryption or 'passphrase, the default'}); add --encryption {wants} or drop {option}"
            )
    if any(not r.strip() for r in recipients):
        raise UsageError("--recipient is empty; give an age public key (age1..., `age-keygen -y KEYFILE` prints it)")
    if write_only and encryption != "age":
        raise UsageError(
            "--write-only needs --encryption age and the --recipient of the machine you restore on "
            "(this machine keeps only the recipients and a write key); see docs/write-only.md"
        )
    if target.exists() and not force:
        if any(given[name] for name in _CONFIG_OPTIONS):
            raise ConfigError(
                f"config file {target} already exists; pass --force to replace it (the repository is left as it is)"
            )
        cfg = load_config(target, envx.env)
        return _init_repository(cfg, envx, target, False, _method(cfg), kdf_params)
    # Said in the options' words: the config's (`encryption.recipients is required`) name a file
    # this command has not written yet.
    if method == "age" and not recipients:
        raise UsageError("--encryption age needs --recipient age1... (the public key of an age identity: `age-keygen`)")
    if method == "gpg" and not key_id:
        raise UsageError("--encryption gpg needs --key-id KEYID (your GPG key's id or fingerprint: `gpg --list-keys`)")
    # Paths typed on the command line are relative to where it runs; a config reads relative paths
    # from its own folder, so they are written out whole (`cd ~ && phx init --workspace argent`).
    workspace, repo, identity_file = (_from_here(p) for p in (workspace, repo, identity_file))
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
        encryption=method,
        **kwargs,  # type: ignore[arg-type]
    )
    from phoenix_backup.config import parse_config

    if write_only:
        data["encryption"]["writeOnly"] = True  # type: ignore[index]
    cfg = parse_config(data, target, envx.env)  # validate before writing anything
    result = _init_repository(cfg, envx, target, True, method, kdf_params)
    write_config(target, data, force=force)
    return result


def _from_here(path: str | None) -> str | None:
    if not path or path.startswith(("~", "$")) or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def _method(cfg: Config) -> str:
    return cfg.encryption.method if cfg.encryption.enabled else "none"


def _init_repository(
    cfg: Config,
    envx: Environment,
    config_file: Path,
    writes_config: bool,
    method: str,
    kdf_params: Mapping[str, int] | None,
) -> InitResult:
    if method == "none":
        envx.notice(
            "warning: the repository is not encrypted (--encryption none): anyone who can read it can read "
            "the agent's memory and identity"
        )
    if not cfg.workspace.is_dir():
        envx.notice(
            f"warning: the workspace {cfg.workspace} does not exist yet; create it, or fix `workspace` in "
            f"{config_file}, before the first backup"
        )
    backend = target_backend(cfg, envx, enabled_targets(cfg)[0])
    try:
        exists = backend.exists()
    finally:
        backend.close()
    if exists:
        envx.notice(f"a repository already exists at {backend.location}; it was left as it is")
    # Raises RepositoryExists for a non-empty folder that holds no repository.
    repository = open_repository(cfg, envx, create=not exists, kdf_params=kdf_params)
    try:
        fingerprint = repository.secrets.fingerprint
    finally:
        repository.close()
    return InitResult(
        config_file,
        writes_config,
        backend.location,
        not exists,
        method,
        fingerprint,
        cfg.workspace,
        cfg.workspace.is_dir(),
    )
