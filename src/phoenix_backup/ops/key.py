"""`phx key list|add|remove|passwd|trust`: the repository's key slots, and this user's pin of its key
(`phx key rotate` is ops/key_rotate.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phoenix_backup.config import Config
from phoenix_backup.dirs import env_path
from phoenix_backup.errors import KeyChanged, MissingCredentials, RepositoryError, RepositoryNotFound, UsageError
from phoenix_backup.ops.context import Environment, as_passphrase, enabled_targets, open_repository, target_backend
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.targets import refuse_append_only

if TYPE_CHECKING:
    from phoenix_backup.repo.replicate import TargetReport


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
    from phoenix_backup.ops.context import no_repository, open_as_given, pins

    try:
        wanted = keyslots.format_fingerprint(fingerprint)
    except ValueError as exc:
        raise UsageError(f"{exc}; copy it from `phx key list` or `phx key rotate` on a machine you trust") from None
    names = enabled_targets(cfg)
    name = envx.target or names[0]
    backend = target_backend(cfg, envx, name)
    try:
        if not backend.exists():  # the first command on a new machine: where the repository is, if near
            Repository.refuse_lost_config(backend)
            raise RepositoryNotFound(no_repository(backend, name, first=name == names[0]))
        store = pins(envx)
        try:
            # Checked as if `wanted` were pinned: a slot of any other key is refused as always.
            repo = open_as_given(cfg, envx, backend, store=store, expect=wanted)
        except KeyChanged:
            raise KeyChanged(
                f"the repository at {backend.location} does not have the key {wanted}; nothing was trusted "
                "(check the fingerprint again on the machine that created or rotated it)"
            ) from None
        # The id of the config the key authenticated, not of one read before (a store that answers
        # two reads differently must not move the pin of another repository).
        config = repo.config
        previous = store.get(config.id)
        store.record(
            config.id,
            backend.location,
            wanted,
            format=repo.config.version,
            write_only=repo.config.write_only is not None,
            retrust=True,
        )
    finally:
        backend.close()
    return TrustResult(config.id, backend.location, wanted, previous.fingerprint if previous else None)


def new_passphrase(envx: Environment) -> str:
    """The new passphrase for `key add`/`key passwd`: PHX_NEW_PASSPHRASE (read as PHX_PASSPHRASE
    is, `as_passphrase`: a slot set from it opens with either), or asked twice."""
    value = envx.env.get("PHX_NEW_PASSPHRASE")
    if value:
        return as_passphrase(value, "PHX_NEW_PASSPHRASE").secret  # blank: refused as a new passphrase
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
    targets: dict[str, TargetReport]  # target -> replication report

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
    from phoenix_backup.ops.sync import replicate_all
    from phoenix_backup.repo.writeonly import store_root
    from phoenix_backup.repo.writer import convert

    if not recipients:
        raise UsageError("give the recipients that will read the repository: --recipient age1... (repeatable)")
    keyslots.wrap_age(keyslots.MasterSecrets.generate(), recipients)  # each recipient is checked first
    refuse_append_only(cfg, enabled_targets(cfg)[:1], "key add --write-only", "it replaces the config")
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
        targets = replicate_all(done.repository, cfg, envx, ran="key add --write-only")
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
        gnupg = env_path(envx.env, "GNUPGHOME")
        slot = keyslots.wrap_gpg(repo.secrets, key_id, homedir=gnupg)
    else:
        raise UsageError(f"unknown key method {method!r}; use passphrase, age or gpg")
    repo.add_key_slot(slot)
    return KeySlotInfo(slot.id, slot.type, slot.label, slot.created, slot.host, slot.username, False)


def key_remove(cfg: Config, envx: Environment, slot_id: str) -> None:
    refuse_append_only(cfg, enabled_targets(cfg)[:1], "key remove", "it deletes a key slot")
    # Under the exclusive lock the count of slots cannot change between the last-slot check
    # and the delete: two removals at once can never leave `keys/` empty.
    with locked_exclusively(cfg, envx, "key remove") as repo:
        repo.remove_key_slot(slot_id)


def key_passwd(cfg: Config, envx: Environment) -> KeySlotInfo:
    """Replace the passphrase slot that opened the repository with one for a new passphrase."""
    refuse_append_only(cfg, enabled_targets(cfg)[:1], "key passwd", "it deletes the old key slot")
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
    # Confirmed again before the delete: a suspend or a lock removed while the new slot was
    # written stops here, and both passphrases open the repository (`phx key remove` the old one).
    repo.confirmer.now(
        f"the old passphrase's key slot {old.id} was not deleted (both passphrases open the repository; "
        f"`phx key remove {old.id}` removes it)"
    )
    repo.backend.delete(f"keys/{old.id}")
    return KeySlotInfo(slot.id, slot.type, slot.label, slot.created, slot.host, slot.username, True)
