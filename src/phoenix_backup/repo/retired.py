"""The record of what a key rotation retired (`phx key rotate`, ops/key_rotate.py).

A rotation re-seals every snapshot, capture segment, index object and pack of the first target
under a new key and deletes the old ones. Replicas are brought over later (repo/replicate.py):
they must delete their copies of exactly those old objects, and nothing else. An object a replica
holds that the first target had lost before the rotation was not re-sealed: it is the only copy
left, and deleting it would lose it on every target. So the rotation writes, before its commit
point, one object sealed under the NEW key naming every old object it re-sealed or deleted (and
those the records of earlier rotations name, so a replica that missed several rotations is still
brought over). Only the owner's key authenticates it: whoever can write the storage cannot forge
one to make a replica delete an object.

Stored as `retired/<SHA-256 of the sealed bytes>`: JSON `{"version": 1, "names": [...]}`.
"""

from __future__ import annotations

import json

from phoenix_backup.errors import CorruptObject, ObjectNotFound
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.repository import RETIRED_AAD, Repository

PREFIX = "retired/"
VERSION = 1


def write(repo: Repository, names: set[str]) -> str:
    """Seal the record naming `names` under `repo`'s key and store it; returns its object name."""
    body = json.dumps({"version": VERSION, "names": sorted(names)}, separators=(",", ":")).encode()
    raw = repo.sealer.seal(body, RETIRED_AAD)
    name = PREFIX + sha256_hex(raw)
    repo.backend.write(name, raw)
    return name


def named(repo: Repository) -> set[str]:
    """Every object name the records of `repo` that its key authenticates list. A record that does
    not open (another key's, damaged or planted) names nothing: what it would name is kept."""
    out: set[str] = set()
    for info in repo.backend.list(PREFIX):
        try:
            raw = repo.backend.read(info.name)
            if sha256_hex(raw) != info.name.removeprefix(PREFIX):
                continue
            doc = json.loads(repo.sealer.open(raw, RETIRED_AAD, info.name))
        except (CorruptObject, ObjectNotFound, ValueError):
            continue
        names = doc.get("names") if isinstance(doc, dict) and doc.get("version") == VERSION else None
        if isinstance(names, list):
            out.update(n for n in names if isinstance(n, str))
    return out
