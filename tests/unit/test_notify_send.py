"""Sending a notification is bounded in time: a webhook that accepts the connection and answers a
byte every half second (each read within Apprise's 4 s read timeout) would hold a scheduled run,
and under systemd every later night's run, forever."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

send_mod = importlib.import_module("phoenix_backup.notify.send")  # the module: `notify.send` is its function


@pytest.fixture
def trickling() -> Iterator[str]:
    """A json:// URL whose server answers one byte of its status line every 0.5 s, until the test
    ends (at most 40 bytes, 20 s: the old code, unbounded, returns then)."""
    stop = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"x" * 40:
                if stop.wait(0.5):
                    return
                conn.sendall(bytes([byte]))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{port}/hook"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_webhook_that_never_finishes_answering_is_given_up(trickling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_mod, "SEND_TIMEOUT", 1.5)
    outcome = send_mod.send([trickling], "title", "body", failure=True)
    assert outcome.sent == 0
    assert outcome.problems == [
        "notifications.urls[0] (json://127.0.0.1) did not answer within 1.5 s; the message was dropped"
    ]


def test_many_hanging_urls_share_one_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each URL waited its own SEND_TIMEOUT after the one before: five webhooks that hang were five
    minutes, twenty twenty, the scheduled run held again. The sends now go on side by side within
    one limit. Shown without a clock: each send waits until all three are sending at once, which
    one at a time (the next starting only when the one before is given up) two of them never see."""
    apprise = pytest.importorskip("apprise")
    together = threading.Barrier(3, timeout=20)

    def notify(self: object, **_: object) -> bool:
        together.wait()
        return True

    monkeypatch.setattr(apprise.Apprise, "notify", notify)
    monkeypatch.setattr(send_mod, "SEND_TIMEOUT", 1.0)
    urls = [f"json://127.0.0.1:{9}/hook{i}" for i in range(3)]
    outcome = send_mod.send(urls, "title", "body", failure=True)
    assert outcome.problems == [] and outcome.sent == 3


def test_a_webhook_given_up_does_not_hold_the_process_at_its_exit(trickling: str) -> None:
    """Apprise (2.x) sends through a pool of its own whose threads are not daemons: the run gave
    the webhook up after SEND_TIMEOUT, reported it, and then the process did not exit until the
    webhook finished answering (never, for one that trickles on), so the scheduled run never
    ended. A child process sends to the trickling webhook (20 s of answer left) and must exit."""
    child = (
        "import importlib, sys\n"
        "send_mod = importlib.import_module('phoenix_backup.notify.send')\n"
        "send_mod.SEND_TIMEOUT = 1.0\n"
        "outcome = send_mod.send([sys.argv[1]], 't', 'b', failure=True)\n"
        "print(outcome.problems)\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", child, trickling], capture_output=True, text=True, timeout=12)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: a thread still sending to the webhook held it")
    assert done.returncode == 0, done.stderr
    assert "did not answer within 1 s" in done.stdout, done.stdout
