"""Logical snapshot paths (DESIGN §7), so a snapshot restores onto another machine or user.

workspace/...   relative to the configured workspace
home/...        other paths under the home directory (~/.argentos/memory.db)
root/...        any other absolute path
postgres/<name>/...   the streams of a configured PostgreSQL database (dump, globals, manifest)
redis/<name>/...      the record file and manifest of a configured Redis database

Database roots have no place on disk in place: they are restored into their servers, and written
as files only below `restore --to DIR`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from phoenix_backup.errors import UnsafePath, UsageError

FILE_ROOTS = ("workspace", "home", "root")
DATABASE_ROOTS = ("postgres", "redis")
ROOTS = (*FILE_ROOTS, *DATABASE_ROOTS)


def is_database_path(logical: str) -> bool:
    """A PostgreSQL or Redis stream (postgres/<name>/..., redis/<name>/...), not a file path."""
    return logical.split("/", 1)[0] in DATABASE_ROOTS


@dataclass(frozen=True)
class Layout:
    workspace: Path
    home: Path

    def to_logical(self, path: Path) -> str:
        """The logical path of an absolute path; the workspace wins over home when nested."""
        # On the path's text, not with `relative_to`: pathlib parses every part of its argument
        # again, which for a folder thousands of levels deep cost more than the backup's reading.
        p = str(path if isinstance(path, PurePath) else Path(path))
        for root, base in (("workspace", self.workspace), ("home", self.home)):
            b = str(base)
            if p == b:
                return root
            prefix = b if b.endswith("/") else b + "/"
            if p.startswith(prefix):
                return f"{root}/{p[len(prefix) :]}"
        return "root" + p if p != "/" else "root"

    def to_real(self, logical: str, dest: Path | None = None) -> Path:
        """Where a logical path lands: in place, or below `dest` as `dest/<logical>`."""
        parts = split_logical(logical)
        if dest is not None:
            return dest.joinpath(*parts)
        if parts[0] in DATABASE_ROOTS:
            raise UnsafePath(
                f"{logical} is a database stream, not a file: it is restored into its server, or written as a "
                "file below `phx restore --to DIR`"
            )
        base = {"workspace": self.workspace, "home": self.home, "root": Path("/")}[parts[0]]
        return base.joinpath(*parts[1:])


def all_ancestors(paths: Iterable[str]) -> list[str]:
    """The folders above any of the logical `paths` (`workspace`, `workspace/memory` for
    `workspace/memory/a.md`), each once, outermost first among each path's new ones. Each path is
    walked up only to a folder already found, so a chain of folders thousands deep costs its length
    (joining every prefix of every path cost the cube of the depth: a backup and a restore of a
    folder 1,900 deep took minutes)."""
    found: set[str] = set()
    out: list[str] = []
    for logical in paths:
        new: list[str] = []
        end = logical.rfind("/")
        while end > 0:
            folder = logical[:end]
            if folder in found:
                break
            found.add(folder)
            new.append(folder)
            end = logical.rfind("/", 0, end)
        out.extend(reversed(new))
    return out


def split_logical(logical: str) -> list[str]:
    parts = PurePosixPath(logical).parts
    if not parts or parts[0] not in ROOTS or any(p in ("..", ".", "/") or "\0" in p for p in parts):
        raise UnsafePath(f"snapshot path {logical!r} is not a safe logical path; it was not restored")
    return list(parts)


def home_logical(sources: Mapping[str, str], raw: str) -> str:
    """The logical path (or `--path` glob) of `~` or `~/…`, the home folder of the machine that
    took the snapshot (`sources`, its recorded roots): `home/…`, or `workspace/…` when the
    workspace lies below that home (`~/argent/MEMORY.md` with the workspace `~/argent`), where
    the snapshot holds it."""
    rel = raw[2:].strip("/")
    home = sources.get("home")
    if home:
        return _recorded_logical(sources, f"{home.rstrip('/')}/{rel}" if rel else home)
    return f"home/{rel}" if rel else "home"


def _recorded_logical(sources: Mapping[str, str], raw: str) -> str:
    """An absolute path as it was on the machine that took the snapshot, as a logical path."""
    # Longest recorded source first: the workspace usually lives below the home folder.
    for root, base in sorted(sources.items(), key=lambda kv: -len(kv[1])):
        try:
            rel_path = PurePosixPath(raw).relative_to(base)
        except ValueError:
            continue
        rel = rel_path.as_posix()
        return root if rel == "." else f"{root}/{rel}"
    return "root" + raw.rstrip("/")


def logical_path(sources: Mapping[str, str], path: str | None) -> str:
    """The logical path (`workspace/MEMORY.md`) a user means by PATH.

    Accepted: a logical path (`workspace/…`, `home/…`, `root/…`), a path relative to the workspace
    (`MEMORY.md`), `~/…` (the home folder), or an absolute path as it was on the machine that took
    the snapshot (mapped through `sources`, the snapshot's recorded roots). Empty means the whole snapshot.
    """
    raw = (path or "").strip()
    if raw in ("", "/", "."):
        return ""
    if raw.startswith("~/") or raw == "~":
        return home_logical(sources, raw)
    if raw.startswith("/"):
        return _recorded_logical(sources, raw)
    raw = raw.removeprefix("./").strip("/")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UsageError(f"path {path!r} holds '..'; name a path inside the snapshot (see `phx ls ID`)")
    if parts and parts[0] in ROOTS:
        return "/".join(parts)
    return "/".join(["workspace", *parts])
