"""`databases.sqlite` entries holding glob characters (phoenix_backup.sources.scope.configured_databases):
a file literally named like the pattern never hides what the pattern matches, and the workspace's
own path is never read as a pattern (adversary of errs3; docs/configuration.md)."""

from __future__ import annotations

from pathlib import Path

from phoenix_backup.config import parse_config
from phoenix_backup.sources.layout import Layout
from phoenix_backup.sources.scope import configured_databases, configured_store


def _databases(tmp_path: Path, workspace: Path, entries: list[str]) -> list[Path]:
    cfg = parse_config(
        {"workspace": str(workspace), "backupDir": str(tmp_path / "b"), "databases": {"sqlite": entries}},
        env={"HOME": str(tmp_path / "home")},
    )
    return configured_databases(cfg)


def test_a_file_named_like_the_pattern_does_not_hide_its_matches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.db", "b.db", "*.db"):
        (data / name).write_bytes(b"")
    # Before: the literal `*.db` existed, so the entry was that one file and a.db, b.db were
    # silently left out of every backup.
    assert _databases(tmp_path, tmp_path / "w", [str(data / "*.db")]) == [data / n for n in ("*.db", "a.db", "b.db")]


def test_an_entry_both_literal_and_a_pattern_is_both(tmp_path: Path) -> None:
    for name in ("agent[1]", "agent1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "memory.db").write_bytes(b"")
    got = _databases(tmp_path, tmp_path / "w", [str(tmp_path / "agent[1]" / "memory.db")])
    assert got == [tmp_path / "agent1" / "memory.db", tmp_path / "agent[1]" / "memory.db"]


def test_a_dangling_symlink_named_like_the_entry_is_kept_with_the_matches(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"")
    (tmp_path / "?.db").symlink_to(tmp_path / "gone")
    assert _databases(tmp_path, tmp_path / "w", [str(tmp_path / "?.db")]) == [tmp_path / "?.db", tmp_path / "x.db"]


def test_a_relative_pattern_in_a_workspace_whose_path_holds_a_bracket(tmp_path: Path) -> None:
    workspace = tmp_path / "agent[1]"
    (workspace / "dbs").mkdir(parents=True)
    (workspace / "dbs" / "m.db").write_bytes(b"")
    # Before: `[1]` of the workspace's own path was a class, the pattern matched nothing.
    assert _databases(tmp_path, workspace, ["dbs/*.db"]) == [workspace / "dbs" / "m.db"]


def test_a_pattern_matching_nothing_is_kept_as_written(tmp_path: Path) -> None:
    assert _databases(tmp_path, tmp_path / "w", ["dbs/*.db"]) == [tmp_path / "w" / "dbs" / "*.db"]


def test_a_folder_a_pattern_matches_is_no_database(tmp_path: Path) -> None:
    (tmp_path / "a.db").write_bytes(b"")
    (tmp_path / "store.db").mkdir()  # a store's folder named like a database: walked as files
    (tmp_path / "link.db").symlink_to(tmp_path / "store.db")
    # Before: both were configured databases, and the backup said each a database not saved (exit 3).
    assert _databases(tmp_path, tmp_path / "w", [str(tmp_path / "*.db")]) == [tmp_path / "a.db"]


def test_a_store_is_what_the_entries_name_whether_or_not_it_is_here(tmp_path: Path) -> None:
    """`configured_store` (which stores `phx export` takes, live and from a snapshot) answers as
    `glob.glob` would for a path that is not here (a snapshot's store since removed): `*` within
    one name, a hidden name only by a pattern's hidden name, `**` as one name; no other file."""
    workspace = tmp_path / "agent[1]"
    (workspace / "agents" / "a").mkdir(parents=True)
    for rel in ("agents/a/memory.db", "agents/.b/memory.db"):
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_bytes(b"")
    cfg = parse_config(
        {
            "workspace": str(workspace),
            "backupDir": str(tmp_path / "b"),
            "databases": {"sqlite": ["agents/*/memory.db", "deep/**/x.db", "~/.argentos/memory.db"]},
        },
        env={"HOME": str(tmp_path / "home")},
    )
    is_store = configured_store(cfg, Layout(workspace, tmp_path / "home"))
    found = {str(p.relative_to(workspace)) for p in configured_databases(cfg) if p.exists()}
    assert found == {"agents/a/memory.db"}  # glob's answer here
    for logical, want in {
        "workspace/agents/a/memory.db": True,
        "workspace/agents/gone/memory.db": True,  # in a snapshot only
        "workspace/agents/.b/memory.db": False,  # glob skips the hidden folder
        "workspace/agents/a/b/memory.db": False,
        "workspace/deep/one/x.db": True,
        "workspace/deep/one/two/x.db": False,  # `**` is one name without recursive
        "home/.argentos/memory.db": True,
        "home/.argentos/other.db": False,
        "workspace/memory/cache.sqlite": False,
        "postgres/main/dump": False,
    }.items():
        assert is_store(logical) is want, logical
