"""`phx watch` and its repository (ops/watch.py), driven in the test's process with real
databases and a real local repository: a `phx forget` of a running watch's base snapshot is
noticed at the next lease (`check_bases`), said, and a new base is taken; during an outage of the
repository, the segments wait on disk (the spool), not in memory, and a restarted watch writes
them first and goes on with its chain; a spool that cannot be written is one clear error."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox
from test_watch_adversary import LOGICAL, _commit, _last_covered, _restored, _table

from phoenix_backup.config import Config, load_config
from phoenix_backup.errors import SourceError
from phoenix_backup.ops import forget
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.watch import Watcher
from phoenix_backup.repo import captures
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.retention import Policy, apply_policy
from phoenix_backup.repo.walker import walk_tree


@contextlib.contextmanager
def _watcher(sb: Sandbox, notices: list[str]) -> Iterator[Watcher]:
    """A `Watcher` of the sandbox's repository (no files), its notices in `notices`; closed after."""
    envx = Environment(env=sb.env, notice=notices.append)
    repo = open_repository(load_config(sb.config_path, sb.env), envx, upgrade=True)
    try:
        w = Watcher(load_config(sb.config_path, sb.env), envx, repo, files=False)
        try:
            yield w
        finally:
            w.close()
    finally:
        repo.close()


def test_a_forgotten_base_is_noticed_at_the_next_lease_and_a_new_one_taken(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the bases
        _commit(db, 1)
        w.poll()
        w.flush()
        dash = next(d for d in w.dbs if d.logical == LOGICAL)
        base = dash.base_id
        assert base is not None and not w.queue
        # The watch lets go of the lock (its lease's gap); a `phx forget` of its base gets in.
        w._release()
        forgot = sb.phx("forget", base)
        assert forgot.code == 0, forgot
        w.lock_free_until = 0.0
        _commit(db, 2)
        w.poll()
        w.flush()  # the next lease: once this segment is written, the base is found gone and said
        w.poll()  # a new base
        _commit(db, 3)
        w.poll()
        w.flush()
        assert dash.base_id not in (None, base)
    said = [n for n in notices if f"base snapshot {base[:8]}" in n]
    assert len(said) == 1 and "a new base is taken" in said[0], notices
    latest = sb.phx("list", "--timeline", "--json", check=None).json()["databases"][LOGICAL][-1]
    assert latest["kind"] == "covered", latest
    assert _restored(sb, latest["to"], tmp_path / "at") == [0, 1, 2, 3]


def test_the_threads_of_a_base_end_with_it_and_the_watch_still_captures(sandbox: Sandbox, tmp_path: Path) -> None:
    """The base snapshot seals and writes packs in threads; a watch that runs for weeks must not
    keep them (each holds its stack and C heap) once the base is taken: the steady loop uses none."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        before = {t.ident for t in threading.enumerate()}
        w.poll()  # the bases: a snapshot, sealed by the repository's threads
        assert all(not d.need_base for d in w.dbs), notices
        left = [t.name for t in threading.enumerate() if t.ident not in before]
        assert not [n for n in left if n.startswith(("phx-seal", "phx-write"))], left
        _commit(db, 1)
        w.poll()
        w.flush()
        assert not w.queue
    assert _restored(sb, _last_covered(sb), tmp_path / "at") == [0, 1]


def _children_running(module: str) -> list[int]:
    """Processes this test's process started that run `module`."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if module.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        out.append(int(pid))
    return out


def _poll_beside(w: Watcher, beside: Callable[[threading.Event], None]) -> None:
    """`w.poll()` with `beside(stop)` running in a thread of its own until the poll has returned."""
    stop = threading.Event()
    thread = threading.Thread(target=beside, args=(stop,))
    thread.start()
    try:
        w.poll()
    finally:
        stop.set()
        thread.join()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the base's process in /proc")
def test_a_base_process_killed_midway_is_said_once_and_the_base_taken_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """The base runs in a process of its own (ops/watch_child.py), so that its memory never stays
    in the watch: it is handed the repository's secrets through a pipe, never on its command line
    or in its environment; SIGKILLed midway, the watch says so in one sentence, uses nothing of
    it, takes the base again, and what it captures afterwards restores."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    seen: dict[str, bytes] = {}

    def kill_the_base(stop: threading.Event) -> None:
        while not stop.is_set():
            for pid in _children_running("phoenix_backup.ops.watch_child"):
                try:
                    seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
                    seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes()
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    continue
                return
            time.sleep(0.005)

    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _poll_beside(w, kill_the_base)  # the base, killed
        assert all(d.need_base for d in w.dbs), notices
        said = [n for n in notices if "base snapshot failed" in n]
        assert len(said) == 1 and "killed by signal 9" in said[0], notices
        secret = sb.env["PHX_PASSPHRASE"].encode()
        assert seen and secret not in seen["cmdline"] and secret not in seen["environ"]
        w.next_base = 0.0  # not 30 s later
        w.poll()  # the base again
        assert not any(d.need_base for d in w.dbs), notices
        _commit(db, 1)
        w.poll()
        w.flush()
        assert not w.queue
    assert _restored(sb, _last_covered(sb), tmp_path / "at") == [0, 1]


def _malloc_arenas(pid: int) -> int:
    """glibc's malloc arenas besides the main one in process `pid`: the anonymous mappings of
    64 MiB (HEAP_MAX_SIZE on 64 bits) that start on a 64 MiB boundary, read and write in front and
    reserved behind; -1 once the process is gone."""
    heap = 64 << 20
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return -1
    ends = {}
    for line in lines:
        fields = line.split()
        if len(fields) == 5:  # no file behind it
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ends[start] = end
    count = 0
    for start, end in ends.items():
        while end in ends:
            end = ends[end]
        count += start % heap == 0 and end - start == heap
    return count


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the base's mappings in /proc")
def test_the_base_process_keeps_to_two_malloc_arenas(sandbox: Sandbox) -> None:
    """The base's process (ops/watch_child.py) is a fresh interpreter: it sets glibc's arena limit
    and mmap threshold itself, as `phx` does, before its threads start. Before, it ran with
    glibc's defaults (3-4 arenas besides the main one on the tiny sample)."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    most: dict[int, int] = {}

    def sample(stop: threading.Event) -> None:
        while not stop.is_set():
            for pid in _children_running("phoenix_backup.ops.watch_child"):
                most[pid] = max(most.get(pid, 0), _malloc_arenas(pid))
            time.sleep(0.002)

    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _poll_beside(w, sample)  # the bases, in their process
        assert not any(d.need_base for d in w.dbs), notices
    assert most, "the base's process was seen"
    assert max(most.values()) <= 1, most


def test_segments_wait_on_disk_during_an_outage_and_a_restarted_watch_writes_them_first(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    segments = sb.repo / "captures"

    def step(w: Watcher, k: int) -> None:
        _commit(db, k)
        w.poll()
        w.flush()

    with _watcher(sb, notices) as w:
        w.poll()
        step(w, 1)
        assert not w.queue
        # The repository's folder of segments becomes unwritable (a file where it was): an outage.
        segments.rename(tmp_path / "captures-away")
        segments.write_bytes(b"")
        for k in range(2, 7):
            step(w, k)
        # The poll that saw the sixth commit (a time after it lies in the restart's gap).
        after_six = captures.describe(next(d for d in w.dbs if d.logical == LOGICAL).until, exact=True)
        spooled = sorted(w.spool.iterdir())
        assert len(spooled) == len(w.queue) == 5, "every waiting segment is on disk, none only in memory"
        assert w.queue_bytes == 0
        w.spill_all()  # a clean stop (watch()): the segments wait in the spool, the page hashes are saved
        w.save_hashes(stopping=True)
    said = [n for n in notices if "cannot write" in n]
    assert len(said) == 1 and str(w.spool) in said[0], notices
    # The repository is back; a new watch writes the waiting segments first and goes on with the chain.
    segments.unlink()
    (tmp_path / "captures-away").rename(segments)
    with _watcher(sb, notices) as w:
        w.poll()
        step(w, 7)
        assert not w.queue and list(w.spool.iterdir()) == []
        assert w.result.bases == 0, "the chain went on from the segments that waited: no new base"
    latest = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL][-1]
    assert latest["kind"] == "covered", latest
    for k, at in ((6, after_six), (7, latest["to"])):
        assert _restored(sb, at, tmp_path / f"at-{k}") == list(range(k + 1))


def test_a_slow_target_leaves_no_gap_on_a_database_nobody_wrote_to(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments are written in the watch's loop: a target taking 6 s per write keeps the next poll
    over STALL_US late. A database whose WAL proves nothing was committed meanwhile held its state
    all along: no gap. Before, every heartbeat's write cut an idle database's range with a gap, and
    a restore at a time in it failed with 'no capture covers'."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the base
        _commit(db, 1)
        w.poll()
        w.flush()
        real = w.repo.backend.write

        def slow(name: str, raw: bytes) -> None:
            time.sleep(6)
            real(name, raw)

        monkeypatch.setattr(w.repo.backend, "write", slow)
        w.poll()
        w.flush()  # a heartbeat of the idle database: its segment takes 6 s to write
        during = datetime.now(UTC) - timedelta(seconds=3)
        w.poll()  # nothing was committed while the write took
        monkeypatch.undo()
        _commit(db, 2)
        w.poll()
        w.flush()
    ranges = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL]
    assert [r["kind"] for r in ranges] == ["covered"], ranges
    assert _restored(sb, during.isoformat(), tmp_path / "during") == [0, 1]


def test_a_spool_that_cannot_be_written_ends_the_watch_with_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    _table(sb.layout.dashboard_db)
    with _watcher(sb, []) as w:
        w.poll()
        (sb.repo / "captures").rename(tmp_path / "captures-away")
        (sb.repo / "captures").write_bytes(b"")
        w.spool.parent.mkdir(parents=True, exist_ok=True)
        w.spool.write_bytes(b"")  # no room for the spool (as a full disk)
        _commit(sb.layout.dashboard_db, 1)
        w.poll()
        with pytest.raises(SourceError) as caught:
            w.flush()
    text = str(caught.value)
    assert str(w.spool) in text and "free space there" in text and "start `phx watch` again" in text


def test_segments_beyond_the_memory_bound_wait_on_disk_in_their_order(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    with _watcher(sb, []) as w:
        w.poll()
        w.flush()
        w._release()
        w.lock_free_until = time.monotonic() + 3600  # another command holds the repository
        for k in range(1, 5):
            w.queue_limit = 1 << 30 if k == 1 else 0  # the first waits in memory, the others beyond the bound
            _commit(db, k)
            w.poll()
            w.flush()
        assert [raw is None for _n, raw in w.queue] == [False, True, True, True]
        w.spill_all()  # a stop: the one in memory goes to the spool before the others
        spooled = [p.name.split("-", 1)[1] for p in sorted(w.spool.iterdir())]
        assert spooled == [n.removeprefix("captures/") for n, _raw in w.queue]
        w.lock_free_until = 0.0
        w._write_queue()
        assert not w.queue and list(w.spool.iterdir()) == []
    latest = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL][-1]
    assert _restored(sb, latest["to"], tmp_path / "at") == [0, 1, 2, 3, 4]


@contextlib.contextmanager
def cut_off_watcher(sb: Sandbox, tmp_path: Path, notices: list[str]) -> Iterator[tuple[Watcher, Path, Path]]:
    """A watch of the dashboard store (its table made) with one commit captured and its segment
    written, then the repository's `captures/` out of reach (moved to `captures-away`, a file in
    its place: an outage): what the watch seals next waits in its spool. Yields the watcher, the
    database and the `captures/` path."""
    db = sb.layout.dashboard_db
    _table(db)
    segments = sb.repo / "captures"
    with _watcher(sb, notices) as w:
        w.poll()
        _commit(db, 1)
        w.poll()
        w.flush()
        segments.rename(tmp_path / "captures-away")
        segments.write_bytes(b"")
        yield w, db, segments


def test_a_file_planted_in_the_spool_is_never_written_to_the_repository(sandbox: Sandbox, tmp_path: Path) -> None:
    # An attacker who can write the cache folder (not the repository, not its key) plants files
    # in the spool named by their own SHA-256: bytes of their choosing.
    sb = sandbox
    notices: list[str] = []
    with cut_off_watcher(sb, tmp_path, notices) as (w, db, segments):
        _commit(db, 2)
        w.poll()
        w.flush()
        assert len(list(w.spool.iterdir())) == 1
        w.spill_all()
        w.save_hashes(stopping=True)
        spool = w.spool
    segments.unlink()
    (tmp_path / "captures-away").rename(segments)
    planted = {sha256_hex(b): b for b in (b"planted by the attacker " * 40, b"\x00" * 7000)}
    for i, (sid, raw) in enumerate(planted.items()):
        (spool / f"{i:020d}-{sid}").write_bytes(raw)
    with _watcher(sb, notices) as w:
        w.poll()
        _commit(db, 3)
        w.poll()
        w.flush()
        assert not w.queue and list(w.spool.iterdir()) == []
    written = {p.name for p in segments.iterdir()}
    assert not written & set(planted), "a planted spool file was written to the repository as a segment"
    said = [n for n in notices if "waiting segment" in n and "not one this watch" in n]
    assert len(said) == 2, notices
    latest = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL][-1]
    assert _restored(sb, latest["to"], tmp_path / "at") == [0, 1, 2, 3]


def test_segments_waiting_for_a_long_command_are_on_disk_so_a_kill_loses_none(sandbox: Sandbox, tmp_path: Path) -> None:
    # A `phx prune` or a `phx forget` that compacts holds the repository for minutes: what the
    # watch seals meanwhile must not wait in memory only (a kill -9 then would lose it).
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    envx = Environment(env=sb.env)
    other = open_repository(load_config(sb.config_path, sb.env), envx)
    try:
        with _watcher(sb, []) as w:
            w.poll()
            w.flush()
            w._release()
            w.lock_free_until = 0.0
            with other.lock(exclusive=True, command="prune"):
                for k in range(1, 4):
                    _commit(db, k)
                    w.poll()
                    w.flush()
                assert len(w.queue) == 3
                assert all(raw is None for _n, raw in w.queue), "every waiting segment is in the spool"
                assert len(list(w.spool.iterdir())) == 3
            w._write_queue()
            assert not w.queue and list(w.spool.iterdir()) == []
    finally:
        other.close()
    latest = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL][-1]
    assert _restored(sb, latest["to"], tmp_path / "at") == [0, 1, 2, 3]


def _watch_a_change_of_every_database(w: Watcher, db: Path) -> tuple[Any, str]:
    """The watch's bases, then a change of every database (so that compaction leaves none on its
    base), written; the lock let go. Returns the dashboard's database and its base id."""
    w.poll()
    _commit(db, 1)
    for d in w.dbs:
        if d.logical != LOGICAL:
            with contextlib.closing(sqlite3.connect(d.entry.path, isolation_level=None)) as con:
                con.execute("CREATE TABLE adversary(k)")
    w.poll()
    w.flush()
    dash = next(d for d in w.dbs if d.logical == LOGICAL)
    assert dash.base_id is not None
    w._release()
    return dash, dash.base_id


def _compact_the_watchs_day(repo: Repository, cfg: Config, envx: Environment) -> Any:
    """A forget eight days on, when the watch's day is old enough to compact."""
    later = datetime.now(UTC) + timedelta(days=8)
    policy = Policy(last=1)
    with repo.lock(exclusive=True, command="forget"):
        repo.load_index()
        return forget.thin_captures(
            repo, policy, apply_policy([], policy, later), later, dry_run=False, eager=True, compactor=(cfg, envx)
        )


def test_a_base_compaction_replaced_is_followed_in_the_watchs_own_chain(sandbox: Sandbox, tmp_path: Path) -> None:
    # Another machine's watch follows a database of the same logical path into this repository:
    # its chain covers the same time. The base compaction replaced is followed in this watch's
    # chain, not taken for forgotten because the other chain's range comes first.
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    cfg = load_config(sb.config_path, sb.env)
    envx = Environment(env=sb.env)
    with _watcher(sb, notices) as w:
        dash, base = _watch_a_change_of_every_database(w, db)
        assert dash.since is not None
        done = _compact_the_watchs_day(w.repo, cfg, envx)
        assert done is not None and done.compacted and done.bases_forgotten == [base], done
        compacted = done.compacted[0]
        node = next(n for p, n in walk_tree(w.repo, w.repo.load_snapshot(compacted).tree) if p == LOGICAL)
        other = captures.Part(
            LOGICAL, 4096, dash.since, dash.since + 60_000_000, (captures.Commit(dash.since, 1, ()),),
            captures.Base(compacted, str(node.sha256)),
        )  # fmt: skip
        name, raw = captures.seal(w.repo, captures.build("f" * 32, 0, None, "elsewhere", [(other, [])]))
        w.repo.backend.write(name, raw)
        w.lock_free_until = 0.0
        _commit(db, 2)
        w.poll()
        w.flush()  # the next lease: the base is found gone, and followed to the compacted snapshot
        assert dash.base_id == compacted and not dash.need_base
    assert not [n for n in notices if f"base snapshot {base[:8]}" in n], notices


def test_a_write_only_watch_after_a_compaction_claims_no_loss(make_sandbox: Any, tmp_path: Path) -> None:
    """The machine that backs up a write-only repository cannot read the timeline, so it cannot
    follow a base that a compaction (on the reading machine) replaced. It used to warn that what it
    captured could no longer be restored, which was false: the reading machine restores every
    state. It takes a new base, and says truthfully what it cannot tell."""
    from test_write_only import Reader, writer

    sb, identity = writer(make_sandbox, tmp_path)
    reader = Reader(sb, tmp_path / "reader", identity)
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        assert not w.repo.can_read
        dash, base = _watch_a_change_of_every_database(w, db)
        # The reading machine compacts the watch's day, which forgets the base.
        rcfg = load_config(reader.config_path, reader.env)
        renvx = Environment(env=reader.env)
        rrepo = open_repository(rcfg, renvx)
        try:
            done = _compact_the_watchs_day(rrepo, rcfg, renvx)
        finally:
            rrepo.close()
        assert done is not None and done.compacted and done.bases_forgotten == [base], done
        w.lock_free_until = 0.0
        _commit(db, 2)
        w.poll()
        w.flush()  # the next lease: the base is gone, and this machine cannot read why
        w.poll()  # a new base
        _commit(db, 3)
        w.poll()
        w.flush()
        assert dash.base_id not in (None, base)
        assert not w.result.warnings, w.result.warnings
    said = [n for n in notices if f"base snapshot {base[:8]}" in n]
    assert len(said) == 1, notices
    assert "can no longer be restored" not in said[0] and "cannot read the repository to tell which" in said[0]
    assert "a new base is taken now" in said[0]
    # Nothing was lost: the reading machine restores the states before and after the compaction.
    doc = reader.phx("list", "--timeline", "--json").json()
    covered = [r for r in doc["databases"][LOGICAL] if r["kind"] == "covered"]
    assert covered, doc
    dest = tmp_path / "at"
    res = reader.phx("restore", "--at", covered[-1]["to"], "--to", dest, "--path", LOGICAL, "--json").json()
    assert not res["errors"], res
    con = sqlite3.connect(f"file:{dest / LOGICAL}?immutable=1", uri=True)
    try:
        assert [r[0] for r in con.execute("SELECT k FROM log ORDER BY k")] == [0, 1, 2, 3]
    finally:
        con.close()


def test_a_restore_at_before_any_snapshot_of_the_files_lists_the_snapshots_once(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note that no snapshot of the files was complete by then names the backup that holds
    them, from the one listing of the snapshots (each listed snapshot is a read: on S3 a request)."""
    from phoenix_backup.ops import pitr
    from phoenix_backup.storage.local import LocalBackend

    sb = sandbox
    _table(sb.layout.dashboard_db)
    backup = sb.backup()
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()
        _commit(sb.layout.dashboard_db, 1)
        w.poll()
        w.flush()
    at = _last_covered(sb)  # before the count: the listing of the timeline reads too
    reads: list[str] = []
    real_read = LocalBackend.read

    def counted(self: LocalBackend, name: str) -> bytes:
        reads.append(name)
        return real_read(self, name)

    monkeypatch.setattr(LocalBackend, "read", counted)
    cfg = load_config(sb.config_path, sb.env)
    result = pitr.restore_at(cfg, Environment(env=sb.env), at, to=tmp_path / "at")
    assert [n for n in result.notices if f"phx restore --backup {backup['id'][:8]}" in n], result
    assert reads.count(f"snapshots/{backup['id']}") == 1, reads  # the backup's, which only the listing reads


def test_the_page_hashes_of_a_database_are_not_held_in_the_watchs_memory(sandbox: Sandbox, tmp_path: Path) -> None:
    """The watch runs for weeks with 16 bytes a page of every database to compare pages with: in
    memory they would grow with the databases (12 MB for 3 GB). A rollback-journal database is
    compared page by page at each change (no WAL names the pages): what the watch holds after
    that does not grow with the database, and the changes restore exactly."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, page_size=512, journal="delete")
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(
        "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 60) "
        "INSERT INTO log SELECT k, randomblob(200000) FROM n"
    )
    con.close()
    pages = db.stat().st_size // 512
    assert pages > 20_000
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the bases
        w.flush()
        tracemalloc.start()
        try:
            for k in (100, 101):
                _commit(db, k)
                w.poll()  # every page hashed and compared
                w.flush()
            held, _peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert not w.queue and not w.result.warnings, (w.result.warnings, notices)
        at = _last_covered(sb)
    assert held < pages * 16 // 4, (held, pages)
    assert _restored(sb, at, tmp_path / "r")[-2:] == [100, 101]


def _anonymous_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap, read in /proc")
def test_heap_freed_between_heartbeats_goes_back_at_the_next_segment(sandbox: Sandbox, tmp_path: Path) -> None:
    """Pages a second's capture freed in the C heap, in holes between what stays (the steady state
    of a watch under a writer), are given back to the system with the next segment, not at the
    next heartbeat 30 s later (docs/benchmarks.md: 2.5-3 MiB of such pages stayed resident)."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the bases
        # 32 MiB freed in 64 KiB holes (under glibc's mmap threshold: in the heap), each held in
        # place by a block after it too large to come from a free chunk (from the heap's top), so
        # that no hole joins another or the top, which free() gives back by itself.
        held, holes = [], []
        for i in range(512):
            holes.append(os.urandom(1) * 65_000)
            held.append(bytes([i % 256]) * 70_000)
        before = _anonymous_kib()
        del holes
        w.last_trim = time.monotonic()  # the heartbeat's collection and trim: just now
        time.sleep(1.1)
        _commit(db, 1)
        w.poll()
        w.flush()
        after = _anonymous_kib()
        assert not w.queue and not w.result.warnings, (w.result.warnings, notices)
        assert len(held) == 512
        at = _last_covered(sb)
    assert before - after > 24 * 1024, (before, after)
    assert _restored(sb, at, tmp_path / "r") == [0, 1]


def test_a_segment_spooled_before_the_state_named_it_is_not_written_after_a_kill(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A segment goes to the spool before the watch's state names it (the commit point). A kill in
    between leaves a spool file the state does not name: the next watch deletes it, saying so, and
    goes on from the segment the state names. Written, it would fork the chain (two segments after
    one, which no reader follows past), so the states after the kill would not restore."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    with _watcher(sb, []) as w:
        w.poll()
        _commit(db, 1)
        w.poll()
        w.flush()
        assert not w.queue
        recorded = w.state_path.read_bytes()
        w._release()
        w.lock_free_until = time.monotonic() + 3600  # the next segment waits, in the spool
        w.queue_limit = 0
        _commit(db, 2)
        w.poll()
        w.flush()
        assert len(list(w.spool.iterdir())) == 1
    w.state_path.write_bytes(recorded)  # as if killed once the spool file was written, before the state
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        assert list(w.spool.iterdir()) == [] and any("sealed by a watch killed" in n for n in notices), notices
        w.poll()
        _commit(db, 3)
        w.poll()
        w.flush()
        assert not w.queue
    # No fork: the timeline has no problem, and the latest state restores (the WAL was checkpointed
    # by the writer's last close, so the watch went on from a new base here).
    assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2, 3]


def test_a_writer_thread_that_died_ends_the_watch_even_when_a_poll_sealed_the_next_segment(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The writer thread dies (here: a waiting segment's spool file was damaged); the poll loop
    raises its error and the watch ends. Before, when the next segment was sealed inside a
    database's poll (a stall's gap, a page-size change), that poll took the writer's error for the
    database's, said so as a warning and went on: the watch polled on with nothing written, and
    every later segment piled up in the spool without a word."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.start_writer()
        w.poll()  # the bases
        w.flush()
        deadline = time.monotonic() + 30
        while w.queue and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not w.queue
        # The next segment waits in the spool (another command's lock, here the lease's gap).
        with w.wake:
            w._release()
            w.lock_free_until = time.monotonic() + 3600
            w.queue_limit = 0
        _commit(db, 1)
        w.poll()
        w.flush()
        assert len(w.queue) == 1
        spooled = next(p for p in w.spool.iterdir() if "-" in p.name)
        spooled.write_bytes(spooled.read_bytes()[:-1] + b"\0")  # damaged while it waits
        with w.wake:
            w.lock_free_until = 0.0
        with w.wake:
            w.wake.notify()
        while w.writer is not None and w.writer.is_alive() and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert w.writer is not None and not w.writer.is_alive()
        _commit(db, 2)
        w.poll()
        # The next look finds a commit after a stall: its poll seals what came before (the gap).
        dash = next(d for d in w.dbs if d.logical == LOGICAL)
        dash.until -= 6_000_000
        _commit(db, 3)
        with pytest.raises(SourceError, match="was changed while it waited"):
            w.poll()
        with pytest.raises(SourceError, match="was changed while it waited"):
            w._raise_writer()  # and at every later turn of the loop
    assert not any(str(db) in n and "captured again from a new base" in n for n in notices), notices


def _target_and_spool_take_nothing(w: Watcher) -> None:
    """The bases taken and written; then the first target takes no segment (the lease's gap) and
    the spool takes no file (a file where its folder goes, as a full cache disk would)."""
    w.poll()
    w.flush()
    assert not w.queue
    w._release()
    w.lock_free_until = time.monotonic() + 3600
    w.spool.mkdir(parents=True, exist_ok=True)
    w.spool.rmdir()
    w.spool.write_bytes(b"")


def test_segments_the_spool_took_only_at_the_stop_are_written_by_the_next_watch(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The spool takes no file for a while (a full cache disk): segments wait in memory. The watch
    stops while the first target does not take them, and the spool, free again, takes them then.
    The next watch writes them, the chain goes on. Before, they were numbered at the stop, after
    the number the saved state names as the last, and the next watch deleted them as sealed by a
    watch killed before it recorded them: the chain's last segment was gone, a new chain started
    from new bases, and the states they held were lost."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _target_and_spool_take_nothing(w)
        _commit(db, 1)
        w.poll()
        w.flush()
        assert len(w.queue) == 1 and any("takes no file" in n for n in notices), notices
        w.spool.unlink()  # free again: the stop puts what waits there
        w.spill_all()
        assert len(list(w.spool.iterdir())) == 1
    notices.clear()
    with _watcher(sb, notices) as w:
        assert not any("killed before" in n or "new chain" in n for n in notices), notices
        w.poll()
        _commit(db, 2)
        w.poll()
        w.flush()
        assert not w.queue
    assert not any("new chain" in n for n in notices), notices
    assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2]


def test_a_spool_that_fails_inside_a_databases_poll_ends_the_watch_not_the_databases_history(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Segments must wait in the spool (the first target takes none, memory's bound is reached) and
    the spool takes no file (a full cache disk): the segment sealed inside a database's poll (a
    stall's gap) fails, and the watch ends with the error that names the spool and what to free.
    Before, that poll took it for the database's error, said it as a warning and went on: the
    segment was sealed but never queued, and the next one skipped its number, so no reader
    followed the chain past it."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _target_and_spool_take_nothing(w)
        w.queue_limit = 0
        _commit(db, 1)
        w.poll()
        dash = next(d for d in w.dbs if d.logical == LOGICAL)
        dash.until -= 6_000_000  # the next look comes after a stall
        _commit(db, 2)
        with pytest.raises(SourceError, match="cannot be kept in"):
            w.poll()
    assert not any("captured again from a new base" in n for n in notices), notices


def test_the_writer_publishes_nothing_while_another_command_holds_the_repository(sandbox: Sandbox) -> None:
    # The writer thread's idle pass (every segment written) checks the bases, catches replicas up
    # and commits the Git targets: only under the watch's lease, as its writes. While a prune
    # holds the repository, a Git commit of the segments would race it.
    sb = sandbox
    _table(sb.layout.dashboard_db)
    envx = Environment(env=sb.env)
    other = open_repository(load_config(sb.config_path, sb.env), envx)
    commits: list[str] = []
    try:
        with _watcher(sb, []) as w:
            w.poll()
            w.flush()
            w._write_queue()
            w._release()
            w.lock_free_until = 0.0
            w.repo.backend.checkpoint = lambda message: commits.append(message)  # type: ignore[method-assign]
            with other.lock(exclusive=True, command="prune"):
                w.last_publish = -1e9  # a publish is due
                w.start_writer()
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and not commits:
                    time.sleep(0.1)
                assert commits == [], "the writer published while a prune held the repository"
                assert w.lock is None
            deadline = time.monotonic() + 10.0  # the lease comes back: the due publish is made
            while time.monotonic() < deadline and not commits:
                time.sleep(0.1)
            assert commits, "the due publish never came once the repository was free"
    finally:
        other.close()


def _stopped_and_restarted_at_once(sb: Sandbox, *, readable: bool) -> datetime:
    """A watch that saves a base and one commit and stops cleanly; a commit while no watch runs; a
    watch started again at once that resumes the chain. Returns a time between the two runs."""
    db = sb.layout.dashboard_db
    _table(db)
    with _watcher(sb, []) as w:
        assert w.repo.can_read == readable
        w.poll()  # the base
        _commit(db, 1)
        w.poll()
        w.flush()
        w.save_hashes(stopping=True)  # a clean stop
    _commit(db, 2)  # while no watch runs
    between = datetime.now(UTC)
    with _watcher(sb, []) as w:
        w.poll()  # resumes the chain from the page hashes it saved
        w.flush()
        assert w.result.bases == 0 and LOGICAL in w.result.resumed, w.result
    return between


def test_a_watch_restarted_within_two_seconds_leaves_a_gap_not_coverage_of_the_old_state(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A watch stopped and started again at once (a service's restart, kill -9 and a quick start):
    the time between its last segment and the restarted watch's first poll is a gap, however short.
    Before, a restart within the timeline's 2 s tolerance joined the two into one covered range, and
    a restore at a second between them gave the old state without a commit made before that second."""
    sb = sandbox
    between = _stopped_and_restarted_at_once(sb, readable=True)
    ranges = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL]
    assert [r["kind"] for r in ranges] == ["covered", "gap", "covered"], ranges
    asked = between.replace(microsecond=between.microsecond | 1)  # a time that is no whole millisecond
    gone = sb.phx("restore", "--at", asked.isoformat(), "--to", tmp_path / "between", "--path", LOGICAL, check=2)
    # The time asked, as precise as asked (not cut to a second a range shown in milliseconds holds).
    assert f"no capture covers {asked.astimezone().isoformat(timespec='microseconds')};" in gone.err, gone.err
    assert not (tmp_path / "between").exists()
    assert _restored(sb, ranges[-1]["to"], tmp_path / "after") == [0, 1, 2]


def test_a_write_only_watch_restarted_within_two_seconds_leaves_a_gap_too(make_sandbox: Any, tmp_path: Path) -> None:
    """The machine that backs up a write-only repository cannot read its chain's last segment, so
    it cannot tell its time from it: the watch's saved state keeps that time. Before, such a watch
    started again at once recorded its first poll at the clock, within 2 s of its last segment, and
    the reading machine's timeline joined the two runs: a restore between them gave the state
    before the stop without the commit made meanwhile."""
    from test_write_only import Reader, writer

    sb, identity = writer(make_sandbox, tmp_path)
    between = _stopped_and_restarted_at_once(sb, readable=False)
    reader = Reader(sb, tmp_path / "reader", identity)
    ranges = reader.phx("list", "--timeline", "--json").json()["databases"][LOGICAL]
    assert [r["kind"] for r in ranges] == ["covered", "gap", "covered"], ranges
    gone = reader.phx("restore", "--at", between.isoformat(), "--to", tmp_path / "between", "--path", LOGICAL, check=2)
    assert "no capture covers" in gone.err, gone
    assert not (tmp_path / "between").exists()
