"""The pack pass's node prover (repo/prover.py): nodes hashed from blobs fed once each, in any
order, proved exactly when their bytes match; what it holds for nodes further on never exceeds its
budget (the nodes holding the most are given up, left to the restore's reader); a node whose blob
is lost or lies in no pack of the run is not proved; packs are read in the order nodes need them."""

from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.pack import PackEntry, pack_name
from phoenix_backup.repo.prover import Content, NodeProver
from phoenix_backup.repo.tree import Extent, Extents

PACKS = [f"{i:02x}" * 32 for i in range(4)]


def blob_id(i: int) -> bytes:
    return bytes([i + 1]) * 32


def index_of(blobs: list[bytes], where: list[list[int]]) -> Index:
    """An index placing blob i in the packs where[i] (one entry each, at made-up offsets)."""
    index = Index()
    entries: dict[str, list[PackEntry]] = {p: [] for p in PACKS}
    for i, (data, packs) in enumerate(zip(blobs, where, strict=True)):
        for p in packs:
            entries[PACKS[p]].append(
                PackEntry(BlobType.DATA, Compression.NONE, blob_id(i), 100 * i, len(data), len(data))
            )
    for pack, listed in entries.items():
        index.add_pack(pack, listed)
    return index


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[bytes], list[list[int]], list[list[tuple[int, int, int]]], list[bool]]:
    blobs = draw(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=6))
    where = [draw(st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True)) for _ in blobs]
    nodes = []
    for _ in range(draw(st.integers(1, 6))):
        extents = []
        for _ in range(draw(st.integers(0, 8))):
            b = draw(st.integers(0, len(blobs) - 1))
            offset = draw(st.integers(0, len(blobs[b])))
            # Now and then an extent past its blob's end (a writer's bug the reader refuses).
            length = draw(st.integers(0, len(blobs[b]) - offset + draw(st.sampled_from([0, 0, 0, 1]))))
            extents.append((b, offset, length))
        nodes.append(extents)
    honest = draw(st.lists(st.booleans(), min_size=len(nodes), max_size=len(nodes)))
    return blobs, where, nodes, honest


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    scenarios(),
    st.sampled_from([0, 7, 40, 10**9]),
    st.randoms(use_true_random=False),
    st.sets(st.integers(0, 5), max_size=2),
)
def test_nodes_are_proved_exactly_when_their_bytes_match_within_the_budget(
    scenario: tuple[list[bytes], list[list[int]], list[list[tuple[int, int, int]]], list[bool]],
    budget: int,
    rnd: object,
    lost: set[int],
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    blobs, where, nodes, honest = scenario
    index = index_of(blobs, where)
    proved: list[Content] = []
    prover = NodeProver(index, PACKS, proved.append, budget=budget)
    should: set[Content] = set()
    for records, true in sorted(zip(nodes, honest, strict=True), key=lambda x: -len(x[0])):
        extents = Extents.of([Extent(blob_id(b), off, length) for b, off, length in records])
        fits = all(off + length <= len(blobs[b]) for b, off, length in records)
        data = b"".join(blobs[b][off : off + length] for b, off, length in records) if fits else b""
        content = (extents, extents.size, hashlib.sha256(data).hexdigest() if true else "0" * 64)
        assert prover.add(content)
        if fits and true and not any(b in lost for b, _o, _l in records):
            should.add(content)
    # Every blob delivered once or twice (a copy in a second pack), in any order; the lost never.
    deliveries = [i for i in range(len(blobs)) for _ in where[i] if i not in lost]
    rnd.shuffle(deliveries)
    for i in sorted(lost & set(range(len(blobs)))):
        prover.lost(blob_id(i))
    for i in deliveries:
        prover.feed(blob_id(i), blobs[i])
        assert prover.held_bytes <= budget
    # (Equal nodes are one content, added once or twice: each proved once per time it was added.)
    assert set(proved) <= should
    assert len(should - set(proved)) <= prover.given_up
    if budget == 10**9:
        assert set(proved) == should and prover.given_up == 0
    if not lost:
        assert prover.held_bytes == 0 and not prover.held  # every node done: nothing held
    prover.close()
    assert prover.held_bytes == 0 and not prover.held


def test_a_node_whose_held_blobs_exceed_the_budget_is_given_up_and_the_others_are_proved() -> None:
    """Node `far` needs blob 0 again after blob 2, which comes last: blob 0 (40 bytes) is held
    for it; with a budget of 39 it is given up (left to the restore's reader), not proved, and
    the nodes that hold nothing are proved; with 40 it is proved too."""
    blobs = [bytes(range(40)), b"x" * 10, b"y" * 10]
    index = index_of(blobs, [[0], [0], [1]])
    plan = {
        "far": [(0, 0, 5), (2, 0, 10), (0, 5, 35)],
        "near": [(0, 0, 40), (1, 0, 10)],
        "one": [(1, 2, 3)],
    }
    for budget, expected in ((39, {"near", "one"}), (40, {"near", "one", "far"})):
        proved: list[Content] = []
        prover = NodeProver(index, PACKS, proved.append, budget=budget)
        contents = {}
        for key, records in plan.items():
            extents = Extents.of([Extent(blob_id(b), off, length) for b, off, length in records])
            sha = hashlib.sha256(b"".join(blobs[b][off : off + length] for b, off, length in records)).hexdigest()
            contents[key] = (extents, extents.size, sha)
            assert prover.add(contents[key])
        for i in (0, 1, 2):
            prover.feed(blob_id(i), blobs[i])
        assert set(proved) == {contents[key] for key in expected}, budget
        assert prover.given_up == (1 if budget == 39 else 0) and prover.held_bytes == 0
        assert prover.peak_held == (0 if budget == 39 else 40)


def test_packs_are_read_in_the_order_the_largest_nodes_need_them_and_outside_blobs_refuse() -> None:
    blobs = [b"a" * 10, b"b" * 10, b"c" * 10]
    index = index_of(blobs, [[0], [1], [2]])
    prover = NodeProver(index, PACKS[:3], lambda content: None)
    large = (Extents.of([Extent(blob_id(2), 0, 10), Extent(blob_id(0), 0, 10)]), 20, "0" * 64)
    small = (Extents.of([Extent(blob_id(1), 0, 10)]), 10, "0" * 64)
    assert prover.add(large) and prover.add(small)
    names = [pack_name(p) for p in PACKS]
    assert prover.order(names) == [names[2], names[0], names[1], names[3]]
    # A run that reads only packs 0 and 1 cannot prove a node with a blob in pack 2: not taken.
    partial = NodeProver(index, PACKS[:2], lambda content: None)
    assert not partial.add(large)
    assert partial.add(small)
    assert partial.order(names) == names  # a node of one extent holds nothing: it orders nothing


def test_an_empty_node_is_proved_at_once_and_a_wrong_one_is_not() -> None:
    proved: list[Content] = []
    prover = NodeProver(Index(), [], proved.append)
    empty = (Extents(), 0, hashlib.sha256(b"").hexdigest())
    assert prover.add(empty) and prover.add((Extents(), 0, "0" * 64))
    assert proved == [empty]
