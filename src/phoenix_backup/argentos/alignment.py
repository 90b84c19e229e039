"""The ArgentOS alignment manifest, `.argent-alignment-integrity.json` in the workspace.

It holds the SHA-256 of the identity files and MEMORY.md, `{"version": 1, "algorithm": "sha256",
"files": {"SOUL.md": "<hex>", ...}}`, and an enforcing gateway refuses to start when a file does
not match. It is a tamper check, so Phoenix never rewrites it on its own: a restore that leaves it
inconsistent says so, and only `--realign` rewrites its hashes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

MANIFEST = ".argent-alignment-integrity.json"
# The files the manifest covers (ArgentOS): identity files and MEMORY.md.
FILES: tuple[str, ...] = (
    "SOUL.md",
    "IDENTITY.md",
    "AGENTS.md",
    "USER.md",
    "HEARTBEAT.md",
    "CONTEMPLATION.md",
    "TOOLS.md",
    "MEMORY.md",
)
RELEVANT = frozenset((MANIFEST, *FILES))


@dataclass
class AlignmentReport:
    """What a restore did to the manifest's consistency with the files it covers."""

    manifest: str  # where it is (real path)
    exists: bool
    consistent: bool
    mismatched: list[str] = field(default_factory=list)  # names whose hash does not match (or missing)
    realigned: bool = False
    rewritten: list[str] = field(default_factory=list)  # names whose hash --realign changed
    predicted: bool = False  # a dry run: what the restore would leave

    def to_json(self) -> dict[str, object]:
        return {
            "manifest": self.manifest,
            "exists": self.exists,
            "consistent": self.consistent,
            "mismatched": self.mismatched,
            "realigned": self.realigned,
            "rewritten": self.rewritten,
            "predicted": self.predicted,
        }


def parse(data: bytes) -> dict[str, Any] | None:
    """The manifest's JSON, or None when it is not a manifest Phoenix understands."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: a workspace file nesting too deep
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        return None
    if doc.get("algorithm", "sha256") != "sha256":
        return None
    return doc


def mismatches(doc: Mapping[str, Any] | None, hashes: Mapping[str, str | None]) -> list[str]:
    """Names the manifest lists whose file is missing or differs (all of them if it is unreadable).

    `hashes`: SHA-256 of each covered file as it is (or will be), None when it does not exist.
    """
    if doc is None:
        return ["(unreadable manifest)"]
    out = []
    for name, expected in sorted(doc["files"].items()):
        if hashes.get(name) != expected:
            out.append(name)
    return out


def realigned(doc: Mapping[str, Any] | None, hashes: Mapping[str, str | None]) -> tuple[bytes, list[str]]:
    """The manifest rewritten with the current hashes (other fields kept), and the names changed.

    It covers the files it listed plus the standard ones that exist, like ArgentOS writes it.
    """
    base: dict[str, Any] = dict(doc) if doc is not None else {"version": 1, "algorithm": "sha256"}
    old: dict[str, str] = dict(base.get("files") or {})
    names = [n for n in FILES if hashes.get(n) is not None]
    names += [n for n in old if n not in names and hashes.get(n) is not None]
    files = {n: str(hashes[n]) for n in names}
    changed = sorted(n for n in set(old) | set(files) if old.get(n) != files.get(n))
    base["files"] = files
    return (json.dumps(base, indent=2) + "\n").encode(), changed


def sha256_or_none(read: Callable[[str], bytes | None], name: str) -> str | None:
    data = read(name)
    return None if data is None else hashlib.sha256(data).hexdigest()
