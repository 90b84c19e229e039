"""Include/exclude patterns and file selection on real trees (docs/configuration.md, "Choosing what is backed up")."""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix_backup.sources.files import Selection, is_sqlite_file, select
from phoenix_backup.sources.layout import Layout, all_ancestors
from phoenix_backup.sources.patterns import ExcludeSet, Include, glob_regex

segment_chars = st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="._- ")
segments = st.text(segment_chars, min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
rel_paths = st.lists(segments, min_size=1, max_size=5).map("/".join)


# ------------------------------------------------------------------------------------------
# glob_regex


@given(st.lists(segments, min_size=2, max_size=5))
def test_star_never_crosses_a_slash(parts: list[str]) -> None:
    path = "/".join(parts)
    assert not glob_regex("*").fullmatch(path)
    assert not glob_regex("?" * len(path)).fullmatch(path)
    assert glob_regex("/".join("*" for _ in parts)).fullmatch(path)
    assert glob_regex("**").fullmatch(path)
    assert glob_regex("**/" + parts[-1]).fullmatch(path)
    assert glob_regex(parts[0] + "/**").fullmatch(path)


@given(rel_paths)
def test_literal_pattern_matches_only_itself(path: str) -> None:
    assert glob_regex(path).fullmatch(path)
    assert not glob_regex(path).fullmatch(path + "x")
    assert not glob_regex(path).fullmatch("x/" + path)


@given(st.lists(segments, max_size=4), segments)
def test_double_star_slash_spans_zero_or_more_folders(middle: list[str], name: str) -> None:
    path = "/".join(["a", *middle, name])
    assert glob_regex("a/**/" + name).fullmatch(path)
    assert not glob_regex("a/*/" + name).fullmatch(path) or len(middle) == 1


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        ("*.md", ["MEMORY.md", ".md", "a.b.md"], ["memory/a.md", "a.mdx", "a.txt"]),
        ("memory/*.md", ["memory/2026-03-15.md"], ["memory/deep/x.md", "memory.md", "other/memory/x.md"]),
        ("**/*.md", ["a.md", "x/a.md", "x/y/z/a.md"], ["a.txt", "x/a.md/b"]),
        ("**", ["", "a", "a/b/c"], []),
        ("a/**", ["a/", "a/b", "a/b/c"], ["b/a"]),
        ("log?.txt", ["log1.txt", "loga.txt"], ["log.txt", "log12.txt", "log/.txt"]),
        ("[abc].md", ["a.md", "c.md"], ["d.md", "ab.md", "/.md"]),
        ("[a-c]x", ["bx"], ["dx", "Bx"]),
        ("[!a]x", ["bx", "Zx"], ["ax", "/x"]),
        ("[]]x", ["]x"], ["ax"]),
        ("file[.md", ["file[.md"], ["filea.md"]),
        ("a+b(c).md", ["a+b(c).md"], ["aab(c).md", "a+bc.md"]),
        ("dot.md", ["dot.md"], ["dotxmd"]),
    ],
)
def test_glob_examples(pattern: str, yes: list[str], no: list[str]) -> None:
    rx = glob_regex(pattern)
    for path in yes:
        assert rx.fullmatch(path), f"{pattern!r} should match {path!r}"
    for path in no:
        assert not rx.fullmatch(path), f"{pattern!r} should not match {path!r}"


# ------------------------------------------------------------------------------------------
# a real workspace

FILES = [
    "MEMORY.md",
    "SOUL.md",
    "notes.txt",
    "memory/2026-03-15.md",
    "memory/2026-03-16.md",
    "memory/todo.txt",
    "memory/deep/old.md",
    "dir/a.txt",
    "dir/sub/b.txt",
    "node_modules/pkg/README.md",
    "node_modules/pkg/index.js",
    "src/node_modules/dep/x.js",
    "logs/app.log",
    "logs/archive/old.log",
    "debug.log",
    "config/secret.json",
    "config/public.json",
    "other/config/secret.json",
]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    for rel in FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}\n")
    (root / "node_modules.txt").write_text("a file named like the folder pattern\n")
    return root


def rels(paths: Iterator[Path], base: Path) -> list[str]:
    return sorted(p.relative_to(base).as_posix() for p in paths)


def expand(raw: str, ws: Path) -> list[str]:
    return rels(Include.parse(raw, ws).expand(), ws)


def test_include_relative_paths_and_globs(ws: Path) -> None:
    assert expand("MEMORY.md", ws) == ["MEMORY.md"]
    assert expand("./MEMORY.md", ws) == ["MEMORY.md"]
    assert expand("memory/*.md", ws) == ["memory/2026-03-15.md", "memory/2026-03-16.md"]
    assert expand("*.md", ws) == ["MEMORY.md", "SOUL.md"]
    assert expand("**/*.md", ws) == sorted(
        [
            "MEMORY.md",
            "SOUL.md",
            "memory/2026-03-15.md",
            "memory/2026-03-16.md",
            "memory/deep/old.md",
            "node_modules/pkg/README.md",
        ]
    )
    assert expand("dir/", ws) == ["dir"]
    assert expand("dir", ws) == ["dir"]
    assert expand("MEMORY.md/", ws) == [], "a trailing slash names folders only"
    assert expand("missing.md", ws) == []
    assert expand("*/sub", ws) == ["dir/sub"]
    assert expand("**/secret.json", ws) == ["config/secret.json", "other/config/secret.json"]
    assert expand("", ws) == ["."] and expand(".", ws) == ["."]


def test_include_absolute_and_home_paths(ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".argentos").mkdir(parents=True)
    (home / ".argentos" / "memory.db").write_bytes(b"x")
    (home / ".argentos" / "observations.db").write_bytes(b"x")
    (home / ".argentos" / "config.json").write_text("{}")
    monkeypatch.setenv("HOME", str(home))
    raw = os.path.expanduser("~/.argentos/*.db")  # the config expands ~ before patterns see it
    assert raw.startswith(str(home))
    inc = Include.parse(raw, ws)
    assert inc.base == Path("/")
    assert rels(inc.expand(), home) == [".argentos/memory.db", ".argentos/observations.db"]
    assert rels(Include.parse(os.path.expanduser("~/.argentos/"), ws).expand(), home) == [".argentos"]
    assert rels(Include.parse(str(ws / "dir" / "a.txt"), ws).expand(), ws) == ["dir/a.txt"]


def test_include_does_not_descend_symlinked_folders(ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "secret.md").write_text("not part of the workspace")
    (ws / "linked").symlink_to(outside)
    assert expand("linked/deep/secret.md", ws) == []
    assert "linked/deep/secret.md" not in expand("**/*.md", ws)
    assert expand("linked", ws) == ["linked"]  # the link itself is named
    assert expand("linked/", ws) == []  # ... but it is not a folder


# ------------------------------------------------------------------------------------------
# ExcludeSet


def test_excludes_follow_gitignore(ws: Path) -> None:
    ex = ExcludeSet(["*.log", "node_modules/", "config/secret.json", "/abs/path/*.tmp"], ws)
    assert ex.excluded(ws / "debug.log", False)
    assert ex.excluded(ws / "logs" / "app.log", False)
    assert ex.excluded(ws / "logs" / "archive" / "old.log", False)
    assert ex.excluded(ws / "a.log", True), "a folder named *.log is excluded too"
    assert not ex.excluded(ws / "app.log.txt", False)
    assert ex.excluded(ws / "node_modules", True)
    assert ex.excluded(ws / "src" / "node_modules", True)
    assert not ex.excluded(ws / "node_modules", False), "trailing slash: folders only"
    assert not ex.excluded(ws / "node_modules.txt", False)
    assert ex.excluded(ws / "config" / "secret.json", False)
    assert not ex.excluded(ws / "other" / "config" / "secret.json", False), "a slash anchors"
    assert not ex.excluded(ws / "config" / "public.json", False)
    assert ex.excluded(Path("/abs/path/x.tmp"), False)
    assert not ex.excluded(Path("/abs/path/sub/x.tmp"), False)
    assert not ex.excluded(ws / "abs" / "path" / "x.tmp", False)


def test_empty_and_dot_slash_excludes(ws: Path) -> None:
    ex = ExcludeSet(["", "/", "./memory/*.txt"], ws)
    assert ex.excluded(ws / "memory" / "todo.txt", False)
    assert not ex.excluded(ws / "MEMORY.md", False)


@pytest.mark.parametrize("home", ["/", "/home/u"])
def test_an_absolute_exclude_holds_whatever_the_home_folder(tmp_path: Path, home: str) -> None:
    """HOME=/ (a container's service user): an absolute exclude lies "below" the home folder `/`,
    and still leaves its files out; with the home `/` it matched nothing and the keys were saved."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.md").write_text("a")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "id.key").write_text("secret")
    (keys / "id.pub").write_text("public")
    layout = Layout(workspace=ws, home=Path(home))
    sel = select(layout, ["", str(keys)], [str(keys / "*.key"), str(ws / "a.md")], [])
    paths = {entry.path for entry in sel.entries.values()}
    assert keys / "id.pub" in paths
    assert keys / "id.key" not in paths
    assert ws / "a.md" not in paths
    assert ExcludeSet(["/etc/ssl/private/**"], ws, Path(home)).excluded(Path("/etc/ssl/private/a.pem"), False)


@pytest.mark.parametrize("written", ["{home}", "{home}/", "{ws}/"])
def test_the_home_folder_or_workspace_itself_is_that_folder_whatever_its_name(tmp_path: Path, written: str) -> None:
    """`~/` as an include (or the workspace's path written out) with a home named `[a]*?` was a
    pattern that took `/tmp/abc` (another user's folder) and left the home out; as an exclude, it
    left out `abc`, not the home."""
    home = tmp_path / "[a]*?"
    ws = home / "ws[1]"
    (ws / "notes").mkdir(parents=True)
    (ws / "notes" / "n.md").write_text("mine")
    others = [tmp_path / "abc" / "other.key", home / "ws1" / "other.key"]  # what `[a]*?`, `ws[1]` match
    for other in others:
        other.parent.mkdir()
        other.write_text("not mine")
    layout = Layout(workspace=ws, home=home)
    folder = written.format(home=home, ws=ws)
    paths = {entry.path for entry in select(layout, [folder], [], []).entries.values()}
    assert ws / "notes" / "n.md" in paths
    assert others[0] not in paths, sorted(paths)
    assert (others[1] in paths) == (folder.rstrip("/") == str(home)), sorted(paths)  # in the home, not the ws
    exclude = ExcludeSet([folder], ws, home)
    assert exclude.excluded(Path(folder.rstrip("/")), True)
    assert not exclude.excluded(tmp_path / "abc", True) and not exclude.excluded(home / "ws1", True)


def test_a_missing_home_folder_included_itself_is_missing(tmp_path: Path) -> None:
    """`~/` with a home folder that does not exist (HOME=/nonexistent) "does not exist", as before:
    not a folder that could not be read."""
    ws = tmp_path / "ws"
    ws.mkdir()
    home = tmp_path / "[gone]"
    for raw in (f"{home}/", str(home)):
        sel = select(Layout(workspace=ws, home=home), [raw], [], [])
        assert (sel.missing, sel.errors, sel.entries) == ([raw], [], {})


@given(rel_paths, st.booleans())
def test_unanchored_exclude_matches_the_name_at_any_depth(path: str, is_dir: bool) -> None:
    ws = Path("/w")
    name = path.rsplit("/", 1)[-1]
    assert ExcludeSet([name], ws).excluded(ws / path, is_dir)
    assert ExcludeSet([name + "/"], ws).excluded(ws / path, is_dir) == is_dir


# ------------------------------------------------------------------------------------------
# select, end to end


def make_db(path: Path, wal: bool = False) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)")
    con.execute("INSERT INTO notes(body) VALUES ('remember')")
    con.commit()
    return con


@pytest.fixture
def layout(ws: Path, tmp_path: Path) -> Layout:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return Layout(workspace=ws, home=home)


def listed(sel: Selection) -> dict[str, str]:
    return {logical: entry.kind for logical, entry in sel.entries.items()}


def test_select_whole_workspace_with_excludes(layout: Layout) -> None:
    sel = select(layout, [], ["*.log", "node_modules/", "config/secret.json"], [])
    kinds = listed(sel)
    assert kinds["workspace"] == "dir"
    assert kinds["workspace/MEMORY.md"] == "file"
    assert kinds["workspace/memory/deep/old.md"] == "file"
    assert kinds["workspace/config"] == "dir"
    assert kinds["workspace/node_modules.txt"] == "file"
    assert kinds["workspace/other/config/secret.json"] == "file"
    for gone in (
        "workspace/debug.log",
        "workspace/logs/app.log",
        "workspace/node_modules",
        "workspace/node_modules/pkg/README.md",
        "workspace/src/node_modules",
        "workspace/config/secret.json",
    ):
        assert gone not in kinds
    assert "workspace/logs" in kinds  # the folder stays, its logs do not
    assert sel.missing == [] and sel.errors == []
    for entry in sel.entries.values():
        assert entry.path == layout.to_real(entry.logical)


@pytest.mark.parametrize("where", ["outside-home", "nested-in-home"])
def test_selection_holds_nothing_above_the_workspace(tmp_path: Path, where: str) -> None:
    """Folders between a logical root and a path are recorded; the workspace's own ancestors are not."""
    home = tmp_path / "home"
    ws = tmp_path / "srv" / "agent" / "workspace" if where == "outside-home" else home / "agents" / "main"
    (ws / "memory").mkdir(parents=True)
    (ws / "memory" / "a.md").write_text("a")
    home.mkdir(exist_ok=True)
    layout = Layout(workspace=ws, home=home)
    for includes in ([], ["memory/a.md"]):
        kinds = listed(select(layout, includes, [], []))
        assert all(k == "workspace" or k.startswith("workspace/") for k in kinds), sorted(kinds)


def test_select_includes_record_parent_folders_and_missing(layout: Layout) -> None:
    sel = select(layout, ["memory/*.md", "SOUL.md", "nothing-here/*.md", "gone.md"], [], [])
    assert listed(sel) == {
        "workspace/memory": "dir",
        "workspace/memory/2026-03-15.md": "file",
        "workspace/memory/2026-03-16.md": "file",
        "workspace/SOUL.md": "file",
    }
    assert sorted(sel.missing) == ["gone.md", "nothing-here/*.md"]


def test_excludes_win_over_includes(layout: Layout) -> None:
    sel = select(layout, ["config/", "logs/app.log", "debug.log"], ["config/secret.json", "*.log"], [])
    kinds = listed(sel)
    assert "workspace/config/public.json" in kinds
    assert "workspace/config/secret.json" not in kinds
    assert "workspace/logs/app.log" not in kinds
    assert "workspace/debug.log" not in kinds


def test_excluded_folder_wins_over_a_glob_include_below_it(layout: Layout) -> None:
    """`**/*.md` with `node_modules/` excluded: nothing under node_modules is backed up (gitignore)."""
    sel = select(layout, ["**/*.md"], ["node_modules/"], [])
    kinds = listed(sel)
    assert "workspace/memory/deep/old.md" in kinds
    assert "workspace/node_modules/pkg/README.md" not in kinds
    assert "workspace/node_modules" not in kinds


def test_databases_are_detected_and_companions_never_listed(layout: Layout) -> None:
    ws = layout.workspace
    live = make_db(ws / "memory.db", wal=True)  # stays open: -wal and -shm exist
    other = make_db(ws / "data" / "store.sqlite3")
    other.close()
    (ws / "data" / "store.sqlite3-journal").write_bytes(b"hot journal")
    (ws / "fake.db").write_text("not a database")
    home_db = layout.home / ".argentos" / "memory.db"
    home_con = make_db(home_db, wal=True)
    try:
        assert (ws / "memory.db-wal").exists() and (ws / "memory.db-shm").exists()
        assert Path(str(home_db) + "-wal").exists()
        assert is_sqlite_file(ws / "memory.db") and not is_sqlite_file(ws / "fake.db")
        sel = select(layout, ["", str(layout.home / ".argentos")], [], [home_db])
        kinds = listed(sel)
        assert kinds["workspace/memory.db"] == "sqlite"
        assert kinds["workspace/data/store.sqlite3"] == "sqlite"
        assert kinds["workspace/fake.db"] == "file"
        assert kinds["home/.argentos/memory.db"] == "sqlite"
        assert kinds["home/.argentos"] == "dir"
        for name in kinds:
            assert not name.endswith(("-wal", "-shm", "-journal")), f"{name} listed as a plain file"
    finally:
        live.close()
        home_con.close()


def test_a_rollback_journal_gone_between_listing_and_stat_is_no_failure(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chromadb keeps chroma.sqlite3 in rollback-journal mode: its -journal lives as long as each
    transaction. One that the walk lists and that is gone before its stat (the transaction
    committed in between) made a live chromadb backup partial (exit 3, `not saved:
    .../chroma.sqlite3-journal: No such file or directory`). A plain file gone the same way, which
    may have been renamed away, is still named as not saved."""
    store = layout.workspace / "stores" / "chroma"
    con = make_db(store / "chroma.sqlite3")
    con.execute("BEGIN IMMEDIATE")
    con.execute("INSERT INTO notes(body) VALUES ('in flight')")  # the journal now exists
    journal = store / "chroma.sqlite3-journal"
    assert journal.exists()
    (store / "segment.tmp").write_bytes(b"renamed away")
    listing = os.scandir

    def scandir_then_commit(path: str | os.PathLike[str]) -> Iterator[os.DirEntry[str]]:
        entries = list(listing(path))
        if Path(path) == store:
            con.commit()  # SQLite deletes the journal as the transaction ends
            (store / "segment.tmp").rename(store / "segment.bin")
        return iter(entries)

    class Scandir:
        def __init__(self, path: str | os.PathLike[str]) -> None:
            self.it = scandir_then_commit(path)

        def __enter__(self) -> Iterator[os.DirEntry[str]]:
            return self.it

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr("phoenix_backup.sources.files.os.scandir", Scandir)
    try:
        sel = select(layout, ["stores/"], [], [])
    finally:
        con.close()
    assert not journal.exists()
    assert listed(sel)["workspace/stores/chroma/chroma.sqlite3"] == "sqlite"
    assert [path for path, _ in sel.errors] == [str(store / "segment.tmp")]


def test_configured_database_is_listed_even_when_not_included(layout: Layout) -> None:
    db = layout.home / ".argentos" / "observations.db"
    con = make_db(db, wal=True)
    try:
        sel = select(layout, ["SOUL.md"], ["*.db"], [db])
        kinds = listed(sel)
        assert kinds["home/.argentos/observations.db"] == "sqlite"
        assert "home/.argentos/observations.db-wal" not in kinds
        sel = select(layout, ["SOUL.md"], [], [layout.home / "absent.db"])
        assert sel.missing == [str(layout.home / "absent.db")]
    finally:
        con.close()


def test_companions_of_an_excluded_database_are_not_listed(layout: Layout) -> None:
    """Excluding `*.db` must not leave the live database's -wal/-shm to be copied as plain files."""
    con = make_db(layout.workspace / "memory.db", wal=True)
    try:
        kinds = listed(select(layout, [], ["*.db"], []))
        assert "workspace/memory.db" not in kinds
        assert "workspace/memory.db-wal" not in kinds
        assert "workspace/memory.db-shm" not in kinds
    finally:
        con.close()


def test_detection_can_be_turned_off(layout: Layout) -> None:
    make_db(layout.workspace / "memory.db").close()
    sel = select(layout, ["memory.db"], [], [], detect_databases=False)
    assert listed(sel) == {"workspace/memory.db": "file"}


def test_symlinks_are_listed_as_links_and_not_followed(layout: Layout, tmp_path: Path) -> None:
    ws = layout.workspace
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.md").write_text("outside the workspace")
    (ws / "to-outside").symlink_to(outside)
    (ws / "to-dir").symlink_to("dir")
    (ws / "to-file").symlink_to("MEMORY.md")
    (ws / "dangling").symlink_to("no/such/target")
    make_db(outside / "linked.db").close()
    (ws / "db-link.db").symlink_to(outside / "linked.db")
    sel = select(layout, [], [], [])
    kinds = listed(sel)
    for name in ("to-outside", "to-dir", "to-file", "dangling", "db-link.db"):
        assert kinds[f"workspace/{name}"] == "symlink"
    assert not [k for k in kinds if k.startswith(("workspace/to-outside/", "workspace/to-dir/"))]
    assert "workspace/dir/a.txt" in kinds
    # Named directly as an include, a link is still a link.
    assert listed(select(layout, ["to-outside"], [], [])) == {"workspace/to-outside": "symlink"}


def test_unreadable_folder_is_reported(layout: Layout) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any folder")
    locked = layout.workspace / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        sel = select(layout, [], [], [])
        assert [p for p, _ in sel.errors] == [str(locked)]
    finally:
        locked.chmod(0o700)


def test_special_files_are_skipped(layout: Layout) -> None:
    os.mkfifo(layout.workspace / "pipe")
    assert "workspace/pipe" not in listed(select(layout, [], [], []))


def test_layout_logical_paths(layout: Layout) -> None:
    assert layout.to_logical(layout.workspace) == "workspace"
    assert layout.to_logical(layout.workspace / "a" / "b.md") == "workspace/a/b.md"
    assert layout.to_logical(layout.home / ".argentos" / "m.db") == "home/.argentos/m.db"
    assert layout.to_logical(Path("/etc/hosts")) == "root/etc/hosts"
    assert layout.to_real("home/x", Path("/dest")) == Path("/dest/home/x")
    assert layout.to_real("root/etc/hosts") == Path("/etc/hosts")


_component = st.text(alphabet="abc", min_size=1, max_size=2)


@given(st.lists(st.lists(_component, min_size=1, max_size=6).map("/".join), max_size=12))
def test_all_ancestors_names_every_folder_above_every_path_once_outermost_first(paths: list[str]) -> None:
    found = all_ancestors(paths)
    expected = {p.rsplit("/", n)[0] for p in paths for n in range(1, p.count("/") + 1)}
    assert sorted(found) == sorted(expected)  # each once: no duplicates
    for folder in found:  # a folder's own folders come before it
        parent = folder.rpartition("/")[0]
        assert not parent or found.index(parent) < found.index(folder)


def test_all_ancestors_of_a_chain_thousands_deep_is_linear() -> None:
    """A chain of 3,000 folders: the old per-path prefix joins copied ~9 GB of characters; this is
    bounded by the paths' length (the test would take minutes otherwise)."""
    chain = ["workspace/" + "/".join(["d"] * n) for n in range(1, 3001)]
    found = all_ancestors(chain)
    assert len(found) == 3000 and found[0] == "workspace" and found[-1] == chain[-2]


def test_a_configured_database_that_is_a_socket_or_a_fifo_is_a_part_not_saved(tmp_path: Path) -> None:
    """A configured SQLite database replaced by a socket or a FIFO: an error of the selection
    (the backup's part not saved, exit 3), not a special file said in passing. Before, it was
    listed as special (`not saved ... holds no data`, exit 0) like a FIFO of the workspace."""
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    home.mkdir()
    fifo, sock_path, plain = home / "memory.db", home / "s.db", ws / "agent.pipe"
    os.mkfifo(fifo)
    os.mkfifo(plain)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        sel = select(Layout(workspace=ws, home=home), [""], [], [fifo, sock_path])
    finally:
        sock.close()
    why = dict(sel.errors)
    assert "is a named pipe now" in why[str(fifo)] and "is a socket now" in why[str(sock_path)], sel.errors
    assert "put the database back" in why[str(fifo)]
    assert [kind for _path, kind in sel.special] == ["named pipe"], sel.special  # the workspace's FIFO
