"""The lock confirmations test_lock_confirm_all.py's sweep left (docs/reliability.md, Locks): prune's
deletion of old temporary files and `phx key passwd`'s deletion of the old slot confirm the lock
first, and `phx sync`'s lock errors name `sync` (the lock's command is "replicate"). A suspend is
`locks.holder_clock` made to jump an hour."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from e2e_support import Sandbox, retention_only
from moto_support import MotoServer
from test_concurrency import s3_target
from test_lock_confirm_all import SUSPENDED, _after_first, _in_process, _stopped, _verified
from test_lock_suspend import HOUR, _sleeping_clock
from test_repository_trust import as_format_1

from phoenix_backup.repo import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.base import TEMP_MARKER
from phoenix_backup.storage.local import LocalBackend


def test_prune_deletes_no_more_temporary_files_after_a_suspend(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = backed_up
    leftovers = [sb.repo / "data" / f"{TEMP_MARKER}left{i}" for i in range(2)]
    for path in leftovers:
        path.write_bytes(b"x")
        os.utime(path, (0, 0))  # old: a killed write's leftover
    suspend = _sleeping_clock(monkeypatch)
    real = LocalBackend.delete_temporary
    deleted: list[str] = []

    def delete_then_sleep(self: LocalBackend, name: str) -> None:
        real(self, name)
        deleted.append(name)
        if len(deleted) == 1:
            suspend(HOUR)

    monkeypatch.setattr(LocalBackend, "delete_temporary", delete_then_sleep)
    run = _in_process(sb, "prune")
    _stopped(run, SUSPENDED, "nothing more was deleted", "run the prune again")
    assert len(deleted) == 1, deleted
    assert sum(p.exists() for p in leftovers) == 1, "a temporary file was deleted after the suspend"
    monkeypatch.undo()
    assert _verified(sb)


def test_key_passwd_keeps_the_old_slot_after_a_suspend(backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = backed_up
    slots = sorted(p.name for p in (sb.repo / "keys").iterdir())
    suspend = _sleeping_clock(monkeypatch)
    _after_first(monkeypatch, "write", "keys/", lambda _b: suspend(HOUR))
    monkeypatch.setenv("PHX_NEW_PASSPHRASE", "another passphrase 1234")
    sb.env["PHX_NEW_PASSPHRASE"] = "another passphrase 1234"
    run = _in_process(sb, "key", "passwd")
    _stopped(
        run,
        SUSPENDED,
        "was not deleted (both passphrases open the repository; `phx key remove",
        "run the key passwd again",
    )
    after = sorted(p.name for p in (sb.repo / "keys").iterdir())
    assert set(slots) < set(after) and len(after) == len(slots) + 1, (slots, after)
    monkeypatch.undo()
    del sb.env["PHX_NEW_PASSPHRASE"]
    assert _verified(sb)  # the old passphrase still opens it


def test_sync_lock_error_names_sync(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    sb = make_sandbox()
    (sb.workspace / "lockleft.md").write_text("copied by the sync\n")
    sb.phx_here("backup")  # to the first target only: the replica is new
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3_target(moto, moto.make_bucket("lockleft"))})
    sb.config_path.chmod(0o600)
    suspend = _sleeping_clock(monkeypatch)
    real_packs = replicate._index_packs

    def packs_then_sleep(repo: Repository, name: str) -> object:
        suspend(HOUR)
        return real_packs(repo, name)

    monkeypatch.setattr(replicate, "_index_packs", packs_then_sleep)
    run = _in_process(sb, "sync")
    _stopped(run, SUSPENDED, "run the sync again")
    assert "run the replicate" not in run.stdout + run.stderr


def test_an_upgrade_writes_nothing_after_a_suspend_right_after_locking(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A format 1 repository (as an older Phoenix wrote it): the machine sleeps right after the
    upgrade takes its lock. Nothing is written (the config and slots stay format 1) and the next
    run upgrades it. Before, the upgrade wrote the slots and the config without confirming."""
    sb = backed_up
    as_format_1(sb)
    before = {p.name: p.read_bytes() for p in [sb.repo / "config", *(sb.repo / "keys").iterdir()]}
    sb.env["XDG_DATA_HOME"] = str(sb.root / "fresh-data")  # a machine that saw only format 1
    suspend = _sleeping_clock(monkeypatch)
    _after_first(monkeypatch, "write", "locks/", lambda _b: suspend(HOUR))
    run = _in_process(sb, "backup")
    # The upgrade runs inside the backup: "run the upgrade again" named nothing anyone can run.
    _stopped(run, SUSPENDED, "nothing was committed", "run the command again")
    assert "the upgrade again" not in run.stderr + run.stdout, run.stderr
    assert {p.name: p.read_bytes() for p in [sb.repo / "config", *(sb.repo / "keys").iterdir()]} == before
    monkeypatch.undo()
    assert "upgraded the repository" in sb.phx("backup").err
    assert _verified(sb)


def test_the_retention_after_a_backup_says_run_the_backup_again(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retention after a backup holds a lock whose command is "forget and prune": a suspend
    while it forgets stops it with "run the backup again" (before: "run the forget and prune
    again", no command anyone can run)."""
    sb = backed_up
    # A snapshot of this copy's workspace folder for the retention to forget (the template's
    # records the template's folder: another retention group).
    sb.backup()
    sb.write_config(retention=retention_only(last=1))
    (sb.home / ".argentos" / "backup" / "prune.json").unlink(missing_ok=True)  # the day's prune is due
    suspend = _sleeping_clock(monkeypatch)
    _after_first(monkeypatch, "delete", "snapshots/", lambda _b: suspend(HOUR))
    run = _in_process(sb, "backup", "--json")
    said = run.stdout + run.stderr
    assert SUSPENDED in said and "run the backup again" in said, said
    assert "forget and prune again" not in said, said
