"""A restore's small files are read pack by pack through one schedule on every store
(repo/reader.py `PackSchedule`, issue 20): on S3 as on local disk, forty files of a few kB come
from a few ranged reads, not one each, and come back byte-equal."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from phoenix_backup.repo import keys
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.reader import PackSchedule
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node
from phoenix_backup.sinks.files import FileWriter
from phoenix_backup.sources.layout import Layout
from phoenix_backup.storage.base import Backend

FILES = 40


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_small_files_come_from_a_few_ranged_reads_on_every_store(
    kind: str, make_backend: Callable[..., Backend], tmp_path: Path
) -> None:
    backend = make_backend(kind)
    repo = Repository.init(
        backend, lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}), encrypted=True
    )
    rng = random.Random(kind)
    made: dict[str, bytes] = {}
    nodes: list[tuple[str, Node]] = []
    for i in range(FILES):
        data = rng.randbytes(rng.randint(1, 8) * 1024)
        bid, _ = repo.save_blob(BlobType.DATA, data)
        logical = f"workspace/f{i:02}.bin"
        made[logical] = data
        nodes.append(
            (
                logical,
                Node(
                    name=f"f{i:02}.bin",
                    type="file",
                    mode=0o600,
                    size=len(data),
                    content=[Extent(bid, 0, len(data))],
                    sha256=hashlib.sha256(data).hexdigest(),
                ),
            )
        )
    repo.flush()
    reads: list[tuple[str, int]] = []
    read_range_into = repo.backend.read_range_into

    def counted(name: str, offset: int, buf: memoryview) -> int:
        reads.append((name, len(buf)))
        return read_range_into(name, offset, buf)

    repo.backend.read_range_into = counted  # type: ignore[method-assign]
    to = tmp_path / "out"
    writer = FileWriter(repo, Layout(tmp_path / "ws", tmp_path / "home"), to)
    writer.schedule = PackSchedule(repo, nodes)
    try:
        with ThreadPoolExecutor(2) as pool:  # two writers, as a restore runs them
            assert list(pool.map(lambda n: writer.content(*n), nodes)) == ["ok"] * FILES
    finally:
        writer.close()
    for logical, data in made.items():
        assert (to / logical).read_bytes() == data
    data_reads = [r for r in reads if r[0].startswith("data/")]
    assert 1 <= len(data_reads) <= 3, data_reads  # one read per file without the schedule
