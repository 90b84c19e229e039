"""Format 5, "this repository may hold capture segments" (docs/repository-format.md §2 and
"Compatibility"): `phx watch` writes it to each target before its first segment there, so a
Phoenix from before segments were re-sealed by `phx key rotate` refuses the repository as newer
instead of rotating them away. A repository never watched keeps its format."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox
from killpoint import run_killed
from test_key_rotate_history import _repo
from test_pack_ids import remake_as_format_2
from test_watch_adversary import _commit, _table
from test_watch_bases import _watcher

from phoenix_backup.dirs import data_dir
from phoenix_backup.repo import keys
from phoenix_backup.repo.pins import Pins
from phoenix_backup.repo.replicate import TargetReport, replicate
from phoenix_backup.repo.repository import RepoConfig, Repository
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.local import LocalBackend

pytestmark = pytest.mark.phx_in_process


@pytest.fixture(autouse=True)
def _format_4_repositories(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repositories made here are format 4, as `phx init` made them before format 6: these tests
    are of a watch raising 4 to 5 (a format 6 repository is 5 and more already; test_format6.py)."""
    init = Repository.init.__func__  # type: ignore[attr-defined]

    def format_4(cls: type[Repository], *args: Any, **kwargs: Any) -> Repository:
        return init(cls, *args, **{"extent_lists": False, **kwargs})  # type: ignore[no-any-return]

    monkeypatch.setattr(Repository, "init", classmethod(format_4))


def _config(root: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((root / "config").read_bytes())
    return doc


def _record(backend: Backend, where: str, log: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Log `where:config` and `where:captures` as `backend` writes them, in order."""
    real: Callable[..., None] = backend.write

    def write(name: str, data: bytes, **kwargs: bool) -> None:
        real(name, data, **kwargs)
        if name == "config" or name.startswith("captures/"):
            log.append(f"{where}:{name.split('/')[0]}")

    monkeypatch.setattr(backend, "write", write)


def _sync(sb: Sandbox, replica: Path, log: list[str] | None = None, mp: Any = None) -> TargetReport:
    dest = LocalBackend(replica)
    if log is not None:
        _record(dest, "replica", log, mp)
    with _repo(sb) as repo:
        return replicate(repo, "replica", dest, lambda _m: None)


def _watch_once(sb: Sandbox, replica: Path | None = None, log: list[str] | None = None, mp: Any = None) -> None:
    """A watch's bases and first segment written, in this process; then, with `replica` added as
    a replica (the base snapshot's copy goes to configured targets only), a second segment."""
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        if log is not None:
            _record(w.repo.backend, "first", log, mp)
        w._lease()
        w.poll()
        w.flush()
        w._write_queue()
        assert not w.queue, notices
        if replica is not None:
            w.replicas["replica"] = LocalBackend(replica)
            if log is not None:
                _record(w.replicas["replica"], "replica", log, mp)
            _commit(db, 1)
            w.poll()
            w.flush()
            w._write_queue()
            assert not w.queue and not w.lagging, (notices, w.result)


def test_watch_makes_each_target_format_5_before_its_first_segment_and_a_replayed_4_is_refused(
    make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup()
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    before = (sb.repo / "config").read_bytes()
    assert _config(sb.repo)["version"] == _config(replica)["version"] == 4
    with _repo(sb) as repo:  # a backup that opened the repository before the watch started
        log: list[str] = []
        _watch_once(sb, replica, log, monkeypatch)
        # The first target's config, then the replica's, each before a segment reaches it.
        assert log.index("first:config") < log.index("first:captures"), log
        assert log.index("replica:config") < log.index("replica:captures"), log
        for root in (sb.repo, replica):
            doc = _config(root)
            assert doc["version"] == 5 and doc["packIds"] == "blake3" and "writeOnly" not in doc, doc
            assert any((root / "captures").iterdir())
        assert (sb.repo / "config").read_bytes() == (replica / "config").read_bytes()
        # The backup that opened format 4 takes its lock on format 5 and goes on (nothing else changed).
        with repo.lock(exclusive=False, command="backup"):
            assert repo.config.version == 5
    assert sb.verify()["ok"] is True
    # The format 4 config put back (it is authenticated: the same key signed it): this Phoenix uses
    # it, saying so; the pin keeps 5, which a Phoenix from before format 5 here refuses it by.
    (sb.repo / "config").write_bytes(before)
    listed = sb.phx_here("list")
    assert "is format 4, but this machine saw it format 5" in listed.err, listed.err
    pins = json.loads(Pins.for_env(sb.env).path.read_text())["repositories"]
    assert [p["format"] for p in pins.values()] == [5], pins


def test_a_format_2_repository_watched_says_sha256_and_keeps_its_pack_names(make_sandbox: Any, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    remake_as_format_2(sb)
    assert _config(sb.repo)["version"] == 2
    format_2 = (sb.repo / "config").read_bytes()
    _watch_once(sb)
    doc = _config(sb.repo)
    assert doc["version"] == 5 and doc["packIds"] == "sha256", doc
    (sb.workspace / "MEMORY.md").write_text("a new line\n")
    sb.backup()
    assert _config(sb.repo) == doc, "a backup keeps format 5"
    packs = [p for p in (sb.repo / "data").rglob("*") if p.is_file()]
    assert packs and all(p.name == hashlib.sha256(p.read_bytes()).hexdigest() for p in packs)
    # Its format 2 config put back is used as it is, with a notice (the pin says the watch made 5
    # of exactly it); one with other fields, signed by the same key (a format 1 config planted
    # without the key and signed by another machine's upgrade), stays a downgrade.
    (sb.repo / "config").write_bytes(format_2)
    taken = sb.phx_here("list")
    assert "is format 2, but this machine saw it format 5" in taken.err, taken.err
    with _repo(sb) as repo:
        chunker = {**repo.config.chunker, "avg": repo.config.chunker["avg"] * 2}
        other = replace(repo.config, chunker=chunker).signed(repo.secrets)
    assert other.version == 2
    (sb.repo / "config").write_bytes(other.to_bytes())
    refused = sb.phx_here("list", code=1)
    assert "is format 2 and not write-only, but this machine saw it format 5" in refused.err, refused.err


def test_an_unwatched_repository_keeps_its_format_until_a_watch_writes(
    make_sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backups, forget and prune, a key rotation and a sync leave a repository never watched at
    format 4 (an older Phoenix still reads it); the first watch makes it 5 on both targets, and a
    sync then carries it to a replica that missed it."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsomething new\n")
    sb.backup()
    sb.phx_here("forget", sb.snapshots()[0]["id"])
    sb.phx_here("prune")
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    sb.phx_here("key", "rotate")
    rotated = _sync(sb, replica)
    assert rotated.ok, rotated.error
    assert _config(sb.repo)["version"] == _config(replica)["version"] == 4
    _watch_once(sb)  # the first target only: the replica missed it
    assert _config(sb.repo)["version"] == 5 and _config(replica)["version"] == 4
    log: list[str] = []
    report = _sync(sb, replica, log, monkeypatch)
    assert report.ok, report.error
    assert log and log[0] == "replica:config" and "replica:captures" in log, log  # the mark before any segment
    assert (sb.repo / "config").read_bytes() == (replica / "config").read_bytes()
    assert sorted(p.name for p in (replica / "captures").iterdir()) == sorted(
        p.name for p in (sb.repo / "captures").iterdir()
    )


def test_a_repository_holding_segments_from_before_is_made_5_by_key_rotate(make_sandbox: Any, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup()
    before = (sb.repo / "config").read_bytes()
    _watch_once(sb)
    # As a watch of the Phoenix before format 5 left it: segments under the format 4 config.
    (sb.repo / "config").write_bytes(before)
    assert _config(sb.repo)["version"] == 4
    sb.env["PHX_DATA_DIR"] = str(tmp_path / "another-machine")  # one that never saw format 5
    sb.phx_here("key", "rotate")
    assert _config(sb.repo)["version"] == 5


def test_a_watch_killed_between_the_config_and_its_first_segment_leaves_format_5(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    _table(sb.layout.dashboard_db)
    report = tmp_path / "kill"
    env = {**sb.env, "PHX_KILL_AT": "1", "PHX_KILL_MATCH": "/captures/"}
    outcome, _n, call = run_killed(["watch", "--no-files"], env, report, timeout=120)
    assert outcome == "killed", (outcome, call)
    assert not [p for p in (sb.repo / "captures").iterdir() if not p.name.startswith(".")]
    assert _config(sb.repo)["version"] == 5
    _watch_once(sb)
    assert _config(sb.repo)["version"] == 5
    assert any((sb.repo / "captures").iterdir())
    assert os.path.exists(sb.repo / "config")


def test_two_watches_marking_at_once_write_the_same_config(sandbox: Sandbox) -> None:
    """Two watches (two machines) each opened format 4 and hold their shared lease; both make it
    format 5: the second writes the very bytes of the first (the JSON and its MAC are
    deterministic), so whichever replace lands last, the config is the same."""
    sb = sandbox
    with (
        _repo(sb) as one,
        _repo(sb) as two,
        one.lock(exclusive=False, command="watch"),
        two.lock(exclusive=False, command="watch"),
    ):
        assert one.mark_captures()
        first = (sb.repo / "config").read_bytes()
        assert two.mark_captures()
        assert (sb.repo / "config").read_bytes() == first == one.config.raw == two.config.raw
    assert _config(sb.repo)["version"] == 5


def test_a_write_only_repository_watched_is_format_5_signed_by_the_write_key(make_sandbox: Any, tmp_path: Path) -> None:
    """The machine that backs up a write-only repository has only the write key: the format 5
    config it writes keeps `writeOnly`, and the reading machine (the identity) opens it."""
    from test_write_only import Reader, writer

    sb, identity = writer(make_sandbox, tmp_path)
    assert _config(sb.repo)["version"] == 4
    _watch_once(sb)
    doc = _config(sb.repo)
    assert doc["version"] == 5 and doc["packIds"] == "blake3" and "writeOnly" in doc, doc
    sb.backup()  # the writer opens it again (its MAC is the write key's)
    reader = Reader(sb, tmp_path / "reader", identity)
    timeline = reader.phx("list", "--timeline", "--json").json()["databases"]
    assert timeline, timeline


def _segments_after_a_replica_joins(sb: Sandbox, replica: Path, notices: list[str]) -> set[str]:
    """A watch writes its first segment, then `replica` joins its targets and a commit makes the
    next segment: the replicas left lagging."""
    with _watcher(sb, notices) as w:
        w._lease()
        w.poll()
        w.flush()
        w._write_queue()
        w.replicas["replica"] = LocalBackend(replica)
        _commit(sb.layout.dashboard_db, 1)
        w.poll()
        w.flush()
        w._write_queue()
        return set(w.lagging)


def test_a_replica_under_another_key_gets_no_segment_until_a_sync_brings_it_over(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A replica that missed a rotation (its config is the old key's, format 4): the watch does
    not replace its config (it is not the same key's) and writes no segment there; the sync that
    catches it up brings the format 5 config, then the segments."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    sb.phx_here("key", "rotate")  # the replica keeps the old key until its next sync
    old = (replica / "config").read_bytes()
    _table(sb.layout.dashboard_db)
    notices: list[str] = []
    assert "replica" in _segments_after_a_replica_joins(sb, replica, notices)
    assert (replica / "config").read_bytes() == old and not list((replica / "captures").iterdir())
    assert any("target replica: its config is not the first target's" in n for n in notices), notices
    report = _sync(sb, replica)
    assert report.ok, report.error
    assert (replica / "config").read_bytes() == (sb.repo / "config").read_bytes() and _config(replica)["version"] == 5
    assert any((replica / "captures").iterdir())


def test_a_replica_the_watch_has_not_reached_still_restores_when_the_first_target_is_lost(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """The pin says 5 (the watch marked the first target), the replica is still format 4 (the watch
    never reached it): the first target lost, the replica taken as the repository restores, with a
    notice saying why its format is lower and what brings it to 5 (before: refused as a downgrade
    with "restore the config object from another target", which nothing here holds)."""
    sb: Sandbox = make_sandbox()
    snap = sb.backup()
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    _watch_once(sb)
    assert _config(sb.repo)["version"] == 5 and _config(replica)["version"] == 4
    sb.write_config(backupDir=str(replica))
    out = tmp_path / "restored"
    done = sb.phx_here("restore", "--backup", snap["id"], "--to", out)
    assert "is format 4, but this machine saw it format 5" in done.err and "phx sync" in done.err, done.err
    assert sorted(p.name for p in out.rglob("*") if p.is_file())


def test_a_format_2_replica_the_watch_has_not_reached_restores_when_the_first_target_is_lost(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A format 2 repository (SHA-256 pack names) synced to a replica, then watched: the first
    target and the pin say 5, the replica 2. The first target lost, the replica restores with the
    notice (before: refused as a downgrade, "restore the config object from another target", which
    nothing held). A format 1 config planted there, or one signed by another key, stays refused; a
    pin from before the watch's mark recorded the format before keeps refusing the 2."""
    sb: Sandbox = make_sandbox()
    remake_as_format_2(sb)
    snap = sb.backup()
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    _watch_once(sb)
    assert _config(sb.repo)["version"] == 5 and _config(replica)["version"] == 2
    pins_path = data_dir(sb.env) / "pins.json"
    repo_id = _config(replica)["id"]
    assert json.loads(pins_path.read_text())["repositories"][repo_id]["format"] == 5
    sb.write_config(backupDir=str(replica))
    out = tmp_path / "restored"
    done = sb.phx_here("restore", "--backup", snap["id"], "--to", out)
    assert "is format 2, but this machine saw it format 5" in done.err and "phx sync" in done.err, done.err
    assert sorted(p.name for p in out.rglob("*") if p.is_file())
    # `phx key trust` keeps what the pin says of the format before (it lowers nothing).
    with _repo(sb) as repo:
        fingerprint = repo.fingerprint
    trusted = sb.phx_here("key", "trust", fingerprint)
    assert "is format 2, but this machine saw it format 5" in trusted.err, trusted.err
    format_2 = (replica / "config").read_bytes()
    # A format 1 config planted there (no MAC) is never taken.
    planted = {k: v for k, v in json.loads(format_2).items() if k != "mac"} | {"version": 1}
    (replica / "config").write_text(json.dumps(planted))
    refused = sb.phx_here("list", code=1)
    assert "is format 1 without authentication, but this machine saw it authenticated" in refused.err, refused.err
    # A format 2 config signed by another key, beside that key's slot: the key changed.
    (replica / "config").write_bytes(format_2)
    stranger = keys.MasterSecrets.generate()
    config = RepoConfig.from_bytes(format_2, "replica")
    (replica / "config").write_bytes(config.signed(stranger).to_bytes())
    refused = sb.phx_here("list", code=1)
    assert "the repository config is not authenticated by this key" in refused.err, refused.err
    # A pin from before `before` was recorded: the format 2 config is refused as before.
    (replica / "config").write_bytes(format_2)
    doc = json.loads(pins_path.read_text())
    assert doc["repositories"][repo_id].pop("before") == {"format": 2, "config": config.fields_digest()}
    pins_path.write_text(json.dumps(doc))
    refused = sb.phx_here("list", code=1)
    assert "is format 2 and not write-only, but this machine saw it format 5" in refused.err, refused.err


def test_a_write_only_format_3_replica_reads_on_the_reading_machine_when_the_first_target_is_lost(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A format 2 repository made write-only (format 3) and synced to a replica; the reading
    machine saw it 3, then the writer's watch made the first target 5, which the reading machine
    saw too: the first target lost, the format 3 replica is read with the notice (before: refused
    as a downgrade)."""
    from test_write_only import Reader, _age_key

    sb: Sandbox = make_sandbox()
    remake_as_format_2(sb)
    sb.backup()
    identity, recipient = _age_key()
    sb.phx_here("key", "add", "--method", "age", "--write-only", "--recipient", recipient)
    assert _config(sb.repo)["version"] == 3
    replica = tmp_path / "replica"
    assert _sync(sb, replica).ok
    reader = Reader(sb, tmp_path / "reader", identity)
    assert reader.phx("list", "--json").json()
    _watch_once(sb)
    assert _config(sb.repo)["version"] == 5 and _config(replica)["version"] == 3
    assert reader.phx("list", "--json").json()  # the reading machine's pin says 5 now
    config = json.loads(reader.config_path.read_text()) | {"backupDir": str(replica)}
    reader.config_path.write_text(json.dumps(config))
    done = reader.phx("list", "--json")
    assert done.json() and "is format 3, but this machine saw it format 5" in done.err, done.err


def test_a_config_repair_objects_copies_from_a_format_4_replica_is_made_5_again(
    make_sandbox: Any, moto: Any, tmp_path: Path
) -> None:
    """The first target (format 5, holding segments) lost its config; the S3 replica the watch never
    reached is still format 4: `repair objects --from s3` copies its config back and makes it format
    5 again, since the first target holds segments (before: it stayed format 4 with segments, which
    a Phoenix from before format 5 opens and rotates them away)."""
    from test_lost_data import replicated

    sb, _bucket = replicated(make_sandbox, moto)
    s3 = sb.config["targets"]["s3"]
    sb.write_config(targets={"local": {"enabled": True}, "s3": {**s3, "enabled": False}})
    _watch_once(sb)
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3})
    assert _config(sb.repo)["version"] == 5 and any((sb.repo / "captures").iterdir())
    (sb.repo / "config").unlink()
    repaired = sb.phx_here("repair", "objects", "--from", "s3", "--json")
    assert "config" in repaired.json()["copied"], repaired.out
    assert _config(sb.repo)["version"] == 5, repaired.err
    assert sb.verify()["ok"] is True


def test_a_replica_holding_no_repository_yet_gets_no_segment_before_its_config(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A replica added to the config, not synced yet (no config there): the watch writes no
    segment there, so no segment sits in a store without a format 5 config; `phx sync` makes the
    repository there (format 5), then copies the segments. Before, the watch wrote its segments
    there first."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    replica = tmp_path / "replica"
    _table(sb.layout.dashboard_db)
    notices: list[str] = []
    lagging = _segments_after_a_replica_joins(sb, replica, notices)
    assert not replica.exists() or not list(replica.rglob("captures/*")), list(replica.rglob("*"))
    assert lagging == {"replica"}
    assert any("target replica: holds no repository yet" in n for n in notices), notices
    report = _sync(sb, replica)
    assert report.ok and report.initialised, report.error
    assert _config(replica)["version"] == 5 and any((replica / "captures").iterdir())


def test_a_forget_that_writes_merged_segments_makes_the_repository_5(sandbox: Sandbox) -> None:
    """Segments under a format 4 config (as a watch from before format 5 left them): the forget
    that thins them writes its merged segments into a format 5 repository (before: format 4)."""
    from test_watch_thinning import _make_history

    sandbox.write_config(retention={"capturesHourlyWithin": "2d"})
    _make_history(sandbox)
    assert _config(sandbox.repo)["version"] == 4
    done = sandbox.phx_here("forget", "--json").json()["targets"]["local"]["captures"]
    assert done["merges"], done
    assert _config(sandbox.repo)["version"] == 5


def test_a_format_1_repository_marked_before_its_upgrade_gets_its_slots_sealed(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A format 1 repository whose upgrade waited (busy when the watch opened it): the watch's
    format 5 config comes with the slots sealed, as the upgrade seals them (before: format 1
    slots were left for good beside the format 5 config, shown as not the owner's)."""
    from test_repository_trust import as_format_1

    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository

    sb: Sandbox = make_sandbox()
    sb.backup()
    as_format_1(sb)
    sb.env["PHX_DATA_DIR"] = str(tmp_path / "fresh")  # a machine that never saw it in format 4
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env), upgrade=False)
    try:
        with repo.lock(exclusive=False, command="watch"):
            repo.mark_captures()
    finally:
        repo.close()
    assert _config(sb.repo)["version"] == 5
    for path in (sb.repo / "keys").iterdir():
        assert b"old-host" not in path.read_bytes()
    listing = sb.phx_here("key", "list", "--json").json()
    assert [(s["status"], s["host"]) for s in listing] == [("ok", "old-host")], listing
