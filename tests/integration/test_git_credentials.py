"""Issue 14, point 6: a Git target's `user:TOKEN@` reaches git through its environment and a
credential helper, never its command line (which every local user reads in /proc/*/cmdline) nor a
file (the clone's .git/config, the user's own credential store), and a clone killed half-way is
never taken for a good one.

The remote is a real smart-HTTP Git host on loopback (`git http-backend` behind HTTP basic
authentication); a `git` wrapper first on PATH records every argument list Phoenix passes.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from moto_support import bare_repo
from storage_support import require_git

from phoenix_backup.errors import ConfigError, TargetAuthError
from phoenix_backup.storage.git import GitBackend, split_credentials

USER = "phx-user"
TOKEN = "ghp_CANARY0token0never0shown0815"
SNAP = "snapshots/" + "22" * 32
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHost:
    """`git http-backend` (CGI) for the bare repositories below `root`, behind basic auth."""

    def __init__(self, root: Path, delay: float = 0.0) -> None:
        expected = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                time.sleep(host.delay)
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "GIT_PROJECT_ROOT": str(root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": USER,
                    "REMOTE_ADDR": "127.0.0.1",
                    "PATH": "/usr/bin:/bin",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(": ")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.delay = delay
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str, userinfo: str = f"{USER}:{TOKEN}@") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[GitHost]:
    require_git()
    if not os.access(HTTP_BACKEND, os.X_OK):
        pytest.skip(f"{HTTP_BACKEND} is not installed")
    bare_repo(tmp_path / "remotes" / "agent.git")
    server = GitHost(tmp_path / "remotes")
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """PATH starts with a `git` that logs its arguments; HOME's git config stores credentials."""
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    log = tmp_path / "git-argv.log"
    real = shutil.which("git")
    assert real is not None
    (wrappers / "git").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    (wrappers / "git").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    # The user's own helper would save any credential git approves into ~/.git-credentials.
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    return {"PATH": f"{wrappers}:/usr/bin:/bin", "HOME": str(home), "PHX_ARGV_LOG": str(log)}


def files_holding(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_the_token_never_reaches_argv_or_a_file(tmp_path: Path, host: GitHost, env: dict[str, str]) -> None:
    b = GitBackend(host.url("agent.git"), "main", True, tmp_path / "data" / "clone", env)
    b.create()
    b.write(SNAP, b"a snapshot")
    b.checkpoint("phoenix snapshot 1")
    b.publish()  # authenticated: the push reached the remote
    assert (
        "phoenix snapshot 1"
        in subprocess.run(
            ["git", "log", "--format=%s", "main"],
            cwd=tmp_path / "remotes" / "agent.git",
            capture_output=True,
            text=True,
        ).stdout
    )
    argv = Path(env["PHX_ARGV_LOG"]).read_text()
    assert "remote add origin http://127.0.0.1" in argv and "push" in argv
    assert TOKEN not in argv and f"{USER}:" not in argv
    assert files_holding(tmp_path / "data", TOKEN) == []
    assert files_holding(Path(env["HOME"]), TOKEN) == []  # the user's "store" helper saved nothing
    assert TOKEN not in b.location


def test_a_wrong_token_is_refused_without_showing_it(tmp_path: Path, host: GitHost, env: dict[str, str]) -> None:
    url = host.url("agent.git", f"{USER}:wrong-{TOKEN}@")
    b = GitBackend(url, "main", True, tmp_path / "clone", env)
    with pytest.raises(TargetAuthError) as err:
        b.exists()
    assert TOKEN not in str(err.value) and "127.0.0.1" in str(err.value)


def test_a_clone_of_an_older_phoenix_forgets_its_token(tmp_path: Path, host: GitHost, env: dict[str, str]) -> None:
    # Older versions put the whole URL, token included, into .git/config.
    clone = tmp_path / "clone"
    clone.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True, env=env)
    subprocess.run(["git", "remote", "add", "origin", host.url("agent.git")], cwd=clone, check=True, env=env)
    b = GitBackend(host.url("agent.git"), "main", True, clone, env)
    b.exists()
    assert files_holding(clone, TOKEN) == []


KILLED_CLONE = """
import sys
from phoenix_backup.storage.git import GitBackend, split_credentials
GitBackend(sys.argv[1], "main", True, __import__("pathlib").Path(sys.argv[2]), {"PATH": sys.argv[3]}).exists()
"""


def test_a_killed_clone_is_never_taken_for_a_good_one(tmp_path: Path, host: GitHost, env: dict[str, str]) -> None:
    # The remote has history, and answers slowly: the clone is killed while it fetches.
    seed = GitBackend(host.url("agent.git"), "main", True, tmp_path / "seed", env)
    seed.create()
    seed.write(SNAP, b"a snapshot")
    seed.checkpoint("phoenix snapshot 1")
    seed.publish()
    host.delay = 1.0
    clone = tmp_path / "data" / "clone"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLONE, host.url("agent.git"), str(clone), env["PATH"]])
    time.sleep(2.5)
    proc.kill()
    proc.wait()
    host.delay = 0.0
    assert not (clone / ".git").exists(), "a half-made clone sits where the next run takes it for a good one"
    assert files_holding(tmp_path / "data", TOKEN) == []
    # The next run clones afresh, removes the leftovers and reads what was pushed.
    b = GitBackend(host.url("agent.git"), "main", True, clone, env)
    assert b.read(SNAP) == b"a snapshot"
    assert sorted(p.name for p in clone.parent.iterdir() if not p.name.endswith(".lock")) == ["clone"]


class _Recorder(BaseHTTPRequestHandler):
    """Another host: records any Authorization it is sent and asks for one."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="elsewhere"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_redirect_to_another_host_never_receives_the_token(tmp_path: Path, env: dict[str, str]) -> None:
    require_git()
    elsewhere = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    other = elsewhere.server_address[1]

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{other}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    redirecting = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    for server in (elsewhere, redirecting):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://{USER}:{TOKEN}@127.0.0.1:{redirecting.server_address[1]}/agent.git"
        with pytest.raises(TargetAuthError):
            GitBackend(url, "main", True, tmp_path / "clone", env).exists()
    finally:
        for server in (elsewhere, redirecting):
            server.shutdown()
            server.server_close()
    assert _Recorder.seen, "git never followed the redirect"
    sent = [base64.b64decode(h.split()[1]).decode() for h in _Recorder.seen if h.startswith("Basic ")]
    assert all(TOKEN not in s for s in sent), sent


@pytest.mark.parametrize(
    "url",
    [
        f"ssh://{USER}:{TOKEN}@127.0.0.1:9/agent.git",
        f"{USER}:{TOKEN}@127.0.0.1:agent.git",  # scp-like
        f"git+ssh://{USER}:{TOKEN}@127.0.0.1/agent.git",
    ],
)
def test_a_password_in_an_ssh_address_is_refused_before_git_runs(tmp_path: Path, env: dict[str, str], url: str) -> None:
    # git hands ssh `user:TOKEN@host` on its command line (and keeps the URL in .git/config); ssh
    # never uses a password from there. The address is refused, and shown without the token.
    require_git()
    ssh_log = tmp_path / "ssh-argv.log"
    fake_ssh = tmp_path / "bin" / "ssh"
    fake_ssh.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {ssh_log}\nexit 255\n')
    fake_ssh.chmod(0o755)
    with pytest.raises(ConfigError) as err:
        GitBackend(url, "main", True, tmp_path / "data" / "clone", {**env, "GIT_SSH_COMMAND": str(fake_ssh)}).exists()
    assert TOKEN not in str(err.value) and "targets.git.repo" in str(err.value)
    for log in (ssh_log, Path(env["PHX_ARGV_LOG"])):
        assert not log.exists() or TOKEN not in log.read_text()
    assert not (tmp_path / "data").exists() or files_holding(tmp_path / "data", TOKEN) == []


@pytest.mark.parametrize("scheme", ["http", "https", "ftp", "ftps"])
def test_every_scheme_git_asks_a_helper_for_gets_the_token_through_the_environment(scheme: str) -> None:
    remote, env = split_credentials(f"{scheme}://{USER}:{TOKEN}@127.0.0.1:9/agent.git")
    assert remote == f"{scheme}://127.0.0.1:9/agent.git"
    assert env["PHX_GIT_USERNAME"] == USER and env["PHX_GIT_PASSWORD"] == TOKEN


@pytest.mark.parametrize(
    ("url", "asked", "answers"),
    [
        ("http://u:TOKEN@[::1]:8443/a.git", ("http", "[::1]:8443"), True),  # never answered before
        ("https://u:TOKEN@Git.Example.COM/a.git", ("https", "git.example.com"), True),
        ("https://u:TOKEN@git.example.com/a.git", ("https", "git.example.com:8443"), False),
        ("https://u:TOKEN@git.example.com/a.git", ("http", "git.example.com"), False),
        ("https://u:TOKEN@git.example.com/a.git", ("https", "elsewhere.example.com"), False),
    ],
)
def test_the_helper_answers_for_the_urls_own_host_only(
    tmp_path: Path, url: str, asked: tuple[str, str], answers: bool
) -> None:
    require_git()
    _remote, helper_env = split_credentials(url)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **helper_env}
    proc = subprocess.run(
        ["git", "credential", "fill"],
        input=f"protocol={asked[0]}\nhost={asked[1]}\n\n",
        env={**env, "GIT_TERMINAL_PROMPT": "0"},
        capture_output=True,
        text=True,
    )
    assert ("password=TOKEN" in proc.stdout) is answers, proc
