"""Hostile networks between Phoenix and its remote targets (red team 8): a Git remote whose
transport hangs, and an S3 service whose listing never ends. Every test is bounded by a thread
that fails it instead of hanging the suite."""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from moto_support import bare_repo
from storage_support import require_git

import phoenix_backup.storage.git as git_storage
import phoenix_backup.storage.s3 as s3_storage
from hostile import silent_port
from phoenix_backup.errors import StorageError, TargetUnreachable, TransientStorageError
from phoenix_backup.storage.git import GitBackend
from phoenix_backup.storage.s3 import S3Backend, S3Settings
from phoenix_backup.storage.wrappers import RetryingBackend

T = TypeVar("T")


def bounded(fn: Callable[[], T], seconds: float) -> tuple[T | None, BaseException | None, float]:
    """Run `fn` in a daemon thread; fail the test if it has not ended after `seconds`."""
    out: list[object] = [None, None]

    def run() -> None:
        try:
            out[0] = fn()
        except BaseException as exc:  # handed back to the test
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
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GIT_HTTP_LOW_SPEED_TIME": "1"}
    _git_blackhole_fails_fast(tmp_path, monkeypatch, env)


def _git_blackhole_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """A Git backend (environment `env`) on an HTTP remote that accepts and never answers fails as
    unreachable with git's "Operation too slow" before the 4 s network timeout of the test."""
    require_git()
    monkeypatch.setattr(git_storage, "NETWORK_TIMEOUT", 4)  # the bound of the test, never reached
    with silent_port(most=20) as port:
        b = GitBackend(f"http://127.0.0.1:{port}/remote.git", "main", True, tmp_path / "clone", env)
        _, error, took = bounded(b.exists, 8.0)
    assert isinstance(error, TargetUnreachable), error
    assert "cannot reach the Git remote" in str(error) and "Operation too slow" in str(error), error
    assert "check the network" in str(error)
    assert took < 3.5, f"took {took:.1f} s"


def test_a_users_own_git_stall_limit_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """http.lowSpeedLimit/lowSpeedTime in the user's git configuration (1 s here) is the limit:
    Phoenix's default (1 byte/s for 60 s) is set only when the user chose none. Before, the
    default went in the environment, which git puts above its configuration: a user's own limit
    (a longer one for a slow link, or a shorter one) was silently replaced, and here git hung on
    to the network timeout."""
    (tmp_path / ".gitconfig").write_text("[http]\n\tlowSpeedLimit = 1\n\tlowSpeedTime = 1\n")
    _git_blackhole_fails_fast(tmp_path, monkeypatch, {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


class _Service(http.server.BaseHTTPRequestHandler):
    """A hostile local service's handler: HTTP/1.1 (kept-alive connections, as S3's), no log lines."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # the base's argument names
        pass


class _Listing(_Service):
    """A bucket listing from a hostile S3 service: `pages(n)` gives page n as (keys, next token);
    a token of None ends the listing."""

    pages: Callable[[int], tuple[list[str], str | None]]
    served: list[str]

    def do_GET(self) -> None:
        n = len(self.served)
        self.served.append(self.path)
        keys, token = self.pages(n) if n < 200 else ([], None)  # the bound of the test
        contents = "".join(f"<Contents><Key>{k}</Key><Size>5</Size></Contents>" for k in keys)
        more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>b</Name>'
            f"{more if token else '<IsTruncated>false</IsTruncated>'}{contents}</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _s3_behind(handler: type[http.server.BaseHTTPRequestHandler], target: str = "s3") -> Iterator[RetryingBackend]:
    """An S3 backend (retries without their backoff) whose endpoint is `handler` on loopback."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a kept-alive connection never holds up the end of the test
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = S3Settings(
        target=target,
        bucket="b",
        prefix="p",
        endpoint=f"http://127.0.0.1:{server.server_address[1]}",
        region="us-east-1",
        access_key_id="AKIAHOSTILE",
        secret_access_key="hostile-secret",
    )
    backend = RetryingBackend(S3Backend(settings), sleep=lambda _s: None)
    try:
        yield backend
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


def _list_from(pages: Callable[[int], tuple[list[str], str | None]]) -> tuple[object, BaseException | None, list[str]]:
    served: list[str] = []
    handler = type("Handler", (_Listing,), {"pages": staticmethod(pages), "served": served})
    with _s3_behind(handler) as backend:
        found, error, _ = bounded(lambda: [info.name for info in backend.list("snapshots/")], 5.0)
    return found, error, served


SNAP_KEY = "p/snapshots/" + "a" * 64


def test_an_s3_listing_that_never_advances_fails_at_once() -> None:
    """A service whose listing gives the same keys under a fresh continuation token for ever:
    the listing fails at the second page with one error naming the endpoint, not retried (it
    would go the same way). Before, it looped for ever, keeping every page in memory (botocore
    stops only a token that repeats, which the next test shows)."""
    _, error, served = _list_from(lambda n: ([SNAP_KEY], f"token-{n}"))
    assert isinstance(error, StorageError) and not isinstance(error, TransientStorageError), error
    assert "does not advance" in str(error) and "targets.s3.endpoint" in str(error), error
    assert len(served) == 2, served


def test_an_s3_listing_that_repeats_its_token_fails_after_the_retries() -> None:
    """Held: the same continuation token twice (the keys advancing) is botocore's PaginationError,
    a transient error retried at most 5 times (the backoff skipped here), then one error naming
    the endpoint."""
    _, error, served = _list_from(lambda n: ([f"p/snapshots/{n:064x}"], "same"))
    assert isinstance(error, TransientStorageError), error
    assert "PaginationError" in str(error) and "targets.s3.endpoint" in str(error), error
    assert len(served) <= 10, len(served)


def test_an_s3_listing_of_names_phoenix_never_writes_yields_none_of_them() -> None:
    """Held: keys with `../`, absolute paths, empty parts or foreign names below the prefix are
    left out of the listing; only a name Phoenix writes comes back."""
    odd = ["p/snapshots/../config", "p/snapshots//etc/passwd", "p/snapshots/x", "p/snapshots/" + "A" * 64]
    found, error, _ = _list_from(lambda n: (sorted([*odd, SNAP_KEY]), None))
    assert error is None, error
    assert found == ["snapshots/" + "a" * 64]


class _Redirect(_Service):
    """Every request is sent elsewhere (307, or 301 without S3's error body)."""

    status = 307
    served: list[str]

    def do_GET(self) -> None:
        self.served.append(self.path)
        self.send_response(self.status)
        self.send_header("Location", "http://127.0.0.2:9/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.mark.parametrize("status", [301, 307])
def test_an_s3_redirect_to_another_host_is_not_followed_and_names_the_fix(status: int) -> None:
    """A redirect to another host is not followed and not retried; the one error says the bucket
    is elsewhere and names the settings to fix. Before: "... answered 307 while ...", no fix."""
    served: list[str] = []
    handler = type("Handler", (_Redirect,), {"status": status, "served": served})
    with _s3_behind(handler, "r2") as backend:
        _, error, _ = bounded(lambda: backend.read("snapshots/" + "a" * 64), 5.0)
    assert isinstance(error, StorageError) and not isinstance(error, TransientStorageError), error
    text = str(error)
    assert f"redirected the request ({status})" in text, text
    assert "targets.r2.region" in text and "targets.r2.endpoint" in text, text
    assert len(served) == 1, served


class _Drip(_Service):
    """An object of `size` bytes sent `step` bytes every `pause` seconds (each pause well inside
    the read timeout), at most `most` bytes in all (the bound of the test)."""

    size = 1000
    step = 1
    pause = 0.1
    most = 60
    served: list[str]

    def do_GET(self) -> None:
        self.served.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        with contextlib.suppress(OSError):
            sent = 0
            while sent < min(self.size, self.most):
                self.wfile.write(b"x" * self.step)
                self.wfile.flush()
                sent += self.step
                time.sleep(self.pause)


def _read_dripped(**drip: object) -> tuple[object, BaseException | None, float]:
    served: list[str] = []
    handler = type("Handler", (_Drip,), {"served": served, **drip})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        return bounded(lambda: inner.read("snapshots/" + "a" * 64), 5.0)


def test_an_s3_body_that_drips_is_cut_after_the_stall_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that sends an object's body a byte at a time, each just inside the read timeout,
    is cut once no 256 KiB chunk has arrived for BODY_STALL_SECONDS (60 s; 0.5 s here): one
    transient error naming the target, which the retries handle. Before, such a body was read
    for as long as the service went on (a byte every 59 s: for ever)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5, raising=False)  # none before the fix
    _, error, took = _read_dripped()
    assert isinstance(error, TransientStorageError), error
    assert "s3://b/p/" in str(error) and "the read was cut there" in str(error), error
    assert took < 3, f"took {took:.1f} s"


def test_an_s3_body_that_progresses_slowly_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: a body that brings a chunk in every window is read whole, however long the read
    takes in all (here 1 s, twice the 0.5 s window; chunks of 4 bytes, one every 0.2 s)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    monkeypatch.setattr(s3_storage, "BODY_CHUNK", 4)
    data, error, took = _read_dripped(size=20, step=1, pause=0.05)
    assert error is None, error
    assert data == b"x" * 20
    assert took >= 0.9, f"took {took:.1f} s"


@pytest.mark.parametrize(
    "pages",
    [
        # S3 orders keys by their UTF-8 bytes: U+FFFD (EF BF BD) before U+10000 (F0 90 80 80),
        # where UTF-16 would put them the other way; Python compares code points, the same order.
        [["p/snapshots/\ufffd"], ["p/snapshots/\U00010000", "p/snapshots/" + "a" * 64]],
        # Empty pages that say more follows (a service filtering a page out, or a prefix-only page).
        [["p/snapshots/0"], [], [], ["p/snapshots/" + "a" * 64]],
        # The first page empty.
        [[], ["p/snapshots/" + "a" * 64]],
    ],
    ids=["utf8-order", "empty-pages", "empty-first"],
)
def test_a_conforming_listing_in_utf8_order_or_with_empty_pages_is_listed_whole(pages: list[list[str]]) -> None:
    """Held: the advance rule (each page starts after the greatest key so far) accepts what a
    conforming service sends: keys whose UTF-8 byte order differs from UTF-16's, and empty pages
    with IsTruncated."""
    found, error, served = _list_from(lambda n: (pages[n], f"t{n}" if n + 1 < len(pages) else None))
    assert error is None, error
    assert found == ["snapshots/" + "a" * 64]
    assert len(served) == len(pages)


class _RegionRedirect(_Service):
    """S3's answer to a request signed for the wrong region: 301 PermanentRedirect naming the
    bucket's region (x-amz-bucket-region); the object when the request is signed for that one."""

    served: list[str]

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        self.served.append(auth.split("Credential=")[-1].split(",")[0])
        if "/eu-west-1/s3/" in auth:
            body = b"the object"
            self.send_response(200)
        else:
            body = (
                b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code>'
                b"<Message>use the bucket's region</Message><Bucket>b</Bucket></Error>"
            )
            self.send_response(301)
            self.send_header("x-amz-bucket-region", "eu-west-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_region_redirect_botocore_follows_itself_still_reads() -> None:
    """Held: a 301 that names the bucket's region is followed by botocore itself (the request
    signed again for that region, to the same host) before Phoenix sees an error: the read
    succeeds; the redirect rule meets only a redirect botocore gave up on."""
    served: list[str] = []
    handler = type("Handler", (_RegionRedirect,), {"served": served})
    with _s3_behind(handler) as backend:
        data, error, _ = bounded(lambda: backend.read("config"), 5.0)
    assert error is None, error
    assert data == b"the object"
    assert [s.split("/")[2] for s in served] == ["us-east-1", "eu-west-1"], served


class _HeaderDrip(_Service):
    """An S3 service that accepts a request and sends its status line and headers one byte per
    `pause` (each well inside the read timeout), `most` bytes in all (the bound of the test);
    with `interim`, it drips the `100 Continue` a PUT that asks for one waits on instead."""

    pause = 0.1
    most = 80
    interim = False
    served: list[str]

    def _drip(self, head: bytes) -> None:
        self.served.append(f"{self.command} {self.path}")
        with contextlib.suppress(OSError):
            for byte in head[: self.most]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(self.pause)
        self.close_connection = True

    def handle_expect_100(self) -> bool:
        if self.interim:
            self._drip(b"HTTP/1.1 100 Continue\r\n" + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n")
            return False
        return super().handle_expect_100()

    def _answer(self) -> None:
        self._drip(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"p" * 200 + b"\r\nContent-Length: 0\r\n\r\n")

    do_GET = do_HEAD = do_PUT = _answer


@pytest.mark.parametrize("operation", ["read", "stat", "list", "write", "write-100-continue"])
def test_s3_response_headers_that_drip_are_cut_at_the_response_limit(
    operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that sends a response's status line and headers a byte at a time, each inside
    the read timeout, is cut RESPONSE_SECONDS (120 s; 0.5 s here) after the request was sent:
    one transient error naming the target and the cause, which the retries handle. Every kind of
    request: an object's GET (whose body has its own limit only once the headers are in), a HEAD,
    a listing, a PUT, and the `100 Continue` a large PUT waits on before sending its body. Before,
    each was waited on for as long as the service dripped (here 8 s, past the test's bound)."""
    monkeypatch.setattr(s3_storage, "RESPONSE_SECONDS", 0.5, raising=False)  # none before the fix
    served: list[str] = []
    handler = type("Handler", (_HeaderDrip,), {"served": served, "interim": operation == "write-100-continue"})
    name = "snapshots/" + "a" * 64
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        calls: dict[str, Callable[[], object]] = {
            "read": lambda: inner.read(name),
            "stat": lambda: inner.stat(name),
            "list": lambda: list(inner.list("snapshots/")),
            "write": lambda: inner.write(name, b"x" * 10),
            "write-100-continue": lambda: inner.client.put_object(Bucket="b", Key="p/" + name, Body=io.BytesIO(b"x")),
        }
        call = calls[operation]
        if operation == "write-100-continue":
            call = _mapped(inner, call)
        _, error, took = bounded(call, 5.0)
    assert isinstance(error, TransientStorageError), error
    assert "s3://b/p/" in str(error) and "sent no complete response headers in 0.5 s" in str(error), error
    assert took < 3, f"took {took:.1f} s"
    assert len(served) == 1, served


@pytest.mark.parametrize("operation", ["read", "stat"])
def test_s3_headers_cut_after_the_status_line_are_an_error_not_a_response(
    operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The response limit cuts a service dripping its headers after the whole status line is in
    (here at 2.5 s, the line in after 1.7 s): http.client took the end of the stream for the end of
    the headers, and the cut request came back as a response: `stat` found an object that the
    service never said it holds, `read` gave an empty object (doctor then called the repository
    config malformed and sent the user to restore it). The cut is the transient error it is."""
    monkeypatch.setattr(s3_storage, "RESPONSE_SECONDS", 2.5)
    served: list[str] = []
    handler = type("Handler", (_HeaderDrip,), {"served": served})
    name = "snapshots/" + "a" * 64
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        call = {"read": lambda: inner.read(name), "stat": lambda: inner.stat(name)}[operation]
        result, error, _ = bounded(call, 8.0)
    assert isinstance(error, TransientStorageError), (result, error)
    assert "sent no complete response headers in 2.5 s" in str(error), error


def _mapped(inner: S3Backend, call: Callable[[], object]) -> Callable[[], object]:
    """`call`, its botocore error mapped as the backend maps every one (`S3Backend._do`)."""
    return lambda: inner._do("writing the test object", call)


class _HeadersThenBody(_Service):
    """Held: headers that arrive whole, each line slowly but well inside the limit, then a body."""

    def do_GET(self) -> None:
        for line in (b"HTTP/1.1 200 OK\r\n", b"Content-Length: 10\r\n", b"\r\n"):
            self.wfile.write(line)
            self.wfile.flush()
            time.sleep(0.05)
        self.wfile.write(b"0123456789")


def test_s3_response_headers_inside_the_limit_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_storage, "RESPONSE_SECONDS", 0.5, raising=False)
    with _s3_behind(_HeadersThenBody) as backend:
        data, error, _ = bounded(lambda: [backend.read("snapshots/" + "a" * 64) for _ in range(3)], 5.0)
    assert error is None, error
    assert data == [b"0123456789"] * 3


def test_a_botocore_without_the_pool_table_still_makes_an_s3_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A botocore release whose HTTP session has no pool table keeps its own behaviour (each read
    timed, each body stall-limited) instead of every S3 target failing at the upgrade; with the
    table, the bounded connection classes are set."""
    monkeypatch.setattr(s3_storage, "_bound_response_headers", _no_table(s3_storage._bound_response_headers))
    with _s3_behind(_HeadersThenBody) as backend:
        data, error, _ = bounded(lambda: backend.read("snapshots/" + "a" * 64), 5.0)
    assert error is None, error
    assert data == b"0123456789"
    monkeypatch.undo()
    settings = S3Settings(
        target="s3",
        bucket="b",
        endpoint="http://127.0.0.1:9",
        region="us-east-1",
        access_key_id="AKIAHOSTILE",
        secret_access_key="hostile-secret",
    )
    client = S3Backend(settings).client
    pools = client._endpoint.http_session._pool_classes_by_scheme
    assert pools["http"].ConnectionCls.__name__ == "_BoundHTTPConnection"


def _no_table(bound: Callable[[object], None]) -> Callable[[object], None]:
    """`bound` given a client whose HTTP session has no pool table (as a later botocore's may)."""

    def call(client: object) -> None:
        session = client._endpoint.http_session  # type: ignore[attr-defined]
        table = session._pool_classes_by_scheme
        del session._pool_classes_by_scheme
        try:
            bound(client)
        finally:
            session._pool_classes_by_scheme = table

    return call


@pytest.mark.parametrize(
    ("chosen", "alive"),
    [
        ("nothing", "-o ServerAliveInterval=15 -o ServerAliveCountMax=4"),
        ("GIT_SSH_COMMAND", None),
        ("GIT_SSH", None),
        ("core.sshCommand", None),
        ("ssh config interval", None),
        ("ssh config count", "-o ServerAliveInterval=15"),
    ],
)
def test_git_over_ssh_gets_keepalives_unless_the_user_chose_the_ssh_command_or_its_own(
    tmp_path: Path, chosen: str, alive: str | None
) -> None:
    """With no ssh command of the user's, git runs ssh with keepalives (15 s x 4: a peer silent
    after the handshake ends the command after a minute, not the 30-minute network timeout),
    besides BatchMode and the connect timeout. A user's GIT_SSH_COMMAND, GIT_SSH or
    core.sshCommand is git's ssh unchanged (before, Phoenix's own GIT_SSH_COMMAND overrode the
    latter two), and keepalives set in the user's ssh config (what `ssh -G` says) are not
    overridden on the command line. The ssh here is a stand-in that records its arguments."""
    require_git()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "ssh-argv.log"
    interval, count = {"ssh config interval": ("30", "3"), "ssh config count": ("0", "9")}.get(chosen, ("0", "3"))
    fake_ssh = bin_dir / "ssh"
    fake_ssh.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -G ]; then printf "serveraliveinterval {interval}\\nserveralivecountmax {count}\\n"; exit 0; fi\n'
        f'printf "%s\\n" "$*" >> {log}\nexit 255\n'
    )
    fake_ssh.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if chosen == "GIT_SSH_COMMAND":
        env["GIT_SSH_COMMAND"] = "ssh -o User=mine"
    elif chosen == "GIT_SSH":
        env["GIT_SSH"] = str(fake_ssh)
    elif chosen == "core.sshCommand":
        (tmp_path / ".gitconfig").write_text("[core]\n\tsshCommand = ssh -o User=mine\n")
    backend = GitBackend("ssh://git@127.0.0.1:2222/r.git", "main", True, tmp_path / "clone", env)
    _, error, _ = bounded(backend.exists, 10.0)
    assert error is not None  # the stand-in never connects
    argv = log.read_text()
    assert "git@127.0.0.1" in argv, argv
    if alive is None:
        assert "ServerAliveInterval=15" not in argv and "ServerAliveCountMax" not in argv, argv
    else:
        assert alive in argv and "-o BatchMode=yes -o ConnectTimeout=10" in argv, argv
    if chosen == "ssh config count":
        assert "ServerAliveCountMax" not in argv, argv
    if chosen in ("GIT_SSH_COMMAND", "core.sshCommand"):
        assert "-o User=mine" in argv and "BatchMode" not in argv, argv
    if chosen == "GIT_SSH":
        assert "BatchMode" not in argv, argv  # the user's program, called as git calls it


@pytest.mark.parametrize(
    ("remote", "destination"),
    [
        ("ssh://git@host.example:2222/r.git", ["-p", "2222", "git@host.example"]),
        ("git+ssh://host.example/r.git", ["host.example"]),
        ("git@host.example:team/r.git", ["git@host.example"]),
        ("[host.example:2200]:r.git", ["-p", "2200", "host.example"]),
        ("[::1]:r.git", ["::1"]),
        ("https://host.example/r.git", None),
        ("/srv/r.git", None),
        ("ssh://-oProxyCommand=x/r.git", None),
    ],
)
def test_the_ssh_destination_is_read_as_git_reads_the_remote(remote: str, destination: list[str] | None) -> None:
    assert git_storage._ssh_destination(remote) == destination


class _PartDrip(_HeaderDrip):
    """A multipart upload whose start and abort are answered at once and whose part's headers
    drip (`_HeaderDrip`)."""

    def do_POST(self) -> None:
        self.served.append(f"POST {self.path}")
        body = b"<InitiateMultipartUploadResult><UploadId>u1</UploadId></InitiateMultipartUploadResult>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_DELETE(self) -> None:
        self.served.append(f"DELETE {self.path}")
        self.send_response(204)
        self.end_headers()


def test_a_multipart_part_cut_for_its_headers_is_said_so_after_the_abort(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part whose headers drip past RESPONSE_SECONDS is cut; the upload is then aborted (a
    request of its own, answered) and the error is the cut's: transient, naming the cause.
    Before, the abort's request cleared the cut this thread had seen, and the cut part was
    reported as a failed connection ("check that targets.s3.endpoint is an S3 service that
    answers"): the wrong cause and the wrong fix."""
    monkeypatch.setattr(s3_storage, "RESPONSE_SECONDS", 0.5)
    served: list[str] = []
    handler = type("Handler", (_PartDrip,), {"served": served})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        assert isinstance(inner, S3Backend)
        inner.settings.multipart_threshold = inner.settings.part_size = 4
        _, error, took = bounded(lambda: inner.write("snapshots/" + "a" * 64, b"x" * 10), 5.0)
    assert isinstance(error, TransientStorageError), error
    assert "sent no complete response headers in 0.5 s" in str(error), error
    assert [s.split(" ")[0] for s in served] == ["POST", "PUT", "DELETE"], served
    assert took < 3, f"took {took:.1f} s"


def test_a_core_ssh_command_the_user_sets_for_this_remote_alone_is_left_to_git(tmp_path: Path) -> None:
    """A core.sshCommand the user's git config includes only for repositories with this remote
    (`includeIf "hasconfig:remote.*.url:..."`, a common way to choose the ssh key per host) is
    the ssh git runs in Phoenix's clone, whose remote this is: Phoenix sets no ssh command of its
    own over it. Before, the check ran outside any repository, did not see it, and Phoenix's
    GIT_SSH_COMMAND overrode it (the wrong key, a refused push)."""
    require_git()
    (tmp_path / "work.inc").write_text("[core]\n\tsshCommand = ssh -i ~/.ssh/work_key\n")
    (tmp_path / ".gitconfig").write_text(
        f'[includeIf "hasconfig:remote.*.url:git@work.example:*/**"]\n\tpath = {tmp_path / "work.inc"}\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    git_storage._ssh_command(env, "git@work.example:team/r.git")
    assert "GIT_SSH_COMMAND" not in env, env
    elsewhere = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    git_storage._ssh_command(elsewhere, "git@other.example:team/r.git")
    assert "BatchMode=yes" in elsewhere["GIT_SSH_COMMAND"], elsewhere


class _SlowTaker(_Service):
    """A service that takes an upload's body 64 KiB every 0.5 s: each block urllib3 sends goes
    out well inside the socket's timeout (3 s while sending), below 256 KiB a window of 0.5 s;
    `most` reads at most (30 s: past the bound of the test)."""

    rbufsize = 0  # each read takes its bytes from the socket, not from a buffer filled at once
    most = 60
    served: list[str]

    def do_PUT(self) -> None:
        self.served.append(f"PUT {self.path}")
        with contextlib.suppress(OSError):
            for _ in range(self.most):
                if not self.rfile.read(65536):
                    break
                time.sleep(0.5)
        self.close_connection = True


def test_an_s3_upload_whose_body_is_taken_slowly_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A service that takes a PUT's body slowly, each block inside the socket's timeout, is cut
    once it took less than 256 KiB in BODY_STALL_SECONDS (60 s; 0.5 s here): one transient error
    naming the target and the cause, which the retries handle. Before, the body was sent for as
    long as the service went on taking it (the socket's timeout bounds each send, not the whole)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    served: list[str] = []
    handler = type("Handler", (_SlowTaker,), {"served": served})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        assert isinstance(inner, S3Backend)
        # 12 MiB: more than the kernel's buffers on both ends hold (4 MiB each at most here).
        _, error, took = bounded(lambda: inner.write("snapshots/" + "a" * 64, b"x" * (12 << 20)), 5.0)
    assert isinstance(error, TransientStorageError), error
    text = str(error)
    assert "s3://b/p/" in text and "took less than 256 KiB of the request's body in 0.5 s" in text, text
    assert took < 4, f"took {took:.1f} s"


class _BodyDrip(_Service):
    """A listing, or an error, whose headers come whole and whose XML body comes a byte every
    50 ms (each far inside the read timeout; 200 bytes at most, the bound of the test)."""

    status = 200

    def do_GET(self) -> None:
        body = (b'<?xml version="1.0" encoding="UTF-8"?>' + b" " * 400)[:200]
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "400")
        self.end_headers()
        self.wfile.flush()
        with contextlib.suppress(OSError):
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        self.close_connection = True


@pytest.mark.parametrize("answer", ["listing", "error"])
def test_an_s3_response_body_botocore_reads_itself_that_drips_is_cut(
    answer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing's XML, or an error's (a 503 to an object's GET), read by botocore in one read
    outside Phoenix's body reader, dripped a byte at a time, is cut once less than 256 KiB came in
    BODY_STALL_SECONDS (60 s; 0.5 s here): one transient error naming the target and the cause.
    Before, it was read for as long as the service dripped (here 10 s, past the test's bound)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    handler = type("Handler", (_BodyDrip,), {"status": 200 if answer == "listing" else 503})
    name = "snapshots/" + "a" * 64
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        call = (lambda: list(inner.list("snapshots/"))) if answer == "listing" else (lambda: inner.read(name))
        _, error, took = bounded(call, 5.0)
    assert isinstance(error, TransientStorageError), error
    text = str(error)
    assert "s3://b/p/" in text and "less than 256 KiB of the response's body in 0.5 s" in text, text
    assert "the read was cut there" in text, text
    assert took < 3, f"took {took:.1f} s"


class _Quick(_Service):
    """Answers every HEAD at once, kept alive."""

    wbufsize = 65536  # the status line and headers in one write

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()


def test_a_cut_never_reaches_the_next_request_on_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of a cut with the end of its request: with a limit about as long as a request
    takes (0.7 ms), a few requests are cut; every one either succeeds or fails as cut, never as a
    connection broken under it (a cut of the request before, reaching the connection after it was
    handed on). A watcher whose disarm did not wait for a running stop failed here (2 of 150)."""
    monkeypatch.setattr(s3_storage, "RESPONSE_SECONDS", 0.0007)
    outcomes: dict[str, int] = {}
    with _s3_behind(_Quick) as backend:
        inner = backend.unwrap()

        def run() -> None:
            for _ in range(150):
                try:
                    found = inner.stat("snapshots/" + "a" * 64)
                    outcome = "read" if found is not None and found.size == 5 else f"wrong: {found}"
                except TransientStorageError as exc:
                    outcome = "cut" if "sent no complete response headers" in str(exc) else str(exc)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        _, error, _ = bounded(run, 20.0)
    assert error is None, error
    assert set(outcomes) <= {"read", "cut"}, outcomes


class _EarlyAnswer(_BodyDrip):
    """A service that answers a PUT asking `Expect: 100-continue` at once with its final 503
    (no `100 Continue`, its body never taken), whose XML body then drips (`_BodyDrip`)."""

    def handle_expect_100(self) -> bool:
        return True  # no interim answer: the final one follows at once

    do_PUT = _BodyDrip.do_GET


def test_an_early_answer_to_an_upload_whose_body_drips_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """The final answer a service gives a large PUT before its body (instead of `100 Continue`:
    an error, as S3 does for a bad signature) has its body bounded as every response's is: cut
    once less than 256 KiB came in BODY_STALL_SECONDS (60 s; 0.5 s here), one transient error
    naming the cause. Before, botocore read such an answer with its own response class, not
    Phoenix's, and the body was read for as long as the service dripped it (10 s here)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    handler = type("Handler", (_EarlyAnswer,), {"status": 503})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        assert isinstance(inner, S3Backend)
        put = _mapped(inner, lambda: inner.client.put_object(Bucket="b", Key="p/o", Body=io.BytesIO(b"x" * 10)))
        _, error, took = bounded(put, 5.0)
    assert isinstance(error, TransientStorageError), error
    assert "s3://b/p/" in str(error) and "less than 256 KiB of the response's body in 0.5 s" in str(error), error
    assert took < 3, f"took {took:.1f} s"


class _ChunkDrip(_Service):
    """A listing sent chunked, one byte a chunk, a chunk every 20 ms (each far inside the read
    timeout and the stall window; 250 chunks at most, the bound of the test)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        with contextlib.suppress(OSError):
            for byte in (b'<?xml version="1.0" encoding="UTF-8"?>' + b" " * 400)[:250]:
                self.wfile.write(b"1\r\n" + bytes([byte]) + b"\r\n")
                self.wfile.flush()
                time.sleep(0.02)
        self.close_connection = True


def test_a_chunked_response_body_that_drips_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing sent in chunks of a byte, each chunk quick but the whole far below 256 KiB in
    BODY_STALL_SECONDS (60 s; 0.5 s here), is cut there: one transient error naming the cause.
    Before, each read of a chunk (its size line, its byte) had a window of its own and none was
    ever cut: the listing was read for as long as the service went on (5 s here)."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    with _s3_behind(_ChunkDrip) as backend:
        inner = backend.unwrap()
        _, error, took = bounded(lambda: list(inner.list("snapshots/")), 8.0)
    assert isinstance(error, TransientStorageError), error
    assert "less than 256 KiB of the response's body in 0.5 s" in str(error), error
    assert took < 3, f"took {took:.1f} s"


def test_a_body_its_reader_takes_slowly_is_not_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: the stall window counts the time spent waiting on the network inside reads, never
    the reader's own between them. A body that came whole at once, read a byte every 0.1 s
    (1.2 s in all, more than two windows of 0.5 s, far less than 256 KiB), is read whole."""
    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    handler = type("Handler", (_Drip,), {"served": [], "size": 12, "step": 12, "pause": 0.0})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        assert isinstance(inner, S3Backend)

        def read_slowly() -> bytes:
            body = inner.client.get_object(Bucket="b", Key="p/o")["Body"]
            got = b""
            while part := body.read(1):
                got += part
                time.sleep(0.1)
            return got

        data, error, _ = bounded(read_slowly, 8.0)
    assert error is None, error
    assert data == b"x" * 12


@pytest.mark.parametrize("table", ["pool table", "no pool table"])
def test_a_body_that_drips_is_cut_with_a_urllib3_that_cannot_shut_a_response_down(
    table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a urllib3 whose responses have no `shutdown` (before 2.3; boto3 allows 1.26), a
    dripping object's body is still cut at the stall limit (60 s; 0.5 s here), and the watcher
    goes on cutting: a second such read is cut too. Before, the cut closed the response instead,
    which waits for the read blocked in it: the one watcher thread of the process hung there,
    and neither read was ever cut (each went on for as long as the service dripped). The same
    with a botocore without the pool table (`_bound_response_headers`), where Phoenix's own
    reader is the body's only bound."""
    import urllib3.response

    if table == "no pool table":
        monkeypatch.setattr(s3_storage, "_bound_response_headers", _no_table(s3_storage._bound_response_headers))

    monkeypatch.setattr(s3_storage, "BODY_STALL_SECONDS", 0.5)
    for cls in urllib3.response.HTTPResponse.__mro__:
        if "shutdown" in vars(cls):
            monkeypatch.delattr(cls, "shutdown")
    for _ in range(2):
        _, error, took = _read_dripped(most=200)
        assert isinstance(error, TransientStorageError), error
        assert "the read was cut there" in str(error), error
        assert took < 3, f"took {took:.1f} s"


class _SteadyTaker(_Service):
    """A service on a slow but steady link: it takes a PUT's body 16 KiB every 50 ms (320 KiB/s)
    through a 4 KiB receive buffer, then answers 200."""

    rbufsize = 0
    taken: list[int]

    def setup(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        super().setup()

    def do_PUT(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        with contextlib.suppress(OSError):
            while left > 0:
                block = self.rfile.read(min(16384, left))
                if not block:
                    break
                left -= len(block)
                time.sleep(0.05)
        self.taken.append(left)
        self.send_response(200)
        self.send_header("ETag", '"e"')
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_an_upload_on_a_slow_steady_link_is_not_cut_by_the_sending_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held since the fix: an upload on a link far above the stall limit's rate (4.3 KiB/s) but
    below what the socket's sending timeout allows for one send (urllib3 sends with the connect
    timeout, 3 s, and Python's `sendall` applies it to the whole call; 0.3 s here) is sent whole:
    the body goes out in blocks small enough for that timeout at the stall limit's rate. Before,
    it went out 256 KiB a send (the whole 128 KiB body here in one), which needs 85 KiB/s at 3 s
    (427 KiB/s here at 0.3 s: the 320 KiB/s link failed with a bare timeout, no cause named)."""
    import urllib3

    taken: list[int] = []
    handler = type("Handler", (_SteadyTaker,), {"taken": taken})
    with _s3_behind(handler) as backend:
        inner = backend.unwrap()
        assert isinstance(inner, S3Backend)
        session = inner.client._endpoint.http_session  # type: ignore[attr-defined]
        session._manager.connection_pool_kw["timeout"] = urllib3.Timeout(connect=0.3, read=60)
        session._manager.connection_pool_kw["socket_options"] = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)]
        _, error, _ = bounded(lambda: inner.write("snapshots/" + "a" * 64, b"x" * (128 << 10)), 8.0)
    assert error is None, error
    assert taken == [0], taken
