"""Master secrets and the key slots that wrap them (passphrase, age, gpg, none).

A repository has one set of random master secrets: they key the AEAD of every object, the
BLAKE3 blob ids and the FastCDC gear table. Each key slot (one `keys/…` object) holds those
secrets wrapped for one way of opening the repository, so slots can be added and removed
(`phx key add|remove|passwd`) without rewriting a single data pack; `phx key rotate` replaces the
encryption key (ops/key_rotate.py).

A slot keeps in the clear only what opening needs (the scrypt parameters of a passphrase slot).
Its label, creator and age recipients or GPG key are sealed under the master secrets
(`SlotInfo`), so a reader of the storage learns nothing about who opens the repository, and
only someone holding the secrets can write slot metadata that authenticates.

Opening proves less than it seems for public-key slots: anyone can encrypt a fresh set of secrets
to the owner's age recipient or GPG key. Which secrets are the repository's is therefore decided
by the repository's authenticated `config` and the client's pin (repo/repository.py,
repo/pins.py), never by the first slot that opens.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

import blake3

from phoenix_backup.dirs import read_secret_file
from phoenix_backup.errors import (
    CorruptObject,
    KdfBudgetExceeded,
    MissingCredentials,
    NoSlotOfMethod,
    ToolMissing,
    UnsupportedFormat,
    UsageError,
    WrongPassphrase,
)
from phoenix_backup.process import trim_heap
from phoenix_backup.repo import crypto
from phoenix_backup.repo.crypto import aead
from phoenix_backup.users import username

__all__ = [
    "DEFAULT_SCRYPT_PARAMS",
    "KEY_SLOT_FORMAT_VERSION",
    "MASTER_SECRETS_FORMAT_VERSION",
    "Credentials",
    "KeySlot",
    "MasterSecrets",
    "SlotInfo",
    "SlotType",
    "format_fingerprint",
    "load_age_identities",
    "open_any",
    "open_slots",
    "unwrap",
    "wrap_age",
    "wrap_gpg",
    "wrap_none",
    "wrap_passphrase",
]

SlotType = Literal["passphrase", "age", "gpg", "none"]
SLOT_TYPES: tuple[str, ...] = get_args(SlotType)

MASTER_SECRETS_FORMAT_VERSION = 1
# Version 2 keeps in the clear only what opening needs; the rest is the sealed `meta` (SlotInfo).
# Version 1 slots (host, username, label and recipients in the clear) are still read.
KEY_SLOT_FORMAT_VERSION = 2

KEY_LENGTH = 32
SEED_LIMIT = 2**63  # the chunker seed is a positive signed 64-bit integer (0 < seed < 2**63)
SLOT_ID_HEX_LENGTH = 16
NONCE_LENGTH = 12  # the AES-GCM standard nonce; random is safe: each slot seals exactly once
TAG_LENGTH = 16
SALT_LENGTH = 16

# The domain string bound into every passphrase slot's AEAD (followed by the slot id, see
# `_slot_aad`). Format 2 kept it: the wrapped secrets did not change shape, and a slot upgraded
# from format 1 keeps its data as it is.
SLOT_AAD_PREFIX = b"phoenix-key-slot-v1"
# The AEAD domain of a slot's sealed metadata (followed by the slot id).
SLOT_META_AAD_PREFIX = b"phoenix v2 key slot meta"
# blake3 derive_key contexts: each derived key serves one purpose only.
_FINGERPRINT_CONTEXT = "phoenix v2 master key fingerprint"
_SLOT_META_CONTEXT = "phoenix v2 key slot metadata key"
FINGERPRINT_BYTES = 16

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
    # ValueError: also a number of more than 4,300 digits, which json.loads refuses with a plain
    # ValueError (JSONDecodeError and UnicodeDecodeError are ValueErrors too).
    except (ValueError, RecursionError):
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


def _check_version(document: Mapping[str, Any], supported: int, what: str, *, oldest: int | None = None) -> int:
    """The document's format version, between `oldest` (default: `supported`) and `supported`."""
    version = document.get("version")
    if not _is_int(version):
        raise CorruptObject(
            f"{what} has no valid format version; it is damaged, open the repository with "
            "another key slot or restore the keys/ object from another target"
        )
    assert isinstance(version, int)
    if version > supported:
        raise UnsupportedFormat(f"{what} written by a newer Phoenix (format {version}); upgrade phoenix-backup")
    if version < (supported if oldest is None else oldest):
        raise CorruptObject(
            f"{what} has unknown format version {version}; it is damaged, open the repository "
            "with another key slot or restore the keys/ object from another target"
        )
    return version


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
            chunker_seed=random.SystemRandom().randrange(1, SEED_LIMIT),
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

    def derive(self, context: str) -> bytes:
        """A 32-byte key for one purpose (`context`), derived from all the secrets (BLAKE3
        derive_key mode): replacing any secret changes every derived key."""
        return blake3.blake3(self.to_bytes(), derive_key_context=context).digest()

    @property
    def fingerprint(self) -> str:
        """What `init`, `key list` and `doctor` show and the client pins: 128 bits derived from
        the secrets (revealing nothing about them), as 8 groups of 4 hex digits."""
        return format_fingerprint(self.derive(_FINGERPRINT_CONTEXT)[:FINGERPRINT_BYTES].hex())

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


def format_fingerprint(text: str) -> str:
    """`a1b2c3…` (any case, any `:`, `-` or space separators) as `a1b2:c3d4:…`; ValueError when it
    is not 32 hex digits."""
    digits = "".join(c for c in text.lower() if c not in ": -")
    if len(digits) != 2 * FINGERPRINT_BYTES or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"{text!r} is not a key fingerprint (32 hex digits, as `phx key list` shows)")
    return ":".join(digits[i : i + 4] for i in range(0, len(digits), 4))


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
class SlotInfo:
    """What `phx key list` shows of a slot and `phx key rotate` needs to re-create it. Sealed under
    the master secrets in format 2 slots; read from the clear (unauthenticated) in format 1 ones."""

    created: str  # RFC 3339, UTC
    host: str
    username: str
    label: str  # "passphrase", "age age1abc…", "gpg KEYID"
    recipients: tuple[str, ...] = ()  # an age slot's recipients
    key_id: str | None = None  # a gpg slot's key
    # True only when read from sealed metadata that the master secrets authenticate (or made
    # here): only such recipients are trusted to re-wrap new secrets to.
    authenticated: bool = True

    def to_bytes(self) -> bytes:
        doc: dict[str, object] = {
            "created": self.created,
            "host": self.host,
            "username": self.username,
            "label": self.label,
        }
        if self.recipients:
            doc["recipients"] = list(self.recipients)
        if self.key_id is not None:
            doc["keyId"] = self.key_id
        return _canonical_json(doc)

    @classmethod
    def from_bytes(cls, raw: bytes, what: str) -> SlotInfo:
        document = _load_json_object(raw, what)
        strings: dict[str, str] = {}
        for name in ("created", "host", "username", "label"):
            value = document.get(name, "")
            if not isinstance(value, str):
                raise CorruptObject(f"{what} has no string {name!r}; remove the slot with `phx key remove`")
            strings[name] = value
        recipients = document.get("recipients", [])
        key_id = document.get("keyId")
        if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
            raise CorruptObject(f"{what} has malformed recipients; remove the slot with `phx key remove`")
        if key_id is not None and not isinstance(key_id, str):
            raise CorruptObject(f"{what} has a malformed keyId; remove the slot with `phx key remove`")
        return cls(
            strings["created"], strings["host"], strings["username"], strings["label"], tuple(recipients), key_id
        )


@dataclass(frozen=True)
class KeySlot:
    """One way to open the repository: the master secrets wrapped, and (format 2) the slot's
    metadata sealed under them."""

    id: str  # 16 random hex characters; also bound into the AEAD of the data and the metadata
    type: SlotType
    params: dict[str, object]  # what opening needs and nothing else: a passphrase slot's kdf
    data: bytes = field(repr=False)  # the wrapped master secrets
    meta: bytes = field(default=b"", repr=False)  # format 2: SlotInfo sealed under the master secrets
    # The metadata when known: the slot was made here, its `meta` was opened (`with_info`), or
    # (format 1) the clear fields, unauthenticated. Not part of the stored form.
    info: SlotInfo | None = field(default=None, compare=False)
    version: int = KEY_SLOT_FORMAT_VERSION

    # What older callers and `key list` read; "?" when the metadata cannot be opened.
    @property
    def label(self) -> str:
        return self.info.label if self.info else "?"

    @property
    def created(self) -> str:
        return self.info.created if self.info else ""

    @property
    def host(self) -> str:
        return self.info.host if self.info else "?"

    @property
    def username(self) -> str:
        return self.info.username if self.info else "?"

    def to_json(self) -> bytes:
        if self.version == 1:  # a format 1 slot read from an old repository, written back as it was
            info = self.info or SlotInfo("", "", "", "", authenticated=False)
            return _canonical_json(
                {
                    "version": 1,
                    "id": self.id,
                    "type": self.type,
                    "created": info.created,
                    "host": info.host,
                    "username": info.username,
                    "label": info.label,
                    "params": self.params,
                    "data": _b64encode(self.data),
                }
            )
        return _canonical_json(
            {
                "version": KEY_SLOT_FORMAT_VERSION,
                "id": self.id,
                "type": self.type,
                "params": self.params,
                "data": _b64encode(self.data),
                "meta": _b64encode(self.meta),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> KeySlot:
        document = _load_json_object(raw, "key slot")
        version = _check_version(document, KEY_SLOT_FORMAT_VERSION, "key slot", oldest=1)

        def damaged(problem: str) -> CorruptObject:
            return CorruptObject(
                f"key slot {problem}; it is damaged, open the repository with another key slot "
                "or restore the keys/ object from another target"
            )

        slot_id = document.get("id")
        if not isinstance(slot_id, str) or not is_slot_id(slot_id):
            raise damaged(f"id must be {SLOT_ID_HEX_LENGTH} lowercase hex characters")
        slot_type = document.get("type")
        if not isinstance(slot_type, str):
            raise damaged(f"{slot_id} has no type")
        if slot_type not in SLOT_TYPES:
            # A well-formed slot of a type we do not know was written by a newer Phoenix.
            raise UnsupportedFormat(
                f"key slot {slot_id} has type {slot_type!r}, unknown to this version; upgrade phoenix-backup"
            )
        params = document.get("params")
        if not isinstance(params, dict):
            raise damaged(f"{slot_id} has no params object")
        data = _b64decode(document.get("data"), f"key slot {slot_id} data")
        if version == 1:
            strings: dict[str, str] = {}
            for name in ("created", "host", "username", "label"):
                value = document.get(name)
                if not isinstance(value, str):
                    raise damaged(f"{slot_id} has no string {name!r}")
                strings[name] = value
            recipients = params.get("recipients") if slot_type == "age" else None
            key_id = params.get("keyId") if slot_type == "gpg" else None
            info = SlotInfo(
                strings["created"],
                strings["host"],
                strings["username"],
                strings["label"],
                recipients=tuple(r for r in recipients if isinstance(r, str)) if isinstance(recipients, list) else (),
                key_id=key_id if isinstance(key_id, str) else None,
                authenticated=False,
            )
            return cls(slot_id, cast(SlotType, slot_type), params, data, info=info, version=1)
        meta = _b64decode(document.get("meta"), f"key slot {slot_id} meta")
        return cls(slot_id, cast(SlotType, slot_type), params, data, meta=meta)

    def with_info(self, secrets: MasterSecrets) -> KeySlot:
        """This slot with its sealed metadata opened, if these secrets authenticate it; else as
        it is (`info` None for a format 2 slot: it belongs to other secrets, or is damaged)."""
        if self.version == 1 or self.info is not None:
            return self
        opener = aead(secrets.derive(_SLOT_META_CONTEXT))
        try:
            plain = opener.decrypt(
                self.meta[:NONCE_LENGTH], self.meta[NONCE_LENGTH:], SLOT_META_AAD_PREFIX + self.id.encode("ascii")
            )
        except (crypto.InvalidTag, ValueError):
            return self
        try:
            info = SlotInfo.from_bytes(plain, f"the metadata of key slot {self.id}")
        except CorruptObject:
            return self
        return replace(self, info=info)

    def upgraded(self, secrets: MasterSecrets) -> KeySlot:
        """A format 1 slot in format 2: the same id, type and wrapped secrets, its clear fields
        sealed. Recipients and GPG keys read from the clear are not carried over: they were never
        authenticated, and `phx key rotate` must not re-wrap new secrets to them."""
        if self.version != 1:
            return self
        old = self.info or SlotInfo("", "", "", self.type, authenticated=False)
        info = SlotInfo(old.created, old.host, old.username, old.label)
        params = {k: v for k, v in self.params.items() if k in _OPENING_PARAMS.get(self.type, ())}
        return _sealed(self.id, self.type, params, self.data, info, secrets)


# The params each slot type needs to open; nothing else stays in the clear.
_OPENING_PARAMS: dict[str, tuple[str, ...]] = {"passphrase": ("kdf", "n", "r", "p", "salt")}


def is_slot_id(value: str) -> bool:
    return len(value) == SLOT_ID_HEX_LENGTH and all(c in "0123456789abcdef" for c in value)


def _sealed(
    slot_id: str, slot_type: SlotType, params: dict[str, object], data: bytes, info: SlotInfo, secrets: MasterSecrets
) -> KeySlot:
    nonce = os.urandom(NONCE_LENGTH)
    meta = nonce + aead(secrets.derive(_SLOT_META_CONTEXT)).encrypt(
        nonce, info.to_bytes(), SLOT_META_AAD_PREFIX + slot_id.encode("ascii")
    )
    return KeySlot(slot_id, slot_type, params, data, meta=meta, info=info)


def _new_slot(
    secrets: MasterSecrets,
    slot_id: str,
    slot_type: SlotType,
    label: str,
    params: dict[str, object],
    data: bytes,
    *,
    recipients: tuple[str, ...] = (),
    key_id: str | None = None,
) -> KeySlot:
    info = SlotInfo(
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        host=socket.gethostname(),
        username=username(),
        label=label,
        recipients=recipients,
        key_id=key_id,
    )
    return _sealed(slot_id, slot_type, params, data, info, secrets)


def _new_slot_id() -> str:
    return os.urandom(SLOT_ID_HEX_LENGTH // 2).hex()


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
        return f"n={n_}, r={r_} needs {_scrypt_mib(n_, r_)} MiB, more than the 1 GiB allowed"
    if n_ >= 2 ** (16 * r_):
        # RFC 7914: n < 2**(128*r/8). OpenSSL refuses the rest (every scrypt Phoenix ever ran).
        return f"n={n_} must be below 2**{16 * r_} when r={r_}"
    return None


def _scrypt_mib(n: int, r: int) -> int:
    return max(1, 128 * n * r >> 20)


def _normalize_passphrase(passphrase: str) -> bytes:
    # NFC, so the same passphrase typed on macOS (which may produce decomposed accents) and on
    # Linux derives the same key.
    try:
        return unicodedata.normalize("NFC", passphrase).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, from the environment, a file or a command
        raise UsageError(
            "the passphrase is not UTF-8 text (PHX_PASSPHRASE, PHX_NEW_PASSPHRASE, PHX_PASSPHRASE_FILE or the "
            "output of encryption.passphraseCommand); write it in UTF-8 and try again"
        ) from None


def _cryptography_loaded() -> bool:
    """Whether this process has loaded `cryptography`'s OpenSSL already."""
    return "cryptography.hazmat.bindings._rust" in sys.modules


def _derive_kek(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt (RFC 7914) of the passphrase; parameters `_scrypt_problem` accepted. ToolMissing when
    this Python cannot run scrypt; MemoryError when this process cannot get the memory it needs."""
    password = _normalize_passphrase(passphrase)
    # The standard library's OpenSSL first, the same function `cryptography` gives: it runs
    # before `cryptography` is loaded (see `crypto.aead`), so its 32 MiB are freed before those
    # 9 MB are taken. Once `cryptography` is loaded (`phx watch` loads it first: it runs for
    # weeks, and would hold both OpenSSLs), scrypt runs in its OpenSSL, and `hashlib` (which maps
    # the system's libcrypto) is not even imported. `maxmem` is what OpenSSL needs for these
    # parameters (B and V), at most 1 GiB and 72 KiB. A Python built without scrypt has no
    # `hashlib.scrypt`; an OpenSSL in FIPS mode, or one that could not allocate, raises
    # ValueError: `cryptography`'s own OpenSSL is asked then.
    # scrypt's 32 MiB come on top of what the process holds at that moment, which for a command
    # that derives its key ahead (ops.context.unlock_ahead) is its peak: the C heap's free pages
    # (about 3 MB freed by start-up and the config's reading) are returned first. The 32 MiB
    # themselves are mapped on their own (the mmap threshold, `limit_malloc_arenas`) and unmapped
    # when scrypt returns.
    trim_heap()
    scrypt = None
    if not _cryptography_loaded():
        import hashlib

        scrypt = getattr(hashlib, "scrypt", None)
    if scrypt is not None:
        with contextlib.suppress(ValueError):
            return cast(
                bytes,
                scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=128 * r * (n + p + 2), dklen=KEY_LENGTH),
            )
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    except ImportError as exc:
        raise ToolMissing(
            f"this Python's hashlib cannot run scrypt and the package cryptography cannot be loaded ({exc}); run "
            "Phoenix with a Python whose OpenSSL provides scrypt, or reinstall it with its dependencies"
        ) from None
    try:
        return Scrypt(salt=salt, length=KEY_LENGTH, n=n, r=r, p=p).derive(password)
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise ToolMissing(
            f"this Python cannot run scrypt, the key derivation of passphrase key slots ({exc}); run Phoenix "
            "with a Python whose OpenSSL provides scrypt (not in FIPS mode), or open the repository with an "
            "age or gpg key slot"
        ) from None


# The key each passphrase slot's scrypt gave in this process, by passphrase, salt and parameters:
# a command derives it once however often it opens the repository (`ops.context.unlock_ahead`
# derives it before the command's modules are loaded). In this process's memory only, which holds
# the passphrase and the master secrets anyway; never on disk nor in the environment. The newest
# MAX_PASSPHRASE_SLOTS_TRIED (what one opening may derive): a process that opens again and again
# (the Python API, hourly) keeps no more of the slots planted meanwhile, whose salts take up to 2 KiB.
_slot_keys: dict[tuple[bytes, bytes, int, int, int], bytes] = {}
# One derivation at a time in a process: threads opening the targets of one repository at once
# (`phx doctor`, `phx status`) wait for the first one's key instead of each deriving it again (the
# CPU and scrypt's 32 MiB once per target, all at the same moment).
_slot_lock = threading.Lock()


def _slot_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """`_derive_kek`, run once per passphrase, salt and parameters in a process."""
    known = (_normalize_passphrase(passphrase), salt, n, r, p)
    with _slot_lock:
        kek = _slot_keys.get(known)
        if kek is None:
            kek = _slot_keys[known] = _derive_kek(passphrase, salt, n, r, p)
            for oldest in list(_slot_keys)[:-MAX_PASSPHRASE_SLOTS_TRIED]:
                _slot_keys.pop(oldest, None)
    return kek


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15.1), which
# `unicodedata` does not give: characters a font shows as nothing. Beyond the format characters
# (category Cf) it holds the Hangul fillers (U+115F, U+1160, U+3164, U+FFA0), the combining
# grapheme joiner (U+034F), the Khmer inherent vowels (U+17B4, U+17B5), the Mongolian and the
# other variation selectors (U+180B-180F, U+FE00-FE0F, U+E0100-E01EF) and unassigned code points
# kept for such characters. U+2800 (braille pattern blank) is not among them but shows as nothing.
_INVISIBLE = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x2800, 0x2800),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


def _invisible(c: str) -> bool:
    point = ord(c)
    return any(low <= point <= high for low, high in _INVISIBLE)


def _blank(passphrase: str) -> bool:
    """Whether the passphrase shows nothing: any Unicode white space (tabs, new lines, no-break
    spaces), the invisible format characters (category Cf: zero-width spaces and joiners, the
    byte-order mark), which `str.strip` keeps, and the other characters Unicode calls default
    ignorable (`_INVISIBLE`: Hangul fillers, variation selectors, the braille blank)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" or _invisible(c) for c in passphrase)


def wrap_passphrase(
    secrets: MasterSecrets, passphrase: str, *, kdf_params: Mapping[str, int] | None = None, kept: bool = False
) -> KeySlot:
    """Seal the secrets under a key derived from the passphrase with scrypt. A new passphrase that
    shows nothing (`_blank`) is refused; `kept` (the repository's own passphrase sealed again by
    `phx key rotate`) lets one chosen before that was refused stay as it is."""
    if not passphrase or (not kept and _blank(passphrase)):
        raise UsageError(
            "the passphrase is empty or only spaces and characters that show nothing; choose a passphrase with "
            "visible characters (or use --encryption none)"
        )
    chosen = dict(DEFAULT_SCRYPT_PARAMS)
    if kdf_params is not None:
        unknown = sorted(set(kdf_params) - set(chosen))
        if unknown:
            raise UsageError(f"unknown scrypt parameter(s) {', '.join(unknown)}; use only n, r and p")
        chosen.update(kdf_params)
    problem = _scrypt_problem(chosen["n"], chosen["r"], chosen["p"])
    if problem is None and chosen["n"] * chosen["r"] * chosen["p"] > SCRYPT_MAX_SLOT_COST:
        problem = "n*r*p is above the work Phoenix spends on opening one slot"
    if problem is not None:
        raise UsageError(f"invalid scrypt parameters: {problem}; choose saner values")
    slot_id = _new_slot_id()
    salt = os.urandom(SALT_LENGTH)
    try:
        kek = _derive_kek(passphrase, salt, chosen["n"], chosen["r"], chosen["p"])
    except MemoryError:
        raise UsageError(
            f"scrypt n={chosen['n']}, r={chosen['r']} needs {_scrypt_mib(chosen['n'], chosen['r'])} MiB, more memory "
            "than this process could get; free memory or choose a smaller n"
        ) from None
    nonce = os.urandom(NONCE_LENGTH)
    sealed = aead(kek).encrypt(nonce, secrets.to_bytes(), _slot_aad(slot_id))
    params: dict[str, object] = {
        "kdf": "scrypt",
        "n": chosen["n"],
        "r": chosen["r"],
        "p": chosen["p"],
        "salt": _b64encode(salt),
    }
    return _new_slot(secrets, slot_id, "passphrase", "passphrase", params, nonce + sealed)


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
    try:
        kek = _slot_key(passphrase, salt, cast(int, n), cast(int, r), cast(int, p))
    except MemoryError:
        # A slot anyone could have planted: skipped like a damaged one, so another slot still opens.
        raise CorruptObject(
            f"key slot {slot.id} needs {_scrypt_mib(cast(int, n), cast(int, r))} MiB for its key derivation, more "
            "memory than this process could get; free memory (or raise the process's memory limit) and try "
            "again, or open the repository with another key slot"
        ) from None
    nonce, sealed = slot.data[:NONCE_LENGTH], slot.data[NONCE_LENGTH:]
    opener = aead(kek)
    try:
        plain = opener.decrypt(nonce, sealed, _slot_aad(slot.id))
    except crypto.InvalidTag:
        # A wrong passphrase and tampered bytes look the same, by design of the AEAD.
        return None
    return MasterSecrets.from_bytes(plain)


# --------------------------------------------------------------------------------------------
# age slots


def parse_recipient(recipient: str) -> Any:
    import pyrage  # here, not at the top: only age identities need it (1.3 MB of memory)

    try:
        return pyrage.x25519.Recipient.from_str(recipient.strip())
    except (pyrage.RecipientError, ValueError, TypeError):
        raise UsageError(
            f"age recipient {recipient!r} is not a valid X25519 public key; use the 'age1…' line "
            "printed by `age-keygen -y IDENTITY_FILE`"
        ) from None


def parse_identity(identity: str, index: int) -> Any:
    import pyrage

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
    import pyrage

    if isinstance(recipients, str):  # a lone string is a Sequence[str] too: one recipient
        recipients = [recipients]
    cleaned = [r.strip() for r in recipients]
    if not cleaned:
        raise UsageError("no age recipient given; set encryption.recipients to at least one 'age1…' public key")
    if len(cleaned) > MAX_AGE_RECIPIENTS:
        raise UsageError(
            f"{len(cleaned)} age recipients for one key slot; give at most {MAX_AGE_RECIPIENTS} (add another slot "
            "with `phx key add` for more)"
        )
    parsed = [parse_recipient(r) for r in cleaned]
    try:
        data = pyrage.encrypt(secrets.to_bytes(), parsed)
    except pyrage.EncryptError as error:
        raise UsageError(f"age could not encrypt to {', '.join(cleaned)} ({error}); check the recipients") from None
    label = f"age {cleaned[0][:12]}…"
    if len(cleaned) > 1:
        label += f" (+{len(cleaned) - 1} more)"
    # The recipients live in the sealed metadata only: an age file names none of them.
    return _new_slot(secrets, _new_slot_id(), "age", label, {}, bytes(data), recipients=tuple(cleaned))


# age's decryption time grows with the square of the recipients a file names (1,000: 17 s), and
# anyone can write an age file to thousands of keys: a slot naming more than Phoenix writes is
# skipped unread. Phoenix writes binary age files only.
MAX_AGE_RECIPIENTS = 32
_AGE_MAGIC = b"age-encryption.org/v1\n"


def _unwrap_age(slot: KeySlot, identities: Sequence[str]) -> MasterSecrets | None:
    import pyrage

    parsed = [parse_identity(identity, i) for i, identity in enumerate(identities)]
    header, end, _payload = slot.data.partition(b"\n--- ")
    if not slot.data.startswith(_AGE_MAGIC) or not end or header.count(b"\n-> ") > MAX_AGE_RECIPIENTS:
        raise CorruptObject(
            f"key slot {slot.id} is not an age file Phoenix writes (binary, at most {MAX_AGE_RECIPIENTS} "
            "recipients); it is damaged or hostile and was skipped"
        )
    try:
        plain = pyrage.decrypt(slot.data, parsed)
    except pyrage.DecryptError:
        # No identity matches (or the ciphertext is damaged; age does not tell them apart).
        return None
    return MasterSecrets.from_bytes(bytes(plain))


def load_age_identities(path: Path) -> tuple[str, ...]:
    """Read an age identity file: `AGE-SECRET-KEY-1…` lines, `#` comments and blank lines."""
    import pyrage

    try:
        text = read_secret_file(
            path, "age identity file", "point encryption.identityFile (or --identity) at the file age-keygen wrote"
        ).decode("utf-8")
    except FileNotFoundError:
        # Never "create it with age-keygen": a new identity opens no backup made for the old one
        # (a restored config on a new machine names the old machine's path).
        raise UsageError(
            f"age identity file {path} does not exist; copy the identity that opens the repository there (the file "
            "age-keygen wrote when it was set up: its public key is among encryption.recipients), or point "
            "encryption.identityFile, --identity or PHX_IDENTITY_FILE at it; a new identity opens no existing backup"
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
    """Encrypt the secrets to a GnuPG public key; opening needs its secret key (gpg-agent).

    `--throw-keyids` leaves the recipient's key id out of the message (gpg tries the secret keys
    it has when decrypting), so the slot does not say whose key opens it."""
    key_id = key_id.strip()
    if not key_id or key_id.startswith("-") or any(c in key_id for c in "\r\n\0"):
        raise UsageError(
            f"gpg key id {key_id!r} is not a key id; set encryption.keyId to a fingerprint, "
            "key id or e-mail from `gpg --list-keys`"
        )
    command = _gpg_command(
        gpg, homedir, "--yes", "--trust-model", "always", "--throw-keyids", "--encrypt", "--recipient", key_id
    )
    result = _run_gpg(command, secrets.to_bytes())
    if result.returncode != 0 or not result.stdout:
        detail = _gpg_detail(result.stderr)
        raise UsageError(
            f"gpg cannot encrypt to key {key_id!r} ({detail}); check that the public key is in "
            "your keyring and can encrypt with `gpg --list-keys " + key_id + "`"
        )
    return _new_slot(secrets, _new_slot_id(), "gpg", f"gpg {key_id}", {}, result.stdout, key_id=key_id)


def _gpg_detail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines()]
    lines = [line.removeprefix("gpg: ") for line in lines if line and not line.startswith("[GNUPG:]")]
    return "; ".join(lines[-2:]) if lines else "no error message"


# OpenPGP packet tags (RFC 4880 §4.3, RFC 9580 §5)
_PKESK, _SKESK = 1, 3
_ENCRYPTED_DATA = {9, 18, 20}  # symmetrically encrypted data, SEIPD, AEAD encrypted data


# gpg tries every public-key session key packet on every secret key it holds (4 ms each for a
# Curve25519 key, 20 ms for RSA), and anyone can write a message with thousands of them. A slot
# holds one, or a few when gpg.conf adds recipients (encrypt-to).
MAX_GPG_SESSION_KEYS = 8


def _public_key_message(data: bytes) -> bool:
    """Whether `data` is an OpenPGP message encrypted to public keys only: one to
    MAX_GPG_SESSION_KEYS public-key session-key packets, no passphrase (symmetric) session key,
    then encrypted data. A literal or compressed packet (`gpg --store`), or a symmetric one,
    proves no key: gpg would "decrypt" it with no secret key at all, or ask for a passphrase."""
    pos, seen_pkesk, pkesks = 0, False, 0
    while pos < len(data):
        header = data[pos]
        if not header & 0x80:
            return False
        if header & 0x40:  # new format: tag in 6 bits, then a length of 1, 2 or 5 bytes
            tag = header & 0x3F
            if pos + 1 >= len(data):
                return False
            first = data[pos + 1]
            if first < 192:
                length, pos = first, pos + 2
            elif first < 224:
                if pos + 2 >= len(data):
                    return False
                length, pos = ((first - 192) << 8) + data[pos + 2] + 192, pos + 3
            elif first == 255:
                if pos + 6 > len(data):
                    return False
                length, pos = int.from_bytes(data[pos + 2 : pos + 6], "big"), pos + 6
            else:  # a partial body length: only data packets use it
                return tag in _ENCRYPTED_DATA and seen_pkesk
        else:  # old format: tag in 4 bits, length type in 2
            tag, kind = (header >> 2) & 0x0F, header & 0x03
            if kind == 3:
                return tag in _ENCRYPTED_DATA and seen_pkesk
            size = 1 << kind
            if pos + 1 + size > len(data):
                return False
            length, pos = int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size
        if tag == _PKESK:
            seen_pkesk, pkesks = True, pkesks + 1
            if pkesks > MAX_GPG_SESSION_KEYS:
                return False
        elif tag in _ENCRYPTED_DATA:
            return seen_pkesk
        else:
            return False  # SKESK, literal, compressed, marker, anything else
        pos += length
    return False


def _gpg_key_fingerprints(creds: Credentials) -> set[str] | None:
    """Fingerprints (primary and subkeys) of the configured GPG keys; None when none is
    configured (then any key in the keyring counts)."""
    if not creds.gpg_key_ids:
        return None
    found: set[str] = set()
    for key_id in creds.gpg_key_ids:
        command = _gpg_command(creds.gpg_binary, creds.gpg_homedir, "--with-colons", "--list-keys", "--", key_id)
        result = _run_gpg(command, b"")
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if fields[0] == "fpr" and len(fields) > 9 and fields[9]:
                found.add(fields[9].upper())
    return found


def _unwrap_gpg(slot: KeySlot, creds: Credentials) -> MasterSecrets | None:
    command = _gpg_command(creds.gpg_binary, creds.gpg_homedir, "--status-fd", "2", "--decrypt")
    if not _public_key_message(slot.data):
        raise CorruptObject(
            f"key slot {slot.id} is not encrypted to a public key, or to more than {MAX_GPG_SESSION_KEYS} (a plain "
            "or passphrase-encrypted OpenPGP message proves no key, and gpg would try each of thousands); it is "
            "hostile or damaged, remove it with `phx key remove`"
        )
    result = _run_gpg(command, slot.data)
    if result.returncode != 0 or not result.stdout:
        return None  # no secret key here, agent refused, or damaged data: the slot did not open
    # gpg must say that one of its secret keys decrypted the session key, and which one.
    used: set[str] = set()
    okay = False
    for line in result.stderr.decode("utf-8", "replace").splitlines():
        words = line.split()
        if words[:2] == ["[GNUPG:]", "DECRYPTION_KEY"]:
            used.update(w.upper() for w in words[2:4])
        elif words[:2] == ["[GNUPG:]", "DECRYPTION_OKAY"]:
            okay = True
    wanted = _gpg_key_fingerprints(creds)
    if not okay or not used or (wanted is not None and not used & wanted):
        return None
    return MasterSecrets.from_bytes(result.stdout)


# --------------------------------------------------------------------------------------------
# Unencrypted repositories


def wrap_none(secrets: MasterSecrets) -> KeySlot:
    """Store the secrets in the clear, for unencrypted repositories.

    They still key the blob ids and seed the chunker, and keeping them in a slot gives every
    repository the same opening path.
    """
    return _new_slot(secrets, _new_slot_id(), "none", "none (unencrypted)", {}, secrets.to_bytes())


# --------------------------------------------------------------------------------------------
# Opening


@dataclass(frozen=True)
class Credentials:
    """What the user supplied to open a repository, and which kinds of slot may open it.

    `methods` is the security decision: the configured method (plus `passphrase` when one was
    given explicitly). A `none` slot holds no secret and an age or gpg slot can be written by
    anyone who knows the owner's public key, so a slot of a method the owner did not choose must
    never open the repository. None means the methods these credentials are for (and `none` only
    when nothing at all was supplied): what a library caller without a config expects.
    """

    passphrase: str | None = field(default=None, repr=False)
    age_identities: tuple[str, ...] = field(default=(), repr=False)  # AGE-SECRET-KEY-1… strings
    gpg_homedir: Path | None = None
    gpg_binary: str = "gpg"
    gpg_key_ids: tuple[str, ...] = ()  # configured GPG keys: only their decryption counts
    methods: frozenset[str] | None = None
    # Where this machine keeps the write keys of write-only repositories it backs up (repo/writer.py).
    write_keys: Path | None = None
    # Asks for the age identity on a terminal, when a write-only repository needs one and this
    # machine has no write key for it either.
    ask_identity: Callable[[], tuple[str, ...]] | None = field(default=None, repr=False, compare=False)
    # The key-derivation work already spent for this command: by the opening ahead of its work
    # (`ops.context.unlock_ahead`), so that the two openings together spend no more than one may,
    # however the storage changed between them. None: a budget of its own.
    budget: KdfBudget | None = field(default=None, repr=False, compare=False)

    def allowed(self) -> frozenset[str]:
        if self.methods is not None:
            return self.methods
        supplied = {"passphrase"} if self.passphrase is not None else set()
        if self.age_identities:
            supplied.add("age")
        if self.gpg_homedir is not None or self.gpg_key_ids:
            supplied.add("gpg")
        return frozenset(supplied) if supplied else frozenset({"passphrase", "age", "gpg", "none"})


def unwrap(slot: KeySlot, creds: Credentials) -> MasterSecrets | None:
    """The master secrets if these credentials open this slot, else None.

    Raises CorruptObject for a damaged or hostile slot, ToolMissing when a gpg slot is tried
    without gpg, UsageError for a malformed age identity; never WrongPassphrase (that is
    `open_slots`' verdict over all slots). It does not check that the method is allowed.
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


# Key-derivation work, in scrypt's own unit n*r*p (128*r bytes mixed n*p times): the default slot
# costs 2**18, 0.1 to 0.3 s on one core. One slot may cost at most 8 times that (age's own scrypt
# work factor), one opening spends at most 16 times that across every slot it tries, and tries at
# most 32 passphrase, age or gpg slots (an age slot costs up to 25 ms, a gpg slot a gpg run of 14 ms):
# a keys/ folder stuffed with expensive or numerous slots (n=2**20, p=16 took 36 s a slot; a
# thousand gpg slots, 14 s) costs seconds, never minutes.
SCRYPT_MAX_SLOT_COST = 2**21
SCRYPT_MAX_TOTAL_COST = 2**22
MAX_PASSPHRASE_SLOTS_TRIED = 32
DEFAULT_COST = DEFAULT_SCRYPT_PARAMS["n"] * DEFAULT_SCRYPT_PARAMS["r"] * DEFAULT_SCRYPT_PARAMS["p"]


class KdfBudget:
    """The key-derivation work one opening may still spend; `charge` before each scrypt run."""

    def __init__(self) -> None:
        self.spent = 0
        self.tried = 0
        # The passphrase slots charged, as stored, with the passphrase tried on each: one tried again
        # with the same passphrase and this budget (the opening after the one ahead of a command's
        # work, `Credentials.budget`) has its key derived already; another passphrase (the file
        # rewritten meanwhile, the try with a byte-order mark) is another scrypt, charged again.
        self.charged: set[tuple[bytes, str | None]] = set()
        # The slots found damaged or hostile, as stored, and why: one whose scrypt could not get its
        # memory (MemoryError) is not run again by the next opening with this budget.
        self.refused: dict[bytes, CorruptObject] = {}

    def charge(self, slot: KeySlot, passphrase: str | None = None) -> None:
        """CorruptObject when this slot alone asks for more than a slot may (it is skipped);
        KdfBudgetExceeded when the opening has spent its budget (nothing more is tried). A
        passphrase slot charged before, unchanged, with the same `passphrase`, costs nothing again;
        one refused before (`refuse`) is refused again, for the same reason, at no cost."""
        stored = slot.to_json() if slot.type == "passphrase" else b""
        if stored in self.refused:
            raise self.refused[stored]
        if (stored, passphrase) in self.charged:
            return
        n, r, p = (slot.params.get(k) for k in ("n", "r", "p"))
        # Malformed parameters (and gpg's, which has none) cost nothing here: the slot itself
        # refuses them before any scrypt.
        cost = n * r * p if isinstance(n, int) and isinstance(r, int) and isinstance(p, int) else 0
        if cost > SCRYPT_MAX_SLOT_COST:
            raise CorruptObject(
                f"key slot {slot.id} asks for {cost // DEFAULT_COST}x the default key-derivation work, more than the "
                f"{SCRYPT_MAX_SLOT_COST // DEFAULT_COST}x Phoenix spends on one slot; it is damaged or hostile and "
                "was skipped"
            )
        if self.tried >= MAX_PASSPHRASE_SLOTS_TRIED or self.spent + cost > SCRYPT_MAX_TOTAL_COST:
            raise KdfBudgetExceeded(
                f"the repository's key slots ask for more key-derivation work than Phoenix spends on one opening "
                f"({self.tried} passphrase, age or gpg slot(s) tried); delete the keys/ objects you did not create "
                "from the repository's storage and try again"
            )
        self.tried += 1
        self.spent += cost
        if stored:
            self.charged.add((stored, passphrase))

    def refuse(self, slot: KeySlot, error: CorruptObject) -> None:
        """Remember that this passphrase slot, charged, is damaged or hostile (`error`): `charge`
        refuses it. (One refused before any scrypt is refused as cheaply again.)"""
        stored = slot.to_json() if slot.type == "passphrase" else b""
        if any(charged == stored for charged, _ in self.charged):
            self.refused[stored] = error


# Cheap, credential-free slots first; gpg last because it may start an agent or a pinentry.
_TRY_ORDER: dict[str, int] = {"none": 0, "age": 1, "passphrase": 2, "gpg": 3}


def open_slots(slots: Sequence[KeySlot], creds: Credentials) -> Iterator[tuple[KeySlot, MasterSecrets]]:
    """Every slot of an allowed method that these credentials open, with its secrets, cheap
    slots first. Which of them is the repository's is the caller's decision (the config's
    authentication and the pin). When none opens, raises why: wrong passphrase, missing
    credentials, a damaged slot, gpg missing, or no slot of the allowed methods at all."""
    if not slots:
        raise CorruptObject("the repository has no key slots; restore the keys/ objects from another target")
    allowed = creds.allowed()
    usable = [s for s in slots if s.type in allowed]
    if not usable:
        found = tuple(sorted({s.type for s in slots}, key=lambda t: _TRY_ORDER.get(t, 99)))
        kinds = ", ".join(found)
        wanted = ", ".join(sorted(allowed, key=lambda t: _TRY_ORDER.get(t, 99)))
        raise NoSlotOfMethod(
            f"the repository has no key slot of the configured encryption ({wanted}), only {kinds}; "
            "fix encryption.enabled/encryption.method in the config (a slot of another kind must never "
            "open the repository: anyone who can write the storage can add one)",
            found,
        )
    supplied = {
        "passphrase": creds.passphrase is not None,
        "age": bool(creds.age_identities),
        # gpg credentials live in the keyring/agent: only an explicit homedir or key counts as supplied.
        "gpg": creds.gpg_homedir is not None or bool(creds.gpg_key_ids),
        "none": True,
    }
    tried_supplied = False
    opened_any = False
    corrupt: CorruptObject | None = None
    tool_missing: ToolMissing | None = None
    untried: ToolMissing | None = None
    budget = creds.budget if creds.budget is not None else KdfBudget()
    for slot in sorted(usable, key=lambda s: _TRY_ORDER.get(s.type, len(_TRY_ORDER))):
        if supplied.get(slot.type, False):
            tried_supplied = True
        try:
            if slot.type == "gpg" or (slot.type in ("passphrase", "age") and supplied[slot.type]):
                budget.charge(
                    slot, creds.passphrase
                )  # an age or gpg slot costs milliseconds too, and anyone can plant one
            opened = unwrap(slot, creds)
        except CorruptObject as error:
            # One damaged slot must not lock the user out when another slot still opens.
            corrupt = corrupt or error
            budget.refuse(slot, error)
            continue
        except ToolMissing as error:
            tool_missing = error
            if slot.type != "gpg" and supplied.get(slot.type, False):
                untried = untried or error  # this Python cannot check the credential: never "wrong"
            continue
        if opened is not None:
            opened_any = True
            yield slot, opened
    if opened_any:
        return
    if tried_supplied:
        if untried is not None:
            raise untried
        if corrupt is not None:
            raise corrupt
        raise WrongPassphrase(
            "wrong passphrase (or age identity / gpg key) for the repository; check "
            "PHX_PASSPHRASE or encryption.identityFile and try again"
        )
    if tool_missing is not None and all(s.type in ("gpg", "none") for s in usable):
        raise tool_missing  # gpg was the only way in
    if corrupt is not None:
        raise corrupt
    raise MissingCredentials(_missing_message(usable))


def open_any(slots: Sequence[KeySlot], creds: Credentials) -> tuple[KeySlot, MasterSecrets]:
    """The first slot of an allowed method these credentials open. Only for a caller that has
    other means to know the secrets are the right ones (the repository checks the config's
    authentication and the pin, see `Repository.open`)."""
    return next(iter(open_slots(slots, creds)))


def _missing_message(slots: Sequence[KeySlot]) -> str:
    kinds = sorted({slot.type for slot in slots}, key=lambda t: _TRY_ORDER.get(t, 99))
    fixes: list[str] = []
    if "passphrase" in kinds:
        fixes.append("set PHX_PASSPHRASE or PHX_PASSPHRASE_FILE, or run on a terminal to be asked")
    if "age" in kinds:
        fixes.append("set encryption.identityFile to your age identity file")
    if "gpg" in kinds:
        fixes.append("make the secret key of encryption.keyId available (`gpg --list-secret-keys`)")
    return f"the repository is encrypted ({', '.join(kinds)}); " + ", or ".join(fixes)
