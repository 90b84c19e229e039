"""A fault-injecting HTTP proxy on loopback, between Phoenix and the S3 API server (moto).

Each request is forwarded whole to the server, or answered with a fault instead:

- `drop`: the connection is closed once the request is read, with no answer;
- `500` / `503`: an S3 error document (`InternalError` / `SlowDown`), the server never sees it;
- `truncate`: the server's answer with the body cut in half, then the connection closed;
- `delay`: forwarded after a pause (0.2-0.6 s).

`slow` holds the requests it picks for as many seconds as it returns before forwarding them (a
target over a slow link: every request of a kind takes that long); `held` counts those in progress.

Whether a request meets a fault is decided by a seeded hash of the request (method, path, query,
range) and of how often that same request was seen, not by arrival order; the faults met take
the kinds in turn, so a handful of them covers every kind. `max_faults` bounds the faults one request meets in a row,
so that retries (5 attempts) always get through when that is what a test wants. `fail` adds a
persistent failure for requests a predicate picks, and `stop()` makes the port refuse connections
(a service that went away).

Deliberately small: one request per upstream connection, Content-Length bodies (what botocore
sends for single PUTs), the upstream answer read to its end.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

FAULTS = ("drop", "500", "503", "truncate", "delay")
_ERRORS = {
    "500": (b"500 Internal Server Error", b"InternalError", b"We encountered an internal error."),
    "503": (b"503 Slow Down", b"SlowDown", b"Please reduce your request rate."),
}


@dataclass
class Request:
    method: str
    target: str  # path and query
    headers: dict[str, str]
    head: bytes  # request line and headers, as received
    body: bytes

    @property
    def key(self) -> str:
        return f"{self.method} {self.target} {self.headers.get('range', '')}"


@dataclass
class Plan:
    rate: float = 0.0  # share of requests that meet a fault (a seeded hash of each request decides)
    every: int = 0  # or: the first attempt of every Nth new request meets one (a fixed count)
    kinds: tuple[str, ...] = FAULTS
    max_faults: int = 2  # faults in a row for one request, at most
    seed: int = 0
    fail: Callable[[Request], str | None] | None = None  # a persistent fault for some requests
    slow: Callable[[Request], float] | None = None  # seconds to hold a request before forwarding it
    held: Counter[str] = field(default_factory=Counter)  # requests being held now, by method and path
    seen: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, req: Request) -> str | None:
        if self.fail is not None and (kind := self.fail(req)) is not None:
            with self.lock:
                self.injected[kind] += 1
            return kind
        with self.lock:
            attempt = self.seen[req.key]
            self.seen[req.key] += 1
            new = len(self.seen) if attempt == 0 else 0
        if self.every:
            if not new or new % self.every != self.every // 2:
                return None
        else:
            if attempt >= self.max_faults or not self.rate:
                return None
            digest = hashlib.sha256(f"{self.seed}|{req.key}|{attempt}".encode()).digest()
            if int.from_bytes(digest[:4], "big") / 2**32 >= self.rate:
                return None
        with self.lock:  # the kinds in turn, so that a few faults already cover every kind
            kind = self.kinds[sum(self.injected.values()) % len(self.kinds)]
            self.injected[kind] += 1
        return kind


class FaultyProxy:
    def __init__(self, upstream_port: int, plan: Plan | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.plan = plan or Plan()
        self.requests = 0
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Close the listening socket: new connections to the port are refused."""
        self.server.shutdown()
        self.server.server_close()

    # -- one client connection (keep-alive: many requests) ----------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while True:
                req = _read_request(reader, conn)
                if req is None:
                    return
                self.requests += 1
                fault = self.plan.decide(req)
                if fault == "drop":
                    return
                if fault in _ERRORS:
                    conn.sendall(_error_response(fault))
                    continue
                if fault == "delay":
                    time.sleep(0.2 + (hash(req.key) % 5) / 10)
                pause = self.plan.slow(req) if self.plan.slow is not None else 0.0
                if pause:
                    with self.plan.lock:
                        self.plan.held[req.key] += 1
                    try:
                        time.sleep(pause)
                        answer = self._forward(req)
                    finally:
                        with self.plan.lock:
                            self.plan.held[req.key] -= 1
                            if not self.plan.held[req.key]:
                                del self.plan.held[req.key]
                else:
                    answer = self._forward(req)
                if fault == "truncate":
                    head, _, body = answer.partition(b"\r\n\r\n")
                    conn.sendall(head + b"\r\n\r\n" + body[: len(body) // 2])
                    return
                conn.sendall(answer)
                if b"\r\nconnection: close" in answer.partition(b"\r\n\r\n")[0].lower():
                    return
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                reader.close()
                conn.close()

    def _forward(self, req: Request) -> bytes:
        with socket.create_connection(self.upstream, timeout=60) as up:
            up.sendall(_with_connection_close(req.head) + req.body)
            chunks = []
            while chunk := up.recv(1 << 20):
                chunks.append(chunk)
        return b"".join(chunks)


def _read_request(reader: object, conn: socket.socket) -> Request | None:
    readline = reader.readline  # type: ignore[attr-defined]
    line = readline(65537)
    if not line:
        return None
    head = [line]
    headers: dict[str, str] = {}
    while True:
        h = readline(65537)
        if not h:
            return None
        head.append(h)
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if headers.get("expect", "").lower() == "100-continue" and length:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")  # the body is forwarded with the request
    body = reader.read(length) if length else b""  # type: ignore[attr-defined]
    method, target, _version = line.decode("latin-1").split(" ", 2)
    return Request(method, target, headers, b"".join(head), body)


def _with_connection_close(head: bytes) -> bytes:
    drop = (b"connection:", b"expect:")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(drop)]
    # head ends with an empty line: put the header before it
    return b"\r\n".join([*lines[:-2], b"Connection: close", b"", b""])


def _error_response(kind: str) -> bytes:
    status, code, message = _ERRORS[kind]
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + code + b"</Code><Message>" + message
    body += b"</Message><RequestId>phx-faulty-proxy</RequestId></Error>"
    head = b"HTTP/1.1 " + status + b"\r\nContent-Type: application/xml\r\nContent-Length: "
    return head + str(len(body)).encode() + b"\r\n\r\n" + body
