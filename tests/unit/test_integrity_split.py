"""A large restored copy's `integrity_check` is split over two threads (`PRAGMA quick_check` on
one, `PRAGMA integrity_check(TABLE)` of every indexed table on the other; sinks/sqlite_live.py).
Split, it must refuse exactly the copies the whole check refuses: here both are run on a corpus of
damaged databases (bytes flipped in every page: b-tree headers and cells, freelist trunk and
leaves, overflow chains, the schema; whole pages zeroed; index entries that disagree with their
table; a duplicate in a UNIQUE index) and their verdicts compared case by case. The default run
flips a sample of offsets in every page; PHX_TEST_HEAVY=1 flips 22 offsets in every page."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import pytest

from phoenix_backup.sinks import sqlite_live

PAGE = 1024
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


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


def _hide_index_while(path: Path, index: str, change: str) -> None:
    """Run `change` on the table while `index` is out of the schema, then put the index back:
    the index no longer agrees with its table (what a bug or a torn write can leave)."""
    con = sqlite3.connect(path)
    row = con.execute("SELECT * FROM sqlite_master WHERE name = ?", (index,)).fetchone()
    con.execute("PRAGMA writable_schema=ON")
    con.execute("DELETE FROM sqlite_master WHERE name = ?", (index,))
    con.commit()
    con.close()
    con = sqlite3.connect(path)
    con.execute(change)
    con.commit()
    con.execute("PRAGMA writable_schema=ON")
    con.execute("INSERT INTO sqlite_master VALUES (?, ?, ?, ?, ?)", row)
    con.commit()
    con.close()


@pytest.fixture
def split_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_live, "SPLIT_CHECK_FROM", 0)


def test_the_split_check_refuses_exactly_what_the_whole_check_refuses(tmp_path: Path, split_always: None) -> None:
    base = _database(tmp_path / "base.db")
    pages = len(base) // PAGE
    assert int.from_bytes(base[36:40], "big") > 0  # a freelist to damage
    rng = random.Random(7)
    fixed = [0, 1, 3, 5, 8, 9, 12, PAGE // 2, PAGE - 1] if HEAVY else [0, 3, 8]
    case = tmp_path / "case.db"
    cases = refused = 0
    differ: list[str] = []

    def compare(data: bytes, label: str) -> None:
        nonlocal cases, refused
        case.write_bytes(data)
        whole, split = _whole_check(case), sqlite_live.integrity(str(case))
        cases += 1
        refused += not whole
        if whole != (split == "ok"):
            differ.append(f"{label}: whole {'passes' if whole else 'fails'}, split says {split!r}")

    for page in range(pages):
        start = page * PAGE
        randoms = [rng.randrange(PAGE) for _ in range(13 if HEAVY else 2)]
        for off in fixed + randoms:
            data = bytearray(base)
            data[start + off] ^= 0xFF if off % 2 else 0x01
            compare(bytes(data), f"page {page + 1} byte {off}")
        data = bytearray(base)
        data[start : start + PAGE] = bytes(PAGE)
        compare(bytes(data), f"page {page + 1} zeroed")

    hidden = [("m_n", "UPDATE m SET n = n + 1 WHERE id < 20"), ("w_bu", "UPDATE w SET b = x'00'")]
    for index, change in hidden:
        (tmp_path / "index.db").write_bytes(base)
        _hide_index_while(tmp_path / "index.db", index, change)
        assert not _whole_check(tmp_path / "index.db")
        compare((tmp_path / "index.db").read_bytes(), f"{index} disagrees with its table")

    assert differ == []
    assert refused > pages  # the corpus really is damaged, case after case
    assert cases - refused > pages  # and not only in ways that break everything


def test_a_copy_whose_damaged_schema_is_not_utf8_fails_its_check_with_a_message(
    tmp_path: Path, split_always: None
) -> None:
    """A flipped byte in a table's name in the schema: SQLite's message quotes the name, which is
    not UTF-8 any more. The check fails with that message (it used to raise UnicodeDecodeError,
    a traceback in the middle of a restore)."""
    base = _database(tmp_path / "base.db")
    at = base.index(b"plainplain") + 1  # the schema row's name, then its table's name
    data = bytearray(base)
    data[at] = 0x93
    (tmp_path / "bad.db").write_bytes(bytes(data))
    assert not _whole_check(tmp_path / "bad.db")
    for split_from in (0, 1 << 40):
        sqlite_live.SPLIT_CHECK_FROM = split_from
        verdict = sqlite_live.integrity(str(tmp_path / "bad.db"))
        assert "malformed database schema" in verdict
