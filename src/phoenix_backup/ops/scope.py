"""Scopes (full, memory, identity, databases, config): which paths a backup or restore covers."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from phoenix_backup.config import Config
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.patterns import Include, glob_regex

Scope = Literal["full", "memory", "identity", "databases", "config"]
SCOPES: tuple[Scope, ...] = ("full", "memory", "identity", "databases", "config")


def configured_databases(cfg: Config) -> list[Path]:
    """`databases.sqlite` entries, globs expanded; missing ones are kept so they can be reported."""
    out: list[Path] = []
    for raw in cfg.databases.sqlite:
        path = raw if os.path.isabs(raw) else str(cfg.workspace / raw)
        if any(ch in path for ch in "*?["):
            out.extend(Path(p) for p in sorted(glob.glob(path)))
        else:
            out.append(Path(path))
    return out


@dataclass(frozen=True)
class SourcePlan:
    """What to walk for a scope: include patterns and the databases to copy."""

    includes: tuple[str, ...]
    databases: tuple[Path, ...]
    walk_files: bool


def component_patterns(cfg: Config, scope: Scope) -> tuple[str, ...]:
    if scope == "memory":
        return cfg.components.memory
    if scope == "identity":
        return cfg.components.identity
    if scope == "config":
        return cfg.components.config
    return ()


def source_plan(cfg: Config, scope: Scope) -> SourcePlan:
    dbs = configured_databases(cfg)
    if scope == "full":
        return SourcePlan(cfg.include, tuple(dbs), True)
    if scope == "databases":
        return SourcePlan((), tuple(dbs), False)
    patterns = component_patterns(cfg, scope)
    matcher = LogicalMatcher.for_patterns(patterns, Layout(cfg.workspace, Path.home()))
    scoped_dbs = tuple(d for d in dbs if matcher.matches(Layout(cfg.workspace, Path.home()).to_logical(d)))
    return SourcePlan(patterns, scoped_dbs, True)


class LogicalMatcher:
    """Matches logical snapshot paths against include-style patterns (a folder covers what is below)."""

    def __init__(self, regexes: list[tuple[str, bool]]) -> None:
        self.regexes = [(glob_regex(p), d) for p, d in regexes]

    @classmethod
    def for_patterns(cls, patterns: tuple[str, ...] | list[str], layout: Layout) -> LogicalMatcher:
        out = []
        for raw in patterns:
            inc = Include.parse(raw, layout.workspace)
            absolute = (inc.base / inc.pattern) if inc.pattern else inc.base
            logical = layout.to_logical(Path(os.path.normpath(absolute)))
            out.append((logical, inc.dir_only))
        return cls(out)

    def matches(self, logical: str) -> bool:
        """True if the path or one of its folders matches a pattern."""
        parts = logical.split("/")
        for rx, _dir_only in self.regexes:
            for i in range(len(parts), 0, -1):
                if rx.fullmatch("/".join(parts[:i])):
                    return True
        return False
