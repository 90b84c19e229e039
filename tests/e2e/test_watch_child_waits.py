"""A watch's snapshot child that honestly waits on a process it started (git pushing to a slow
remote) uses no processor time of its own: it is not taken for hung and killed (ops/watch_child.py,
`_beat`), while a child whose git is stopped still is."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox
from test_watch_adversary import _table
from test_watch_bases import _watcher

from phoenix_backup.ops import watch_child

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs)")


def _slow_git(sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A Git replica target, whose `git push` first waits (`sleep`, as on a slow link: the
    remote takes its time) or stops itself (as `kill -STOP`) for 4 s."""
    # (Stopped, it is let go on by a process that is not the child's: not one it waits on.)
    wait = "sleep 4" if how == "sleep" else "( (sleep 4; kill -CONT $$) & ); kill -STOP $$"
    path = _git_replica(sb, tmp_path, '[ "$1" = push ]', wait)
    monkeypatch.setenv("PATH", path)
    sb.env["PATH"] = path


def _git_replica(sb: Sandbox, tmp_path: Path, when: str, then: str) -> str:
    """A Git replica target (a bare repository in `tmp_path`), and a PATH whose `git` runs the
    shell command `then` first when the test `when` holds."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        }
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nif {when}; then {then}; fi\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    return f"{bin_dir}:{sb.env.get('PATH', '')}"


@pytest.mark.parametrize("how", ["sleep", "stop"])
def test_a_child_waiting_on_a_slow_git_push_is_not_killed_a_stopped_one_is(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    sb = sandbox
    _table(sb.layout.dashboard_db)
    _slow_git(sb, tmp_path, monkeypatch, how)
    monkeypatch.setattr(watch_child, "STALL_SECONDS", 2.0, raising=False)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        w.poll()  # the bases, in a child that pushes them to the Git target
        killed = [n for n in notices if "was killed" in n]
        if how == "sleep":
            assert not killed, notices
            assert not any(d.need_base for d in w.dbs), notices
            assert not w.lagging, notices
        else:
            assert len(killed) == 1 and "no sign of work" in killed[0], notices
            assert all(d.need_base for d in w.dbs), notices
    if how == "sleep":
        assert sb.verify("--target", "git")["ok"]


def test_ctrl_c_during_a_git_push_says_what_it_waits_for_and_a_second_one_abandons_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A Ctrl-C while the base's child waits on a git push (a slow remote: up to git's 30-minute
    timeout) says in one line what the watch waits for and that a second Ctrl-C abandons the push;
    the second one ends the watch at once, the push (git and all it started) killed. The snapshot
    is in the first target, and `phx sync` pushes it afterwards."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    slow, pushing = tmp_path / "slow", tmp_path / "pushing"
    slow.touch()
    path = _git_replica(sb, tmp_path, f'[ "$1" = push ] && [ -e {slow} ]', f"echo $$ > {pushing}; exec sleep 600")
    env = {**sb.env, "PATH": path}
    log = tmp_path / "watch.log"
    with _watching_a_push(env, log, pushing) as (watch, git_pid):
        watch.send_signal(signal.SIGINT)
        _until(lambda: "Ctrl-C again abandons the push" in log.read_text(), 15, log)
        assert watch.poll() is None, log.read_text()  # it waits, as it said
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
        _until(lambda: not _running(git_pid), 5, log)  # the push was killed with the child, not left behind
    text = log.read_text()
    assert text.count("Ctrl-C again") == 1 and "git push" in text and "phx sync" in text, text
    assert "Traceback" not in text, text
    slow.unlink()
    sb.phx("sync", env=env)
    assert sb.verify("--target", "git")["ok"]
    listed = {s["id"] for s in sb.phx("list", "--target", "git", "--scope", "watch", "--json", env=env).json()}
    assert listed, text


@contextlib.contextmanager
def _watching_a_push(env: dict[str, str], log: Path, pushing: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`phx watch` (output in `log`) once its child's git push runs (it writes its pid in
    `pushing`): the watch and that pid. Neither is left running after."""
    git_pid = 0
    with open(log, "wb") as out:
        args = [PHX, "watch", "--no-files"]
        watch = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        _until(lambda: pushing.exists() and pushing.read_text().strip() != "", 90, log)
        git_pid = int(pushing.read_text())
        yield watch, git_pid
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
        if git_pid and _running(git_pid):
            os.kill(git_pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie no one reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return False


def _until(done: Callable[[], bool], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def test_a_watch_whose_terminal_hangs_up_during_a_git_push_leaves_no_git(sandbox: Sandbox, tmp_path: Path) -> None:
    """The snapshot's child and its git run in a process group of their own, which a terminal's
    hangup does not reach: the watch ends at once as it always did (SIGHUP), and neither the child
    nor the git push it waits on is left running on its own (a hung push, whose 30-minute timeout
    the dead child no longer enforces, would stay for good)."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    pushing = tmp_path / "pushing"
    path = _git_replica(sb, tmp_path, '[ "$1" = push ]', f"echo $$ > {pushing}; exec sleep 600")
    log = tmp_path / "watch.log"
    with _watching_a_push({**sb.env, "PATH": path}, log, pushing) as (watch, git_pid):
        watch.send_signal(signal.SIGHUP)
        assert watch.wait(timeout=30) == -signal.SIGHUP, log.read_text()
        _until(lambda: not _running(git_pid), 5, log)


def test_a_watch_that_ends_on_an_error_during_a_git_push_leaves_no_git(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch ends on an error while its child waits on a git push: the child sees its pipe
    close and ends, and takes the git push it started with it (its process group)."""
    sb = sandbox
    _table(sb.layout.dashboard_db)
    pushing = tmp_path / "pushing"
    path = _git_replica(sb, tmp_path, '[ "$1" = push ]', f"echo $$ > {pushing}; exec sleep 600")
    monkeypatch.setenv("PATH", path)
    sb.env["PATH"] = path
    git_pid = 0

    def fails_once_pushing() -> None:
        if pushing.exists() and pushing.read_text().strip():
            raise RuntimeError("the watch fails here")

    notices: list[str] = []
    try:
        with _watcher(sb, notices) as w:
            monkeypatch.setattr(w, "_meanwhile", fails_once_pushing)
            with pytest.raises(RuntimeError, match="the watch fails here"):
                w.poll()  # the bases, pushed to the Git target by the child
            git_pid = int(pushing.read_text())
            _until(lambda: not _running(git_pid), 5, tmp_path / "pushing")
    finally:
        if git_pid and _running(git_pid):
            os.kill(git_pid, signal.SIGKILL)
