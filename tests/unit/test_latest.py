"""What `latest` selects (repo/snapshot.py `choose_latest`): the newest complete full snapshot of
this host; of the only other host when this one has none (a new machine); none when several other
hosts have some (then `--host` must say which)."""

from __future__ import annotations

from dataclasses import replace

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


def agent_snap(name: str, user: str, workspace: str) -> Snapshot:
    return replace(snap(name), username=user, sources={"workspace": workspace, "home": f"/home/{user}"})


def test_two_agents_of_one_host_each_take_their_own_latest() -> None:
    # One host, one shared repository, two agents: `phx restore latest` (and ls, diff, dump) on
    # Ann's workspace restored Bob's, backed up a minute later.
    ann, bob = ("ann", "/home/ann/ws"), ("bob", "/home/bob/ws")
    snaps = [agent_snap("a1", *ann), agent_snap("b1", *bob), agent_snap("a2", *ann), agent_snap("b2", *bob)]
    assert choose_latest(snaps, Latest(agent=ann), "laptop")[0] is snaps[2]
    assert choose_latest(snaps, Latest(agent=bob), "laptop")[0] is snaps[3]
    # Of another agent only when it is the only one (the workspace moved, or a new machine); of
    # several others, none: naming one with --backup ID is safer than restoring a stranger's.
    assert choose_latest(snaps[:1], Latest(agent=("ann", "/srv/moved")), "laptop")[0] is snaps[0]
    assert choose_latest(snaps, Latest(agent=("cy", "/home/cy/ws")), "laptop")[0] is None
    # Snapshots recording no workspace folder are any agent's, as before.
    assert choose_latest([*snaps, snap("old")], Latest(agent=ann), "laptop")[0].name == "old"  # type: ignore[union-attr]
