"""A workspace thousands of folders deep: the selection's per-path work is linear in the depth.
Before, `LogicalMatcher.matches` joined and matched every prefix of every path (cubic in the
depth: a backup 1,000 folders deep spent ~15 CPU-seconds there, 2,000 deep ~105), and
`Layout.to_logical` had pathlib parse every level of each path again. Counted, never timed."""

from __future__ import annotations

import re
from pathlib import Path

from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.patterns import glob_regex
from phoenix_backup.sources.scope import LogicalMatcher

DEPTH = 1500


class Counting:
    """A compiled pattern that counts its `fullmatch` calls."""

    def __init__(self, rx: re.Pattern[str]) -> None:
        self.rx, self.calls = rx, 0

    def fullmatch(self, text: str) -> re.Match[str] | None:
        self.calls += 1
        return self.rx.fullmatch(text)


def _reference(patterns: list[str], logical: str) -> bool:
    """What `matches` means: the path or one of its folders matches a pattern."""
    parts = logical.split("/")
    return any(
        glob_regex(p).fullmatch("/".join(parts[:i])) is not None for p in patterns for i in range(len(parts), 0, -1)
    )


def test_a_deep_paths_folders_are_each_matched_once() -> None:
    patterns = ["workspace/SOUL.md", "workspace/memory"]
    matcher = LogicalMatcher([(p, False) for p in patterns])
    counters = [Counting(rx) for rx, _d in matcher.regexes]
    matcher.regexes = [(c, False) for c in counters]  # type: ignore[misc]
    paths = ["workspace/" + "/".join(["d"] * n) for n in range(1, DEPTH + 1)]
    assert not any(matcher.matches(p) for p in paths)
    calls = sum(c.calls for c in counters)
    # Each path and folder once per pattern (before: every prefix of every path, ~1.1 million each).
    assert calls <= (DEPTH + 1) * len(patterns), calls


def test_matches_means_the_path_or_one_of_its_folders() -> None:
    patterns = ["workspace/SOUL.md", "workspace/memory", "workspace/**/*.db", ""]
    cases = [
        "workspace",
        "workspace/SOUL.md",
        "workspace/SOUL.md/x",
        "workspace/memory/a/b/c",
        "workspace/memoryx/a",
        "workspace/a/b/c.db",
        "workspace/a/b/c.db/wal",
        "home/x",
        "a//b",
        "/x",
        "",
    ]
    for shuffled in (cases, list(reversed(cases))):  # answers cached by one path never change another's
        matcher = LogicalMatcher([(p, False) for p in patterns])
        for logical in shuffled:
            assert matcher.matches(logical) == _reference(patterns, logical), logical


def test_to_logical_is_the_path_below_its_root() -> None:
    layout = Layout(Path("/home/u/argent"), Path("/home/u"))
    cases = {
        "/home/u/argent": "workspace",
        "/home/u/argent/memory/a.md": "workspace/memory/a.md",
        "/home/u/argent2/x": "home/argent2/x",
        "/home/u": "home",
        "/home/u/.config/x": "home/.config/x",
        "/home/uu": "root/home/uu",
        "/etc/hosts": "root/etc/hosts",
        "/": "root",
    }
    for path, logical in cases.items():
        assert layout.to_logical(Path(path)) == logical, path
        assert layout.to_logical(path + "/" if path != "/" else path) == logical, path  # type: ignore[arg-type]
    assert layout.to_logical("/home/u//argent/./memory") == "workspace/memory"  # type: ignore[arg-type]
    deep = Path("/home/u/argent").joinpath(*["d"] * DEPTH)
    assert layout.to_logical(deep) == "workspace/" + "/".join(["d"] * DEPTH)
    assert Layout(Path("/"), Path("/home/u")).to_logical(Path("/x/y")) == "workspace/x/y"
