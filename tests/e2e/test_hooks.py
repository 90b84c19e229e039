"""`hooks.preBackup` and `hooks.postBackup` around `phx backup`, as a user configures them: the
order they run in, what they are told, what a failing or hanging hook does to the backup, and
that neither runs for a dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from e2e_support import PHX, Sandbox, assert_error


def hooks(sb: Sandbox, log: Path, pre: str | None = None, post: str | None = None, **more: object) -> None:
    """Hooks that append what they were told to `log`, then run `pre`/`post` (shell)."""
    record = f'echo "$PHX_HOOK scope=$PHX_BACKUP_SCOPE status=$PHX_BACKUP_STATUS id=$PHX_SNAPSHOT_ID" >> {log}'
    sb.write_config(
        hooks={
            "preBackup": f"{record}; {pre}" if pre else record,
            "postBackup": f"{record}; {post}" if post else record,
            **more,
        }
    )


def test_pre_runs_before_the_snapshot_and_post_after_it_knowing_its_id(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    # preBackup leaves a file in the workspace: it is in the snapshot, so the hook ran first. Its
    # output does not reach stdout, which stays one JSON document.
    hooks(sb, log, pre=f"echo quiesced > {sb.workspace}/QUIESCED.txt; echo noise; echo more noise >&2")
    res = sb.phx("backup", "--json")
    doc = json.loads(res.out)
    assert doc["hooks"]["hooks.preBackup"]["ok"] and doc["hooks"]["hooks.postBackup"]["ok"]
    assert "noise" in doc["hooks"]["hooks.preBackup"]["output"]
    assert log.read_text().splitlines() == [
        "preBackup scope=full status= id=",
        f"postBackup scope=full status=ok id={doc['id']}",
    ]
    listed = sb.phx("ls", doc["id"], "QUIESCED.txt", "--json").json()
    assert "QUIESCED.txt" in json.dumps(listed), listed


def test_a_failing_pre_hook_takes_no_backup_and_post_still_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    hooks(sb, log, pre="echo 'the agent is busy' >&2; exit 4")
    res = sb.phx("backup", "--memory-only", check=False)
    assert_error(res, 1, "hooks.preBackup exited with 4", "the agent is busy", "no backup was taken")
    assert sb.snapshots() == []
    assert log.read_text().splitlines() == [
        "preBackup scope=memory status= id=",
        "postBackup scope=memory status=failed id=",
    ]


def test_a_failing_post_hook_keeps_the_snapshot_and_exits_3(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    hooks(sb, log, post="echo 'could not resume the agent'; exit 2")
    res = sb.phx("backup", check=3)
    assert "hooks.postBackup exited with 2 (could not resume the agent)" in res.out
    [snap] = sb.snapshots()
    assert log.read_text().splitlines()[-1] == f"postBackup scope=full status=ok id={snap['id']}"


def test_a_hanging_hook_is_killed_after_its_timeout(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    # The hook starts a child that would outlive it: the whole session is killed.
    hooks(sb, log, pre=f"(sleep 60; echo late >> {log}) & sleep 60", timeoutSeconds=1)
    started = time.monotonic()
    res = sb.phx("backup", check=False)
    assert time.monotonic() - started < 30
    assert_error(res, 1, "hooks.preBackup did not finish in time and was killed")
    assert sb.snapshots() == []
    time.sleep(0.5)
    assert "late" not in log.read_text()


def test_no_hook_runs_for_a_dry_run(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    hooks(sb, log)
    sb.phx("backup", "--dry-run")
    assert not log.exists()


def test_a_bad_hook_timeout_is_a_config_error(sandbox: Sandbox) -> None:
    sandbox.write_config(hooks={"preBackup": "true", "timeoutSeconds": "ten"})
    assert_error(sandbox.phx("backup", check=False), 2, "hooks.timeoutSeconds must be a number of seconds > 0")


def test_a_hook_that_runs_phx_backup_does_not_run_the_hooks_again(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    # preBackup takes a backup of its own (say, of the memory before the agent is paused): that
    # inner backup must not run preBackup again, which would run phx backup again, without end.
    hooks(sb, log, pre=f"{PHX} backup --memory-only >> {tmp_path / 'inner.log'} 2>&1", timeoutSeconds=60)
    started = time.monotonic()
    sb.phx("backup", timeout=90)
    assert time.monotonic() - started < 60
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["preBackup", "postBackup"]
    assert len(sb.snapshots()) == 2


def test_ctrl_c_during_pre_stops_at_once_runs_post_and_leaves_no_lock(sandbox: Sandbox, tmp_path: Path) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    ready = tmp_path / "pre-started"
    hooks(sb, log, pre=f"touch {ready}; sleep 30; echo 'pre went on' >> {log}")
    proc = subprocess.Popen(
        [PHX, "backup"], env=sb.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - interrupted < 10, "Ctrl-C waited for the hook"
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "Traceback" not in out + err
    # The hook was killed (it never went on), postBackup ran and was told the backup failed.
    assert log.read_text().splitlines() == [
        "preBackup scope=full status= id=",
        "postBackup scope=full status=failed id=",
    ]
    assert sb.snapshots() == []
    sb.write_config(hooks={})
    sb.phx("backup", "--memory-only")  # no lock was left behind


def test_a_hook_that_leaves_a_daemon_reads_stdin_and_writes_bytes_does_not_hang_the_backup(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, log = sandbox, tmp_path / "hooks.log"
    # A daemon started by preBackup (the agent resumed in the background, say) keeps the hook's
    # output open; `cat` reads stdin (closed: it ends at once); the output is not UTF-8.
    daemon = tmp_path / "daemon.pid"
    hooks(sb, log, pre=f"sleep 30 & echo $! > {daemon}; cat; printf 'bytes \\377\\376 end'")
    started = time.monotonic()
    doc = sb.backup()
    try:
        assert time.monotonic() - started < 20
        assert doc["hooks"]["hooks.preBackup"]["ok"]
        assert doc["hooks"]["hooks.preBackup"]["output"].endswith("bytes \ufffd\ufffd end")
        assert len(sb.snapshots()) == 1
    finally:
        os.kill(int(daemon.read_text()), signal.SIGKILL)
