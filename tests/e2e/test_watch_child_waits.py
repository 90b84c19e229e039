"""A watch's snapshot child that honestly waits on a process it started (git pushing to a slow
remote) uses no processor time of its own: it is not taken for hung and killed (ops/watch_child.py,
`_beat`), while a child whose git is stopped still is."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from e2e_support import Sandbox
from test_watch_adversary import _table
from test_watch_bases import _watcher

from phoenix_backup.ops import watch_child

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs)")


def _slow_git(sb: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A Git replica target, whose `git push` first waits (`sleep`, as on a slow link: the
    remote takes its time) or stops itself (as `kill -STOP`) for 4 s."""
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
    # (Stopped, it is let go on by a process that is not the child's: not one it waits on.)
    wait = "sleep 4" if how == "sleep" else "( (sleep 4; kill -CONT $$) & ); kill -STOP $$"
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = push ]; then {wait}; fi\nexec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    path = f"{bin_dir}:{sb.env.get('PATH', '')}"
    monkeypatch.setenv("PATH", path)
    sb.env["PATH"] = path


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
        killed = [n for n in notices if "killed" in n]
        if how == "sleep":
            assert not killed, notices
            assert not any(d.need_base for d in w.dbs), notices
            assert not w.lagging, notices
        else:
            assert len(killed) == 1 and "no sign of work" in killed[0], notices
            assert all(d.need_base for d in w.dbs), notices
    if how == "sleep":
        assert sb.verify("--target", "git")["ok"]
