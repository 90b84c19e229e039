"""Issue 16, tried by an adversary: a careless user and a hostile environment against each of its
guarantees, through the `phx` command.

- A full backup saves every component whatever `include` *and* `exclude` say, when the workspace
  is a symlink, and when a component's own path is a symlink to where the data really lives.
- What cannot be read stays named until a good full backup: a narrower backup does not turn
  `status` green; a restore over an unreadable file is one error, not a traceback.
- `latest` is never a snapshot dated in the future while one of the present exists.
- Retention never forgets the newest complete snapshot because newer ones are partial.
- A dry run writes nothing: not the state file, not a notification.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, retention_only, run_phx, sha256_file
from test_defaults import as_init_writes_it, state_file
from test_notify import Receiver
from test_prune_forget import day
from test_unreadable_file import unprivileged

from phoenix_backup.config.defaults import DEFAULT_EXCLUDE, DEFAULT_IDENTITY, DEFAULT_INCLUDE

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

IDENTITY = DEFAULT_IDENTITY


@contextlib.contextmanager
def locked_away(sb: Sandbox, public_tmp: Path, *paths: Path) -> Iterator[None]:
    """Run the sandbox's `phx` where file modes apply (not as root), `paths` at mode 000 meanwhile."""
    prefix, who = unprivileged(public_tmp)
    print(f"running phx as {who}")
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    for p in paths:
        p.chmod(0o000)
    sb.prefix = prefix
    try:
        yield
    finally:
        sb.prefix = ()
        for p, mode in modes.items():
            p.chmod(mode)


def saved_paths(sb: Sandbox, ref: str) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in sb.phx_here("ls", ref, "--json").json()["entries"]}


def memory_notes(sb: Sandbox, folder: Path | None = None) -> dict[str, str]:
    base = folder or sb.workspace / "memory"
    return {p.name: sha256_file(p) for p in sorted(base.glob("*.md"))}


# -- components against `exclude` -------------------------------------------------------------


def test_an_exclude_never_drops_a_component(sandbox: Sandbox, tmp_path: Path) -> None:
    """`exclude: ["*.md", "*.json", "memory/"]` (meant for scripts/ and caches) took every identity
    file, every memory note, the agent's config and Phoenix's own out of the full backup, exit 0,
    and the dry run called them "not present here"."""
    sb = sandbox
    as_init_writes_it(sb, exclude=[*DEFAULT_EXCLUDE, "*.md", "*.json", "memory/", "config/"])
    notes = memory_notes(sb)
    assert notes

    dry = sb.phx_here("backup", "--dry-run", "--json").json()
    components = dry["components"]
    assert components["identity"]["absent"] == [], components["identity"]
    assert components["identity"]["count"] == len(IDENTITY)
    assert {f"workspace/memory/{n}" for n in notes} <= set(components["memory"]["paths"])
    text = sb.phx_here("backup", "--dry-run").out
    assert "not present here" not in text, text

    res = sb.phx_here("backup", "--json")
    doc = res.json()
    saved = saved_paths(sb, doc["id"])
    for name in IDENTITY:
        assert f"workspace/{name}" in saved, f"the exclude dropped the component file {name}"
    for name in notes:
        assert f"workspace/memory/{name}" in saved, f"the exclude dropped the memory note {name}"
    assert {"workspace/MEMORY.md", "workspace/config/models.json", "home/.argentos/argent.json"} <= set(saved)
    # Saying so: the exclude matched component paths, which were saved anyway.
    said = [w for w in doc["warnings"] if "exclude" in w]
    assert said and "workspace/SOUL.md" in said[0] and "components" in said[0], doc["warnings"]
    # Outside the components the exclude still applies.
    assert "workspace/scripts/daily-reflection.sh" in saved
    (sb.workspace / "scripts" / "README.md").write_text("excluded by *.md, no component\n")
    assert "workspace/scripts/README.md" not in saved_paths(sb, sb.backup()["id"])

    dest = tmp_path / "r"
    sb.restore_to(doc["id"], dest)
    for name in IDENTITY:
        assert (dest / "workspace" / name).read_bytes() == (sb.workspace / name).read_bytes()
    assert memory_notes(sb, dest / "workspace" / "memory") == notes


# -- symlinks ----------------------------------------------------------------------------------


def test_a_workspace_that_is_a_symlink_is_saved_whole(sandbox: Sandbox, tmp_path: Path) -> None:
    """~/argent -> /data/argent (another disk), with `include: []` (the whole workspace): the full
    backup saved the link alone, no identity file, no memory note, exit 0, with no warning."""
    sb = sandbox
    assert sb.config["include"] == [], "the whole workspace"
    state = sb.state()
    real = sb.root / "data-disk" / "argent"
    real.parent.mkdir()
    sb.workspace.rename(real)
    sb.workspace.symlink_to(real)

    dry = sb.phx_here("backup", "--dry-run", "--json").json()
    assert dry["components"]["identity"]["count"] == len(IDENTITY), dry["components"]["identity"]
    doc = sb.backup()
    saved = saved_paths(sb, doc["id"])
    assert saved["workspace"]["type"] == "dir", saved.get("workspace")
    for name in (*IDENTITY, "MEMORY.md", "debug.log"):
        assert f"workspace/{name}" in saved, f"{name} is not in the snapshot of a linked workspace"
    assert doc["warnings"] == [], doc["warnings"]

    dest = tmp_path / "r"
    sb.restore_to(doc["id"], dest)
    assert_restored(state, dest, "restore of a linked workspace")


def test_a_component_that_is_a_symlink_saves_what_it_points_to(sandbox: Sandbox, tmp_path: Path) -> None:
    """memory/ -> a synced folder elsewhere, SOUL.md -> a file elsewhere: the backup saved two
    links and no note, said "memory/*.md does not exist (skipped)" and the dry run called memory/
    "not present here", exit 0. A restore on a new machine gave back two dangling links."""
    sb = sandbox
    as_init_writes_it(sb)
    elsewhere = sb.root / "synced"
    elsewhere.mkdir()
    notes = memory_notes(sb)
    soul = (sb.workspace / "SOUL.md").read_bytes()
    (sb.workspace / "memory").rename(elsewhere / "memory")
    (sb.workspace / "memory").symlink_to(elsewhere / "memory")
    (sb.workspace / "SOUL.md").rename(elsewhere / "SOUL.md")
    (sb.workspace / "SOUL.md").symlink_to(Path("..", "..", "synced", "SOUL.md"))  # relative

    dry = sb.phx_here("backup", "--dry-run", "--json")
    memory = dry.json()["components"]["memory"]
    assert "memory/" not in memory["absent"], memory
    target = "root" + (elsewhere / "memory").as_posix()
    assert {f"{target}/{n}" for n in notes} <= set(memory["paths"]), memory["paths"]

    res = sb.phx_here("backup", "--json")
    doc = res.json()
    assert not [w for w in doc["warnings"] if "does not exist" in w], doc["warnings"]
    saved = saved_paths(sb, doc["id"])
    assert saved["workspace/memory"]["type"] == "symlink" and saved["workspace/SOUL.md"]["type"] == "symlink"
    for name in notes:
        assert f"{target}/{name}" in saved, f"memory note {name} behind the link was not saved"
    assert "root" + (elsewhere / "SOUL.md").as_posix() in saved

    # A new machine: what the links point to comes back beside them.
    dest = tmp_path / "r"
    sb.restore_to(doc["id"], dest)
    assert memory_notes(sb, dest / target) == notes
    assert (dest / ("root" + (elsewhere / "SOUL.md").as_posix())).read_bytes() == soul
    assert os.readlink(dest / "workspace" / "memory") == str(elsewhere / "memory")

    # In place, one component: a note lost from the synced folder comes back there, behind the
    # same link, and so does SOUL.md.
    lost = sorted(notes)[0]
    (elsewhere / "memory" / lost).unlink()
    sb.phx_here("restore", "--latest", "--memory-only", "--yes")
    assert memory_notes(sb) == notes and (sb.workspace / "memory").is_symlink()
    (elsewhere / "SOUL.md").write_text("overwritten by mistake\n")
    sb.phx_here("restore", "--latest", "--identity-only", "--yes")
    assert (sb.workspace / "SOUL.md").read_bytes() == soul and (sb.workspace / "SOUL.md").is_symlink()


def test_a_broken_or_looping_component_link_is_named(sandbox: Sandbox) -> None:
    sb = sandbox
    as_init_writes_it(sb)
    (sb.workspace / "TOOLS.md").unlink()
    (sb.workspace / "TOOLS.md").symlink_to(sb.root / "unmounted" / "TOOLS.md")
    (sb.workspace / "HEARTBEAT.md").unlink()
    (sb.workspace / "HEARTBEAT.md").symlink_to("HEARTBEAT.md")  # points at itself: ELOOP
    res = sb.phx_here("backup", "--json", code=3)
    doc = res.json()
    incomplete = {i["path"]: i["error"] for i in doc["incomplete"]}
    assert set(incomplete) == {"workspace/HEARTBEAT.md"}, incomplete
    assert "symbolic links" in incomplete["workspace/HEARTBEAT.md"]
    dangling = [w for w in doc["warnings"] if "TOOLS.md" in w]
    assert dangling and "does not exist" in dangling[0] and str(sb.root / "unmounted") in dangling[0], doc["warnings"]
    assert state_file(sb)["partial"] is True


def test_include_behind_a_link_is_not_called_missing(sandbox: Sandbox) -> None:
    """An include below a symlinked folder that is no component: the link is saved as a link, and
    the warning says so instead of "does not exist"."""
    sb = sandbox
    elsewhere = sb.root / "scripts-elsewhere"
    (sb.workspace / "scripts").rename(elsewhere)
    (sb.workspace / "scripts").symlink_to(elsewhere)
    as_init_writes_it(sb, include=[*DEFAULT_INCLUDE, "scripts/*.sh"])
    res = sb.phx_here("backup")
    assert "does not exist" not in res.out, res
    assert "scripts/*.sh" in res.out and "symlink" in res.out, res


# -- what could not be saved stays named -------------------------------------------------------


def test_a_narrower_backup_does_not_turn_status_green(make_sandbox: Callable[..., Sandbox], public_tmp: Path) -> None:
    """memory/ unreadable: the full backup was partial (exit 3), then `backup --identity-only`
    succeeded and `phx status` said ok, exit 0, though no backup has held the memory notes since."""
    sb = make_sandbox(root=public_tmp / "sb")
    as_init_writes_it(sb)
    with locked_away(sb, public_tmp, sb.workspace / "memory"):
        sb.phx("backup", check=3)
        sb.phx("backup", "--identity-only")
        status = sb.phx("status", check=1)
        doc = sb.phx("status", "--json", check=1).json()
        doctor = {c["name"]: c for c in sb.phx("doctor", "--json", check=None).json()["checks"] if c["status"] != "ok"}
    assert doc["ok"] is False, doc
    said = [w for w in doc["warnings"] if "full backup" in w]
    assert said and "workspace/memory" in said[0] and "partial" in said[0], doc["warnings"]
    assert "workspace/memory" in status.out, status
    assert "workspace/memory" in json.dumps(doctor), doctor
    assert state_file(sb)["lastFull"]["partial"] is True

    # A good full backup, and only that, turns it green.
    sb.phx_here("backup", "--memory-only")
    assert sb.phx_here("status", "--json", code=1).json()["ok"] is False
    sb.phx_here("backup")
    assert sb.phx("status", "--json", check=None).json()["ok"] is True


def test_a_dry_run_writes_no_state_and_sends_nothing(backed_up: Sandbox) -> None:
    """A dry run of a backup whose workspace is missing (a disk not mounted) wrote a failure into
    the state file and sent a failure notification, though it promises to write nothing."""
    sb = backed_up
    receiver = Receiver()
    try:
        sb.write_config(notifications={"enabled": True, "urls": [receiver.url()]})
        sb.phx_here("backup")
        before = state_file(sb)
        sent = len(receiver.received)
        moved = sb.workspace.with_name("moved")
        sb.workspace.rename(moved)
        try:
            res = sb.phx_here("backup", "--dry-run", code=1)
        finally:
            moved.rename(sb.workspace)
        assert "does not exist" in res.err
        assert state_file(sb) == before, "a dry run changed the state file"
        assert len(receiver.received) == sent, receiver.received[sent:]
    finally:
        receiver.stop()
    assert sb.phx("status", "--json", check=None).json()["ok"] is True


def test_a_restore_over_an_unreadable_file_is_one_error(make_sandbox: Callable[..., Sandbox], public_tmp: Path) -> None:
    """A live file the user cannot read (mode 000): `restore --latest --dry-run` and the restore
    itself ended in a PermissionError traceback while planning."""
    sb = make_sandbox(root=public_tmp / "sb")
    sb.backup()
    locked = sb.home / ".argentos" / "argent.json"
    before = locked.read_bytes()
    changed = before.replace(b"{", b" ", 1)  # the same size: only its bytes tell it apart
    locked.write_bytes(changed)
    dest = public_tmp / "to"
    (dest / "workspace").mkdir(parents=True)
    in_the_way = dest / "workspace" / "SOUL.md"
    in_the_way.write_bytes(b"x" * (sb.workspace / "SOUL.md").stat().st_size)
    with locked_away(sb, public_tmp, locked, in_the_way):
        plan = sb.phx("restore", "--latest", "--dry-run", "--json").json()
        res = sb.phx("restore", "--latest", "--yes", check=None)
        to = sb.phx("restore", "--latest", "--to", dest, "--dry-run", "--json").json()
    actions = {i["path"]: i["action"] for i in plan["items"]}
    assert actions["home/.argentos/argent.json"] == "overwrite", actions
    assert {i["path"]: i["action"] for i in to["items"]}["workspace/SOUL.md"] == "overwrite"
    assert_error(res, 1, "home/.argentos/argent.json", "safety snapshot", "Permission denied")
    assert locked.read_bytes() == changed != before, "a refused restore changed the file"


# -- `latest` ----------------------------------------------------------------------------------


def test_latest_is_never_a_snapshot_from_the_future(backed_up: Sandbox, tmp_path: Path) -> None:
    """One backup taken while the clock said 2030 (a dead RTC battery, or `--time`): every later
    `restore --latest`, `drill`, `dump latest` took that stale snapshot, silently, until 2030."""
    sb = backed_up
    ahead = (datetime.now().astimezone() + timedelta(days=400)).replace(microsecond=0)
    stale = sb.backup("--time", ahead.isoformat())
    (sb.workspace / "MEMORY.md").write_text("written after the clock was fixed\n")
    present = sb.backup()

    for args in (("ls", "latest"), ("restore", "--latest", "--dry-run"), ("drill", "--scratch", tmp_path)):
        res = sb.phx_here(*args, "--json")
        doc = res.json()
        got = doc["snapshot"] if isinstance(doc["snapshot"], str) else doc["snapshot"]["id"]
        assert got == present["id"], f"`latest` of {args[0]} is {got[:8]}, not the newest of the present"
        assert stale["id"][:8] in res.err and "ahead of this clock" in res.err, res
    assert sb.phx_here("dump", "latest", "MEMORY.md").out == "written after the clock was fixed\n"
    # Named, it is still there.
    assert sb.phx_here("ls", stale["id"], "--json").json()["snapshot"] == stale["id"]


# -- retention ---------------------------------------------------------------------------------


def test_retention_keeps_the_newest_complete_snapshot(make_sandbox: Callable[..., Sandbox], public_tmp: Path) -> None:
    """memory/ became unreadable; the daily backups went on, partial (exit 3), and `daily: 2`
    forgot the last snapshot that held the memory notes: no snapshot held them any more, and
    `restore --latest` had nothing to restore."""

    sb = make_sandbox(root=public_tmp / "sb")
    sb.write_config(retention=retention_only(daily=2, prune=False))
    good = sb.backup("--time", day(6))
    with locked_away(sb, public_tmp, sb.workspace / "memory"):
        for n in (5, 4, 3, 2):
            sb.backup("--time", day(n), check=3)
    kept = [s["id"] for s in sb.snapshots()]
    assert good["id"] in kept, "retention forgot the only snapshot holding the memory notes"
    assert len(kept) == 3, kept  # the good one, and the two daily ones
    plan = sb.phx_here("forget", "--dry-run", "--json").json()["targets"]["local"]["snapshots"]
    reasons = next(s for s in plan if s["id"] == good["id"])["reasons"]
    assert [r["rule"] for r in reasons] == ["complete"], reasons
    assert "newest complete" in sb.phx_here("forget", "--dry-run").out
    res = sb.phx_here("restore", "--latest", "--dry-run", "--json").json()
    assert res["snapshot"] == good["id"]

    # Once a complete backup is newer, the old one goes by the rules again.
    sb.backup("--time", day(1))
    assert good["id"] not in {s["id"] for s in sb.snapshots()}


# -- no repository on a missing disk -------------------------------------------------------------


def test_status_and_doctor_never_advise_a_repository_on_the_root_disk(sandbox: Sandbox, tmp_path: Path) -> None:
    """The USB disk is not mounted: `phx doctor` advised "run `phx init` (or `phx backup`, which
    creates it)" (a backup no longer does; init would put a new repository on the root disk) and
    `phx status` only "create it with `phx init`"; neither said the disk may not be mounted."""
    sb = sandbox
    repo = tmp_path / "media" / "usb" / "argent"
    sb.write_config(backupDir=str(repo))
    status = sb.phx_here("status", "--json", code=1).json()["targets"]["local"]["error"]
    checks = sb.phx_here("doctor", "--json", code=1).json()["checks"]
    doctor = next(c for c in checks if c["name"] == "target local")
    for said in (status, doctor["message"] + " " + (doctor.get("fix") or "")):
        assert "not mounted" in said and str(repo) in said and "phx init" in said, said
        assert "phx backup" not in said, said
    assert not (tmp_path / "media").exists()


# -- what init writes ------------------------------------------------------------------------------


def test_init_takes_relative_paths_from_where_it_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    """`cd ~ && phx init --workspace argent --repo backups/argent`: init wrote the paths as given,
    which a config reads from its own folder: the workspace became ~/.argentos/argent (the next
    steps said to `mkdir -p` it, and backups of that empty folder then passed) and the repository
    landed in ~/.argentos/backups/argent."""

    sb = sandbox
    home = tmp_path / "home"
    (home / "argent").mkdir(parents=True)
    (home / "argent" / "SOUL.md").write_text("the real workspace\n")
    env = sb.env_with(HOME=str(home), PHX_CONFIG=None)
    res = run_phx(["init", "--workspace", "argent", "--repo", "backups/argent"], env, cwd=home)
    assert "does not exist" not in res.out + res.err, res
    written = json.loads((home / ".argentos" / "backup.json").read_text())
    assert written["workspace"] == str(home / "argent") and written["backupDir"] == str(home / "backups" / "argent")
    assert (home / "backups" / "argent" / "config").is_file() and not (home / ".argentos" / "backups").exists()
    doc = run_phx(["backup", "--json"], env, cwd=tmp_path).json()
    assert "workspace/SOUL.md" in {e["path"] for e in run_phx(["ls", doc["id"], "--json"], env).json()["entries"]}


def test_a_workspace_without_any_identity_file_is_warned_about(sandbox: Sandbox, tmp_path: Path) -> None:
    """init's next steps say `mkdir -p WORKSPACE` when it does not exist; a user whose agent lives
    elsewhere follows them, and every backup of that empty folder passed, exit 0, without a word."""
    sb = sandbox
    empty = tmp_path / "argent"
    empty.mkdir()
    sb.write_config(workspace=str(empty))
    for args in (("backup", "--dry-run"), ("backup",)):
        res = sb.phx_here(*args)
        said = [line for line in res.out.splitlines() if "identity" in line and "warning" in line]
        assert said and str(empty) in said[0] and "SOUL.md" in said[0] and "workspace" in said[0], res
    assert_error(sb.phx("backup", "--identity-only", check=None), 1, str(empty), "SOUL.md", "`workspace`")
    assert "identity" not in sb.phx_here("backup", "--memory-only").out


def test_an_unreadable_database_never_has_its_journal_saved_as_files(
    make_sandbox: Callable[..., Sandbox], public_tmp: Path
) -> None:
    """agent.db (WAL mode, a commit still in its -wal) with mode 000: the backup named agent.db as
    not saved, but saved agent.db-wal and agent.db-shm as plain files, which an in-place restore
    would then write beside the live database (a stale WAL replayed onto newer pages)."""

    sb = make_sandbox(root=public_tmp / "sb")
    db = sb.workspace / "agent.db"
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1]); c.execute('pragma journal_mode=wal')\n"
        "c.execute('pragma wal_autocheckpoint=0'); c.execute('create table t(x)')\n"
        "c.execute(\"insert into t values ('only in the wal')\"); c.commit(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(db)], check=True)
    assert Path(f"{db}-wal").stat().st_size > 0, "the commit should still be in the -wal"
    with locked_away(sb, public_tmp, db):
        doc = sb.backup(check=3)
    assert [i["path"] for i in doc["incomplete"]] == ["workspace/agent.db"], doc["incomplete"]
    saved = saved_paths(sb, doc["id"])
    assert not [p for p in saved if p.startswith("workspace/agent.db")], sorted(saved)
    con = sqlite3.connect(db)
    assert con.execute("select x from t").fetchall() == [("only in the wal",)]
    con.close()


def test_a_backup_never_saves_its_own_repository_or_cache(sandbox: Sandbox) -> None:
    """`phx init --repo ~/argent/backups` with the whole workspace included: every backup saved
    the repository into itself (the second snapshot held the first's packs, its lock files and
    snapshot objects, which an in-place restore would write back), and the cache with it."""
    sb = sandbox
    sb.env["PHX_CACHE_DIR"] = str(sb.workspace / ".cache" / "phoenix")
    sb.reinit(backupDir=str(sb.workspace / "backups"))
    first = sb.backup()
    second = sb.backup()
    for doc in (first, second):
        inside = [p for p in saved_paths(sb, doc["id"]) if p.startswith(("workspace/backups", "workspace/.cache/"))]
        assert inside == [], inside[:5]
    assert second["size"] == first["size"], (first["size"], second["size"])


def test_a_narrow_backup_that_finds_nothing_is_an_error(sandbox: Sandbox) -> None:
    """`backup --databases-only` with no database configured (or every one missing) made an empty
    snapshot, exit 0, which then became `latest --scope databases`, and its drill failed."""

    sb = sandbox
    sb.write_config(databases={"sqlite": [str(sb.home / "gone.db")]})
    assert_error(sb.phx("backup", "--databases-only", check=None), 1, "--databases-only", "gone.db")
    for name in IDENTITY:
        (sb.workspace / name).unlink(missing_ok=True)
    assert_error(sb.phx("backup", "--identity-only", check=None), 1, "--identity-only", "SOUL.md")
    assert sb.snapshots() == [], "an empty snapshot was made"
    assert state_file(sb)["success"] is False
    assert len(sb.phx_here("backup", "--memory-only", "--json").json()["id"]) == 64
