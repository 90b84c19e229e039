"""An attacker who can write the storage plants an object far larger than any Phoenix writes.

Every object is read whole, so before the fix a read took whatever was there: a key slot of
1.5 MiB on S3 or Git was read like any other, a sparse 64 GiB file under `keys/` on local disk
(which costs the attacker no disk) ended in MemoryError. Now each backend refuses, before it
reads the body, an object larger than any of its kind (storage/base.py MAX_OBJECT_SIZE), with
one CorruptObject naming it, which every reader already treats as a damaged object.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.local import LocalBackend
from phoenix_backup.storage.s3 import S3Backend, S3Settings
from phoenix_backup.storage.wrappers import unwrap

SLOT = "keys/" + "5e" * 8


@pytest.mark.parametrize("kind", ["local", "s3", "git"])
def test_an_object_larger_than_its_kind_allows_is_refused_unread(
    kind: str, make_backend: Callable[..., Backend]
) -> None:
    b = make_backend(kind)
    b.create()
    limit = 1 << 20  # storage/base.py MAX_OBJECT_SIZE: a slot is a few hundred bytes
    b.write(SLOT, b"s" * limit)
    assert b.read(SLOT) == b"s" * limit  # the largest slot Phoenix could write is read
    b.write(SLOT, b"s" * (limit + 1))
    with pytest.raises(CorruptObject, match=r"more than any object of its kind .*did not read it"):
        b.read(SLOT)


def test_a_sparse_64_gib_snapshot_costs_no_memory(make_backend: Callable[..., Backend]) -> None:
    b = make_backend("local")
    b.create()
    inner = unwrap(b)
    assert isinstance(inner, LocalBackend)
    name = "snapshots/" + "ab" * 32
    path = inner.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(64 << 30)
    assert os.stat(path).st_blocks == 0
    with pytest.raises(CorruptObject, match="68,719,476,736 bytes"):
        b.read(name)


class _ChunkedS3(http.server.BaseHTTPRequestHandler):
    """An S3-compatible endpoint (a proxy, a self-hosted store, or one the attacker runs) that
    sends GetObject bodies with `Transfer-Encoding: chunked`, which HTTP/1.1 allows: no
    Content-Length. The body is 8 MiB, eight times the largest key slot."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "binary/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"s" * (1 << 20)
        for _ in range(8):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *_args: object) -> None:
        pass


def test_an_s3_reply_without_content_length_is_refused_past_the_limit() -> None:
    """Before the fix, the check read only the Content-Length header, taking a missing one for 0,
    and the body was then read whole, however large."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ChunkedS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = S3Settings(
            target="s3",
            bucket="bucket",
            endpoint=f"http://127.0.0.1:{server.server_address[1]}",
            region="us-east-1",
            access_key_id="key",
            secret_access_key="secret",
        )
        b = S3Backend(settings)
        with pytest.raises(CorruptObject, match=r"more than any object of its kind .*did not read it"):
            b.read(SLOT)
    finally:
        server.shutdown()
        server.server_close()
