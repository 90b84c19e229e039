"""`phx doctor`: one line per check, ✓ or ✗ with its fix, exit 1 when anything is ✗.

Each broken condition is made for real and must be reported with its fix: a missing workspace,
an unreachable target (a missing repository folder; a repository this user cannot write, run as
an unprivileged user since root ignores file modes), a configured PostgreSQL database without
pg_dump (and with pg_dump but no server listening), no free space (a small tmpfs mounted as the
repository's disk; skipped where mounting is not allowed), a stale lock, no backup yet, and a
failed drill.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox

from hostile import cpu_seconds, silent_port
from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.locks import LOCK_AAD


def doctor(sb: Sandbox, check: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = sb.phx("doctor", "--json", check=check, env=env).json()
    assert doc["ok"] is (check == 0), doc
    return doc


def checks(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = [c for c in doc["checks"] if c["name"] == name]
    assert found, f"no {name!r} check in {[c['name'] for c in doc['checks']]}"
    return found


def failed(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in doc["checks"] if c["status"] == "fail"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_healthy_setup_passes_every_check(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    sb.phx("drill", "--scratch", tmp_path)
    doc = doctor(sb, 0)
    # No schedule is installed here (tests never touch a real scheduler): the one piece of advice.
    advice = [c["name"] for c in doc["checks"] if c["status"] == "warn"]
    assert failed(doc) == [] and advice == ["schedule"], doc["checks"]
    for name in ("config", "workspace", "disk (repository)", "disk (cache)", "credentials", "target local", "locks"):
        assert checks(doc, name)[0]["status"] == "ok"
    assert "written, read back, deleted" in checks(doc, "target local")[0]["message"]
    assert list((sb.repo / "locks").iterdir()) == [], "the probe object was deleted"
    assert "passed" in checks(doc, "last drill")[0]["message"]
    text = sb.phx("doctor").out.splitlines()
    assert text[-1] == "all checks passed", text
    assert all(line.startswith("✓ ") or line.startswith("! schedule: ") for line in text[:-1]), text


def test_missing_workspace(backed_up: Sandbox) -> None:
    sb = backed_up
    shutil.rmtree(sb.workspace)
    doc = doctor(sb, 1)
    [bad] = failed(doc)
    assert bad["name"] == "workspace" and "does not exist" in bad["message"] and "workspace" in bad["fix"], bad
    line = next(x for x in sb.phx("doctor", check=1).out.splitlines() if x.startswith("✗"))
    assert line.startswith(f"✗ workspace: {sb.workspace} does not exist — fix: create it"), line


def test_missing_repository_folder(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    sb.write_config(backupDir=str(tmp_path / "gone"))
    doc = doctor(sb, 1)
    bad = checks(doc, "target local")[0]
    assert bad["status"] == "fail" and "no repository at" in bad["message"] and "phx init" in bad["fix"], bad


def test_repository_this_user_cannot_write(make_sandbox: Any, public_tmp: Path) -> None:
    from test_unreadable_file import unprivileged

    sb: Sandbox = make_sandbox(root=public_tmp / "sb")
    sb.backup()
    prefix, who = unprivileged(public_tmp)
    # The repository readable by the doctor's user, but owned by someone else and not writable.
    owner = 0 if prefix and "runuser" in prefix[0] else 65534
    for dirpath, dirnames, filenames in os.walk(sb.repo):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            os.lchown(path, owner, owner)
            os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    sb.prefix = prefix
    print(f"running phx doctor as {who}")
    doc = doctor(sb, 1)
    bad = checks(doc, "target local")[0]
    assert bad["status"] == "fail" and "not writable" in bad["message"], bad
    assert "permission denied" in bad["message"].lower() and bad["fix"], bad
    assert checks(doc, "credentials")[0]["status"] == "ok", "reading still works"


def test_postgres_configured_without_pg_dump(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    port = free_port()
    sb.write_config(databases={"postgres": [{"name": "agentdb", "host": "127.0.0.1", "port": port, "database": "a"}]})
    empty = tmp_path / "bin"
    empty.mkdir()
    doc = doctor(sb, 1, env=sb.env_with(PATH=str(empty)))
    [bad] = failed(doc)
    assert bad["name"] == "tool pg_dump" and "pg_dump not found" in bad["message"], bad
    assert "postgresql-client" in bad["fix"] and "pgDump" in bad["fix"], bad

    # With pg_dump but no server on that port: the probe dump reports the refused connection.
    if shutil.which("pg_dump", path=sb.env["PATH"]) is None:
        pytest.skip("pg_dump is not installed (scripts/test.sh installs postgresql-client)")
    doc = doctor(sb, 1)
    assert checks(doc, "tool pg_dump")[0]["status"] == "ok"
    bad = checks(doc, "postgres agentdb")[0]
    assert bad["status"] == "fail" and f"127.0.0.1:{port}" in bad["message"], bad
    assert "start the server" in bad["fix"], bad


def test_a_backup_partial_for_an_unset_password_variable_gets_that_fix(backed_up: Sandbox) -> None:
    """A backup made partial because a database's `passwordEnv` was not set in its environment: the
    fix doctor gave for it was "make those paths readable (or exclude them), or repair the damaged
    database", which fits neither. It names the variable to set now."""
    sb = backed_up
    entry = {"name": "agentdb", "host": "127.0.0.1", "port": free_port(), "database": "a"}
    sb.write_config(databases={"postgres": [{**entry, "passwordEnv": "ARGENT_PG_PASSWORD"}]})
    run = sb.phx_here("backup", "--json", code=3)
    assert "$ARGENT_PG_PASSWORD, which is not set" in run.out, run
    doc: dict[str, Any] = sb.phx_here("doctor", "--json", code=1).json()
    [partial] = [c for c in checks(doc, "last backup") if "was partial" in c["message"]]
    assert partial["fix"] == (
        "set ARGENT_PG_PASSWORD in the environment the backup runs in (the scheduler's too), then run `phx backup`"
    ), partial


def test_a_dsn_password_never_reaches_pg_dumps_command_line(backed_up: Sandbox, tmp_path: Path) -> None:
    """Issue 14, point 6: a command line is readable by every local user (/proc/*/cmdline)."""
    real = shutil.which("pg_dump")
    if real is None:
        pytest.skip("pg_dump is not installed (scripts/test.sh installs postgresql-client)")
    sb = backed_up
    log = tmp_path / "argv.log"
    wrapper = tmp_path / "pg_dump"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "$*" "${{PGPASSWORD:-}}" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    dsn = f"postgresql://agent:CANARY-pw-0815@127.0.0.1:{free_port()}/argentos"
    sb.write_config(databases={"postgres": [{"name": "agentdb", "dsn": dsn, "pgDump": str(wrapper)}]})
    doc = doctor(sb, 1)
    assert checks(doc, "postgres agentdb")[0]["status"] == "fail"  # nothing listens there
    calls = [line.partition("|") for line in log.read_text().splitlines() if "--schema-only" in line]
    assert calls and all("CANARY" not in argv and password == "CANARY-pw-0815" for argv, _, password in calls), calls
    assert "CANARY" not in json.dumps(doc)


def test_no_free_space_on_the_repository_disk(make_sandbox: Any, tmp_path: Path) -> None:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    mount = shutil.which("mount")
    proc = subprocess.run(
        [mount or "mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip() or 'not permitted'})")
    try:
        sb: Sandbox = make_sandbox()
        sb.write_config(backupDir=str(mnt / "repo"))
        open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env), create=True)
        doc = doctor(sb, 1)
        bad = checks(doc, "disk (repository)")[0]
        assert bad["status"] == "fail" and "free" in bad["message"] and str(mnt) in bad["message"], bad
        assert "free some space" in bad["fix"], bad
        assert checks(doc, "disk (cache)")[0]["status"] == "ok"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_stale_lock_no_backup_and_failed_drill(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env), create=True)

    # No backup yet; no drill yet (advice, not a failure).
    doc = doctor(sb, 1)
    [bad] = failed(doc)
    assert bad["name"] == "last backup" and "phx backup" in bad["fix"], bad
    drill = checks(doc, "last drill")[0]
    assert drill["status"] == "warn" and "phx drill" in drill["fix"], drill

    # A lock of another host, not refreshed for an hour.
    lock = {
        "host": "elsewhere",
        "bootId": "x",
        "pid": 4242,
        "processStart": 1,
        "username": "agent",
        "exclusive": False,
        "time": time.time() - 3600,
        "command": "backup",
    }
    repo.backend.write("locks/" + "ab" * 16, repo.sealer.seal(json.dumps(lock).encode(), LOCK_AAD))
    os.utime(sb.repo / "locks" / ("ab" * 16), (lock["time"],) * 2)  # its object was written then too
    sb.backup()
    doc = doctor(sb, 1)
    [bad] = failed(doc)
    assert bad["name"] == "locks" and "stale" in bad["message"] and "elsewhere" in bad["message"], bad
    assert "phx unlock" in bad["fix"], bad
    sb.phx("unlock")

    # A drill that failed.
    reports = sb.home / ".argentos" / "backup" / "drills"
    reports.mkdir(parents=True)
    (reports / "29990101T000000Z-x.json").write_text(
        json.dumps({"ok": False, "started": "2999-01-01T00:00:00+00:00", "name": "x", "errors": [{}]})
    )
    doc = doctor(sb, 1)
    [bad] = failed(doc)
    assert bad["name"] == "last drill" and "FAILED" in bad["message"] and "verify" in bad["fix"], bad


def test_invalid_config(sandbox: Sandbox) -> None:
    sb = sandbox
    sb.write_config(retention={"daily": "seven"})
    doc = doctor(sb, 1)
    assert [c["name"] for c in doc["checks"]] == ["config"] and "retention.daily" in doc["checks"][0]["message"]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://agent:CANARY%zz-pw@127.0.0.1:5433/argentos",  # a "%" that is no escape
        "postgresql://agent:CANARY-pw@[::1/argentos",  # an unclosed IPv6 bracket
        "host=127.0.0.1 password=CANARY pw",  # a space in an unquoted password
    ],
)
def test_a_malformed_dsn_is_reported_without_its_password(backed_up: Sandbox, dsn: str) -> None:
    # libpq quotes the part of a connection string it cannot parse, and that part is the password.
    sb = backed_up
    sb.write_config(databases={"postgres": [{"name": "agentdb", "dsn": dsn}]})
    doc = doctor(sb, 1)
    bad = checks(doc, "postgres agentdb")[0]
    assert bad["status"] == "fail" and "malformed" in bad["message"], bad
    assert "CANARY" not in json.dumps(doc) and "pw" not in bad["message"]
    res = sb.phx("backup", "--databases-only", check=None)
    assert res.code != 0 and "malformed" in res.err and "CANARY" not in res.out + res.err, res


def test_a_cache_folder_that_cannot_be_created_fails_doctor_and_the_backup_names_it(backed_up: Sandbox) -> None:
    """A file where the cache folder should be: every backup fails there, so doctor must not say
    ok, and the backup says which folder and the fix (it said "unexpected internal error")."""
    sb = backed_up
    shutil.rmtree(sb.cache)
    sb.cache.write_text("not a folder")
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    assert bad["name"] == "cache" and f"{sb.cache} is a file, not a folder" in bad["message"], bad
    assert "PHX_CACHE_DIR" in bad["fix"], bad
    assert sb.cache.read_text() == "not a folder", "doctor changed nothing"
    err = sb.phx_here("backup", "--json", code=1).out.splitlines()[-1]
    assert "cannot write the cache folder" in err and "PHX_CACHE_DIR" in err and "internal error" not in err, err


def test_the_last_successful_snapshot_gone_from_the_repository_is_no_protection(backed_up: Sandbox) -> None:
    """The state file says the last backup succeeded a minute ago, but its snapshot is no longer in
    the repository (forgotten, pruned, lost with the store): doctor and `phx status` said ok on the
    state file's word, with nothing of that backup left to restore."""
    sb = backed_up
    sid = json.loads((sb.home / ".argentos" / "backup" / ".last-backup").read_text())["lastSuccess"]["snapshotId"]
    (sb.repo / "snapshots" / sid).unlink()
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    said = f"snapshot {sid[:8]}, the last it wrote to the first target, is no longer in {sb.repo}"
    assert bad["name"] == "last backup" and said in bad["message"], bad
    assert "`phx backup`" in bad["fix"], bad
    status = sb.phx_here("status", "--json", code=1).json()
    said = f"snapshot {sid[:8]}, the last a successful backup wrote to target local, is no longer in it"
    assert status["ok"] is False and said in status["alert"], status


def test_a_schedule_whose_phx_was_moved_away_fails(backed_up: Sandbox, tmp_path: Path) -> None:
    """The crontab entry runs the Python of a virtualenv since moved or removed: every scheduled
    backup fails before Phoenix starts, its output sent to /dev/null. Doctor said "active with
    cron" until two periods had passed without a run. A fake `crontab` first on PATH holds the
    table (never the real crontab of the user running the tests)."""
    sb = backed_up
    fake = tmp_path / "fakebin"
    fake.mkdir()
    table = tmp_path / "table"
    gone = tmp_path / "moved-venv" / "bin" / "python3"
    table.write_text(
        "# BEGIN phoenix-backup (written by `phx schedule install`; remove with `phx schedule remove`)\n"
        f"0 3 * * * {gone} -m phoenix_backup.cli.main schedule run --config {sb.config_path} >/dev/null 2>&1\n"
        "# END phoenix-backup\n"
    )
    crontab = fake / "crontab"
    crontab.write_text(f'#!/bin/sh\n[ "$1" = -l ] && exec cat {table}\nexit 1\n')
    crontab.chmod(0o755)
    sb.env["PATH"] = f"{fake}:{sb.env['PATH']}"
    # A process named cron, so the entry counts as run by a daemon (else that is the failure said).
    daemon = fake / "cron"
    shutil.copy("/bin/sleep", daemon)
    proc = subprocess.Popen([daemon, "120"])
    try:
        doc = sb.phx_here("doctor", "--json", code=1).json()
    finally:
        proc.kill()
        proc.wait()
    [bad] = failed(doc)
    assert bad["name"] == "schedule" and f"the cron job runs {gone}, which no longer exists" in bad["message"], bad
    assert "`phx schedule install` again" in bad["fix"], bad


def test_a_last_success_dated_in_the_future_of_the_clock_is_not_called_recent(backed_up: Sandbox) -> None:
    """The clock went back a year (or was a year ahead when the backup ran): the last success's age
    is negative, and doctor and `phx status` said "0 min ago", ok, with no overdue warning possible
    for a year whatever was missed."""
    sb = backed_up
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    state = json.loads(path.read_text())
    for entry in (state, state["lastSuccess"], *state["targetsLastSuccess"].values()):
        entry["timestamp"] += 365 * 86400
    path.write_text(json.dumps(state))
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    assert bad["name"] == "last backup" and "after this machine's clock" in bad["message"], bad
    assert "set the clock right" in bad["fix"], bad
    status = sb.phx_here("status", "--json", code=1).json()
    assert status["ok"] is False and "after this machine's clock" in status["alert"], status


def test_a_live_exclusive_lock_of_another_host_is_said(backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh exclusive lock (a prune running on another machine) makes every backup fail at once
    with "the repository is locked"; doctor said only "no stale locks (1 held by running commands)"."""
    import socket as socket_module

    from phoenix_backup.repo.locks import HeldLock

    sb = backed_up
    cfg = load_config(sb.config_path, sb.env)
    repo = open_repository(cfg, Environment(env=sb.env))
    try:
        with monkeypatch.context() as m:
            m.setattr(socket_module, "gethostname", lambda: "other-host")
            HeldLock(repo.locks, f"locks/{'b' * 32}", True, "prune").write()
    finally:
        repo.close()
    doc = sb.phx_here("doctor", "--json").json()
    [held] = [c for c in checks(doc, "locks") if c["status"] == "warn"]
    assert "exclusive lock by prune" in held["message"] and "other-host" in held["message"], held
    assert "a backup started while it is held fails" in held["message"], held
    # The fix named is one that removes it: plain `phx unlock` keeps a fresh lock (it said that one).
    assert "no stale locks" in sb.phx_here("unlock").out
    assert "`phx unlock --all` removes it" in held["fix"], held
    assert "removed exclusive lock by prune" in sb.phx_here("unlock", "--all").out


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_a_file_size_limit_below_a_pack_fails(backed_up: Sandbox) -> None:
    """`ulimit -f` of 4 MiB: a backup of 8 MiB of new data stops at its first full pack ("a file
    size limit of this process ... stopped writing data/..."), while doctor's free space checks
    all passed."""
    sb = backed_up
    sb.prefix = ("prlimit", f"--fsize={4 * 1024 * 1024}")
    doc = doctor(sb, 1)
    [bad] = failed(doc)
    assert bad["name"] == "file size limit" and "at most 4.0 MiB (`ulimit -f`)" in bad["message"], bad
    assert "ulimit -f unlimited" in bad["fix"], bad


def test_a_key_rotation_is_no_lost_snapshot(backed_up: Sandbox) -> None:
    """`phx key rotate` re-seals every snapshot under a new id (its name is the hash of its sealed
    bytes) and deletes the old objects: the state file's last success named an id gone from the
    repository, and doctor failed ("forgotten, pruned or lost"), `phx status` exited 1, on a
    repository that holds that very backup. The rotation renames the ids in this machine's state."""
    sb = backed_up
    sb.phx_here("key", "rotate")
    doc = sb.phx_here("doctor", "--json", code=0).json()
    assert checks(doc, "last backup")[0]["status"] == "ok", doc["checks"]
    status = sb.phx_here("status", "--json").json()
    assert status["ok"] is True and status["alert"] is None, status


def test_a_repository_made_anew_after_the_last_backup_is_said_so(backed_up: Sandbox) -> None:
    """The first target's repository was made anew at the same path (`phx init` after the old one
    was moved away) since the last backup: doctor failed with "is no longer in REPO (forgotten,
    pruned or lost)", sending the user to hunt a loss, when that repository never held it."""
    sb = backed_up
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    state = json.loads(path.read_text())
    for record in (state, state["lastSuccess"], *state["targetsLastSuccess"].values()):
        record["timestamp"] -= 60  # the backup ran a minute before the new repository was made
    path.write_text(json.dumps(state))
    sb.repo.rename(sb.repo.with_name("repo-old"))
    sb.phx_here("init")
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    assert bad["name"] == "last backup" and "was made after that backup" in bad["message"], bad
    assert "forgotten" not in bad["message"] and "`phx backup`" in bad["fix"], bad


def test_a_key_rotation_on_another_machine_is_no_lost_snapshot(backed_up: Sandbox) -> None:
    """`phx key rotate` run on another machine: this machine's state file still names the last
    success by its old id, gone; doctor failed "forgotten, pruned or lost" while the backup is in
    the repository under its new id. The rotation's record (`retired/`) names the successor."""
    sb = backed_up
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    before = path.read_bytes()
    sb.phx_here("key", "rotate")
    path.write_bytes(before)  # as on a machine the rotation did not run on
    doc = sb.phx_here("doctor", "--json", code=0).json()
    assert checks(doc, "last backup")[0]["status"] == "ok", doc["checks"]
    # `phx status` opens no rotation record: it alerted (exit 1) until the next backup here. The
    # record written after the last success says a rotation may have renamed it: a warning.
    status = sb.phx_here("status", "--json", code=0).json()
    assert any("a key rotation ran since" in w for w in status["warnings"]), status


def test_doctor_names_what_killed_postgres_restores_left_and_changes_nothing(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A roles journal kept because its server could not be reached again, or because a line of it
    is damaged, means roles with LOGIN and a snapshot's password (and maybe a half database) sit on
    some server: doctor said nothing of it. Now it warns, naming the server as the journal records
    it, the roles and the database, and the fix (a restore or drill against that server, or the
    exact SQL); it drops nothing and changes no journal."""
    from phoenix_backup.sinks import postgres_roles

    sb = backed_up
    monkeypatch.setenv("PHX_CACHE_DIR", str(sb.cache))
    server = "7312345678901234567"

    def kept(lines: list[dict[str, Any]]) -> Path:
        journal = postgres_roles.RolesJournal()
        journal.server = server
        for line in lines:
            journal.note(line)
        journal.keep()
        journal.close()
        return journal.path

    stranded = kept(
        [
            {"role": "app_user", "oid": 16390},
            {"memberships": []},
            {"creating": "copy"},
            {"created": "copy", "oid": 16400},
            {"restoring": 900, "database": "copy", "databaseOid": 16400},
        ]
    )
    damaged = kept([{"role": "Odd Role", "oid": 16500}])
    with damaged.open("a") as f:
        f.write('{"role": \n{"role": "later", "oid": 16501}\n')
    before = {p: p.read_bytes() for p in (stranded, damaged)}
    doc = sb.phx_here("doctor", "--json").json()
    found = checks(doc, "postgres leftovers")
    assert [c["status"] for c in found] == ["warn", "warn"], found
    [one] = [c for c in found if "app_user" in c["message"]]
    assert f"system identifier {server}" in one["message"] and "database copy" in one["message"], one
    assert "run a restore or drill against that server again" in one["fix"], one
    assert 'DROP DATABASE "copy"; DROP ROLE "app_user";' in one["fix"] and f"delete {stranded}" in one["fix"], one
    [two] = [c for c in found if "Odd Role" in c["message"]]
    assert "damaged line" in two["message"] and 'DROP ROLE "Odd Role";' in two["fix"], two
    assert f"and delete {damaged}" in two["fix"], two
    assert {p: p.read_bytes() for p in (stranded, damaged)} == before, "doctor changed no journal"
    assert sorted((sb.cache / "pg-roles-journal").iterdir()) == sorted([stranded, damaged])


def test_doctor_never_advises_dropping_a_killed_restores_database_that_may_be_whole_unwarned(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore --to-database killed once it fed pg_restore the whole dump (pg_restore commits on
    its own after the kill) and created no roles: doctor named its database as a leftover and the
    fix as `DROP DATABASE "copy";` with no word that it may be the whole restored snapshot (only a
    journal with roles got that caveat). Now it says so."""
    from phoenix_backup.sinks import postgres_roles

    sb = backed_up
    monkeypatch.setenv("PHX_CACHE_DIR", str(sb.cache))
    journal = postgres_roles.RolesJournal()
    journal.server = "7312345678901234568"
    for line in [
        {"creating": "copy"},
        {"created": "copy", "oid": 16400},
        {"restoring": 900, "database": "copy", "databaseOid": 16400},
    ]:
        journal.note(line)
    journal.keep()
    journal.close()
    [one] = checks(sb.phx_here("doctor", "--json").json(), "postgres leftovers")
    assert 'DROP DATABASE "copy";' in one["fix"], one
    assert "if that restore's pg_restore had committed, copy is restored: keep it while you use it" in one["fix"], one


@contextlib.contextmanager
def _dripping_port() -> Iterator[int]:
    """A loopback HTTP service that answers every request with a status line and then a header a
    byte a second, never ending it: each byte inside any read timeout."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.wait(1):
                conn.sendall(b"a")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        server.close()


def _bounded(fn: Callable[[], Any], seconds: float) -> Any:
    """`fn()` in a daemon thread; the test fails if it has not ended after `seconds`."""
    out: list[Any] = [None, None]

    def run() -> None:
        try:
            out[0] = fn()
        except BaseException as exc:  # handed back to the test
            out[1] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s")
    if out[1] is not None:
        raise out[1]
    return out[0]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_targets_that_never_answer_are_said_in_seconds_each_by_name(backed_up: Sandbox) -> None:
    """Three remote targets (Git over HTTP, S3, R2) whose endpoint accepts the connection and never
    answers: doctor waited a backup's 60 s per target, one after the other (3 minutes here, more
    with the first target's second opening), and the user thought it hung. It checks them at the
    same time, each with a diagnosis's deadline (DIAGNOSIS_SECONDS, 5 s), names each one "no answer
    in 5 s" with the fix, and fails; `phx status` reads them the same way."""
    sb = backed_up
    with silent_port() as port:
        hang = f"http://127.0.0.1:{port}"
        sb.env.update(AWS_ACCESS_KEY_ID="AKIAHANG", AWS_SECRET_ACCESS_KEY="hang-secret")
        sb.write_config(
            targets={
                "local": {"enabled": True},
                "git": {"enabled": True, "repo": f"{hang}/remote.git"},
                "s3": {"enabled": True, "bucket": "hang-s3", "endpoint": hang},
                "r2": {"enabled": True, "bucket": "hang-r2", "endpoint": hang},
            }
        )
        cpu = cpu_seconds()
        # The bound of the test (it took minutes): the deadline is 5 s a target, all at once.
        doc = _bounded(lambda: sb.phx_here("doctor", "--json", code=1).json(), 40)
        status = _bounded(lambda: sb.phx_here("status", "--json", code=0).json(), 40)
        spent = cpu_seconds() - cpu
    assert checks(doc, "target local")[0]["status"] == "ok", doc["checks"]
    for name, fix in (("git", "targets.git.repo"), ("s3", "targets.s3.endpoint"), ("r2", "targets.r2.endpoint")):
        [line] = checks(doc, f"target {name}")
        assert line["status"] == "fail" and "no answer from" in line["message"], line
        assert "in 5 s" in line["message"] and fix in line["fix"], line
        said = [w for w in status["warnings"] if w.startswith(f"target {name}: ")]
        assert len(said) == 1 and "no answer from" in said[0] and "in 5 s" in said[0], status["warnings"]
    assert spent < 8, f"{spent:.1f} CPU-s"


def test_this_machines_forget_of_the_last_snapshot_is_a_warning_another_loss_is_not(backed_up: Sandbox) -> None:
    """`phx forget ID` of the last backup's snapshot, run here on purpose: doctor failed ("the last
    backup's snapshot is gone") and `phx status` alerted (exit 1) until the next backup, a false
    alarm users learn to ignore. The forget is recorded in the state file: both say it as a warning
    naming the command and when. The same snapshot gone otherwise (another machine's forget, here
    the state file as it was before the forget) stays a failure and an alert."""
    sb = backed_up
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    sb.phx_here("backup")  # the forget leaves the older backup (one that leaves none: the next test)
    before = path.read_bytes()
    sid = json.loads(before)["lastSuccess"]["snapshotId"]
    sb.phx_here("forget", sid[:12])
    state = json.loads(path.read_text())
    assert state["forgotten"]["local"]["snapshotId"] == sid and state["forgotten"]["local"]["command"] == "phx forget"
    doc = sb.phx_here("doctor", "--json", code=0).json()
    [line] = checks(doc, "last backup")
    assert line["status"] == "warn" and sid[:8] in line["message"], line
    assert "this machine's `phx forget` removed it on" in line["message"] and "`phx backup`" in line["fix"], line
    status = sb.phx_here("status", "--json", code=0).json()
    assert status["ok"] is True and status["alert"] is None, status
    assert any("this machine's `phx forget` removed it" in w for w in status["warnings"]), status["warnings"]

    path.write_bytes(before)  # as on a machine that did not run the forget
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    assert bad["name"] == "last backup" and "(forgotten, pruned or lost)" in bad["message"], bad
    status = sb.phx_here("status", "--json", code=1).json()
    assert status["ok"] is False and "is no longer in it" in status["alert"], status

    # A record of the forget naming another snapshot (an older one) excuses nothing; a record of
    # the wrong shape is ignored and said, like every field of the state file.
    state = json.loads(before)
    state["forgotten"] = {"local": {"snapshotId": "0" * 64, "timestamp": 1, "date": "x", "command": "phx forget"}}
    path.write_text(json.dumps(state))
    assert sb.phx_here("status", "--json", code=1).json()["alert"], "an old forget excuses no other snapshot"
    state["forgotten"] = {"local": {"snapshotId": sid, "timestamp": "yesterday", "command": "phx forget"}}
    path.write_text(json.dumps(state))
    doc = sb.phx_here("doctor", "--json", code=1).json()
    warned = [c["message"] for c in checks(doc, "last backup") if c["status"] == "warn"]
    assert any("wrong type" in m and "forgotten" in m for m in warned), doc["checks"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_rotation_before_the_last_backup_hides_no_lost_snapshot_on_a_git_first_target(
    make_sandbox: Any, tmp_path: Path
) -> None:
    """A Git first target once key-rotated, then backed up; the last backup's snapshot is deleted
    on the storage (a commit on the remote). `phx status` on a clone made since (a new clone of the
    remote) took every rotation record for one written after the backup (a file's time in a clone
    is when it was checked out) and turned the loss into a warning, exit 0. The Git listing dates
    each rotation record by the commit that added it: the rotation ran before the backup, so the
    loss is an alert, exit 1."""
    from moto_support import bare_repo, git

    from phoenix_backup.storage.git import clone_dir

    sb: Sandbox = make_sandbox()
    remote = bare_repo(sb.root / "remote.git")
    sb.reinit(targets={"local": {"enabled": False}, "git": {"enabled": True, "repo": str(remote)}})
    sb.phx_here("backup", "--json")
    sb.phx_here("key", "rotate")
    sid = sb.phx_here("backup", "--json").json()["id"]
    scratch = tmp_path / "elsewhere"
    git("clone", "-q", "--branch", "main", str(remote), str(scratch))
    assert any(p.name for p in (scratch / "retired").iterdir()), "the rotation's record is on the remote"
    git("rm", "-q", f"snapshots/{sid}", cwd=scratch)
    git("commit", "-q", "-m", "lost", cwd=scratch)
    git("push", "-q", "origin", "HEAD:main", cwd=scratch)
    shutil.rmtree(clone_dir(sb.env, str(remote), "main"))  # the next command clones the remote anew
    status = sb.phx_here("status", "--json", code=1).json()
    said = f"snapshot {sid[:8]}, the last a successful backup wrote to target git, is no longer in it"
    assert status["ok"] is False and said in (status["alert"] or ""), status
    assert not any("a key rotation ran since" in w for w in status["warnings"]), status["warnings"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_targets_checked_at_once_derive_the_key_once(backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor opens its targets at the same time: each opening of the same repository (the same
    key slots) must not derive the passphrase's key again at the same moment (the CPU and scrypt's
    memory once per target), as the one-after-the-other openings never did."""
    from moto_support import bare_repo

    from phoenix_backup.repo import keys

    sb = backed_up
    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    sb.phx_here("sync")
    derived: list[bytes] = []
    real = keys._derive_kek

    def slow(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        derived.append(salt)
        time.sleep(0.5)  # the other target's opening reaches the same slot meanwhile
        return real(passphrase, salt, n, r, p)

    monkeypatch.setattr(keys, "_derive_kek", slow)
    keys._slot_keys.clear()  # the commands run in this process before derived it already
    doc = sb.phx_here("doctor", "--json").json()
    assert [c["status"] for c in doc["checks"] if c["name"].startswith("target ")] == ["ok", "ok"], doc["checks"]
    assert len(derived) == 1, derived


def test_an_s3_target_that_drips_its_answer_is_said_not_to_answer_at_the_deadline(backed_up: Sandbox) -> None:
    """An S3 endpoint that sends a status line and then a header a byte a second (each inside the
    5 s read timeout): doctor waited a backup's 120 s for the headers of each request (three
    requests, 6 minutes). Its deadline bounds a response's headers as a whole too: "no answer
    in 5 s", the target failed."""
    sb = backed_up
    with _dripping_port() as port:
        sb.env.update(AWS_ACCESS_KEY_ID="AKIADRIP", AWS_SECRET_ACCESS_KEY="drip-secret")
        sb.write_config(
            targets={
                "local": {"enabled": True},
                "s3": {"enabled": True, "bucket": "drip", "endpoint": f"http://127.0.0.1:{port}"},
            }
        )
        doc = _bounded(lambda: sb.phx_here("doctor", "--json", code=1).json(), 40)
    [line] = checks(doc, "target s3")
    assert line["status"] == "fail" and "no answer from" in line["message"] and "in 5 s" in line["message"], line
    assert "targets.s3.endpoint" in line["fix"], line


def test_a_forget_here_excuses_no_later_loss_of_what_it_left(backed_up: Sandbox) -> None:
    """This machine's `phx forget` of the last backup's snapshot is a warning; but the record of it
    excused every later loss too: the snapshot the forget left as the newest (the older backup) was
    then deleted on the storage, the repository held no backup of this machine, and doctor (exit 0)
    and status (exit 0) still said only "this machine's `phx forget` removed it". The record names
    what the forget left: that one gone is a loss, and a forget that left nothing is no backup."""
    sb = backed_up
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    older = json.loads(path.read_bytes())["lastSuccess"]["snapshotId"]
    sid = sb.phx_here("backup", "--json").json()["id"]
    sb.phx_here("forget", sid[:12])
    assert json.loads(path.read_text())["forgotten"]["local"]["left"] == older
    assert [c["status"] for c in checks(sb.phx_here("doctor", "--json", code=0).json(), "last backup")] == ["warn"]

    (sb.repo / "snapshots" / older).unlink()  # lost on the storage since
    doc = sb.phx_here("doctor", "--json", code=1).json()
    [bad] = failed(doc)
    assert bad["name"] == "last backup" and older[:8] in bad["message"], bad
    assert "(forgotten, pruned or lost)" in bad["message"], bad
    status = sb.phx_here("status", "--json", code=1).json()
    assert older[:8] in (status["alert"] or "") and "is no longer in it" in status["alert"], status

    # A forget that leaves no snapshot of this machine: no backup to restore, whatever the record says.
    state = json.loads(path.read_text())
    state["forgotten"]["local"]["left"] = None
    path.write_text(json.dumps(state))
    [bad] = failed(sb.phx_here("doctor", "--json", code=1).json())
    assert bad["name"] == "last backup" and "holds no other snapshot" in bad["message"], bad
    status = sb.phx_here("status", "--json", code=1).json()
    assert "holds no other snapshot" in (status["alert"] or ""), status


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_status_runs_the_passphrase_command_once_for_all_its_targets(backed_up: Sandbox, tmp_path: Path) -> None:
    """`phx status` reads its targets at the same time, and each opening ran
    `encryption.passphraseCommand` again, all at once: two prompts on one terminal (a `pass`, a
    pinentry), their answers mixed, and each saved and put back the terminal's settings over the
    other's (echo left off). Status asks the command once, before the targets, as doctor does."""
    from moto_support import bare_repo

    sb = backed_up
    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    sb.phx_here("sync")
    secret, runs = tmp_path / "passphrase", tmp_path / "runs"
    secret.write_text(sb.env["PHX_PASSPHRASE"])
    secret.chmod(0o600)
    command = tmp_path / "ask"
    command.write_text(f"#!/bin/sh\necho run >> {runs}\ncat {secret}\n")
    command.chmod(0o700)
    sb.write_config(encryption={"enabled": True, "method": "passphrase", "passphraseCommand": str(command)})
    del sb.env["PHX_PASSPHRASE"]
    status = sb.phx_here("status", "--json").json()
    assert [t.get("notice") for t in status["targets"].values()] == [None, None], status["targets"]
    assert runs.read_text().splitlines() == ["run"], "the command ran once"


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("ssh") is None, reason="git or ssh is not installed")
def test_a_git_ssh_remote_that_stalls_after_its_banner_is_said_in_seconds(backed_up: Sandbox) -> None:
    """A Git target over ssh whose server sends its banner and then nothing (a stuck sshd, a
    middlebox): ssh's connect timeout ends with the banner, and doctor waited the keepalives'
    minute (15 s x 4) for the key exchange, Ctrl-C included (ssh runs in its own group), while
    Git over HTTP was said in 5 s. A diagnosis gives ssh its deadline too, and names the target."""
    sb = backed_up
    with silent_port(greeting=b"SSH-2.0-OpenSSH_9.2\r\n", most=16) as port:
        repo = f"ssh://git@127.0.0.1:{port}/remote.git"
        sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": repo}})
        doc = _bounded(lambda: sb.phx_here("doctor", "--json", code=1).json(), 40)
    [line] = checks(doc, "target git")
    assert line["status"] == "fail" and "no answer from the Git remote" in line["message"], line
    assert "in 5 s" in line["message"] and "targets.git.repo" in line["fix"], line


def test_a_slow_link_that_works_can_be_given_its_own_deadline(backed_up: Sandbox) -> None:
    """A target that works but answers in 6 s (a satellite link, a far region): a backup (60 s a
    read) succeeds, and doctor failed it "no answer ... in 5 s" every time, with no way to allow
    more (status warned the same): monitoring on `phx doctor` had to be turned off. Both take
    `--answer-timeout SECONDS`, and the fix says so."""
    sb = backed_up
    with silent_port() as port:
        sb.env.update(AWS_ACCESS_KEY_ID="AKIAHANG", AWS_SECRET_ACCESS_KEY="hang-secret")
        hang = f"http://127.0.0.1:{port}"
        s3 = {"enabled": True, "bucket": "slow-s3", "endpoint": hang}
        sb.write_config(targets={"local": {"enabled": True}, "s3": s3})
        doc = _bounded(lambda: sb.phx_here("doctor", "--answer-timeout", "1", "--json", code=1).json(), 40)
        status = _bounded(lambda: sb.phx_here("status", "--answer-timeout", "1", "--json").json(), 40)
    [line] = checks(doc, "target s3")
    assert line["status"] == "fail" and "in 1 s" in line["message"], line
    assert "--answer-timeout SECONDS" in line["fix"], line
    assert any(w.startswith("target s3: ") and "in 1 s" in w for w in status["warnings"]), status["warnings"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_target_the_passphrase_does_not_open_fails(backed_up: Sandbox, make_sandbox: Any) -> None:
    """A second target that holds another repository, under another passphrase (another machine's,
    a copy-pasted URL): the passphrase opened the first target, and doctor said the second "not
    probed: ... (see credentials)" as a warning next to credentials ✓, exit 0, while every backup
    failed on it ("holds another repository"). The first target's opening proved the passphrase:
    the second one's refusal is that target's failure, with the fix."""
    from moto_support import bare_repo

    other = make_sandbox()
    other.env["PHX_PASSPHRASE"] = "another machine's passphrase"
    remote = bare_repo(other.root / "remote.git")
    other.reinit(targets={"local": {"enabled": False}, "git": {"enabled": True, "repo": str(remote)}})
    other.phx_here("backup")  # pushes it
    sb = backed_up
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    doc = sb.phx_here("doctor", "--json", code=1).json()
    assert [c["status"] for c in checks(doc, "credentials")] == ["ok"], doc["checks"]
    [line] = checks(doc, "target git")
    assert line["status"] == "fail" and "does not open the repository on target git" in line["message"], line
    assert "targets.git" in line["fix"], line
