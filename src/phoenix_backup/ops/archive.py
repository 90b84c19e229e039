"""`phx archive`: one snapshot as a plain `.zip` or `.tar.gz`, readable without Phoenix.

Layout inside the archive, below one top folder named after the snapshot (`phoenix-<name>/`):

    phoenix-2026-03-15-14-30/
        SHA256SUMS               `sha256sum -c SHA256SUMS` checks every file after extraction
        phoenix-manifest.json    the snapshot (id, time, host, tags), every entry, the databases
        workspace/…              the logical paths as folders (home/…, root/… likewise)

Databases are their consistent copies, as plain SQLite files. Modes and modification times are
kept (zip: the Unix mode in the external attributes and an extended-timestamp field). Every
file's bytes are checked against the snapshot's SHA-256 while they are written, and the archive
is written to a temporary name and renamed only when complete: a damaged repository never leaves
an archive that looks whole.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import struct
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phoenix_backup import jsontext
from phoenix_backup._version import __version__
from phoenix_backup.config import Config
from phoenix_backup.dirs import fsync_dir
from phoenix_backup.errors import ExitStatus, UsageError
from phoenix_backup.ops.context import (
    Environment,
    find_snapshot,
    open_repository,
    refuse_export_in_workspace,
    refuse_plain_copies_in_repository,
    require_identity,
)
from phoenix_backup.repo.reader import NodeReader
from phoenix_backup.repo.snapshot import Snapshot, unchecked_copy_note
from phoenix_backup.repo.tree import Node
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.sinks import leftovers
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.local import os_error

MANIFEST = "phoenix-manifest.json"
SUMS = "SHA256SUMS"
FORMATS = {".zip": "zip", ".tar.gz": "tar.gz", ".tgz": "tar.gz"}
# zip stores local time in 2-second steps from 1980 on; the extended-timestamp field (0x5455)
# carries the exact Unix second, which unzip restores.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ArchiveResult:
    snapshot: str
    name: str
    output: str
    format: str
    top: str  # the top folder inside the archive
    files: int
    dirs: int
    symlinks: int
    databases: int
    size: int  # logical bytes of the files and databases
    archive_size: int

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "name": self.name,
            "output": self.output,
            "format": self.format,
            "top": self.top,
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "databases": self.databases,
            "size": self.size,
            "archiveSize": self.archive_size,
        }


def archive_format(output: Path) -> str:
    name = output.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return fmt
    raise UsageError(f"cannot tell the archive format of {output.name}; name it FILE.zip or FILE.tar.gz")


def archive(
    cfg: Config,
    envx: Environment,
    *,
    ref: str,
    output: Path,
    target: str | None = None,
    force: bool = False,
) -> ArchiveResult:
    fmt = archive_format(output)
    output = output.absolute()
    # A plain copy of the snapshot (its config file's credentials, every store): never among the
    # repository's objects, nor in the workspace, where the next backup saved it and the next
    # archive held it again, each larger than the last.
    refuse_plain_copies_in_repository(cfg, output, "--output")
    refuse_export_in_workspace(cfg, output, "archive")
    if output.exists() and not force:
        raise UsageError(f"{output} already exists; choose another name or pass --force to replace it")
    if not output.parent.is_dir():
        raise UsageError(f"the folder {output.parent} does not exist; create it or choose another --output")
    repo = open_repository(cfg, envx, target=target)
    require_identity(repo)
    with repo.lock(exclusive=False, command="archive"):
        repo.load_index()
        snap = find_snapshot(cfg, envx, repo, ref)
        nodes = list(walk_tree(repo, snap.tree))
        for d in snap.databases:
            note = unchecked_copy_note(d.path, d.integrity) if d.engine == "sqlite" else None
            if note:
                envx.notice(f"warning: {note}")
        own = _phoenix_config(snap, nodes)
        if own is not None:
            envx.notice(
                f"warning: the archive holds Phoenix's config file ({own}) as plain text, with the "
                "credentials it names (target keys, database passwords, alert URLs); keep the archive "
                "as private as that file, or delete it from the archive before it leaves the machine"
            )
        top = f"phoenix-{snap.name}"
        if fmt == "zip":
            _zip_names(top, nodes)
        # Named and journalled as a restore's temporary files are, so that the next command removes
        # the file of an archive that was killed (sinks/leftovers.py); backups never save it.
        journal = leftovers.Journal(envx.notice)
        tmp = output.parent / f".phx-tmp-{journal.name}"
        journal.record(output.parent)
        try:
            # Private by default: an agent's memory and config may hold secrets.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            journal.close()
            raise os_error(exc, f"creating {output}") from exc
        try:
            with os.fdopen(fd, "wb") as raw:
                writer: _Writer = _ZipWriter(raw) if fmt == "zip" else _TarWriter(raw)
                with writer:
                    writer.add_bytes(f"{top}/{SUMS}", _sums(nodes), 0o644, time.time_ns())
                    writer.add_bytes(f"{top}/{MANIFEST}", _manifest(snap, nodes), 0o644, time.time_ns())
                    envx.progress.phase(
                        "writing the archive", files=len(nodes), size=sum(n.size for _l, n in nodes), unit="entries"
                    )
                    for logical, node in nodes:
                        envx.progress.advance(files=1, size=node.size)
                        name = f"{top}/{logical}"
                        if node.type == "dir":
                            writer.add_dir(name, node)
                        elif node.type == "symlink":
                            writer.add_symlink(name, node)
                        else:
                            reader = NodeReader(repo, logical, node, prove=True)  # streamed: each blob proven
                            writer.add_file(name, node, reader)
                            reader.finish()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, output)
            fsync_dir(output.parent)  # and the rename itself, as an export does
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise os_error(exc, f"writing {output}") from exc
            raise
        finally:
            journal.close()
    counts = {t: sum(1 for _lg, n in nodes if n.type == t) for t in ("file", "dir", "symlink", "sqlite")}
    return ArchiveResult(
        snapshot=snap.id,
        name=snap.name,
        output=str(output),
        format=fmt,
        top=top,
        files=counts["file"],
        dirs=counts["dir"],
        symlinks=counts["symlink"],
        databases=counts["sqlite"],
        size=sum(n.size for _lg, n in nodes if n.type in ("file", "sqlite")),
        archive_size=output.stat().st_size,
    )


def _phoenix_config(snap: Snapshot, nodes: list[tuple[str, Node]]) -> str | None:
    """The logical path of Phoenix's own config file (a full backup saves it, recorded in the
    snapshot's sources) when the archive holds it, else None."""
    recorded, workspace, home = (snap.sources.get(k) for k in ("config", "workspace", "home"))
    if not recorded or not workspace or not home:
        return None
    logical = Layout(Path(workspace), Path(home)).to_logical(Path(recorded))
    return logical if any(lg == logical and n.type == "file" for lg, n in nodes) else None


def _zip_names(top: str, nodes: list[tuple[str, Node]]) -> None:
    """A zip names its entries in UTF-8, in at most 65,535 bytes, with `/` between folders: a name
    or link target that is not UTF-8 (a file from a Latin-1 system), a name holding a backslash or
    a longer path (a forged tree) cannot be written, and tar can."""
    for logical, node in nodes:
        shown = logical.encode("utf-8", "backslashreplace").decode()
        if not (_is_utf8(logical) and _is_utf8(node.link_target or "")):
            raise UsageError(
                f"{shown} has a name or link target that is not UTF-8, which a zip archive cannot hold; write "
                "FILE.tar.gz instead"
            )
        if "\\" in logical:
            # The zip format's separator is `/` alone (APPNOTE 4.4.17), but extractors on Windows
            # may take a backslash for one too: `workspace/..\\..\\x` was written as it is, which
            # such an extractor may place outside the folder it unpacks into. tar keeps one name.
            raise UsageError(
                f"{shown} has a backslash in its name, which extractors on Windows may read as a folder separator "
                "(a name such as ..\\..\\x may land outside the folder unpacked into); write FILE.tar.gz instead"
            )
        length = len(f"{top}/{logical}/".encode())
        if length > 0xFFFF:
            raise UsageError(
                f"{shown[:200]}… is a path of {length} bytes, longer than a zip archive can name; write FILE.tar.gz "
                "instead"
            )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _sums(nodes: list[tuple[str, Node]]) -> bytes:
    """`sha256sum` format, paths relative to the top folder; GNU's escaping for odd names, and the
    bytes of a name that is not UTF-8 as they are (as sha256sum prints them)."""
    lines = []
    for logical, node in nodes:
        if node.type not in ("file", "sqlite"):
            continue
        if "\\" in logical or "\n" in logical or "\r" in logical:
            escaped = logical.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
            lines.append(f"\\{node.sha256}  {escaped}")
        else:
            lines.append(f"{node.sha256}  {logical}")
    # A name that is not UTF-8 (kept as surrogates) is written as its bytes, as sha256sum reads it.
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape") if lines else b""


def _manifest(snap: Snapshot, nodes: list[tuple[str, Node]]) -> bytes:
    entries = []
    for logical, node in nodes:
        entry: dict[str, Any] = {"path": logical, "type": node.type, "mode": f"{node.mode:04o}"}
        entry["mtimeNs"] = node.mtime_ns
        if node.type in ("file", "sqlite"):
            entry["size"] = node.size
            entry["sha256"] = node.sha256
        if node.type == "symlink":
            entry["linkTarget"] = node.link_target
        entries.append(entry)
    doc = {
        "format": "phoenix-archive",
        "version": 1,
        "phoenixVersion": __version__,
        "snapshot": {
            "id": snap.id,
            "name": snap.name,
            "time": snap.time,
            "host": snap.host,
            "username": snap.username,
            "scope": snap.scope,
            "tags": list(snap.tags),
            "sources": snap.sources,
        },
        "entries": entries,
        "databases": [d.to_json() for d in snap.databases],
        "incomplete": list(snap.incomplete),
    }
    return (jsontext.dumps(doc, indent=2) + "\n").encode()


class _Writer:
    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def add_bytes(self, name: str, data: bytes, mode: int, mtime_ns: int) -> None:
        raise NotImplementedError

    def add_dir(self, name: str, node: Node) -> None:
        raise NotImplementedError

    def add_symlink(self, name: str, node: Node) -> None:
        raise NotImplementedError

    def add_file(self, name: str, node: Node, reader: NodeReader) -> None:
        raise NotImplementedError


class _TarWriter(_Writer):
    def __init__(self, raw: io.BufferedWriter) -> None:
        # PAX keeps long names, exact (sub-second) times and large sizes.
        self.tar = tarfile.open(  # noqa: SIM115 - closed by `close`
            fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6
        )

    def close(self) -> None:
        self.tar.close()

    def _info(self, name: str, kind: bytes, mode: int, mtime_ns: int, node: Node | None = None) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.mtime = mtime_ns / 1e9
        if node is not None:
            info.uid, info.gid = node.uid, node.gid
        return info

    def add_bytes(self, name: str, data: bytes, mode: int, mtime_ns: int) -> None:
        info = self._info(name, tarfile.REGTYPE, mode, mtime_ns)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))

    def add_dir(self, name: str, node: Node) -> None:
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, node.mode, node.mtime_ns, node))

    def add_symlink(self, name: str, node: Node) -> None:
        info = self._info(name, tarfile.SYMTYPE, node.mode, node.mtime_ns, node)
        info.linkname = node.link_target or ""
        self.tar.addfile(info)

    def add_file(self, name: str, node: Node, reader: NodeReader) -> None:
        info = self._info(name, tarfile.REGTYPE, node.mode, node.mtime_ns, node)
        info.size = node.size
        self.tar.addfile(info, reader)  # tarfile only calls `read`


class _ZipWriter(_Writer):
    def __init__(self, raw: io.BufferedWriter) -> None:
        self.zip = zipfile.ZipFile(raw, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def close(self) -> None:
        self.zip.close()

    @staticmethod
    def _info(name: str, kind: int, mode: int, mtime_ns: int) -> zipfile.ZipInfo:
        seconds = mtime_ns // 1_000_000_000
        local = time.localtime(seconds)[:6]
        info = zipfile.ZipInfo(name, date_time=max(local, _ZIP_EPOCH))
        info.create_system = 3  # Unix: unzip applies the mode below
        info.external_attr = (kind | mode) << 16
        if kind == stat.S_IFDIR:
            info.external_attr |= 0x10  # MS-DOS directory flag
        # Extended timestamp (0x5455): flags "mtime present", the Unix time as a signed 32-bit int.
        info.extra = struct.pack("<HHBl", 0x5455, 5, 1, max(-(2**31), min(seconds, 2**31 - 1)))
        return info

    def add_bytes(self, name: str, data: bytes, mode: int, mtime_ns: int) -> None:
        info = self._info(name, stat.S_IFREG, mode, mtime_ns)
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)

    def add_dir(self, name: str, node: Node) -> None:
        info = self._info(name + "/", stat.S_IFDIR, node.mode, node.mtime_ns)
        self.zip.writestr(info, b"")

    def add_symlink(self, name: str, node: Node) -> None:
        info = self._info(name, stat.S_IFLNK, node.mode or 0o777, node.mtime_ns)
        info.compress_type = zipfile.ZIP_STORED
        self.zip.writestr(info, (node.link_target or "").encode())

    def add_file(self, name: str, node: Node, reader: NodeReader) -> None:
        info = self._info(name, stat.S_IFREG, node.mode, node.mtime_ns)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.file_size = node.size  # lets zipfile choose ZIP64 up front for large databases
        with self.zip.open(info, "w") as out:
            for chunk in reader.chunks():
                out.write(chunk)
