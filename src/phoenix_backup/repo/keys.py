"""Master secrets and the key slots that wrap them (passphrase, age, gpg, none).

A repository has one set of random master secrets, chosen once at `init` and never changed: they
key the AEAD of every object, the BLAKE3 blob ids and the FastCDC gear table. Each key slot (one
`keys/…` object) holds those secrets wrapped for one way of opening the repository, so slots can
be added and removed (`phx key add|remove|passwd`) without rewriting a single data pack.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
import os
import secrets as _random
import shutil
import socket
import subprocess
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

import pyrage
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from phoenix_backup.errors import (
    CorruptObject,
    MissingCredentials,
    ToolMissing,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)

__all__ = [
    "DEFAULT_SCRYPT_PARAMS",
    "KEY_SLOT_FORMAT_VERSION",
    "MASTER_SECRETS_FORMAT_VERSION",
    "Credentials",
    "KeySlot",
    "MasterSecrets",
    "SlotType",
    "load_age_identities",
    "open_any",
    "unwrap",
    "wrap_age",
    "wrap_gpg",
    "wrap_none",
    "wrap_passphrase",
]

SlotType = Literal["passphrase", "age", "gpg", "none"]
SLOT_TYPES: tuple[str, ...] = get_args(SlotType)

MASTER_SECRETS_FORMAT_VERSION = 1
KEY_SLOT_FORMAT_VERSION = 1

KEY_LENGTH = 32
SEED_LIMIT = 2**63  # the chunker seed is a positive signed 64-bit integer (0 < seed < 2**63)
SLOT_ID_HEX_LENGTH = 16
NONCE_LENGTH = 12  # the AES-GCM standard nonce; random is safe: each slot seals exactly once
TAG_LENGTH = 16
SALT_LENGTH = 16

# The domain string bound into every passphrase slot's AEAD (followed by the slot id, see
# `_slot_aad`): a version bump of the slot format changes it, so old code cannot misread new data.
SLOT_AAD_PREFIX = b"phoenix-key-slot-v1"

# scrypt n=2**15, r=8, p=1 costs about 100 ms and 32 MiB (128 * n * r bytes) on a current laptop:
# slow enough that guessing passphrases offline is expensive, cheap enough for a Raspberry Pi or a
# small VPS running hourly backups, and the parameters RFC 7914 and the `cryptography` docs suggest
# for interactive logins. Stored per slot, so `phx key passwd` can raise them later.
DEFAULT_SCRYPT_PARAMS: Mapping[str, int] = {"n": 2**15, "r": 8, "p": 1}

# Ceilings for scrypt parameters read from a key slot. A key slot is repository data, and a hostile
# (or corrupt) one must not make us allocate gigabytes or spin for hours before the AEAD tag can
# even say "wrong passphrase". 128 * n * r is the memory scrypt needs; 1 GiB still allows ~30x
# today's default.
SCRYPT_MAX_N = 2**22
SCRYPT_MAX_R = 32
SCRYPT_MAX_P = 16
SCRYPT_MAX_MEMORY = 2**30

# 2 KiB is far above any legitimate scrypt salt; it only stops absurd inputs.
SALT_MAX_LENGTH = 2048


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: object, what: str) -> bytes:
    """Strict standard base64 (RFC 4648, padded); anything else is corruption."""
    if not isinstance(value, str):
        raise CorruptObject(
            f"{what} is not a base64 string; the key slot is damaged, open the repository with "
            "another key slot or restore the keys/ object from another target"
        )
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CorruptObject(
            f"{what} is not valid base64; the key slot is damaged, open the repository with "
            "another key slot or restore the keys/ object from another target"
        ) from None


def _is_int(value: object) -> bool:
    # JSON true/false load as bool, a subclass of int: never accept them as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        loaded = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptObject(
            f"{what} is not valid UTF-8 JSON; it is damaged, open the repository with another key "
            "slot or restore the keys/ object from another target"
        ) from None
    if not isinstance(loaded, dict):
        raise CorruptObject(
            f"{what} is not a JSON object; it is damaged, open the repository with another key "
            "slot or restore the keys/ object from another target"
        )
    return loaded


def _check_version(document: Mapping[str, Any], supported: int, what: str) -> None:
    version = document.get("version")
    if not _is_int(version):
        raise CorruptObject(
            f"{what} has no valid format version; it is damaged, open the repository with "
            "another key slot or restore the keys/ object from another target"
        )
    assert isinstance(version, int)
    if version > supported:
        raise UnsupportedFormat(f"{what} written by a newer Phoenix (format {version}); upgrade phoenix-backup")
    if version != supported:
        raise CorruptObject(
            f"{what} has unknown format version {version}; it is damaged, open the repository "
            "with another key slot or restore the keys/ object from another target"
        )


def _canonical_json(document: Mapping[str, object]) -> bytes:
    # Sorted keys and no whitespace: the same secrets or slot always serialise to the same bytes,
    # which keeps content-addressed names and golden files stable. ASCII-only output means a
    # lone surrogate in a host or user name cannot make the UTF-8 encoding fail.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --------------------------------------------------------------------------------------------
# Master secrets


@dataclass(frozen=True)
class MasterSecrets:
    """The repository's random secrets; `repr` hides them so they never reach a log or traceback."""

    encryption_key: bytes = field(repr=False)  # AES-256-GCM key for every repository object
    id_key: bytes = field(repr=False)  # BLAKE3 key for blob ids (also in unencrypted repositories)
    chunker_seed: int = field(repr=False)  # FastCDC gear seed, so chunk boundaries leak nothing

    def __post_init__(self) -> None:
        problem = _master_secrets_problem(self.encryption_key, self.id_key, self.chunker_seed)
        if problem is not None:
            raise ValueError(problem)

    @classmethod
    def generate(cls) -> MasterSecrets:
        return cls(
            encryption_key=os.urandom(KEY_LENGTH),
            id_key=os.urandom(KEY_LENGTH),
            chunker_seed=_random.randbelow(SEED_LIMIT - 1) + 1,
        )

    def to_bytes(self) -> bytes:
        return _canonical_json(
            {
                "encryptionKey": _b64encode(self.encryption_key),
                "idKey": _b64encode(self.id_key),
                "chunkerSeed": self.chunker_seed,
                "version": MASTER_SECRETS_FORMAT_VERSION,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> MasterSecrets:
        what = "the master secrets in the key slot"
        document = _load_json_object(data, what)
        _check_version(document, MASTER_SECRETS_FORMAT_VERSION, "master secrets")
        encryption_key = _b64decode(document.get("encryptionKey"), "encryptionKey")
        id_key = _b64decode(document.get("idKey"), "idKey")
        seed = document.get("chunkerSeed")
        if not _is_int(seed):
            raise CorruptObject(
                f"{what} have no integer chunkerSeed; the key slot is damaged, open the "
                "repository with another key slot or restore the keys/ object from another target"
            )
        assert isinstance(seed, int)
        problem = _master_secrets_problem(encryption_key, id_key, seed)
        if problem is not None:
            raise CorruptObject(
                f"{what} are invalid ({problem}); the key slot is damaged, open the repository "
                "with another key slot or restore the keys/ object from another target"
            )
        return cls(encryption_key=encryption_key, id_key=id_key, chunker_seed=seed)


def _master_secrets_problem(encryption_key: object, id_key: object, seed: object) -> str | None:
    if not isinstance(encryption_key, bytes) or len(encryption_key) != KEY_LENGTH:
        return f"encryptionKey must be {KEY_LENGTH} bytes"
    if not isinstance(id_key, bytes) or len(id_key) != KEY_LENGTH:
        return f"idKey must be {KEY_LENGTH} bytes"
    if not _is_int(seed) or not 0 < cast(int, seed) < SEED_LIMIT:
        return "chunkerSeed must be an integer with 0 < chunkerSeed < 2**63"
    return None


# --------------------------------------------------------------------------------------------
# Key slots


@dataclass(frozen=True)
class KeySlot:
    """One way to open the repository: metadata in the clear, the master secrets wrapped."""

    id: str  # 16 random hex characters; also the AEAD associated data of passphrase slots
    type: SlotType
    created: str  # RFC 3339, UTC
    host: str
    username: str
    label: str  # what `phx key list` shows: "passphrase", "age age1abc…", "gpg KEYID"
    params: dict[str, object]  # kdf parameters, age recipients or gpg key id (never secret)
    data: bytes = field(repr=False)  # the wrapped master secrets

    def to_json(self) -> bytes:
        return _canonical_json(
            {
                "version": KEY_SLOT_FORMAT_VERSION,
                "id": self.id,
                "type": self.type,
                "created": self.created,
                "host": self.host,
                "username": self.username,
                "label": self.label,
                "params": self.params,
                "data": _b64encode(self.data),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> KeySlot:
        document = _load_json_object(raw, "key slot")
        _check_version(document, KEY_SLOT_FORMAT_VERSION, "key slot")

        def damaged(problem: str) -> CorruptObject:
            return CorruptObject(
                f"key slot {problem}; it is damaged, open the repository with another key slot "
                "or restore the keys/ object from another target"
            )

        slot_id = document.get("id")
        if not isinstance(slot_id, str) or not _is_slot_id(slot_id):
            raise damaged(f"id must be {SLOT_ID_HEX_LENGTH} lowercase hex characters")
        slot_type = document.get("type")
        if not isinstance(slot_type, str):
            raise damaged(f"{slot_id} has no type")
        if slot_type not in SLOT_TYPES:
            # A well-formed slot of a type we do not know was written by a newer Phoenix.
            raise UnsupportedFormat(
                f"key slot {slot_id} has type {slot_type!r}, unknown to this version; upgrade phoenix-backup"
            )
        strings: dict[str, str] = {}
        for name in ("created", "host", "username", "label"):
            value = document.get(name)
            if not isinstance(value, str):
                raise damaged(f"{slot_id} has no string {name!r}")
            strings[name] = value
        params = document.get("params")
        if not isinstance(params, dict):
            raise damaged(f"{slot_id} has no params object")
        data = _b64decode(document.get("data"), f"key slot {slot_id} data")
        return cls(
            id=slot_id,
            type=cast(SlotType, slot_type),
            created=strings["created"],
            host=strings["host"],
            username=strings["username"],
            label=strings["label"],
            params=params,
            data=data,
        )


def _is_slot_id(value: str) -> bool:
    return len(value) == SLOT_ID_HEX_LENGTH and all(c in "0123456789abcdef" for c in value)


def _new_slot(slot_id: str, slot_type: SlotType, label: str, params: dict[str, object], data: bytes) -> KeySlot:
    return KeySlot(
        id=slot_id,
        type=slot_type,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=socket.gethostname(),
        username=_username(),
        label=label,
        params=params,
        data=data,
    )


def _username() -> str:
    # getpass.getuser() fails in containers whose uid has no passwd entry and no $USER.
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _new_slot_id() -> str:
    return _random.token_hex(SLOT_ID_HEX_LENGTH // 2)


def _slot_aad(slot_id: str) -> bytes:
    # Binding the slot id into the AEAD means a slot's ciphertext cannot be pasted under another
    # slot's metadata (its label, owner or kdf parameters) and still open: each wrapped secret
    # authenticates the slot it belongs to.
    return SLOT_AAD_PREFIX + slot_id.encode("ascii")


# --------------------------------------------------------------------------------------------
# Passphrase slots


def _scrypt_problem(n: object, r: object, p: object) -> str | None:
    """Why these scrypt parameters are unacceptable, or None when they are sane."""
    if not (_is_int(n) and _is_int(r) and _is_int(p)):
        return "n, r and p must be integers"
    n_, r_, p_ = cast(int, n), cast(int, r), cast(int, p)
    if n_ < 2 or n_ & (n_ - 1) or n_ > SCRYPT_MAX_N:
        return f"n must be a power of two between 2 and 2**22, not {n_}"
    if not 1 <= r_ <= SCRYPT_MAX_R:
        return f"r must be between 1 and {SCRYPT_MAX_R}, not {r_}"
    if not 1 <= p_ <= SCRYPT_MAX_P:
        return f"p must be between 1 and {SCRYPT_MAX_P}, not {p_}"
    if 128 * n_ * r_ > SCRYPT_MAX_MEMORY:
        return f"n={n_}, r={r_} needs {128 * n_ * r_ >> 20} MiB, more than the 1 GiB allowed"
    return None


def _normalize_passphrase(passphrase: str) -> bytes:
    # NFC, so the same passphrase typed on macOS (which may produce decomposed accents) and on
    # Linux derives the same key.
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


def _derive_kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=KEY_LENGTH, n=n, r=r, p=p).derive(_normalize_passphrase(passphrase))


def wrap_passphrase(secrets: MasterSecrets, passphrase: str, *, kdf_params: Mapping[str, int] | None = None) -> KeySlot:
    """Seal the secrets under a key derived from the passphrase with scrypt."""
    if not passphrase:
        raise UsageError("the passphrase is empty; choose a non-empty passphrase (or use --encryption none)")
    chosen = dict(DEFAULT_SCRYPT_PARAMS)
    if kdf_params is not None:
        unknown = sorted(set(kdf_params) - set(chosen))
        if unknown:
            raise UsageError(f"unknown scrypt parameter(s) {', '.join(unknown)}; use only n, r and p")
        chosen.update(kdf_params)
    problem = _scrypt_problem(chosen["n"], chosen["r"], chosen["p"])
    if problem is not None:
        raise UsageError(f"invalid scrypt parameters: {problem}; choose saner values")
    slot_id = _new_slot_id()
    salt = os.urandom(SALT_LENGTH)
    kek = _derive_kek(passphrase, salt, chosen["n"], chosen["r"], chosen["p"])
    nonce = os.urandom(NONCE_LENGTH)
    sealed = AESGCM(kek).encrypt(nonce, secrets.to_bytes(), _slot_aad(slot_id))
    params: dict[str, object] = {
        "kdf": "scrypt",
        "n": chosen["n"],
        "r": chosen["r"],
        "p": chosen["p"],
        "salt": _b64encode(salt),
    }
    return _new_slot(slot_id, "passphrase", "passphrase", params, nonce + sealed)


def _unwrap_passphrase(slot: KeySlot, passphrase: str) -> MasterSecrets | None:
    def damaged(problem: str) -> CorruptObject:
        return CorruptObject(
            f"key slot {slot.id} has {problem}; it is damaged or hostile, open the repository "
            "with another key slot or restore the keys/ object from another target"
        )

    params = slot.params
    if params.get("kdf") != "scrypt":
        raise damaged(f"unknown kdf {params.get('kdf')!r}")
    n, r, p = params.get("n"), params.get("r"), params.get("p")
    # Checked before running scrypt: its cost comes straight from these untrusted numbers.
    problem = _scrypt_problem(n, r, p)
    if problem is not None:
        raise damaged(f"unsafe scrypt parameters ({problem})")
    salt = _b64decode(params.get("salt"), f"key slot {slot.id} salt")
    if not SALT_LENGTH <= len(salt) <= SALT_MAX_LENGTH:
        raise damaged(f"a {len(salt)}-byte salt")
    if len(slot.data) < NONCE_LENGTH + TAG_LENGTH:
        raise damaged("truncated data")
    kek = _derive_kek(passphrase, salt, cast(int, n), cast(int, r), cast(int, p))
    nonce, sealed = slot.data[:NONCE_LENGTH], slot.data[NONCE_LENGTH:]
    try:
        plain = AESGCM(kek).decrypt(nonce, sealed, _slot_aad(slot.id))
    except InvalidTag:
        # A wrong passphrase and tampered bytes look the same, by design of the AEAD.
        return None
    return MasterSecrets.from_bytes(plain)


# --------------------------------------------------------------------------------------------
# age slots


def _parse_recipient(recipient: str) -> Any:
    try:
        return pyrage.x25519.Recipient.from_str(recipient.strip())
    except (pyrage.RecipientError, ValueError, TypeError):
        raise UsageError(
            f"age recipient {recipient!r} is not a valid X25519 public key; use the 'age1…' line "
            "printed by `age-keygen -y IDENTITY_FILE`"
        ) from None


def _parse_identity(identity: str, index: int) -> Any:
    try:
        return pyrage.x25519.Identity.from_str(identity.strip())
    except (pyrage.IdentityError, ValueError, TypeError):
        # Never echo the identity: it is a secret key.
        raise UsageError(
            f"age identity #{index + 1} is not a valid X25519 secret key; check the identity file "
            "holds 'AGE-SECRET-KEY-1…' lines written by age-keygen"
        ) from None


def wrap_age(secrets: MasterSecrets, recipients: Sequence[str]) -> KeySlot:
    """Encrypt the secrets to one or more age X25519 recipients (any of them can open the slot)."""
    if isinstance(recipients, str):  # a lone string is a Sequence[str] too: one recipient
        recipients = [recipients]
    cleaned = [r.strip() for r in recipients]
    if not cleaned:
        raise UsageError("no age recipient given; set encryption.recipients to at least one 'age1…' public key")
    parsed = [_parse_recipient(r) for r in cleaned]
    try:
        data = pyrage.encrypt(secrets.to_bytes(), parsed)
    except pyrage.EncryptError as error:
        raise UsageError(f"age could not encrypt to {', '.join(cleaned)} ({error}); check the recipients") from None
    label = f"age {cleaned[0][:12]}…"
    if len(cleaned) > 1:
        label += f" (+{len(cleaned) - 1} more)"
    params: dict[str, object] = {"recipients": list(cleaned)}
    return _new_slot(_new_slot_id(), "age", label, params, bytes(data))


def _unwrap_age(slot: KeySlot, identities: Sequence[str]) -> MasterSecrets | None:
    parsed = [_parse_identity(identity, i) for i, identity in enumerate(identities)]
    try:
        plain = pyrage.decrypt(slot.data, parsed)
    except pyrage.DecryptError:
        # No identity matches (or the ciphertext is damaged; age does not tell them apart).
        return None
    return MasterSecrets.from_bytes(bytes(plain))


def load_age_identities(path: Path) -> tuple[str, ...]:
    """Read an age identity file: `AGE-SECRET-KEY-1…` lines, `#` comments and blank lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"age identity file {path} does not exist; create it with `age-keygen -o {path}` or "
            "fix encryption.identityFile"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise UsageError(
            f"cannot read age identity file {path} ({reason}); check its permissions and content"
        ) from None
    identities: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.upper().startswith("AGE-SECRET-KEY-"):
            raise UsageError(
                f"line {number} of age identity file {path} is not an 'AGE-SECRET-KEY-1…' "
                "identity; only X25519 identities written by age-keygen are supported"
            )
        try:
            pyrage.x25519.Identity.from_str(stripped)
        except (pyrage.IdentityError, ValueError, TypeError):
            raise UsageError(
                f"line {number} of age identity file {path} is not a valid age identity; "
                "regenerate it with age-keygen or fix the file"
            ) from None
        identities.append(stripped)
    if not identities:
        raise UsageError(
            f"age identity file {path} holds no 'AGE-SECRET-KEY-1…' identity; point "
            "encryption.identityFile at the file written by age-keygen"
        )
    return tuple(identities)


# --------------------------------------------------------------------------------------------
# gpg slots


_GPG_MISSING = "gpg is not installed; install GnuPG (apt install gnupg) or choose another encryption method"


def _gpg_command(gpg: str, homedir: Path | None, *args: str) -> list[str]:
    # Without --homedir gpg itself honours $GNUPGHOME (inherited) and falls back to ~/.gnupg.
    binary = shutil.which(gpg)
    if binary is None:
        raise ToolMissing(_GPG_MISSING)
    command = [binary, "--batch", "--no-tty", "--quiet"]
    if homedir is not None:
        command += ["--homedir", str(homedir)]
    return [*command, *args]


def _run_gpg(command: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(command, input=data, capture_output=True, check=False)
    except FileNotFoundError:
        raise ToolMissing(_GPG_MISSING) from None


def wrap_gpg(secrets: MasterSecrets, key_id: str, *, gpg: str = "gpg", homedir: Path | None = None) -> KeySlot:
    """Encrypt the secrets to a GnuPG public key; opening needs its secret key (gpg-agent)."""
    key_id = key_id.strip()
    if not key_id or key_id.startswith("-") or any(c in key_id for c in "\r\n\0"):
        raise UsageError(
            f"gpg key id {key_id!r} is not a key id; set encryption.keyId to a fingerprint, "
            "key id or e-mail from `gpg --list-keys`"
        )
    command = _gpg_command(gpg, homedir, "--yes", "--trust-model", "always", "--encrypt", "--recipient", key_id)
    result = _run_gpg(command, secrets.to_bytes())
    if result.returncode != 0 or not result.stdout:
        detail = _gpg_detail(result.stderr)
        raise UsageError(
            f"gpg cannot encrypt to key {key_id!r} ({detail}); check that the public key is in "
            "your keyring and can encrypt with `gpg --list-keys " + key_id + "`"
        )
    params: dict[str, object] = {"keyId": key_id}
    return _new_slot(_new_slot_id(), "gpg", f"gpg {key_id}", params, result.stdout)


def _gpg_detail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line.removeprefix("gpg: ") for line in lines if line]
    return "; ".join(lines[-2:]) if lines else "no error message"


def _unwrap_gpg(slot: KeySlot, creds: Credentials) -> MasterSecrets | None:
    command = _gpg_command(creds.gpg_binary, creds.gpg_homedir, "--decrypt")
    result = _run_gpg(command, slot.data)
    if result.returncode != 0 or not result.stdout:
        return None  # no secret key here, agent refused, or damaged data: the slot did not open
    return MasterSecrets.from_bytes(result.stdout)


# --------------------------------------------------------------------------------------------
# Unencrypted repositories


def wrap_none(secrets: MasterSecrets) -> KeySlot:
    """Store the secrets in the clear, for unencrypted repositories.

    They still key the blob ids and seed the chunker, and keeping them in a slot gives every
    repository the same opening path.
    """
    return _new_slot(_new_slot_id(), "none", "none (unencrypted)", {}, secrets.to_bytes())


# --------------------------------------------------------------------------------------------
# Opening


@dataclass(frozen=True)
class Credentials:
    """What the user supplied to open a repository; gpg needs nothing but a usable keyring."""

    passphrase: str | None = field(default=None, repr=False)
    age_identities: tuple[str, ...] = field(default=(), repr=False)  # AGE-SECRET-KEY-1… strings
    gpg_homedir: Path | None = None
    gpg_binary: str = "gpg"


def unwrap(slot: KeySlot, creds: Credentials) -> MasterSecrets | None:
    """The master secrets if these credentials open this slot, else None.

    Raises CorruptObject for a damaged or hostile slot, ToolMissing when a gpg slot is tried
    without gpg, UsageError for a malformed age identity; never WrongPassphrase (that is
    `open_any`'s verdict over all slots).
    """
    if slot.type == "none":
        return MasterSecrets.from_bytes(slot.data)
    if slot.type == "passphrase":
        if creds.passphrase is None:
            return None
        return _unwrap_passphrase(slot, creds.passphrase)
    if slot.type == "age":
        if not creds.age_identities:
            return None
        return _unwrap_age(slot, creds.age_identities)
    if slot.type == "gpg":
        return _unwrap_gpg(slot, creds)
    raise UnsupportedFormat(
        f"key slot {slot.id} has type {slot.type!r}, unknown to this version; upgrade phoenix-backup"
    )


# Cheap, credential-free slots first; gpg last because it may start an agent or a pinentry.
_TRY_ORDER: dict[str, int] = {"none": 0, "age": 1, "passphrase": 2, "gpg": 3}


def open_any(slots: Sequence[KeySlot], creds: Credentials) -> tuple[KeySlot, MasterSecrets]:
    """Open the repository with the first slot these credentials fit."""
    if not slots:
        raise CorruptObject("the repository has no key slots; restore the keys/ objects from another target")
    supplied = {
        "passphrase": creds.passphrase is not None,
        "age": bool(creds.age_identities),
        # gpg credentials live in the keyring/agent: only an explicit homedir counts as supplied.
        "gpg": creds.gpg_homedir is not None,
    }
    tried_supplied = False
    corrupt: CorruptObject | None = None
    tool_missing: ToolMissing | None = None
    for slot in sorted(slots, key=lambda s: _TRY_ORDER.get(s.type, len(_TRY_ORDER))):
        if supplied.get(slot.type, False):
            tried_supplied = True
        try:
            opened = unwrap(slot, creds)
        except CorruptObject as error:
            # One damaged slot must not lock the user out when another slot still opens.
            corrupt = corrupt or error
            continue
        except ToolMissing as error:
            tool_missing = error
            continue
        if opened is not None:
            return slot, opened
    if tried_supplied:
        if corrupt is not None:
            raise corrupt
        raise WrongPassphrase(
            "wrong passphrase (or age identity / gpg key) for the repository; check "
            "PHX_PASSPHRASE or encryption.identityFile and try again"
        )
    if tool_missing is not None and all(s.type in ("gpg", "none") for s in slots):
        raise tool_missing  # gpg was the only way in
    if corrupt is not None:
        raise corrupt
    raise MissingCredentials(_missing_message(slots))


def _missing_message(slots: Sequence[KeySlot]) -> str:
    kinds = sorted({slot.type for slot in slots}, key=lambda t: _TRY_ORDER.get(t, 99))
    fixes: list[str] = []
    if "passphrase" in kinds:
        fixes.append("set PHX_PASSPHRASE or PHX_PASSPHRASE_FILE, or run on a terminal to be asked")
    if "age" in kinds:
        fixes.append("set encryption.identityFile to your age identity file")
    if "gpg" in kinds:
        key_ids = sorted({str(s.params.get("keyId", "?")) for s in slots if s.type == "gpg"})
        fixes.append(f"make the secret key for gpg {', '.join(key_ids)} available (`gpg --list-secret-keys`)")
    return f"the repository is encrypted ({', '.join(kinds)}); " + ", or ".join(fixes)
