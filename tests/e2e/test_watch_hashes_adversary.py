"""`phx watch`'s page hashes, kept in an unnamed file of its cache folder (ops/watch.py
`WorkingHashes`), against a cache folder that fails under it: full, read-only, deleted. A
rollback-journal database is compared with those hashes at every commit. Each time a restore at
a recorded time holds exactly what the writer had committed then, and the watch says once why
the hashes are in memory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import blake3
import pytest
from e2e_support import Sandbox, tmpfs_at
from test_watch_adversary import LOGICAL, _commit, _iso, _last_covered, _restored, _table, _watching

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only from now on (a read-only bind mount over it; what is open stays open)."""
    proc = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def _restores_as_marked(
    sb: Sandbox, tmp_path: Path, watch: subprocess.Popen[bytes], plog: Path, marks: list[tuple[float, list[int]]]
) -> str:
    """The watch's output, once it is known to have ended well, printed no traceback, and a restore
    at each marked time holds the rows committed then."""
    out = plog.read_text()
    assert watch.returncode == 0, out
    for at, want in marks:
        assert _restored(sb, _iso(at), tmp_path / f"at{len(want)}") == want, out
    assert "Traceback" not in out and "Exception ignored" not in out, out
    return out


@pytest.mark.parametrize(
    "mishap",
    [
        "full",
        pytest.param("read-only", marks=pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: budget")),
        pytest.param("deleted", marks=pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: budget (held)")),
    ],
)
def test_a_cache_folder_that_takes_no_page_hashes_leaves_no_commit_uncovered(
    sandbox: Sandbox, tmp_path: Path, mishap: str
) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, journal="delete")  # no WAL: every commit is found by comparing the page hashes
    folder = sb.cache / "watch"
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with contextlib.ExitStack() as stack:
        if mishap == "full":
            stack.enter_context(tmpfs_at(folder, "2m"))
        with _watching(sb.env, plog) as watch:
            time.sleep(2.5)
            _commit(db, 1)
            time.sleep(1.2)
            marks.append((time.time(), [0, 1]))
            if mishap == "full":
                subprocess.run(["dd", "if=/dev/zero", f"of={folder}/filler", "bs=64k"], capture_output=True)
            elif mishap == "read-only":
                stack.enter_context(_read_only(folder))
            else:
                shutil.rmtree(folder)
            for k in range(2, 6):
                _commit(db, k)
                time.sleep(1.2)
                marks.append((time.time(), list(range(k + 1))))
    out = _restores_as_marked(sb, tmp_path, watch, plog, marks)
    if mishap != "deleted":
        assert out.count("takes no page hashes") == 1, out
        assert "every commit is still captured" in out and "new base" not in out, out


def test_a_restart_with_a_read_only_cache_folder_goes_on_from_the_saved_hashes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The page hashes saved at the last stop still prove continuity: no new base (which could not
    be taken either, its cache being read-only), no traceback of a half-made hashes file."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, journal="delete")
    sb.phx("watch", "--no-files", "--duration", "3")
    _commit(db, 1)  # while no watch runs
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with _read_only(sb.cache / "watch"), _watching(sb.env, plog) as watch:
        time.sleep(2.5)
        marks.append((time.time(), [0, 1]))
        _commit(db, 2)
        time.sleep(1.2)
        marks.append((time.time(), [0, 1, 2]))
    out = _restores_as_marked(sb, tmp_path, watch, plog, marks)
    assert out.count("takes no page hashes") == 1 and "new base" not in out, out


@pytest.mark.parametrize(
    "mishap",
    ["read-only", pytest.param("full", marks=pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: budget"))],
)
def test_bases_are_taken_while_the_cache_folder_is_read_only_or_full(
    sandbox: Sandbox, tmp_path: Path, mishap: str
) -> None:
    """The cache is only a speed aid: a watch whose cache folder takes no file (read-only, or a
    full disk) from its start still takes its bases, and every commit is captured; one warning
    names the folder and the fix."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    folder = sb.cache / "watch"
    folder.mkdir(parents=True, exist_ok=True)
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with contextlib.ExitStack() as stack:
        if mishap == "full":
            stack.enter_context(tmpfs_at(folder, "64k"))
            subprocess.run(["dd", "if=/dev/zero", f"of={folder}/filler", "bs=4k"], capture_output=True)
        else:
            stack.enter_context(_read_only(folder))
        with _watching(sb.env, plog) as watch:
            time.sleep(4)
            marks.append((time.time(), [0]))
            for k in range(1, 3):
                _commit(db, k)
                time.sleep(1.2)
                marks.append((time.time(), list(range(k + 1))))
    out = _restores_as_marked(sb, tmp_path, watch, plog, marks)
    assert "base snapshot failed" not in out, out
    assert out.count(str(folder)) == 1 and "PHX_CACHE_DIR" in out, out


def _until_covered_from_now(sb: Sandbox) -> None:
    """Until one covered range of the history holds both a time from now on and the present (a new
    base takes a moment; a watch restarted within 2 s of the last one's end stamps its first looks
    up to 2 s ahead, and the seconds before them are a gap), at most 60 s."""
    started = time.time()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = sb.phx_here("list", "--timeline", "--json").json()["databases"].get(LOGICAL, [])
        now = time.time()
        if any(
            r["kind"] == "covered"
            and datetime.fromisoformat(r["from"]).timestamp() <= now
            and datetime.fromisoformat(r["to"]).timestamp() >= started
            for r in rows
        ):
            return
        time.sleep(0.5)


def _page_key(sb: Sandbox) -> bytes:
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository

    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        return repo.ids.page_key
    finally:
        repo.close()


def test_planted_page_hashes_that_hide_a_change_are_ignored(sandbox: Sandbox, tmp_path: Path) -> None:
    """Whoever can write the data folder (not the repository's key holder) rewrites the page hashes
    the watch saved at its stop, so that pages changed while it was stopped look unchanged (their
    hashes made from the changed pages, with the key: the worst case). The restarted watch must
    not believe them: the change is in the history, and a restore holds it."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, journal="delete")  # a restart can only compare pages: the saved hashes decide
    sb.phx("watch", "--no-files", "--duration", "3")
    name = blake3.blake3(LOGICAL.encode()).hexdigest(length=16)
    (saved,) = [p for p in (sb.root / "xdg-data" / "phoenix" / "watch").iterdir() if f".{name}." in p.name]
    page_size = 4096
    before = db.stat().st_size // page_size
    _commit(db, 1)  # while no watch runs
    key = _page_key(sb)
    image = db.read_bytes()
    hashes = b"".join(
        blake3.blake3(image[o : o + page_size], key=key).digest(length=16) for o in range(0, len(image), page_size)
    )
    raw = saved.read_bytes()
    saved.write_bytes(raw[: len(raw) - before * 16] + hashes)  # what precedes the hashes is kept
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with _watching(sb.env, plog) as watch:
        _until_covered_from_now(sb)
        marks.append((time.time(), [0, 1]))
        _commit(db, 2)
        time.sleep(1.2)
        marks.append((time.time(), [0, 1, 2]))
    out = _restores_as_marked(sb, tmp_path, watch, plog, marks)
    assert "are not the ones this watch saved" in out, out


def test_a_cache_folder_and_a_temporary_folder_that_take_no_file_are_a_warning_not_a_crash(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fills the cache folder and /tmp alike: the base's temporary cache folder cannot
    be made either. The watch says so in its warning and tries the base again; it does not end in
    an internal error."""
    from test_watch_bases import _watcher

    sb = sandbox
    _table(sb.layout.dashboard_db)
    folder = sb.cache / "watch"
    folder.mkdir(parents=True, exist_ok=True)
    no_tmp = tmp_path / "tmp-is-a-file"
    no_tmp.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(no_tmp))  # as TMPDIR: mkdtemp there fails
    notices: list[str] = []
    with _read_only(folder), _watcher(sb, notices) as w:
        w.poll()  # the bases: the cache folder refuses, and so does the temporary folder
        assert w.next_base > time.monotonic(), notices
    said = [n for n in notices if "base snapshot failed" in n]
    assert len(said) == 1 and str(folder) in said[0] and str(no_tmp) in said[0], notices


def test_an_older_page_hash_file_replayed_with_its_segment_does_not_hide_a_change(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Whoever can write the data folder keeps a page-hash file the watch saved (tagged by the
    watch itself), and after later commits puts it back, with its segment's name in the watch's
    state, over a database put back to those older bytes. The tag is genuine: the watch must still
    not believe hashes older than the database's last captured change (row 1 would stay in the
    history while the database no longer holds it)."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, journal="delete")
    sb.phx("watch", "--no-files", "--duration", "3")
    folder = sb.root / "xdg-data" / "phoenix" / "watch"
    name = blake3.blake3(LOGICAL.encode()).hexdigest(length=16)
    (hashes,) = [p for p in folder.iterdir() if f".{name}." in p.name]
    (state,) = [p for p in folder.iterdir() if p.name.endswith(".json")]
    old_hashes, old_db = hashes.read_bytes(), db.read_bytes()
    _commit(db, 1)
    sb.phx("watch", "--no-files", "--duration", "3")
    assert _restored(sb, _last_covered(sb), tmp_path / "after1") == [0, 1]
    assert hashes.read_bytes() != old_hashes
    # Put back: the older database, its hashes, and their segment in the state.
    db.write_bytes(old_db)
    hashes.write_bytes(old_hashes)
    doc = json.loads(state.read_text())
    doc["changedIn"][LOGICAL] = old_hashes[:64].decode()
    state.write_text(json.dumps(doc))
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with _watching(sb.env, plog) as watch:
        _until_covered_from_now(sb)
        marks.append((time.time(), [0]))
        _commit(db, 2)
        time.sleep(1.2)
        marks.append((time.time(), [0, 2]))
    _restores_as_marked(sb, tmp_path, watch, plog, marks)
