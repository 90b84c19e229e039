"""Hostile networks between Phoenix and its remote targets (red team 8): a Git remote whose
transport hangs, and an S3 service whose listing never ends. Every test is bounded by a thread
that fails it instead of hanging the suite."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from moto_support import bare_repo
from storage_support import require_git

import phoenix_backup.storage.git as git_storage
from phoenix_backup.errors import TargetUnreachable
from phoenix_backup.storage.git import GitBackend

T = TypeVar("T")


def bounded(fn: Callable[[], T], seconds: float) -> tuple[T | None, BaseException | None, float]:
    """Run `fn` in a daemon thread; fail the test if it has not ended after `seconds`."""
    out: list[object] = [None, None]

    def run() -> None:
        try:
            out[0] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out[1] = exc

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    took = time.monotonic() - start
    if thread.is_alive():
        pytest.fail(f"still running after {took:.1f} s")
    return out[0], out[1], took  # type: ignore[return-value]


def _gone(pid: int) -> bool:
    """Whether `pid` has ended (a zombie waiting for its new parent counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_git_transport_that_hangs_is_ended_with_git_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An `ssh` that connects and never answers (here a GIT_SSH_COMMAND that sleeps) fails the
    target at the network timeout with one error, and is ended with git: before, git alone was
    killed and the hung `ssh` ran on, orphaned, for as long as it hung."""
    require_git()
    remote = bare_repo(tmp_path / "remote.git")
    pidfile = tmp_path / "ssh.pid"
    hang = tmp_path / "hang-ssh"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 30\n")
    hang.chmod(0o755)
    monkeypatch.setattr(git_storage, "NETWORK_TIMEOUT", 0.5)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_SSH_COMMAND": str(hang)}
    b = GitBackend(f"ssh://git@example.invalid{remote}", "main", True, tmp_path / "clone", env)
    try:
        _, error, took = bounded(b.exists, 5.0)
        assert isinstance(error, TargetUnreachable), error
        assert "git ls-remote timed out" in str(error) and "check the network" in str(error)
        assert took < 3, f"took {took:.1f} s"
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 1
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _gone(pid), "the hung ssh still runs after git timed out"
    finally:
        if pidfile.exists() and not _gone(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_an_http_git_remote_that_never_answers_fails_at_the_stall_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP(S) Git remote that accepts the connection and sends nothing (a blackhole) fails the
    target once the transfer has been below 1 byte/s for GIT_HTTP_LOW_SPEED_TIME (60 s by default,
    1 s here), as unreachable, naming the cause: before, git waited for the 30-minute network
    timeout, once per git command."""
    require_git()
    monkeypatch.setattr(git_storage, "NETWORK_TIMEOUT", 4)  # the bound of the test, never reached
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while len(held) < 20:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_HTTP_LOW_SPEED_TIME": "1"}
    b = GitBackend(f"http://127.0.0.1:{port}/remote.git", "main", True, tmp_path / "clone", env)
    try:
        _, error, took = bounded(b.exists, 8.0)
    finally:
        server.close()
        for conn in held:
            conn.close()
    assert isinstance(error, TargetUnreachable), error
    assert "cannot reach the Git remote" in str(error) and "Operation too slow" in str(error), error
    assert "check the network" in str(error)
    assert took < 5, f"took {took:.1f} s"
