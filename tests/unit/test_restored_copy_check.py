"""The check of a restored database copy (sinks/sqlite_live.py) on damaged copies: it fails
with SQLite's own message, whatever bytes the damage left in the schema."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from phoenix_backup.errors import ExitStatus, SourceError
from phoenix_backup.ops.drill import DatabaseReport, DrillContext, DrillResult, SqliteDrill
from phoenix_backup.sinks import sqlite_live
from phoenix_backup.sources.sqlite import check_connection

PAGE = 1024


def _whole_check(path: Path) -> bool:
    """The oracle: does the whole `PRAGMA integrity_check` pass? (An error that stops it fails.)"""
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            con.text_factory = bytes
            return [r[0] for r in con.execute("PRAGMA integrity_check")] == [b"ok"]
        finally:
            con.close()
    except (sqlite3.Error, UnicodeDecodeError):
        return False


def _database(path: Path) -> bytes:
    """Every kind of page: tables with rowid and without, indexes (UNIQUE, on an expression),
    rows spilling into overflow chains, NOT NULL and CHECK constraints, a freelist."""
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA page_size={PAGE}")
    con.executescript(
        """
        CREATE TABLE m(id INTEGER PRIMARY KEY, k TEXT UNIQUE, body TEXT NOT NULL, n INT CHECK (n >= 0));
        CREATE INDEX m_n ON m(n);
        CREATE TABLE w(a TEXT PRIMARY KEY, b BLOB) WITHOUT ROWID;
        CREATE INDEX w_b ON w(substr(b, 1, 4));
        CREATE UNIQUE INDEX w_bu ON w(b);
        CREATE TABLE plain(x);
        """
    )
    rng = random.Random(1)
    con.executemany(
        "INSERT INTO m(k, body, n) VALUES (?, ?, ?)",
        [(f"k{i}", rng.randbytes(rng.choice([20, 1500])).hex(), i % 7) for i in range(60)],
    )
    con.executemany("INSERT INTO w VALUES (?, ?)", [(f"a{i}", rng.randbytes(50)) for i in range(40)])
    con.executemany("INSERT INTO plain VALUES (?)", [(rng.randbytes(1200),) for _ in range(16)])
    con.commit()
    con.execute("DELETE FROM m WHERE id % 3 = 0")
    con.execute("DELETE FROM plain WHERE rowid % 2 = 0")
    con.commit()
    con.close()
    return path.read_bytes()


def test_a_copy_whose_damaged_schema_is_not_utf8_fails_its_check_with_a_message(tmp_path: Path) -> None:
    """A flipped byte in a table's name in the schema: SQLite's message quotes the name, which is
    not UTF-8 any more. The check fails with that message (it used to raise UnicodeDecodeError,
    a traceback in the middle of a restore)."""
    base = _database(tmp_path / "base.db")
    at = base.index(b"plainplain") + 1  # the schema row's name, then its table's name
    data = bytearray(base)
    data[at] = 0x93
    (tmp_path / "bad.db").write_bytes(bytes(data))
    assert not _whole_check(tmp_path / "bad.db")
    assert sqlite_live.integrity(str(tmp_path / "bad.db")).startswith("malformed database schema (p")


def test_a_damaged_schema_that_is_not_utf8_fails_the_backup_check_and_the_drill_with_a_message(tmp_path: Path) -> None:
    """The same damage met by a backup's check of a database and by a drill's check of its
    restored copy: a failed check naming SQLite's message, not UnicodeDecodeError."""
    base = _database(tmp_path / "base.db")
    at = base.index(b"plainplain") + 1
    data = bytearray(base)
    data[at] = 0x93
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(data))
    con = sqlite3.connect(f"{bad.absolute().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        with pytest.raises(SourceError, match=r"cannot read a database to check it: malformed database schema \(p"):
            check_connection(con)
    finally:
        con.close()
    ctx = cast(DrillContext, SimpleNamespace(scratch=tmp_path))  # the checker reads only the scratch folder
    report = SqliteDrill().check(ctx, None, bad)
    assert not report.ok
    assert "malformed database schema (p" in report.integrity


def test_an_fts5_check_sqlite_cannot_run_is_reported_as_not_run_never_as_damage(tmp_path: Path) -> None:
    """Scratch space SQLite cannot write (a read-only mount, a full disk): FTS5's integrity-check
    is an INSERT and is refused before it reads anything. The drill says the check could not run,
    with the cause and the fix, and exits 3: it neither fails nor passes those bytes."""
    db = tmp_path / "notes.db"
    con = sqlite3.connect(db)
    con.executescript("CREATE VIRTUAL TABLE notes USING fts5(body); INSERT INTO notes VALUES ('sound');")
    con.close()
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    report = DatabaseReport("home/notes.db", "sqlite", integrity="ok")
    try:
        SqliteDrill._fts5(ro, {"notes": "fts5"}, report)
    finally:
        ro.close()
    assert report.problems == []
    assert report.unchecked == [
        "FTS5 integrity-check of notes could not run: attempt to write a readonly database; "
        "run the drill again, with --scratch DIR on a disk this user can write"
    ]
    result = DrillResult("0" * 64, "n", "t", "h", "local", "2026-01-01T00:00:00+00:00", databases=[report])
    assert result.ok and result.exit_status == ExitStatus.PARTIAL
    assert result.to_json()["unchecked"] == [f"home/notes.db: {report.unchecked[0]}"]


def test_the_drill_report_shows_a_planted_host_and_a_hostile_name_escaped() -> None:
    """The drill's Markdown report (which a user `cat`s) put a planted snapshot's host and a file's
    name in raw: an escape sequence drove the reader's terminal, a carriage return hid the line and
    a RIGHT-TO-LEFT OVERRIDE showed one name as another. They are shown escaped, as on a terminal."""
    from phoenix_backup.ops.drill import DrillError, markdown

    hostile = "evil\x1b]0;owned\x07\r\u202eok|x"
    result = DrillResult(
        snapshot="a" * 64, name="n", time="2026-01-01T00:00:00+00:00", host=hostile, target="local", started="s"
    )
    result.errors.append(DrillError("data/ab", "a" * 64, f"workspace/{hostile}", f"{hostile} differs"))
    report = markdown(result)
    assert not any(c in report for c in "\x1b\x07\r\u202e"), report
    assert r"evil\\x1b\]0;owned\\x07\\r\\u202eok\|x" in report


def _markdown_acting(line: str) -> tuple[int, str]:
    """What GFM makes of a report line: its cell separators (a `|` no backslash escapes) and the
    characters that would open a link, an image, a code span or HTML (`[`, `` ` ``, `<`) unescaped."""
    cells, acting, i = 0, "", 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        cells += line[i] == "|"
        acting += line[i] if line[i] in "[`<" else ""
        i += 1
    return cells, acting


def test_a_name_forges_no_cell_link_nor_html_in_the_drill_report() -> None:
    """`\\|` in a name came out as `\\\\|`: an escaped backslash, then a cell separator. A table
    named `t\\| 9 \\| 9 \\|` showed rows recorded 9 and restored 9, the real counts and
    **differs** pushed out past the last column; a name holding `![x](https://…)` or `<img>` was
    an image fetched, or HTML, when the report was rendered. Each is text in its cell."""
    from phoenix_backup.ops.drill import DrillError, markdown

    hostile = "t\\| 9 \\| 9 \\|![x](https://example.invalid/p.png)<img src=x>`"
    result = DrillResult(
        snapshot="a" * 64, name="n", time="2026-01-01T00:00:00+00:00", host=hostile, target="local", started="s"
    )
    result.databases.append(DatabaseReport(path=f"workspace/{hostile}.db", engine="sqlite", integrity="ok"))
    result.databases[0].tables[hostile] = (9, 7)
    result.errors.append(DrillError(f"workspace/{hostile}", "a" * 64, f"workspace/{hostile}", f"{hostile} differs"))
    result.lacking.append({"path": f"workspace/{hostile}", "error": hostile})
    report = markdown(result)
    rows = {line.split(" ", 2)[1]: line for line in report.splitlines() if line.startswith("| ")}
    assert _markdown_acting(rows["taken"]) == (3, ""), rows["taken"]
    table_row = next(line for line in report.splitlines() if line.startswith("| t") and "differs" in line)
    assert _markdown_acting(table_row) == (4, ""), table_row
    for line in report.splitlines():
        if line.startswith("- ") or line.startswith("### "):
            assert _markdown_acting(line) == (0, ""), line
