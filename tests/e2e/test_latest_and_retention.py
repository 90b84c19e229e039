"""Issue 16.3: `latest` means one thing for every command; issue 15.5: a snapshot name that names
two snapshots is an error listing their ids; issue 16.4 and 15.3: retention never silently drops a
fresh snapshot, a snapshot tagged by hand or the present because of a snapshot from the future."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, retention_only
from test_prune_forget import day

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def snapshot_of(sb: Sandbox, *args: str) -> str:
    """The id of the snapshot a command resolved `latest` (or a name) to."""
    doc: dict[str, Any] = sb.phx_here(*args, "--json").json()
    return str(doc["snapshot"] if isinstance(doc["snapshot"], str) else doc["snapshot"]["id"])


# -- 16.3 ----------------------------------------------------------------------------------


def test_latest_is_the_newest_complete_full_snapshot_for_every_command(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    full = sb.snapshots()[0]
    tagged = sb.backup("--tag", "nightly")
    identity = sb.backup("--identity-only")
    # A full snapshot that lacks a database it should hold (the server cannot be reached): partial.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    entry = {"name": "main", "host": "127.0.0.1", "port": closed_port, "database": "x", "user": "x"}
    sb.write_config(databases={"postgres": [entry]})
    partial = sb.backup(check=3)
    sb.write_config(databases={})
    # An in-place restore that only creates a file: its safety snapshot holds no file at all.
    (sb.workspace / "MEMORY.md").unlink()
    restored = sb.phx_here("restore", "--latest", "--yes", "--path", "MEMORY.md", "--json").json()
    safety = restored["safetySnapshot"]["id"]
    listed = [s["id"] for s in sb.snapshots()]
    assert listed[-1] == safety and listed[-2] == partial["id"], "the safety snapshot is the newest"
    assert restored["snapshot"] == tagged["id"], "restore --latest: the newest complete full snapshot"

    want = tagged["id"]
    assert snapshot_of(sb, "ls", "latest") == want
    assert snapshot_of(sb, "drill", "--scratch", tmp_path) == want
    assert snapshot_of(sb, "restore", "--latest", "--dry-run") == want
    assert snapshot_of(sb, "archive", "latest", "--output", tmp_path / "a.zip") == want
    diff = sb.phx_here("diff", tagged["id"], "latest", "--json").json()
    assert diff["to"]["id"] == want and diff["files"] == {"added": [], "removed": [], "changed": []}, diff
    dumped = sb.phx_here("dump", "latest", "MEMORY.md").out
    assert dumped == sb.phx_here("dump", tagged["id"], "MEMORY.md").out

    # --scope, --tag and --host select others; safety snapshots only when asked for.
    assert snapshot_of(sb, "ls", "latest", "--scope", "identity") == identity["id"]
    assert snapshot_of(sb, "ls", "latest", "--scope", "pre-restore") == safety
    assert snapshot_of(sb, "ls", "latest", "--tag", "nightly") == tagged["id"]
    res = sb.phx("ls", "latest", "--host", "another-machine", check=2)
    assert_error(res, 2, "another-machine", "--backup")
    assert full["id"] != want

    # A drill of the snapshot that holds no file fails; doctor does not count it as a drill.
    bad = sb.phx_here("drill", "--backup", safety, "--scratch", tmp_path, "--json", code=1).json()
    assert bad["ok"] is False and "holds no files" in bad["errors"][0]["message"], bad
    checks = {c["name"]: c for c in sb.phx("doctor", "--json", check=None).json()["checks"]}
    assert checks["last drill"]["status"] == "ok" and tagged["name"] in checks["last drill"]["message"]


# -- 15.5 ----------------------------------------------------------------------------------


def test_an_ambiguous_snapshot_name_is_an_error_listing_the_ids(backed_up: Sandbox, tmp_path: Path) -> None:
    """Two snapshots with one name (two backups of the same minute on machines that share the
    repository, or an older Phoenix): naming it is refused, never resolved to one of them."""
    sb = backed_up
    first = sb.snapshots()[0]
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        with repo.lock(exclusive=False, command="test"):
            original = repo.load_snapshot(first["id"])
            twin_id = repo.save_snapshot(dataclasses.replace(original, started=datetime.now().astimezone().isoformat()))
    finally:
        repo.close()
    names = [s["name"] for s in sb.snapshots()]
    assert names == [first["name"], first["name"]]
    for args in (("restore", "--backup", first["name"], "--to", tmp_path / "r"), ("ls", first["name"])):
        res = sb.phx(*args, check=None)
        line = assert_error(res, 2, first["name"], "ambiguous", first["id"][:12], twin_id[:12])
        assert "give the id" in line
    assert not (tmp_path / "r").exists()
    # Each is still reachable by its id; a new backup of that minute gets a name of its own.
    assert snapshot_of(sb, "ls", twin_id) == twin_id
    again = sb.backup("--time", first["time"])
    assert again["name"] == f"{first['name']}-2"


# -- 16.4 and 15.3 ---------------------------------------------------------------------------


def test_a_snapshot_tagged_by_hand_is_forgotten_only_by_name(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.write_config(retention=retention_only(last=2, prune=False))
    morning = (datetime.fromisoformat(day(5)) + timedelta(hours=8)).isoformat()
    evening = (datetime.fromisoformat(day(5)) + timedelta(hours=16)).isoformat()
    tagged = sb.backup("--tag", "before-upgrade", "--time", morning)
    later = sb.backup("--time", evening)
    fourth = sb.backup("--time", day(4))
    # Every automatic forget is printed, in plain text, with its reason.
    for when, gone in ((day(3), later), (day(2), fourth)):
        res = sb.phx_here("backup", "--time", when)
        lines = [line.strip() for line in res.out.splitlines() if line.strip().startswith("forgot ")]
        assert lines == [f"forgot {gone['id'][:8]} ({gone['name']}) on local: beyond the 2 latest snapshots kept"], res
    kept = {s["id"]: s for s in sb.snapshots()}
    assert tagged["id"] in kept and later["id"] not in kept
    plan = sb.phx_here("forget", "--dry-run", "--json").json()["targets"]["local"]["snapshots"]
    reason = next(s for s in plan if s["id"] == tagged["id"])["reasons"]
    assert [r["rule"] for r in reason] == ["tag"], reason
    assert any(
        "removed only by `phx forget ID`" in line for line in sb.phx_here("forget", "--dry-run").out.splitlines()
    )

    assert_error(sb.phx("forget", "no-such-snapshot", check=None), 2, "no-such-snapshot")
    res = sb.phx_here("forget", tagged["id"][:8])
    assert f"removed {tagged['id'][:8]}" in res.out
    assert tagged["id"] not in {s["id"] for s in sb.snapshots()}
    assert len(sb.snapshots()) == 2


def test_the_defaults_apply_when_the_config_says_nothing(sandbox: Sandbox) -> None:
    sb = sandbox
    assert "retention" not in json.loads(sb.config_path.read_text())
    plan = sb.phx_here("forget", "--dry-run", "--json").json()
    assert plan["policy"] == {
        "last": 10, "hourly": 0, "daily": 7, "weekly": 4, "monthly": 12, "yearly": 0, "within": "1d",
        "keepSafetyDays": 7, "capturesWithin": "1d", "capturesHourlyWithin": "7d",
    }  # fmt: skip
    # Three backups within the last hours: younger than a day, all kept whatever else the rules say.
    now = datetime.now().astimezone().replace(microsecond=0)
    ids = [sb.backup("--time", (now - timedelta(hours=h)).isoformat())["id"] for h in (3, 2, 1)]
    assert [s["id"] for s in sb.snapshots()] == ids


def test_a_snapshot_from_the_future_never_pushes_out_the_present(sandbox: Sandbox) -> None:
    """Issue 15.3: after one snapshot dated a year ahead, every backup under a `last` policy was
    forgotten and pruned right after it was taken, exit 0."""
    sb = sandbox
    sb.write_config(retention=retention_only(last=1))
    ahead = (datetime.now().astimezone() + timedelta(days=365)).replace(microsecond=0)
    future = sb.backup("--time", ahead.isoformat())
    res = sb.phx_here("backup", "--json")
    now = res.json()
    assert {s["id"] for s in sb.snapshots()} == {future["id"], now["id"]}, "the new snapshot was forgotten"
    assert any("ahead of this clock" in w and future["id"][:8] in w for w in now["warnings"]), now["warnings"]
    text = sb.phx_here("backup")
    assert "ahead of this clock" in text.out and f"phx forget {future['id'][:8]}" in text.out
    # last 1 keeps the newest of the present; the one from the future stays, reported, uncounted.
    present = [s for s in sb.snapshots() if s["id"] != future["id"]]
    assert len(present) == 1 and present[0]["id"] != now["id"] and len(sb.snapshots()) == 2
    assert sb.verify("--read-data")["ok"]


def test_two_agents_of_one_host_in_one_repository_keep_their_own_history_and_latest(backed_up: Sandbox) -> None:
    # Two workspaces of one user on one host (two configs) back up into one repository once a day
    # for a week. Grouped by host and scope, `daily 7` kept only the newer agent's snapshot of each
    # day; `latest` (restore, ls) and a backup's parent were the other agent's.
    sb = backed_up
    ws_a, ws_b = sb.workspace, sb.root / "workspace-b"
    shutil.copytree(ws_a, ws_b, symlinks=True)
    (ws_b / "MEMORY.md").write_text("agent b\n")
    sb.write_config(retention=retention_only(daily=7))
    made: dict[Path, list[str]] = {ws_a: [], ws_b: []}
    for n in range(6, -1, -1):
        for ws in (ws_a, ws_b):
            sb.write_config(workspace=str(ws))
            made[ws].append(sb.backup("--time", day(n))["id"])
    sb.write_config(workspace=str(ws_a))
    forgot = sb.phx_here("forget", "--json").json()
    assert forgot["ok"], forgot
    left = {s["id"]: s for s in sb.snapshots()}
    assert set(made[ws_a]) | set(made[ws_b]) <= set(left), "each agent keeps its 7 days"
    assert left[made[ws_a][-1]]["parent"] == made[ws_a][-2], "A's backup takes A's snapshot as its parent"
    assert snapshot_of(sb, "ls", "latest") == made[ws_a][-1]
    sb.write_config(workspace=str(ws_b))
    assert snapshot_of(sb, "ls", "latest") == made[ws_b][-1]
    named = sb.phx_here("forget", "latest", "--dry-run", "--json").json()
    assert [s["id"] for t in named["targets"].values() for s in t["named"]] == [made[ws_b][-1]], named


def test_verify_latest_checks_this_agents_snapshot(backed_up: Sandbox) -> None:
    # Two workspaces of one host back up into one repository; `phx verify --backup latest` on A
    # checked B's snapshot (taken after A's), while restore, ls and diff took A's.
    sb = backed_up
    ws_a, ws_b = sb.workspace, sb.root / "workspace-b"
    shutil.copytree(ws_a, ws_b, symlinks=True)
    for n in range(3):  # B holds files A does not: its snapshot names more blobs
        (ws_b / f"only-b-{n}.md").write_text(f"agent b {n}\n")
    mine = sb.backup()["id"]
    sb.write_config(workspace=str(ws_b))
    theirs = sb.backup()["id"]
    sb.write_config(workspace=str(ws_a))
    checked = {ref: sb.verify("--backup", ref)["checked"] for ref in ("latest", mine, theirs)}
    assert checked[mine] != checked[theirs], checked
    assert checked["latest"] == checked[mine], checked
