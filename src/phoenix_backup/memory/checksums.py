"""`checksums.json` of an export: SHA-256 of every file and one combined digest.

    {"algorithm": "sha256", "files": {"<relative path>": "<hex>"}, "combined": "<hex>"}

`files` lists every file of the export except `checksums.json` itself, with `/` separators.
`combined` is the SHA-256 of the lines `<hex>  <relative path>\\n` in sorted path order, which is
exactly the text `sha256sum` prints for those files, so both can be checked with standard tools:

    jq -r '.files | to_entries[] | "\\(.value)  \\(.key)"' checksums.json | sha256sum -c
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from phoenix_backup import jsontext
from phoenix_backup.repo.crypto import Sha256, sha256_file
from phoenix_backup.units import human_size

CHECKSUMS = "checksums.json"
# checksums.json and metadata.json are read whole: 256 MiB lists some two million files.
MAX_JSON_BYTES = 256 << 20


def open_export_file(root: Path, rel: str) -> BinaryIO:
    """The file `rel` below an export's folder `root`, opened for reading as `phx export` writes
    it: a regular file with no symbolic link on the way from `root` (`root` itself may be one).
    Each folder is opened by the descriptor of the one above it (O_NOFOLLOW), so a link put in
    place of a file or folder after checksums.json was checked (out of the export: /etc/..., the
    live store) is refused, never read. A link is a ValueError, a folder IsADirectoryError, a
    FIFO or device a ValueError (opened O_NONBLOCK: never waited on); others as `open` raises them."""
    parts = Path(rel).parts
    if not parts:  # the export's folder itself
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), rel)
    if ".." in parts or Path(rel).is_absolute():
        raise ValueError(f"{rel!r} is not a path inside the export")
    walk = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                below = os.open(part, walk | os.O_DIRECTORY, dir_fd=fd)
            except NotADirectoryError:  # what O_NOFOLLOW | O_DIRECTORY says of a link
                if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
            os.close(fd)
            fd = below
        found = os.open(parts[-1], walk | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError("it is a symbolic link or lies below one, which `phx export` never writes") from None
        raise
    finally:
        os.close(fd)
    f = os.fdopen(found, "rb")
    mode = os.fstat(found).st_mode
    if not stat.S_ISREG(mode):
        f.close()
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), rel)
        raise ValueError("it is not a regular file, which `phx export` always writes")
    return f


def read_json_text(path: Path) -> str:
    """The text of an export's checksums.json or metadata.json, which `phx export` writes as
    regular files of a bounded size. A symbolic link (out of the export: /etc/..., /dev/zero, the
    live store), a FIFO (which blocks for ever) or a file past MAX_JSON_BYTES is a ValueError
    saying so; other OSErrors (FileNotFoundError) as `open` raises them."""
    with open_export_file(path.parent, path.name) as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"it is larger than the {human_size(MAX_JSON_BYTES)} Phoenix reads of it")
    return data.decode("utf-8")


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
        doc = json.loads(read_json_text(path))
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
    real_root = os.path.realpath(root)
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
        if os.path.realpath(target) != os.path.join(real_root, *Path(rel).parts):
            # A link to a file outside (/etc/..., the live store) was read and hashed.
            report.problems.append(f"{rel} is a symbolic link or lies below one, which `phx export` never writes")
            continue
        report.checked += 1
        if sha256_file(target) != listed[rel]:
            report.problems.append(f"{rel} does not match its SHA-256")
    for rel in export_files(root):
        if rel not in listed:
            report.problems.append(f"{rel} is not listed in {CHECKSUMS}")
    return report
