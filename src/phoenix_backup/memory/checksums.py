"""`checksums.json` of an export: SHA-256 of every file and one combined digest.

    {"algorithm": "sha256", "files": {"<relative path>": "<hex>"}, "combined": "<hex>"}

`files` lists every file of the export except `checksums.json` itself, with `/` separators.
`combined` is the SHA-256 of the lines `<hex>  <relative path>\\n` in sorted path order, which is
exactly the text `sha256sum` prints for those files, so both can be checked with standard tools:

    jq -r '.files | to_entries[] | "\\(.value)  \\(.key)"' checksums.json | sha256sum -c
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from phoenix_backup import jsontext
from phoenix_backup.repo.crypto import Sha256, sha256_file

CHECKSUMS = "checksums.json"


def combined_digest(files: dict[str, str]) -> str:
    h = Sha256()
    for path in sorted(files):
        h.update(f"{files[path]}  {path}\n".encode("utf-8", "surrogateescape"))  # sha256sum's bytes
    return h.hexdigest()


def export_files(root: Path) -> list[str]:
    """Every regular file below `root` but `checksums.json`, relative, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def write_checksums(root: Path) -> dict[str, object]:
    files = {rel: sha256_file(root / rel) for rel in export_files(root)}
    doc: dict[str, object] = {"algorithm": "sha256", "files": files, "combined": combined_digest(files)}
    (root / CHECKSUMS).write_text(jsontext.dumps_exact(doc, indent=2) + "\n", encoding="utf-8")
    return doc


@dataclass
class ChecksumReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)  # one sentence each

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_checksums(root: Path) -> ChecksumReport:
    """Check every listed file and the combined digest; files not listed are problems too (an
    export is written whole, so anything extra was added later)."""
    report = ChecksumReport()
    path = root / CHECKSUMS
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        files = doc["files"]
        if doc.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 checksum list")
    except FileNotFoundError:
        report.problems.append(f"{CHECKSUMS} is missing")
        return report
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        report.problems.append(f"{CHECKSUMS} is unreadable ({exc})")
        return report
    listed = {str(k): str(v) for k, v in files.items()}
    if combined_digest(listed) != doc.get("combined"):
        report.problems.append(f"the combined digest of {CHECKSUMS} does not match its file list")
    for rel in sorted(listed):
        target = root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            report.problems.append(f"{rel} is not a path inside the export")
            continue
        if not target.is_file():
            report.problems.append(f"{rel} is missing")
            continue
        report.checked += 1
        if sha256_file(target) != listed[rel]:
            report.problems.append(f"{rel} does not match its SHA-256")
    for rel in export_files(root):
        if rel not in listed:
            report.problems.append(f"{rel} is not listed in {CHECKSUMS}")
    return report
