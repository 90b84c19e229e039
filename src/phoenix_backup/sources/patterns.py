"""Include and exclude patterns (docs/configuration.md, "Choosing what is backed up", documents them).

Includes are paths: relative ones start at the workspace, `~/...` and `/...` are absolute. A glob
`*` or `?` stays inside one path segment, `**` spans any number of segments, `[abc]` is a class.
A pattern that matches a folder includes everything below it; a trailing `/` says "folder".
An empty include list means the whole workspace.

Excludes follow .gitignore: a pattern with no slash (a trailing one aside) matches a name at any
depth (`*.log`, `node_modules/`, `.DS_Store`); one with a slash is anchored like an include. A
trailing `/` matches folders only. Excludes win over includes.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A full-match regex for a slash-separated glob where `*` never crosses `/`."""
    out = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j]
                negated = body.startswith("!")
                body = body[1:] if negated else body
                body = body.replace("\\", "\\\\")
                # Like git's wildmatch, a bracket expression never matches "/".
                out.append(("[^/" + body + "]") if negated else ("[" + body + "]"))
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.DOTALL)


def has_magic(segment: str) -> bool:
    return any(ch in segment for ch in "*?[")


def without_dots(path: str, folders: Iterable[Path | None] = ()) -> str:
    """The absolute `path` holding `..` (`~/sub/../notes`, `memory/../cache.sqlite` made absolute)
    as the file it names, its folder resolved as the system resolves it (through links): a `..`
    went into the snapshot as a name, and no command could read that snapshot again ('unsafe name
    ..'). A path without `..`, or with a glob before its last `..`, is returned as written.

    A resolved path inside one of `folders` (the workspace, the home folder) as the system
    resolves them is said below that folder as written: with a workspace reached through a link
    (`~/argent -> /data/argent`), `memory/../notes` is `~/argent/notes`, saved as
    `workspace/notes` as `notes` is, not as `root/data/argent/notes` (which a new machine's
    restore would put back at the old machine's path)."""
    if ".." not in path.split("/"):
        return path
    head, name = os.path.split(path)
    if name in ("", ".", ".."):
        if has_magic(path):
            return path
        resolved = os.path.realpath(path)
    elif has_magic(head):
        return path
    else:
        resolved = os.path.join(os.path.realpath(head), name)
    reals = [(os.path.realpath(f), f) for f in folders if f is not None]
    for real, folder in sorted(reals, key=lambda rf: -len(rf[0])):
        if resolved == real:
            return str(folder)
        if resolved.startswith(real.rstrip("/") + "/"):
            return os.path.join(str(folder), resolved[len(real.rstrip("/")) + 1 :])
    return resolved


def below_folder(text: str, folders: Iterable[Path | None]) -> tuple[Path, str] | None:
    """(the folder, the rest of the pattern) when the absolute pattern `text` is one of `folders`
    (the workspace and the home folder, the deepest first; the rest "") or lies below it: their
    paths are folders, never patterns, whatever characters they hold (`~/.argentos/memory.db`
    with a home named `/tmp/[a]*?` is not `/tmp/abc/.argentos/memory.db`, and `~/` is that home,
    not `/tmp/abc`); else None."""
    for folder in sorted((f for f in folders if f is not None), key=lambda f: -len(str(f))):
        prefix = str(folder).rstrip("/") + "/"
        if text.rstrip("/") == prefix.rstrip("/"):
            return folder, ""
        if text.startswith(prefix):
            return folder, text[len(prefix) :]
    return None


@dataclass(frozen=True)
class Include:
    base: Path  # absolute folder the pattern is relative to ("/" for absolute patterns)
    pattern: str  # relative to base, no leading or trailing slash
    dir_only: bool

    @classmethod
    def parse(cls, raw: str, workspace: Path, home: Path | None = None) -> Include:
        if raw in ("", ".", "./"):
            return cls(workspace, "", True)
        dir_only = raw.endswith("/")
        text = raw.rstrip("/") or "/"
        if ".." in text.split("/"):
            text = without_dots(text if os.path.isabs(text) else str(workspace / text), (workspace, home))
        if os.path.isabs(text):
            below = below_folder(text, (workspace, home))
            if below is not None:  # the folder itself: ".", so that one missing is said missing
                return cls(below[0], below[1] or ".", dir_only)
            return cls(Path("/"), text.lstrip("/"), dir_only)
        text = text.removeprefix("./")
        return cls(workspace, text, dir_only)

    def expand(self, errors: list[tuple[str, str]] | None = None) -> Iterator[Path]:
        """Existing paths the pattern names (without following symlinks to folders). A folder on
        the way that exists but cannot be read goes into `errors` as (path, reason): it is not
        missing, and must not be reported as if it were."""
        if self.pattern == "":
            yield self.base
            return
        yield from _expand(self.base, self.pattern.split("/"), self.dir_only, [] if errors is None else errors)


def _expand(base: Path, segments: list[str], dir_only: bool, errors: list[tuple[str, str]]) -> Iterator[Path]:
    head, rest = segments[0], segments[1:]
    if head == "**":
        # Zero segments, or descend one folder and keep "**" in front.
        if rest:
            yield from _expand(base, rest, dir_only, errors)
        else:
            yield base
        for entry in _scandir(base, errors):
            if entry.is_dir(follow_symlinks=False):
                yield from _expand(Path(entry.path), segments, dir_only, errors)
        return
    if has_magic(head):
        rx = glob_regex(head)
        candidates = [Path(e.path) for e in _scandir(base, errors) if rx.fullmatch(e.name)]
    else:
        candidate = base / head
        candidates = [candidate] if _lexists(candidate, errors) else []
    for path in sorted(candidates):
        if rest:
            if path.is_dir() and not path.is_symlink():
                yield from _expand(path, rest, dir_only, errors)
        elif not dir_only or (path.is_dir() and not path.is_symlink()):
            yield path


# What "there is nothing there" looks like; any other error means something is there but unreadable.
_ABSENT = (errno.ENOENT, errno.ENOTDIR)


def _lexists(path: Path, errors: list[tuple[str, str]]) -> bool:
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno not in _ABSENT:
            errors.append((str(path.parent), exc.strerror or str(exc)))
        return False
    return True


def _scandir(path: Path, errors: list[tuple[str, str]]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        if exc.errno not in _ABSENT:
            errors.append((str(path), exc.strerror or str(exc)))
        return []


@dataclass(frozen=True)
class Exclude:
    regex: re.Pattern[str]
    anchored: bool
    dir_only: bool
    absolute: bool


class ExcludeSet:
    def __init__(self, patterns: tuple[str, ...] | list[str], workspace: Path, home: Path | None = None) -> None:
        self.workspace = workspace
        self.rules: list[Exclude] = []
        for raw in patterns:
            dir_only = raw.endswith("/")
            text = raw.rstrip("/")
            if not text:
                continue
            absolute = os.path.isabs(text)
            anchored = "/" in text
            below = below_folder(text, (workspace, home)) if absolute else None
            if below is not None:  # the folder's path as it is, the rest as a pattern
                # Matched against the path without its leading "/": a home folder that is "/"
                # (HOME=/ in a container) adds nothing, not a "/" that no path starts with.
                folder = str(below[0]).strip("/")
                if not below[1]:  # the folder itself
                    regex = re.compile(re.escape(folder), re.DOTALL)
                else:
                    literal = re.escape(folder + "/") if folder else ""
                    regex = re.compile(literal + glob_regex(below[1]).pattern, re.DOTALL)
            else:
                regex = glob_regex(text.lstrip("/") if absolute else text.removeprefix("./"))
            self.rules.append(Exclude(regex, anchored, dir_only, absolute))

    def excluded(self, path: Path, is_dir: bool) -> bool:
        name = path.name
        rel: str | None = None
        try:
            rel = path.relative_to(self.workspace).as_posix()
        except ValueError:
            rel = None
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if not rule.anchored:
                if rule.regex.fullmatch(name):
                    return True
            elif rule.absolute:
                if rule.regex.fullmatch(path.as_posix().lstrip("/")):
                    return True
            elif rel is not None and rule.regex.fullmatch(rel):
                return True
        return False
