"""Which of a snapshot's nodes a restore writes: its scope (a component, `--path` globs) applied to
logical paths, the folders on the way, and the hard links it can make between what it writes."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from phoenix_backup.config import Config
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import Node
from phoenix_backup.sources.layout import Layout, all_ancestors, home_logical, is_database_path
from phoenix_backup.sources.patterns import glob_regex
from phoenix_backup.sources.scope import LogicalMatcher, Scope


class ScopeFilter:
    """A restore's scope (component) and `--path` globs, applied to logical paths."""

    def __init__(
        self, cfg: Config, layout: Layout, scope: str, paths: tuple[str, ...], sources: Mapping[str, str] | None = None
    ) -> None:
        self.databases_only = scope == "databases"
        patterns = {
            "memory": cfg.components.memory,
            "identity": cfg.components.identity,
            "config": cfg.components.config,
        }.get(scope)
        self.matcher = LogicalMatcher.for_patterns(patterns, layout) if patterns is not None else None
        # `~/…` (and `~`) is the home folder's (`sources`: the snapshot's recorded roots), as
        # `phx dump` and `phx ls` read it (sources/layout.py): matched from the logical path's
        # start only, never as a workspace folder named `home`.
        self.path_rx = [
            (glob_regex(home_logical(sources or {}, p)), True)
            if p == "~" or p.startswith("~/")
            else (glob_regex(p.strip("/")), False)
            for p in paths
        ]

    def matches(self, logical: str, is_database: bool) -> bool:
        if self.databases_only and not is_database:
            return False
        if self.matcher is not None and not self.matcher.matches(logical):
            return False
        return not self.path_rx or any(_path_matches(rx, logical, home) for rx, home in self.path_rx)


def _path_matches(rx: re.Pattern[str], logical: str, from_root: bool = False) -> bool:
    """`--path` globs match the logical path, or the path inside its root (workspace-relative);
    `from_root`: the logical path only (a `~/…` glob, already `home/…`)."""
    parts = logical.split("/")
    for start in (0,) if from_root else (0, 1):
        for end in range(len(parts), start, -1):
            if rx.fullmatch("/".join(parts[start:end])):
                return True
    return False


def select_nodes(
    snap: Snapshot,
    all_nodes: list[tuple[str, Node]],
    cfg: Config,
    layout: Layout,
    scope: Scope,
    paths: tuple[str, ...],
) -> list[tuple[str, Node]]:
    """The snapshot's nodes (`all_nodes`, as the walk gives them) in the restore's scope, parents
    before children."""
    in_scope = ScopeFilter(cfg, layout, scope, paths, snap.sources)
    wanted: list[tuple[str, Node]] = []
    wanted_dirs: set[str] = set()
    for logical, node in all_nodes:
        if not in_scope.matches(logical, node.type == "sqlite" or is_database_path(logical)):
            continue
        if node.type == "dir":
            wanted_dirs.add(logical)  # folders are restored too, empty ones included
        else:
            wanted.append((logical, node))
    # A component that is a symlink was saved with what it points to: restored with it.
    targets = link_targets(snap, [(lg, n) for lg, n in wanted if n.type == "symlink"], dict(all_nodes))
    if targets:
        chosen = wanted_dirs | {lg for lg, _ in wanted}
        for logical, node in all_nodes:
            if logical not in chosen and any(logical == t or logical.startswith(t + "/") for t in targets):
                if node.type == "dir":
                    wanted_dirs.add(logical)
                else:
                    wanted.append((logical, node))
    # And the folders on the way to what is restored, with their modes and times.
    keep_dirs = wanted_dirs.union(all_ancestors([*(logical for logical, _ in wanted), *wanted_dirs]))
    dirs = [(lg, n) for lg, n in all_nodes if n.type == "dir" and lg in keep_dirs]
    return dirs + wanted


def link_targets(snap: Snapshot, links: list[tuple[str, Node]], nodes: Mapping[str, Node]) -> set[str]:
    """The logical paths `links` point to, read as the backup that saved them did (its workspace
    and home): where a backup put what a component's symlink points to. A target that is a link
    of the snapshot (`nodes`) is followed in turn, as the backup saved the chain (`memory ->
    ~/mid/memory -> ~/disk/memory`: both the link in between and its end), at most 40 links."""
    workspace, home = snap.sources.get("workspace"), snap.sources.get("home")
    if not links or not workspace or not home:
        return set()
    layout = Layout(Path(workspace), Path(home))
    out = set()
    for logical, node in links:
        if node.link_target is None or is_database_path(logical):
            continue
        link = node.link_target
        for _ in range(40):  # the system's own bound on links followed (ELOOP)
            real = layout.to_real(logical)
            target = layout.to_logical(Path(os.path.normpath(real.parent / link)))
            nxt = nodes.get(target)
            if target in out or nxt is None or nxt.type != "symlink" or nxt.link_target is None:
                out.add(target)
                break
            out.add(target)
            logical, link = target, nxt.link_target
    return out


def restored_links(nodes: dict[str, Node]) -> dict[str, str]:
    """The hard links a restore can make: a file whose `hardlink` names a file restored with it,
    of the same content, the very same extents as a backup records them (a hostile or odd tree
    gets copies, each checked against its own SHA-256, never a link to something else)."""
    out: dict[str, str] = {}
    for logical, node in nodes.items():
        first = nodes.get(node.hardlink) if node.type == "file" and node.hardlink else None
        if (
            first is not None
            and first.type == "file"
            and first.hardlink is None
            and (first.sha256, first.size, first.content) == (node.sha256, node.size, node.content)
        ):
            assert node.hardlink is not None
            out[logical] = node.hardlink
    return out
