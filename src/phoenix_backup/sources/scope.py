"""Scopes (full, memory, identity, databases, config): which paths a backup or restore covers."""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from phoenix_backup.config import Config
from phoenix_backup.config.defaults import DEFAULT_SQLITE
from phoenix_backup.sources.layout import FILE_ROOTS, Layout
from phoenix_backup.sources.patterns import Include, below_folder, glob_regex, has_magic, without_dots

Scope = Literal["full", "memory", "identity", "databases", "config"]
SCOPES: tuple[Scope, ...] = ("full", "memory", "identity", "databases", "config")


GLOB_CHARACTERS = "*?["


def configured_databases(cfg: Config) -> list[Path]:
    """`databases.sqlite` entries, globs expanded; missing ones are kept so they can be reported.
    An entry holding glob characters is every path it matches as a pattern and, when a path of
    that very name exists, that path too (`agent[1]/memory.db`): a file literally named `*.db`
    never hides the databases `/data/*.db` matches. A pattern that matches nothing and names
    nothing is kept as written, so that the backup and `phx doctor` say it (with `glob_hint`)
    instead of leaving the database out unsaid. Only the characters written in the entry are
    glob characters: the workspace's path (a relative entry is a pattern inside it), the home
    folder `~` names and a `$NAME`'s value are never read as one (`/srv/agent[1]` + `*.db`; a
    home `/tmp/[a]*?` is not `/tmp/abc`, whose databases are not the user's)."""
    out: list[Path] = []
    folders = (cfg.workspace, Path.home())
    for raw, pattern in _entries(cfg):
        path = without_dots(raw if os.path.isabs(raw) else str(cfg.workspace / raw), folders)
        if pattern:
            pattern = _absolute_pattern(cfg, pattern)
            # A folder the pattern matches (`*.db` and a store's folder `index.db/`) is no database
            # the user named: it is walked as files, never said to be a database not saved.
            found = {without_dots(p, folders) for p in glob.glob(pattern) if not os.path.isdir(p)}
            if os.path.lexists(path):
                found.add(path)
            out.extend(Path(p) for p in sorted(found) or (path,))
        else:
            out.append(Path(path))
    # One store named twice (`agents/memory.db` and its absolute path) is one store: the live
    # export wrote it twice (`memory-2`, `memory-3`), the snapshot's once.
    return list(dict.fromkeys(out))


def configured_store(cfg: Config, layout: Layout) -> Callable[[str], bool]:
    """Whether a logical path is one of the configured SQLite stores (`databases.sqlite`): a path
    `configured_databases` gives here, or one an entry's glob pattern matches, so that a snapshot's
    store this machine no longer holds is still one. `phx export` takes these as databases, from
    the live workspace and from a snapshot alike; any other SQLite file is no store of the agent's
    (a cache, a tool's database) and is exported as a file, its bytes, or not at all."""
    paths = configured_databases(cfg)
    # A store kept elsewhere behind a link is the store, at the link's path and at its own.
    named = {layout.to_logical(p) for p in paths} | {
        layout.to_logical(Path(os.path.realpath(p))) for p in paths if p.is_symlink()
    }
    patterns = [_absolute_pattern(cfg, p) for _raw, p in _entries(cfg) if p]

    def matches(logical: str) -> bool:
        if logical in named:
            return True
        if logical.split("/", 1)[0] not in FILE_ROOTS:
            return False
        real = str(layout.to_real(logical))
        return any(_glob_matches(p, real) for p in patterns)

    return matches


def _absolute_pattern(cfg: Config, pattern: str) -> str:
    """An entry's glob pattern as an absolute one: a relative one lies in the workspace, whose
    path is never read as a pattern."""
    return pattern if os.path.isabs(pattern) else os.path.join(glob.escape(str(cfg.workspace)), pattern)


def _glob_matches(pattern: str, path: str) -> bool:
    """Whether `glob.glob(pattern)` would list `path` were it there: name by name, `*`, `?` and
    `[...]` within one name (`**` too, as glob reads it without `recursive`), and a name starting
    with `.` only where the pattern's name does (the same paths `configured_databases` finds)."""
    names, parts = pattern.split("/"), path.split("/")
    if len(names) != len(parts):
        return False
    for name, part in zip(names, parts, strict=True):
        if not has_magic(name):
            if name != part:
                return False
        elif (part.startswith(".") and not name.startswith(".")) or not fnmatch.fnmatchcase(part, name):
            return False
    return True


def _entries(cfg: Config) -> list[tuple[str, str]]:
    """Each `databases.sqlite` entry and its glob pattern ("" for a path taken as written)."""
    globs = cfg.databases.sqlite_globs
    return [(raw, globs[i] if i < len(globs) else "") for i, raw in enumerate(cfg.databases.sqlite)]


def default_databases(home: Path) -> frozenset[Path]:
    """The ArgentOS default stores (`DEFAULT_SQLITE`) under `home`: the only configured databases
    that the backup and `phx doctor` pass over unsaid when missing (matched by path, not name)."""
    return frozenset(home / p.removeprefix("~/") for p in DEFAULT_SQLITE)


def glob_hint(cfg: Config, home: Path, path: str) -> str:
    """What to add to "does not exist" for a configured entry (`include`, a component, kept as
    written since it matched nothing) read as a glob pattern: it was read as one, and how to name
    such a file literally. Empty for a path taken as written: a `databases.sqlite` entry without
    a glob character of its own, or one whose only glob characters are the workspace's or the
    home folder's (`below_folder`)."""
    sqlite = {raw if os.path.isabs(raw) else str(cfg.workspace / raw): bool(g) for raw, g in _entries(cfg)}
    if path in sqlite:
        read_as_glob = sqlite[path]
    else:
        below = below_folder(path, (cfg.workspace, home)) if os.path.isabs(path) else None
        read_as_glob = any(ch in (below[1] if below else path) for ch in GLOB_CHARACTERS)
    if not read_as_glob:
        return ""
    return (
        " (read as a glob pattern, which matches nothing: `*`, `?` and `[` are glob characters; "
        f"to name a file whose name holds them, escape each as `[*]`, `[?]`, `[[]`: {glob.escape(path)})"
    )


@dataclass(frozen=True)
class SourcePlan:
    """What to walk for a scope: include patterns, the databases to copy, and the patterns that
    may match nothing without a warning (the components' defaults: not every agent has TOOLS.md)."""

    includes: tuple[str, ...]
    databases: tuple[Path, ...]
    walk_files: bool
    optional: tuple[str, ...] = ()


# The components a full backup always saves, whatever `include` says (DESIGN §3): `include` adds.
FILE_COMPONENTS: tuple[Scope, ...] = ("identity", "memory", "config")


def component_patterns(cfg: Config, scope: Scope) -> tuple[str, ...]:
    if scope == "memory":
        return cfg.components.memory
    if scope == "identity":
        return cfg.components.identity
    if scope == "config":
        # Phoenix's own config file travels with the agent's, so that a new machine with nothing
        # but the repository gets a working config back (`restore --repo`).
        own = (without_dots(str(cfg.source), (cfg.workspace, Path.home())),) if cfg.source is not None else ()
        return _unique((*cfg.components.config, *own))
    return ()


def source_plan(cfg: Config, scope: Scope) -> SourcePlan:
    dbs = configured_databases(cfg)
    if scope == "full":
        components = _unique(tuple(p for c in FILE_COMPONENTS for p in component_patterns(cfg, c)))
        # An empty `include` is the whole workspace; the components add what lies outside it.
        return SourcePlan(_unique((*(cfg.include or ("",)), *components)), tuple(dbs), True, components)
    if scope == "databases":
        return SourcePlan((), tuple(dbs), False)
    patterns = component_patterns(cfg, scope)
    matcher = LogicalMatcher.for_patterns(patterns, Layout(cfg.workspace, Path.home()))
    scoped_dbs = tuple(d for d in dbs if matcher.matches(Layout(cfg.workspace, Path.home()).to_logical(d)))
    return SourcePlan(patterns, scoped_dbs, True, patterns)


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class LogicalMatcher:
    """Matches logical snapshot paths against include-style patterns (a folder covers what is below)."""

    def __init__(self, regexes: list[tuple[str, bool]]) -> None:
        self.regexes = [(glob_regex(p), d) for p, d in regexes]
        # Each path's answer, so a path's folders are each matched once: matching every prefix of
        # every path again cost a workspace 1,000 folders deep 25 s (cubic in the depth).
        self._seen: dict[str, bool] = {}

    @classmethod
    def for_patterns(cls, patterns: tuple[str, ...] | list[str], layout: Layout) -> LogicalMatcher:
        out = []
        for raw in patterns:
            inc = Include.parse(raw, layout.workspace, layout.home)
            absolute = (inc.base / inc.pattern) if inc.pattern else inc.base
            logical = layout.to_logical(Path(os.path.normpath(absolute)))
            out.append((logical, inc.dir_only))
        return cls(out)

    def matches(self, logical: str) -> bool:
        """True if the path or one of its folders matches a pattern."""
        # The path, then its folders up to the first whose answer is known (iterative: thousands deep).
        todo: list[str] = []
        path: str | None = logical
        while path is not None and path not in self._seen:
            todo.append(path)
            cut = path.rfind("/")
            path = path[:cut] if cut >= 0 else None
        found = self._seen[path] if path is not None else False
        for path in reversed(todo):  # outermost first: a folder that matches covers what is below
            found = found or any(rx.fullmatch(path) for rx, _dir_only in self.regexes)
            self._seen[path] = found
        return found


@dataclass(frozen=True)
class ComponentPlan:
    """What a full backup will save of one component (`backup --dry-run`): its paths and their
    size, and the component's patterns that match nothing here."""

    name: str
    paths: tuple[str, ...]
    size: int
    absent: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {"paths": list(self.paths), "count": len(self.paths), "size": self.size, "absent": list(self.absent)}


def plan_components(
    cfg: Config, layout: Layout, items: list[tuple[str, str, int]], followed: Mapping[str, str] | None = None
) -> list[ComponentPlan]:
    """Group planned (logical path, kind, size) items by component: identity, memory, config,
    databases (every SQLite, PostgreSQL and Redis database), and `include` for what only the
    config's `include` adds. A path may belong to two components (memory.db: memory and
    databases); folders are not listed. `followed` (a component's symlink -> what it points to,
    both logical) puts what a component's link points to in that component."""
    files = [(path, kind, size) for path, kind, size in items if kind != "dir"]
    out = []
    for name in FILE_COMPONENTS:
        patterns = component_patterns(cfg, name)
        matcher = LogicalMatcher.for_patterns(patterns, layout)
        targets = [t for link, t in (followed or {}).items() if matcher.matches(link)]
        held = [
            (path, size)
            for path, _kind, size in files
            if matcher.matches(path) or any(path == t or path.startswith(t + "/") for t in targets)
        ]
        absent = tuple(
            raw
            for raw in patterns
            if not any(LogicalMatcher.for_patterns((raw,), layout).matches(path) for path, _kind, _size in items)
        )
        out.append(ComponentPlan(name, tuple(p for p, _ in held), sum(size for _, size in held), absent))
    dbs = [(path, size) for path, kind, size in files if kind not in ("file", "symlink")]
    out.append(ComponentPlan("databases", tuple(p for p, _ in dbs), sum(size for _, size in dbs)))
    covered = {path for c in out for path in c.paths}
    rest = [(path, size) for path, _kind, size in files if path not in covered]
    out.append(ComponentPlan("include", tuple(p for p, _ in rest), sum(size for _, size in rest)))
    return out
