"""Every command that commits or deletes confirms its lock right before (docs/reliability.md,
Locks): a suspend (`locks.holder_clock` made to jump an hour, as in test_lock_suspend.py) or a lock
removed by another process, just before a commit point or in the middle of a run of deletions,
stops the command there: it exits non-zero naming the cause, commits or deletes nothing more, and
the repository verifies clean. Before, forget, prune's deletions, repair index, repair objects,
sync and key add/remove never confirmed again (or at all) and went on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import test_watch_thinning as thinning
from click.testing import CliRunner, Result
from e2e_support import Sandbox
from moto_support import MotoServer
from test_lock_suspend import HOUR, _sleeping_clock
from test_lost_data import lose_a_new_file, replicated
from test_write_only import _age_key

from phoenix_backup.cli.main import cli
from phoenix_backup.ops import key as key_ops
from phoenix_backup.repo import captures, locks, prune, repair, replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.local import LocalBackend


def _in_process(sb: Sandbox, *args: str) -> Result:
    """`phx ARGS` in this process (the clock is patched here), with the sandbox's environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        return CliRunner().invoke(cli, list(args), prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _verified(sb: Sandbox, *args: str) -> bool:
    """`phx verify ARGS` in this process says the repository is whole."""
    return bool(sb.phx_here("verify", "--json", *args).json()["ok"])


def _ids(sb: Sandbox, *args: str) -> list[str]:
    return [s["id"] for s in sb.phx_here("list", "--json", *args).json()]


def _objects(root: Path) -> set[str]:
    """Every object of the repository at `root` but its locks."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.parts[-2] != "locks"}


def _after_first(
    monkeypatch: pytest.MonkeyPatch, method: str, prefix: str, then: Callable[[LocalBackend], None]
) -> list[str]:
    """Run `then` right after the local store's first `method` (write or delete) of an object under
    `prefix`; returns the names that call touched (one)."""
    real = getattr(LocalBackend, method)
    touched: list[str] = []

    def hooked(self: LocalBackend, name: str, *args: object, **kwargs: object) -> None:
        real(self, name, *args, **kwargs)
        if name.startswith(prefix) and not touched:
            touched.append(name)
            then(self)

    monkeypatch.setattr(LocalBackend, method, hooked)
    return touched


def _remove_locks(backend: LocalBackend) -> None:
    """Another process's `phx unlock --all`."""
    for info in backend.list("locks/"):
        backend.delete(info.name)


@pytest.fixture
def three(backed_up: Sandbox) -> Iterator[tuple[Sandbox, list[str]]]:
    """A repository with three snapshots (the template's, then two more, each with a file of its
    own: forgetting them leaves those files' packs to prune)."""
    sb = backed_up
    for i in range(2):
        path = sb.workspace / f"lockall-{i}.bin"
        path.write_bytes(os.urandom(300_000))
        sb.phx_here("backup")
        path.unlink()
    yield sb, _ids(sb)


def _stopped(run: Result, *needles: str) -> None:
    assert run.exit_code not in (0, None), (run.exit_code, run.stdout, run.stderr)
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    for needle in needles:
        assert needle in run.stderr + run.stdout, (needle, run.stdout, run.stderr)


SUSPENDED = "this machine slept or stalled for 60 min"


@pytest.mark.parametrize("cause", ["suspend", "unlock"])
def test_forget_by_id_stops_after_the_snapshot_it_was_deleting(
    three: tuple[Sandbox, list[str]], monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    """`phx forget A B`: the machine sleeps (or another process removes the lock) once A is
    deleted; B stays. Before, forget_named confirmed once, before A, and deleted B too (exit 0)."""
    sb, (first, second, third) = three
    if cause == "suspend":
        suspend = _sleeping_clock(monkeypatch)
        touched = _after_first(monkeypatch, "delete", "snapshots/", lambda _b: suspend(HOUR))
        needles = [SUSPENDED, "nothing more was deleted", "run the forget again"]
    else:
        monkeypatch.setattr(locks, "CONFIRM_EVERY", 1, raising=False)  # the store's copy read before each object
        touched = _after_first(monkeypatch, "delete", "snapshots/", _remove_locks)
        needles = ["repository lock is gone", "was removed by another process", "nothing more was deleted"]
    run = _in_process(sb, "forget", second, third)
    _stopped(run, *needles)
    assert touched == [f"snapshots/{second}"], touched
    assert _ids(sb) == [first, third], "a snapshot was deleted after the lock was doubted"
    assert _verified(sb)


@pytest.mark.parametrize("cause", ["suspend", "unlock"])
def test_prune_stops_between_two_deletions_and_the_repository_stays_whole(
    three: tuple[Sandbox, list[str]], monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    """Prune has committed its new index and deletes: the first pack goes, then the machine sleeps
    (or the lock is removed). Nothing more is deleted: the other packs and the old index objects
    (superseded by the new one) stay, and the repository verifies clean; the next prune finishes.
    Before, prune confirmed once, before its index, and deleted everything."""
    sb, (first, second, third) = three
    sb.phx_here("forget", second, third)
    for path in (sb.repo / "data").rglob("*"):  # written two hours ago: prune deletes what it need not keep
        os.utime(path, (path.stat().st_mtime - 7200,) * 2)
    objects = _objects(sb.repo)
    if cause == "suspend":
        suspend = _sleeping_clock(monkeypatch)
        touched = _after_first(monkeypatch, "delete", "data/", lambda _b: suspend(HOUR))
        needles = [SUSPENDED, "nothing more was deleted", "run the prune again"]
    else:
        monkeypatch.setattr(locks, "CONFIRM_EVERY", 1, raising=False)
        touched = _after_first(monkeypatch, "delete", "data/", _remove_locks)
        needles = ["repository lock is gone", "nothing more was deleted"]
    run = _in_process(sb, "prune")
    _stopped(run, *needles)
    after = _objects(sb.repo)
    assert len(touched) == 1 and objects - after == {touched[0]}, ("deleted after the stop", objects - after)
    assert _verified(sb, "--read-data")
    monkeypatch.undo()
    sb.phx_here("prune")
    assert _verified(sb, "--read-data")
    assert _ids(sb) == [first]


def test_repair_index_deletes_no_old_index_object_after_a_suspend(
    three: tuple[Sandbox, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx repair index` writes its new index, the machine sleeps, then it would delete the old
    objects: it deletes none. Before, it never confirmed its lock and deleted them all (exit 0)."""
    sb, ids = three
    old_index = {o for o in _objects(sb.repo) if o.startswith("index/")}
    suspend = _sleeping_clock(monkeypatch)
    touched = _after_first(monkeypatch, "write", "index/", lambda _b: suspend(HOUR))
    run = _in_process(sb, "repair", "index")
    _stopped(run, SUSPENDED, "nothing more was deleted")
    assert len(touched) == 1
    assert {o for o in _objects(sb.repo) if o.startswith("index/")} == old_index | set(touched)
    assert _verified(sb, "--read-data") and _ids(sb) == ids


@pytest.mark.parametrize("command", ["add", "remove"])
def test_a_key_slot_is_neither_added_nor_removed_after_a_suspend(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The machine sleeps between `phx key add`/`remove` taking its lock and writing or deleting
    the slot: the slots stay as they were. Before, neither confirmed its lock."""
    sb = backed_up
    sb.env["PHX_NEW_PASSPHRASE"] = "another passphrase for lockall"
    if command == "remove":
        sb.phx_here("key", "add", "--method", "passphrase")
    slots = {o for o in _objects(sb.repo) if o.startswith("keys/")}
    suspend = _sleeping_clock(monkeypatch)
    if command == "add":
        real_wrap = key_ops.keyslots.wrap_passphrase

        def wrap_then_sleep(*args: object, **kwargs: object) -> object:
            suspend(HOUR)
            return real_wrap(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(key_ops.keyslots, "wrap_passphrase", wrap_then_sleep)
        run = _in_process(sb, "key", "add", "--method", "passphrase")
        needle = "nothing was committed"
    else:
        real_read = Repository.read_key_slots

        def read_then_sleep(backend: LocalBackend) -> object:
            suspend(HOUR)
            return real_read(backend)

        monkeypatch.setattr(Repository, "read_key_slots", staticmethod(read_then_sleep))
        run = _in_process(sb, "key", "remove", sorted(slots)[-1].removeprefix("keys/"))
        needle = "nothing was deleted"
    _stopped(run, SUSPENDED, needle)
    assert {o for o in _objects(sb.repo) if o.startswith("keys/")} == slots
    monkeypatch.undo()
    assert _verified(sb)


def test_sync_copies_nothing_to_the_replica_after_a_suspend(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx sync` reads what the replica lacks, the machine sleeps, then it would copy: it copies
    nothing (no pack, index object or snapshot), and the replica verifies clean. Before, replicate
    never confirmed either lock and copied everything under them."""
    sb, _bucket = replicated(make_sandbox, moto)
    config = sb.write_config()
    targets = dict(config["targets"])
    sb.write_config(targets={**targets, "s3": {**targets["s3"], "enabled": False}})
    (sb.workspace / "lockall.bin").write_bytes(os.urandom(200_000))
    sb.phx_here("backup")
    sb.write_config(targets=targets)
    replica_before = {s["id"] for s in sb.phx_here("list", "--target", "s3", "--json").json()}
    suspend = _sleeping_clock(monkeypatch)
    real_packs = replicate._index_packs
    slept: list[bool] = []

    def packs_then_sleep(repo: Repository, name: str) -> object:
        if not slept:
            suspend(HOUR)
            slept.append(True)
        return real_packs(repo, name)

    monkeypatch.setattr(replicate, "_index_packs", packs_then_sleep)
    run = _in_process(sb, "sync", "--json")
    _stopped(run, SUSPENDED, "nothing more was committed")
    assert slept, "the hook did not run"
    s3 = json.loads(run.stdout)["targets"]["s3"]
    assert not s3["ok"] and s3["objects"] == 0 and s3["snapshots"] == 0, s3
    monkeypatch.undo()
    assert {s["id"] for s in sb.phx_here("list", "--target", "s3", "--json").json()} == replica_before
    assert _verified(sb, "--target", "s3")


def test_repair_objects_copies_nothing_back_after_a_suspend(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx repair objects --from s3` works out what to copy back, the machine sleeps: it copies
    nothing into the first target (the next run does). Before, it never confirmed its lock."""
    sb, _bucket = replicated(make_sandbox, moto)
    _before, _snap, pack = lose_a_new_file(sb)
    objects = _objects(sb.repo)
    suspend = _sleeping_clock(monkeypatch)
    real_needed = repair._needed_blobs

    def needed_then_sleep(*args: object) -> object:
        suspend(HOUR)
        return real_needed(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(repair, "_needed_blobs", needed_then_sleep)
    run = _in_process(sb, "repair", "objects", "--from", "s3")
    _stopped(run, SUSPENDED, "nothing more was committed")
    assert _objects(sb.repo) == objects, "an object was copied in after the suspend"
    monkeypatch.undo()
    repaired = sb.phx_here("repair", "objects", "--from", "s3", "--json").json()
    assert str(pack) in repaired["copied"], repaired
    assert _verified(sb)


def test_a_conversion_to_write_only_does_not_commit_after_a_suspend(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx key add --write-only` writes its age slot, the machine sleeps, then it would write the
    config (its commit point): the config stays, the repository opens with its passphrase and
    verifies, and the conversion run again finishes. Before, only the slot's write confirmed."""
    sb = backed_up
    config = (sb.repo / "config").read_bytes()
    suspend = _sleeping_clock(monkeypatch)
    _after_first(monkeypatch, "write", "keys/", lambda _b: suspend(HOUR))
    _identity, recipient = _age_key()
    run = _in_process(sb, "key", "add", "--method", "age", "--write-only", "--recipient", recipient)
    _stopped(run, SUSPENDED, "nothing was committed")
    assert (sb.repo / "config").read_bytes() == config, "the config was committed after the suspend"
    monkeypatch.undo()
    assert _verified(sb)
    sb.phx_here("key", "add", "--method", "age", "--write-only", "--recipient", recipient)
    assert (sb.repo / "config").read_bytes() != config


def test_forget_writes_no_merged_capture_segment_after_a_suspend(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx forget` thins two capture segments of one hour a day and a half ago into one: the
    machine sleeps while it seals the merged segment. Nothing is written into captures/. Before,
    the merged segment was written under the doubted lock (exit 1 only at the deletion after it)."""
    sb = sandbox
    sb.write_config(retention={"capturesHourlyWithin": "2d"})
    con = thinning.new_db(sb)
    con.execute("INSERT INTO t VALUES (1, 'a')")
    now = captures.to_us(datetime.now(UTC))
    hour = (now - 36 * thinning.HOUR) // thinning.HOUR * thinning.HOUR
    sb.backup("--time", datetime.fromtimestamp((hour - 2 * thinning.HOUR) / 1e6, UTC).isoformat(timespec="seconds"))
    snap = sb.snapshots()[-1]["id"]
    db = sb.layout.dashboard_db
    with thinning._repo(sb) as (repo, _tl):
        node = next(n for p, n in walk_tree(repo, repo.load_snapshot(snap).tree) if p == thinning.LOGICAL)
        previous: str | None = None
        since = hour + thinning.MIN
        for i in range(2):  # two segments of one commit each, ending 20 and 40 minutes into the hour
            con.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (2 + i, "x" * 100))
            cur = db.read_bytes()
            end = hour + (i + 1) * 20 * thinning.MIN
            pages = list(range(1, len(cur) // 1024 + 1))
            commit = captures.Commit(end - thinning.MIN, len(cur) // 1024, tuple(pages))
            base = captures.Base(snap, str(node.sha256)) if i == 0 else None
            part = captures.Part(thinning.LOGICAL, 1024, since, end, (commit,), base)
            seg = captures.build(
                "c" * 32, i, previous, "host", [(part, [cur[(p - 1) * 1024 : p * 1024] for p in pages])]
            )
            name, raw = captures.seal(repo, seg)
            repo.backend.write(name, raw)
            os.utime(sb.repo / name, (end / 1e6, end / 1e6))  # written when sealed, as by the watch
            previous, since = name.removeprefix(captures.PREFIX), end
    con.close()
    before = {p.name for p in (sb.repo / "captures").iterdir()}
    assert len(before) == 2
    suspend = _sleeping_clock(monkeypatch)
    real_seal = captures.seal

    def sealing(repo: Repository, segment: captures.Segment) -> tuple[str, bytes]:
        suspend(HOUR)  # the machine sleeps while the merged segment is sealed
        return real_seal(repo, segment)

    monkeypatch.setattr(captures, "seal", sealing)
    run = _in_process(sb, "forget")
    _stopped(run, SUSPENDED, "run the forget again")
    assert {p.name for p in (sb.repo / "captures").iterdir()} == before, "a segment was written under the doubted lock"
    assert _verified(sb)


def test_prune_deletes_no_check_record_after_a_suspend(
    three: tuple[Sandbox, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prune has deleted its packs and old index objects; the machine sleeps as it lists the check
    records of the forgotten snapshots: it deletes none and says so. Before, it deleted every one
    without confirming and exited 0 after the suspend."""
    sb, (_first, second, third) = three
    sb.phx_here("forget", second, third)
    real = prune._forgotten_check_records
    suspend = _sleeping_clock(monkeypatch)

    def listed_then_sleep(repo: Repository) -> list[str]:
        names = real(repo)
        suspend(HOUR)
        return names

    monkeypatch.setattr(prune, "_forgotten_check_records", listed_then_sleep)
    records = {o for o in _objects(sb.repo) if o.startswith("checks/")}
    run = _in_process(sb, "prune")
    _stopped(run, SUSPENDED, "nothing more was deleted", "run the prune again")
    assert {o for o in _objects(sb.repo) if o.startswith("checks/")} == records
    assert _verified(sb)
    monkeypatch.undo()
    sb.phx_here("prune")
    assert len({o for o in _objects(sb.repo) if o.startswith("checks/")}) < len(records)
