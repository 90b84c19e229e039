"""Write-only repositories: the backing-up machine can add to the history but never read it.

The machine that backs up holds two things: the age recipients (public keys) of the repository,
and its write key. The age identity that reads the repository lives elsewhere, on a machine the
owner trusts. So an attacker in control of the backing-up machine (a compromised agent) finds
nothing there that opens a single object written before, nor anything written by its own runs.

Keys (docs/repository-format.md §14):

- The **write key** is the id key and the chunker parameter of the master secrets (`WriteKey`). It
  names blobs (keyed BLAKE3) and cuts chunks, so deduplication works without reading anything;
  keys derived from it authenticate the config, the run keys and the covers of index objects, and
  seal the locks. Its holder can tell whether a guessed chunk is in this machine's own index (its
  id), never any content.
- Each run draws a fresh **run key** (32 random bytes) and writes it once, wrapped to the
  recipients with age and authenticated by the write key, as `runkeys/<id>` (`RunKey`). Every
  pack, blob, tree and snapshot the run writes is sealed with AES-256-GCM under it; the nonce is
  the run key's id followed by a counter, so each sealed object names its key for nothing. The run
  key is forgotten when the process ends: not even the machine that wrote an object can open it
  afterwards. Index objects are sealed so too, under a cover that names their packs (`cover_index`);
  the machine that backs up keeps the entries of its own packs locally (repo/writer.py).
- A reader opens the age-wrapped master secrets with its identity (an age key slot), then each
  run key it needs. Objects sealed before the repository became write-only keep the master
  encryption key (`legacy`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import itertools
import json
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from phoenix_backup.dirs import data_dir
from phoenix_backup.errors import CorruptObject, IdentityRequired, ObjectNotFound, UsageError
from phoenix_backup.repo import crypto
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import NONCE_SIZE, TAG_SIZE, Sealer, aead, same_bytes
from phoenix_backup.storage.base import Backend

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# The folder, in the data dir, of the write keys and records of the write-only repositories this
# user backs up (repo/writer.py): here, so that opening a repository (`ops.context`) finds it
# without importing the writer.
FOLDER = "write-only"


def store_root(env: dict[str, str] | Any) -> Path:
    """Where this user keeps the write keys and records of the write-only repositories it backs up."""
    return data_dir(env) / FOLDER


WRITE_KEY_VERSION = 1
RUN_KEY_MAGIC = b"PHXK"
RUN_KEY_VERSION = 1
RUN_KEY_ID_LENGTH = 8
RUN_KEY_LENGTH = 32
MAC_LENGTH = 32
# A run key object holds one age file to at most MAX_AGE_RECIPIENTS recipients: a few kilobytes.
MAX_RUN_KEY_OBJECT = 64 * 1024
# The counter half of a run key's nonces: 2**32 - 1 seals per run, far more than a run makes.
MAX_SEALS = 2**32 - 1

# blake3 derive_key contexts of the write key: each derived key serves one purpose only.
CONFIG_MAC_CONTEXT = "phoenix v3 write-only config mac key"
INDEX_COVER_MAC_CONTEXT = "phoenix v3 write-only index cover mac key"
LOCK_KEY_CONTEXT = "phoenix v3 write-only lock key"
RUN_KEY_MAC_CONTEXT = "phoenix v3 write-only run key mac key"
FINGERPRINT_CONTEXT = "phoenix v3 write key fingerprint"
# Derived from the whole master secrets (encryption key included), which only the recipients'
# identities open: the key that lets an index object retire others. The write key lacks it.
SUPERSEDE_MAC_CONTEXT = "phoenix v3 write-only index supersede mac key"


def run_key_name(key_id: bytes) -> str:
    return f"runkeys/{key_id.hex()}"


@dataclass(frozen=True)
class WriteKey:
    """What a backing-up machine holds of the master secrets: enough to name and cut blobs and to
    authenticate what it writes, nothing that opens a sealed object."""

    id_key: bytes = field(repr=False)
    chunker_seed: int = field(repr=False)

    @classmethod
    def of(cls, master: keyslots.MasterSecrets) -> WriteKey:
        return cls(master.id_key, master.chunker_seed)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"chunkerSeed": self.chunker_seed, "idKey": base64.b64encode(self.id_key).decode(), "version": 1},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()

    def derive(self, context: str) -> bytes:
        return blake3.blake3(self.to_bytes(), derive_key_context=context).digest()

    @property
    def fingerprint(self) -> str:
        return keyslots.format_fingerprint(self.derive(FINGERPRINT_CONTEXT)[: keyslots.FINGERPRINT_BYTES].hex())

    def document(self, repo_id: str) -> dict[str, Any]:
        """The write key file's content (`repo/writer.py` keeps it, mode 0600)."""
        return {
            "version": WRITE_KEY_VERSION,
            "repository": repo_id,
            "idKey": base64.b64encode(self.id_key).decode(),
            "chunkerSeed": self.chunker_seed,
        }

    @classmethod
    def from_document(cls, doc: object, repo_id: str, where: str) -> WriteKey:
        try:
            if not isinstance(doc, dict) or doc.get("version") != WRITE_KEY_VERSION:
                raise ValueError("unknown version")
            if doc.get("repository") != repo_id:
                raise ValueError(f"it belongs to repository {str(doc.get('repository'))[:8]}")
            id_key = base64.b64decode(str(doc["idKey"]), validate=True)
            seed = doc["chunkerSeed"]
            if len(id_key) != keyslots.KEY_LENGTH or not isinstance(seed, int) or isinstance(seed, bool):
                raise ValueError("malformed key")
            if not 0 < seed < keyslots.SEED_LIMIT:
                raise ValueError("malformed key")
        except (KeyError, ValueError, binascii.Error) as exc:
            raise UsageError(
                f"the write key {where} cannot be used ({exc}); copy it again from the machine that made it "
                "(`phx init --write-only` or `phx key add --method age --write-only` writes it)"
            ) from None
        return cls(id_key, seed)


def parse_recipients(recipients: Sequence[str]) -> list[Any]:
    """age X25519 recipients; UsageError naming a bad one."""
    return [keyslots.parse_recipient(r) for r in recipients]


@dataclass(frozen=True)
class RunKey:
    """One run's data key: `id` names it (and begins every nonce sealed under it)."""

    id: bytes
    key: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> RunKey:
        return cls(os.urandom(RUN_KEY_ID_LENGTH), os.urandom(RUN_KEY_LENGTH))

    @property
    def name(self) -> str:
        return run_key_name(self.id)

    def sealed(self, recipients: Sequence[str], write_key: WriteKey) -> bytes:
        """`PHXK ‖ u8 version ‖ age file (the key, to the recipients) ‖ MAC(write key)`."""
        import pyrage  # here, not at the top: only age identities need it (1.3 MB of memory)

        wrapped = bytes(pyrage.encrypt(self.key, parse_recipients(recipients)))
        head = RUN_KEY_MAGIC + bytes((RUN_KEY_VERSION,))
        return head + wrapped + _run_key_mac(write_key, self.id, head + wrapped)

    @classmethod
    def opened(cls, key_id: bytes, data: bytes, write_key: WriteKey, identities: Sequence[Any]) -> RunKey | None:
        """The run key in `data` (object `runkeys/<key_id>`), None when none of `identities` opens
        it. It must be authenticated by the write key first, so that a key planted by someone
        without it is refused before age reads anything."""
        import pyrage

        wrapped = cls.authenticated(key_id, data, write_key)
        try:
            key = bytes(pyrage.decrypt(wrapped, list(identities)))
        except pyrage.DecryptError:
            return None
        if len(key) != RUN_KEY_LENGTH:
            raise CorruptObject(f"{run_key_name(key_id)} holds a key of {len(key)} bytes")
        return cls(key_id, key)

    @staticmethod
    def authenticated(key_id: bytes, data: bytes, write_key: WriteKey) -> bytes:
        """The age file of run key object `data`, once its shape and its write-key MAC are checked
        (CorruptObject otherwise): what a machine without the identity can verify."""
        what = run_key_name(key_id)
        if len(data) > MAX_RUN_KEY_OBJECT or len(data) < 5 + MAC_LENGTH or not data.startswith(RUN_KEY_MAGIC):
            raise CorruptObject(f"{what} is not a run key object (damaged or planted)")
        if data[4] != RUN_KEY_VERSION:
            raise CorruptObject(f"{what} has unknown version {data[4]}")
        body, mac = data[:-MAC_LENGTH], data[-MAC_LENGTH:]
        if not same_bytes(mac, _run_key_mac(write_key, key_id, body)):
            raise CorruptObject(
                f"{what} is not authenticated by the repository's write key: damaged, or planted by someone "
                "without it; objects sealed under it are not read"
            )
        wrapped = body[5:]
        if wrapped.partition(b"\n--- ")[0].count(b"\n-> ") > keyslots.MAX_AGE_RECIPIENTS:
            raise CorruptObject(f"{what} names more than {keyslots.MAX_AGE_RECIPIENTS} recipients")
        return wrapped


def _run_key_mac(write_key: WriteKey, key_id: bytes, body: bytes) -> bytes:
    return blake3.blake3(key_id + body, key=write_key.derive(RUN_KEY_MAC_CONTEXT)).digest()


class Keyring:
    """The run keys of one write-only repository, for one process: its own (made and written on
    the first seal), and, on a machine with the identity, those of other runs as objects need them.
    Without the identity, an object of any other run raises IdentityRequired."""

    def __init__(
        self,
        backend: Backend,
        write_key: WriteKey,
        recipients: Sequence[str],
        identities: Sequence[str] = (),
        legacy: bytes | None = None,
    ) -> None:
        self.backend = backend
        self.write_key = write_key
        self.recipients = tuple(recipients)
        self.identities = tuple(identities)
        self._parsed = [keyslots.parse_identity(i, n) for n, i in enumerate(self.identities)]
        self.legacy = aead(legacy) if legacy is not None else None
        self._lock = threading.Lock()
        self._own: tuple[RunKey, AESGCM] | None = None
        self._counter = itertools.count(1)
        self._opened: dict[bytes, AESGCM] = {}
        self._listed: set[bytes] | None = None

    @property
    def can_read(self) -> bool:
        return bool(self.identities)

    def with_backend(self, backend: Backend) -> Keyring:
        """The same credentials, for a copy of the repository on another target."""
        other = Keyring(backend, self.write_key, self.recipients, self.identities)
        other.legacy = self.legacy
        return other

    # -- sealing ---------------------------------------------------------------------------

    def next_nonce(self) -> tuple[bytes, AESGCM]:
        """A fresh nonce under this process's run key, whose object is durable before it is used."""
        with self._lock:
            if self._own is None:
                run = RunKey.generate()
                self.backend.write(run.name, run.sealed(self.recipients, self.write_key), exclusive=True)
                self._own = (run, aead(run.key))
                self._opened[run.id] = self._own[1]
            count = next(self._counter)
            run, sealer = self._own
        if count > MAX_SEALS:
            raise CorruptObject("this run sealed 2**32 objects under one key; run the command again")
        return run.id + struct.pack(">I", count), sealer

    # -- opening ---------------------------------------------------------------------------

    def aead_for(self, key_id: bytes, what: str, *, fresh: bool = False) -> tuple[AESGCM, bool]:
        """The AEAD that opens an object whose nonce begins with `key_id`, and whether it is the
        legacy key (the id is no run key's: an object sealed before the repository became
        write-only). `fresh` lists the run keys again (a run that started after the last listing)."""
        with self._lock:
            found = self._opened.get(key_id)
        if found is not None:
            return found, False
        if not self.can_read:
            raise IdentityRequired(self.backend.location, what)
        if key_id not in self._run_keys(fresh):
            if self.legacy is not None:
                return self.legacy, True
            if not fresh:
                return self.aead_for(key_id, what, fresh=True)
            raise CorruptObject(f"{what} is sealed under {run_key_name(key_id)}, which the repository does not hold")
        try:
            data = self.backend.read(run_key_name(key_id))
        except ObjectNotFound as exc:
            raise CorruptObject(f"{what} is sealed under {run_key_name(key_id)}, which is missing") from exc
        run = RunKey.opened(key_id, data, self.write_key, self._parsed)
        if run is None:
            raise IdentityRequired(self.backend.location, what, wrong=True)
        opened = aead(run.key)
        with self._lock:
            self._opened[key_id] = opened
        return opened, False

    def _run_keys(self, fresh: bool) -> set[bytes]:
        """The ids of the run keys the repository holds (one listing, again when `fresh`)."""
        with self._lock:
            listed = self._listed
        if listed is None or fresh:
            listed = set()
            for info in self.backend.list("runkeys/"):
                try:
                    listed.add(bytes.fromhex(info.name.rsplit("/", 1)[-1]))
                except ValueError:
                    continue
            with self._lock:
                self._listed = listed
        return listed


class KeyedSealer(Sealer):
    """Seals under this run's key, opens under the run key each sealed object names (or the
    legacy key): the sealer of every pack, blob and snapshot of a write-only repository."""

    def __init__(self, keyring: Keyring) -> None:
        super().__init__(None)
        self.keyring = keyring

    @property
    def encrypted(self) -> bool:
        return True

    @property
    def overhead(self) -> int:
        return NONCE_SIZE + TAG_SIZE

    def seal(self, payload: bytes | memoryview, aad: bytes) -> bytes:
        nonce, sealer = self.keyring.next_nonce()
        return nonce + sealer.encrypt(nonce, payload, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if len(sealed) < self.overhead:
            raise CorruptObject(f"{what} is truncated")
        key_id = bytes(sealed[:RUN_KEY_ID_LENGTH])
        opener, legacy = self.keyring.aead_for(key_id, what)
        try:
            return opener.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except crypto.InvalidTag as exc:
            if legacy:  # or a run that began after the run keys were listed
                opener, legacy = self.keyring.aead_for(key_id, what, fresh=True)
                if not legacy:
                    with contextlib.suppress(crypto.InvalidTag):
                        return opener.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
            raise CorruptObject(f"{what} fails authentication (damaged or tampered)") from exc


# -- index objects ------------------------------------------------------------------------------

INDEX_COVER_MAGIC = b"PHXW"
# Version 1: the write key's MAC only. Version 2 adds the owner's MAC (the supersede key of the
# master secrets) before it: only a version 2 cover with a valid owner's MAC may supersede.
INDEX_COVER_VERSION = 1
INDEX_COVER_OWNED = 2
_COUNT = struct.Struct("<I")


@dataclass(frozen=True)
class Cover:
    """The clear part of a write-only index object (`uncover_index`)."""

    packs: list[str]
    superseded: list[str]
    sealed: bytes  # the sealed index
    owner_mac: bytes | None  # a version 2 cover's, not yet checked (`owned_by`)
    signed: bytes  # what the owner's MAC covers

    def owned_by(self, master: keyslots.MasterSecrets) -> bool:
        """Whether the owner (whoever holds the master secrets: the identity's machine) wrote it."""
        return self.owner_mac is not None and same_bytes(self.owner_mac, _owner_mac(master, self.signed))


def cover_index(
    sealed: bytes,
    packs: Sequence[str],
    superseded: Sequence[str],
    write_key: WriteKey,
    master: keyslots.MasterSecrets | None = None,
) -> bytes:
    """A write-only index object: which packs it lists and which index objects it supersedes, in
    the clear (pack ids are object names anyway), then the sealed index, then (with `master`, on
    the machine that holds the identity) the owner's MAC, then a MAC of the write key over
    everything before it. The machine that backs up reads the cover to know which packs the
    repository's index lists, never the entries. Readers honour `superseded` only under a valid
    owner's MAC: the write key alone may add to the index, never retire a part of it."""
    version = INDEX_COVER_OWNED if master is not None else INDEX_COVER_VERSION
    parts = [INDEX_COVER_MAGIC, bytes((version,)), _COUNT.pack(len(packs))]
    parts += [bytes.fromhex(p) for p in packs]
    parts.append(_COUNT.pack(len(superseded)))
    parts += [bytes.fromhex(s) for s in superseded]
    parts.append(sealed)
    body = b"".join(parts)
    if master is not None:
        body += _owner_mac(master, body)
    return body + _cover_mac(write_key, body)


def uncover_index(raw: bytes, write_key: WriteKey, what: str) -> Cover | None:
    """The cover of a write-only index object, or None for an index object without one (written
    before the repository became write-only). CorruptObject when the cover is not the write key's."""
    if not raw.startswith(INDEX_COVER_MAGIC):
        return None
    body, mac = raw[:-MAC_LENGTH], raw[-MAC_LENGTH:]
    if len(raw) < 13 + MAC_LENGTH or not same_bytes(mac, _cover_mac(write_key, body)):
        raise CorruptObject(f"{what} is not authenticated by the repository's write key (damaged or planted)")
    owner_mac = None
    if body[4] == INDEX_COVER_OWNED:
        if len(body) < 13 + MAC_LENGTH:
            raise CorruptObject(f"{what} has a malformed cover")
        body, owner_mac = body[:-MAC_LENGTH], body[-MAC_LENGTH:]
    elif body[4] != INDEX_COVER_VERSION:
        raise CorruptObject(f"{what} has an unknown cover version {body[4]}")
    try:
        pos = 5
        lists: list[list[str]] = []
        for _ in range(2):
            (count,) = _COUNT.unpack_from(body, pos)
            pos += _COUNT.size
            if pos + 32 * count > len(body):
                raise CorruptObject(f"{what} claims more ids than it holds")
            lists.append([body[pos + 32 * i : pos + 32 * (i + 1)].hex() for i in range(count)])
            pos += 32 * count
    except struct.error as exc:
        raise CorruptObject(f"{what} has a malformed cover") from exc
    return Cover(lists[0], lists[1], body[pos:], owner_mac, body)


def _cover_mac(write_key: WriteKey, body: bytes) -> bytes:
    return blake3.blake3(body, key=write_key.derive(INDEX_COVER_MAC_CONTEXT)).digest()


def _owner_mac(master: keyslots.MasterSecrets, body: bytes) -> bytes:
    return blake3.blake3(body, key=master.derive(SUPERSEDE_MAC_CONTEXT)).digest()
