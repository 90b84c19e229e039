"""The decode pool serves the largest node being read first (repo/reader.py): a restore's end is
the end of its largest database's copy and of that copy's integrity_check, so its blobs are not
queued behind the small files the other writer restores. Each node's own ranges keep their order,
and a failure reaches the node reader that asked."""

from __future__ import annotations

import threading

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.repo import reader


def test_the_largest_nodes_ranges_go_first_and_each_nodes_in_order() -> None:
    pool = reader._DecodePool(1)
    gate = threading.Event()
    ran: list[str] = []
    blocker = pool.submit(1, lambda: gate.wait() and {})  # the only thread is busy meanwhile
    futures = [
        pool.submit(size, lambda tag=tag: ran.append(tag) or {})
        for size, tag in [(10, "small-1"), (5_000, "large-1"), (10, "small-2"), (700, "mid"), (5_000, "large-2")]
    ]
    gate.set()
    blocker.result(timeout=10)
    for fut in futures:
        fut.result(timeout=10)
    assert ran == ["large-1", "large-2", "mid", "small-1", "small-2"]


def test_a_failure_reaches_the_reader_that_asked() -> None:
    pool = reader._DecodePool(2)

    def damaged() -> reader.Opened:
        raise CorruptObject("pack 1234 is damaged")

    with pytest.raises(CorruptObject, match="pack 1234"):
        pool.submit(1, damaged).result(timeout=10)
    assert pool.submit(1, lambda: {b"x": b"still serving"}).result(timeout=10) == {b"x": b"still serving"}
