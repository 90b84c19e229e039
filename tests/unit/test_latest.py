"""What `latest` selects (repo/snapshot.py `choose_latest`): the newest complete full snapshot of
this host; of the only other host when this one has none (a new machine); none when several other
hosts have some (then `--host` must say which)."""

from __future__ import annotations

from phoenix_backup.repo.snapshot import Latest, Snapshot, SnapshotStats, choose_latest


def snap(
    name: str, host: str = "laptop", scope: str = "full", tags: tuple[str, ...] = (), partial: bool = False
) -> Snapshot:
    return Snapshot(
        time="2026-03-15T02:00:00+00:00", name=name, host=host, username="u", scope=scope, tags=tags, tree=b"",
        parent=None, sources={}, databases=(), stats=SnapshotStats(),
        incomplete=({"path": "workspace/memory", "error": "Permission denied"},) if partial else (), id=name,
    )  # fmt: skip


def test_this_hosts_newest_complete_full_snapshot() -> None:
    snaps = [snap("a"), snap("b"), snap("c", scope="identity"), snap("d", partial=True), snap("e", scope="pre-restore")]
    assert choose_latest(snaps, Latest(), "laptop") == (snaps[1], "laptop")
    assert choose_latest(snaps, Latest(scope="pre-restore"), "laptop")[0] is snaps[4]
    assert choose_latest([*snaps, snap("f", tags=("nightly",))], Latest(tags=("nightly",)), "laptop")[0].name == "f"  # type: ignore[union-attr]


def test_a_new_machine_takes_the_only_other_host() -> None:
    snaps = [snap("a", host="old"), snap("b", host="old")]
    assert choose_latest(snaps, Latest(), "new-machine") == (snaps[1], "old")
    two = [*snaps, snap("c", host="server")]
    assert choose_latest(two, Latest(), "new-machine") == (None, "new-machine")
    assert choose_latest(two, Latest(host="server"), "new-machine") == (two[2], "server")
