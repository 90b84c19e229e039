"""Small use cases: `init`, `list`, `unlock`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phoenix_backup.config import (
    Config,
    default_config_dict,
    find_config_path,
    load_config,
    write_config,
)
from phoenix_backup.config.defaults import SEARCH_PATHS
from phoenix_backup.errors import ConfigError, KeyChanged, MissingCredentials, PhoenixError, RepositoryError, UsageError
from phoenix_backup.ops import leftovers
from phoenix_backup.ops.context import Environment, enabled_targets, open_repository, target_backend
from phoenix_backup.repo import keys as keyslots
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
    method = encryption or "passphrase"
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


def load(envx: Environment, config_path: str | None, location: str | None = None) -> Config:
    """The config; with `location` (`--repo`, `PHX_REPOSITORY`) reading from that repository alone,
    from the config file when there is one, else from the ArgentOS defaults (a new machine).
    First, every command removes what killed restores left in the user's folders."""
    removed = leftovers.clean()
    if removed:
        envx.notice(f"removed {len(removed)} temporary file(s) a killed restore left behind (e.g. {removed[0]})")
    if location is None:
        return load_config(find_config_path(config_path, envx.env), envx.env)
    from phoenix_backup.config.location import config_for_location

    explicit = config_path or envx.env.get("PHX_CONFIG")
    try:
        base: Config | None = load_config(find_config_path(config_path, envx.env), envx.env)
    except ConfigError:
        if explicit:
            raise  # a config that was asked for must exist
        base = None
    return config_for_location(location, envx.env, base)


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


def list_snapshots(cfg: Config, envx: Environment, *, target: str | None = None) -> list[SnapshotSummary]:
    """Snapshots of the first target, each with the enabled targets that hold it; with `target`
    (or `envx.target`), the snapshots of that target alone. A target that cannot be listed is
    reported as a notice and simply holds nothing in the column."""
    name = target or envx.target
    repo = open_repository(cfg, envx, target=name)
    try:
        snaps = repo.list_snapshots()
    finally:
        repo.close()
    if name is not None:
        return [SnapshotSummary(s, (name,)) for s in snaps]
    names = enabled_targets(cfg)
    holders: dict[str, list[str]] = {s.id: [names[0]] for s in snaps}
    for other in names[1:]:
        backend = target_backend(cfg, envx, other)
        try:
            held = {info.name.split("/")[-1] for info in backend.list("snapshots/")}
        except PhoenixError as exc:
            envx.notice(f"could not list target {other}: {exc}")
            continue
        finally:
            backend.close()
        for sid, where in holders.items():
            if sid in held:
                where.append(other)
    return [SnapshotSummary(s, tuple(holders[s.id])) for s in snaps]


def unlock(cfg: Config, envx: Environment, *, remove_all: bool = False) -> list[LockInfo]:
    repo: Repository = open_repository(cfg, envx)
    return repo.locks.unlock(remove_all=remove_all)


@dataclass(frozen=True)
class KeySlotInfo:
    id: str
    type: str
    label: str
    created: str
    host: str
    username: str
    current: bool  # the slot that opened the repository in this run
    # "ok": its sealed metadata is authenticated by the repository's key; "unverified": a format 1
    # slot (metadata in the clear); "other key": sealed under other secrets (a planted slot, or
    # a leftover of an interrupted `phx key rotate`).
    status: str = "ok"

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "type": self.type,
            "label": self.label,
            "created": self.created,
            "host": self.host,
            "username": self.username,
            "current": self.current,
            "status": self.status,
        }


@contextmanager
def locked_exclusively(cfg: Config, envx: Environment, command: str) -> Iterator[Repository]:
    """The repository of the first target, opened and held under an exclusive lock for the
    block: what key commands need, so that their checks (the last slot, the slot that opened the
    repository) still hold when they write. Two key commands at once: the second waits for
    nothing and fails with `RepositoryLocked`, naming the first."""
    repo = open_repository(cfg, envx)
    try:
        with repo.lock(exclusive=True, command=command):
            yield repo
    finally:
        repo.close()


@dataclass(frozen=True)
class KeyListing:
    repository: str  # the repository id
    fingerprint: str  # of the key that opened it (the pinned one)
    slots: list[KeySlotInfo]


def key_list(cfg: Config, envx: Environment) -> KeyListing:
    repo = open_repository(cfg, envx)
    slots = []
    for raw in Repository.read_key_slots(repo.backend):
        s = raw.with_info(repo.secrets)
        status = "unverified" if s.version == 1 else ("ok" if s.info is not None else "other key")
        current = s.id == repo.opened_with
        slots.append(KeySlotInfo(s.id, s.type, s.label, s.created, s.host, s.username, current, status))
    slots.sort(key=lambda s: (s.created, s.id))
    return KeyListing(repo.config.id, repo.secrets.fingerprint, slots)


@dataclass(frozen=True)
class TrustResult:
    repository: str
    location: str
    fingerprint: str
    previous: str | None  # the fingerprint pinned before, if any

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "location": self.location,
            "fingerprint": self.fingerprint,
            "previous": self.previous,
        }


def key_trust(cfg: Config, envx: Environment, fingerprint: str) -> TrustResult:
    """`phx key trust FINGERPRINT`: pin the repository of the first target (or `--target`) to the
    key with this fingerprint, after the user checked it (a rotation on another machine, a
    repository re-created on purpose, or ahead of a first use on a new machine). Opens the
    repository without the pin, and pins only when its key has exactly this fingerprint."""
    from phoenix_backup.ops.context import credentials, pins

    try:
        wanted = keyslots.format_fingerprint(fingerprint)
    except ValueError as exc:
        raise UsageError(f"{exc}; copy it from `phx key list` or `phx key rotate` on a machine you trust") from None
    name = envx.target or enabled_targets(cfg)[0]
    backend = target_backend(cfg, envx, name)
    try:
        config = Repository.read_config(backend)
        store = pins(envx)
        previous = store.get(config.id)
        try:
            # Checked as if `wanted` were pinned: a slot of any other key is refused as always.
            repo = Repository.open(backend, credentials(cfg, envx), pins=store, expect=wanted)
        except KeyChanged:
            raise KeyChanged(
                f"the repository at {backend.location} does not have the key {wanted}; nothing was trusted "
                "(check the fingerprint again on the machine that created or rotated it)"
            ) from None
        store.record(config.id, backend.location, wanted, format=repo.config.version, retrust=True)
    finally:
        backend.close()
    return TrustResult(config.id, backend.location, wanted, previous.fingerprint if previous else None)


def new_passphrase(envx: Environment) -> str:
    """The new passphrase for `key add`/`key passwd`: PHX_NEW_PASSPHRASE, or asked twice."""
    value = envx.env.get("PHX_NEW_PASSPHRASE")
    if value:
        return value
    if envx.interactive and envx.prompt is not None:
        first = envx.prompt("New passphrase: ")
        if first and envx.prompt("Repeat the new passphrase: ") == first:
            return first
        raise UsageError("the new passphrases are empty or do not match; run the command again")
    raise MissingCredentials("no new passphrase given; set PHX_NEW_PASSPHRASE or run on a terminal to be asked")


def key_add(
    cfg: Config,
    envx: Environment,
    *,
    method: str,
    recipients: tuple[str, ...] = (),
    key_id: str | None = None,
) -> KeySlotInfo:
    """Add a key slot wrapping the same master secrets; no data is rewritten."""
    with locked_exclusively(cfg, envx, "key add") as repo:
        return _key_add(repo, envx, method=method, recipients=recipients, key_id=key_id)


@dataclass(frozen=True)
class WriteOnlyResult:
    """`phx key add --method age --write-only`: the repository became (or stays) write-only."""

    repository: str
    slot: KeySlotInfo
    recipients: tuple[str, ...]
    removed: list[str]  # key slots removed
    index_rewritten: int
    snapshots: int  # in this machine's record
    key_path: Path | None  # this machine's write key
    targets: dict[str, Any]  # target -> replication report

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "slot": self.slot.to_json(),
            "recipients": list(self.recipients),
            "removed": self.removed,
            "indexRewritten": self.index_rewritten,
            "snapshots": self.snapshots,
            "writeKey": str(self.key_path) if self.key_path else None,
            "targets": {name: report.to_json() for name, report in self.targets.items()},
        }


def key_add_write_only(cfg: Config, envx: Environment, recipients: tuple[str, ...]) -> WriteOnlyResult:
    """Make the repository write-only for `recipients` (docs/write-only.md): no data pack is
    rewritten; the other key slots go, so that nothing this machine holds opens it afterwards; the
    other targets follow at once (as `phx sync` would)."""
    from phoenix_backup.ops.context import credentials
    from phoenix_backup.ops.replicate import replicate_all
    from phoenix_backup.repo.writer import convert, store_root
    from phoenix_backup.storage.targets import refuse_append_only

    if not recipients:
        raise UsageError("give the recipients that will read the repository: --recipient age1... (repeatable)")
    keyslots.wrap_age(keyslots.MasterSecrets.generate(), recipients)  # each recipient is checked first
    refuse_append_only(cfg, enabled_targets(cfg)[:1], "`phx key add --write-only` (it replaces the config)")
    with locked_exclusively(cfg, envx, "key add --write-only") as repo:
        if not repo.config.encrypted:
            raise UsageError("the repository is not encrypted; start a write-only one with `phx init --write-only`")
        held = {
            str(keyslots.parse_identity(i, n).to_public()) for n, i in enumerate(credentials(cfg, envx).age_identities)
        }
        if repo.config.write_only is None and held & set(recipients):
            envx.notice(
                "warning: this machine holds the identity of a recipient (encryption.identityFile or "
                "PHX_IDENTITY_FILE): if it is the machine that backs up, move the identity away, or it reads everything"
            )
        done = convert(repo, recipients, store_root(envx.env))
    slot = done.slot
    info = KeySlotInfo(slot.id, slot.type, slot.label, slot.created, slot.host, slot.username, True)
    try:
        targets = replicate_all(done.repository, cfg, envx)
    finally:
        done.repository.close()
    return WriteOnlyResult(
        done.repository.config.id,
        info,
        done.recipients,
        done.removed,
        done.index_rewritten,
        done.snapshots,
        done.key_path,
        dict(targets),
    )


def _key_add(
    repo: Repository, envx: Environment, *, method: str, recipients: tuple[str, ...], key_id: str | None
) -> KeySlotInfo:
    if not repo.config.encrypted:
        raise UsageError("the repository is not encrypted; key slots of other kinds would protect nothing")
    if repo.config.write_only is not None:
        raise UsageError(
            "the repository is write-only: only the age identities of its recipients read it; add a recipient "
            "with `phx key add --method age --write-only --recipient age1...`"
        )
    if method == "passphrase":
        slot = keyslots.wrap_passphrase(repo.secrets, new_passphrase(envx))
    elif method == "age":
        if not recipients:
            raise UsageError("give the age recipient with --recipient age1...")
        slot = keyslots.wrap_age(repo.secrets, recipients)
    elif method == "gpg":
        if not key_id:
            raise UsageError("give the GPG key with --key-id KEYID")
        gnupg = envx.env.get("GNUPGHOME")
        slot = keyslots.wrap_gpg(repo.secrets, key_id, homedir=Path(gnupg) if gnupg else None)
    else:
        raise UsageError(f"unknown key method {method!r}; use passphrase, age or gpg")
    repo.add_key_slot(slot)
    return KeySlotInfo(slot.id, slot.type, slot.label, slot.created, slot.host, slot.username, False)


def key_remove(cfg: Config, envx: Environment, slot_id: str) -> None:
    # Under the exclusive lock the count of slots cannot change between the last-slot check
    # and the delete: two removals at once can never leave `keys/` empty.
    with locked_exclusively(cfg, envx, "key remove") as repo:
        repo.remove_key_slot(slot_id)


def key_passwd(cfg: Config, envx: Environment) -> KeySlotInfo:
    """Replace the passphrase slot that opened the repository with one for a new passphrase."""
    with locked_exclusively(cfg, envx, "key passwd") as repo:
        return _key_passwd(repo, envx)


def _key_passwd(repo: Repository, envx: Environment) -> KeySlotInfo:
    old = next((s for s in Repository.read_key_slots(repo.backend) if s.id == repo.opened_with), None)
    if old is None:
        raise RepositoryError(
            f"the key slot {repo.opened_with} that opened the repository was removed meanwhile; "
            "see `phx key list` and run the command again"
        )
    if old.type != "passphrase":
        raise UsageError(f"the repository was opened with a {old.type} key slot; `passwd` changes passphrases only")
    slot = keyslots.wrap_passphrase(repo.secrets, new_passphrase(envx))
    # The new slot is durable before the old one goes: a crash in between leaves both.
    repo.add_key_slot(slot)
    repo.backend.delete(f"keys/{old.id}")
    return KeySlotInfo(slot.id, slot.type, slot.label, slot.created, slot.host, slot.username, True)
