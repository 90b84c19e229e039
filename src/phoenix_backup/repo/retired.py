"""The record of what a key rotation retired (`phx key rotate`, ops/key_rotate.py).

A rotation re-seals every snapshot, capture segment, index object and pack of the first target
under a new key and deletes the old ones. Replicas are brought over later (repo/replicate.py):
they must delete their copies of exactly those old objects, and nothing else. An object a replica
holds that the first target had lost before the rotation was not re-sealed: it is the only copy
left, and deleting it would lose it on every target. So the rotation writes, before its commit
point, one object sealed under the NEW key naming every old snapshot and segment it re-sealed (and
those the records of earlier rotations name, so a replica that missed several rotations is still
brought over). Only the owner's key authenticates it: whoever can write the storage cannot forge
one to make a replica delete an object.

A snapshot or segment is re-sealed under a new name; `moved` maps each old one the record names to
its re-sealed successor on the first target (for a name carried from an earlier record, the
successor's successor). A replica deletes its copy only while that successor is there: one lost on
the first target after it was re-sealed (before a later rotation, or before the replica's sync)
leaves the replica's old copy the only one, so it is kept. A later rotation does not carry a name
whose successor it did not re-seal.

A record names only what replication consults: the old snapshots and segments (`KEPT`). Index
objects and packs are not named (a replica deletes its old-key ones once every snapshot and
segment there is accounted for), so a record grows with the snapshots and segments a rotation
re-sealed, never with the repository's history of packs.

It also names the fingerprints of the keys it retired (`keys`, carried like the names): a replica's
old slots that the owner's credentials open give a key, and only a key a record names counts as
retired there. An object under `snapshots/` or `captures/` that neither the current key nor a
retired key opens is junk (damaged or planted): it does not keep a replica on its old key.

Stored as `retired/<SHA-256 of the sealed bytes>`: JSON `{"version": 1, "names": [...], "moved":
{old: new}, "keys": [fingerprint, ...]}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NamedTuple

from phoenix_backup.errors import CorruptObject, ObjectNotFound
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.repository import RETIRED_AAD, RETIRED_PREFIX, Repository
from phoenix_backup.storage.base import ObjectInfo

PREFIX = RETIRED_PREFIX
VERSION = 1
# What a record names: the objects replication checks against it (`unsafe`).
KEPT = ("snapshots/", "captures/")


class Retired(NamedTuple):
    names: set[str]  # old snapshots and segments
    moved: dict[str, str]  # each one's re-sealed successor
    keys: set[str]  # fingerprints of the retired keys


def write(repo: Repository, names: set[str], moved: dict[str, str], keys: set[str]) -> str:
    """Seal the record naming the snapshots and segments among `names` (and their successors
    `moved`) and the retired keys' fingerprints `keys` under `repo`'s key and store it; returns its
    object name."""
    doc = {
        "version": VERSION,
        "names": sorted(n for n in names if n.startswith(KEPT)),
        "moved": dict(sorted(moved.items())),
        "keys": sorted(keys),
    }
    body = json.dumps(doc, separators=(",", ":")).encode()
    raw = repo.sealer.seal(body, RETIRED_AAD)
    name = PREFIX + sha256_hex(raw)
    repo.backend.write(name, raw)
    return name


def named(repo: Repository) -> set[str]:
    """Every object name the records of `repo` that its key authenticates list. A record that does
    not open (another key's, damaged or planted) names nothing: what it would name is kept."""
    return load(repo).names


def load(repo: Repository) -> Retired:
    """The snapshots and segments the records of `repo` that its key authenticates list, the
    successors they give them (`moved`) and the retired keys' fingerprints (a record written before
    they were kept names none; one that named index objects and packs counts only for its
    snapshots and segments)."""
    out: set[str] = set()
    moved: dict[str, str] = {}
    keys: set[str] = set()
    for info in repo.backend.list(PREFIX):
        try:
            raw = repo.backend.read(info.name)
            if sha256_hex(raw) != info.name.removeprefix(PREFIX):
                continue
            doc = json.loads(repo.sealer.open(raw, RETIRED_AAD, info.name))
        except (CorruptObject, ObjectNotFound, ValueError, RecursionError):
            continue
        names = doc.get("names") if isinstance(doc, dict) and doc.get("version") == VERSION else None
        if isinstance(names, list):
            out.update(n for n in names if isinstance(n, str) and n.startswith(KEPT))
        succ = doc.get("moved") if isinstance(doc, dict) else None
        if isinstance(succ, dict):
            moved.update((k, v) for k, v in succ.items() if isinstance(k, str) and isinstance(v, str))
        fps = doc.get("keys") if isinstance(doc, dict) else None
        if isinstance(fps, list):
            keys.update(k for k in fps if isinstance(k, str))
    return Retired(out, moved, keys)


def carry(names: set[str], moved: dict[str, str], now: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    """The names and successors of earlier records that a rotation re-sealing `now` (old name ->
    new name) carries into its own: a snapshot or segment whose successor this rotation did not
    re-seal (lost or deleted on the first target since) is dropped, so a replica's copy of it is
    kept as the only one."""
    kept = {n for n in names if n not in moved or moved[n] in now}
    return kept, {n: now[m] for n, m in moved.items() if n in kept and m in now}


def unsafe(names: set[str], moved: dict[str, str], old: list[str], present: set[str]) -> list[str]:
    """Those of a replica's `old` snapshots and segments (sealed under a retired key) that it must
    keep: no record names them, or their re-sealed successor is in none of `present`."""
    return [n for n in old if n not in names or (n in moved and moved[n] not in present)]


def rotated_after(listed: Iterable[ObjectInfo], when: float) -> bool:
    """Whether a rotation's record among `listed` (a listing holding `retired/`) may have been
    written after `when`: a store that gives no write time counts as after. Read without the key,
    so a machine that cannot open the records (`phx status`, a write-only machine) can tell that a
    snapshot id it recorded may have been renamed by a rotation, not lost."""
    return any(i.name.startswith(PREFIX) and (i.modified is None or i.modified > when) for i in listed)
