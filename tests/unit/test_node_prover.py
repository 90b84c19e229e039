"""The pack pass's node prover (repo/prover.py): nodes hashed from blobs fed once each, in any
order, proved exactly when their bytes match; what it holds for nodes further on is sealed bytes
(here: zlib-compressed) and never exceeds its budget (past it, blobs are let go and read again from
their pack, so no node leaves the pass); the nodes of several extents it takes never exceed its
cap; a node whose blob is lost or lies in no pack of the run is not proved; packs are read in the
order nodes need them."""

from __future__ import annotations

import hashlib
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phoenix_backup.repo.crypto import BlobType, Compression
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.pack import PackEntry, pack_name
from phoenix_backup.repo.prover import Content, NodeProver, Reopen
from phoenix_backup.repo.tree import Extent, Extents

PACKS = [f"{i:02x}" * 32 for i in range(4)]


def blob_id(i: int) -> bytes:
    return bytes([i + 1]) * 32


def sealed_of(data: bytes) -> bytes:
    """What the pass holds of a blob: its bytes compressed (a pack's are compressed and sealed)."""
    return zlib.compress(data)


def reopener(blobs: list[bytes], reread: list[bytes] | None = None) -> Reopen:
    """Opens held bytes again; a blob let go is read again from `blobs` (its pack), noted in `reread`."""

    def reopen(blob: bytes, sealed: bytes | None) -> bytes:
        if sealed is not None:
            return zlib.decompress(sealed)
        if reread is not None:
            reread.append(blob)
        return blobs[blob[0] - 1]

    return reopen


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
    prover = NodeProver(index, PACKS, proved.append, reopener(blobs), budget=budget)
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
        prover.feed(blob_id(i), blobs[i], sealed_of(blobs[i]))
        assert prover.held_bytes <= budget
        assert prover.held_bytes == sum(len(sealed) for sealed in prover.held.values())
    # (Equal nodes are one content, added once or twice: each proved once per time it was added.)
    # Whatever the budget, no node leaves the pass: those past it read their blobs again.
    assert set(proved) == should
    if budget == 10**9:
        assert prover.reread == 0
    if not lost:
        assert prover.held_bytes == 0 and not prover.held  # every node done: nothing held
    prover.close()
    assert prover.held_bytes == 0 and not prover.held


def test_a_node_whose_held_blobs_exceed_the_budget_reads_them_again_and_is_proved() -> None:
    """Node `far` needs blob 0 again after blob 2, which comes last: blob 0 is held for it as its
    sealed bytes (compressed: 27 of its 4000 plaintext bytes), so a budget of 27 holds it and it is
    opened again from them; with a budget of 26 it is let go and read again from its pack when
    `far` gets there. Every node is proved either way, and what is held never exceeds the budget."""
    blobs = [bytes(4000), b"x" * 10, b"y" * 10]
    assert len(sealed_of(blobs[0])) == 27
    index = index_of(blobs, [[0], [0], [1]])
    plan = {
        "far": [(0, 0, 5), (2, 0, 10), (0, 5, 3995)],
        "near": [(0, 0, 4000), (1, 0, 10)],
        "one": [(1, 2, 3)],
    }
    for budget, again in ((26, [blob_id(0)]), (27, [])):
        proved: list[Content] = []
        reread: list[bytes] = []
        prover = NodeProver(index, PACKS, proved.append, reopener(blobs, reread), budget=budget)
        contents = {}
        for key, records in plan.items():
            extents = Extents.of([Extent(blob_id(b), off, length) for b, off, length in records])
            sha = hashlib.sha256(b"".join(blobs[b][off : off + length] for b, off, length in records)).hexdigest()
            contents[key] = (extents, extents.size, sha)
            assert prover.add(contents[key])
        for i in (0, 1, 2):
            prover.feed(blob_id(i), blobs[i], sealed_of(blobs[i]))
            assert prover.held_bytes <= budget
        assert set(proved) == set(contents.values()), budget
        assert reread == again and prover.reread == len(again) and prover.reopened == 1 - len(again)
        assert prover.held_bytes == 0 and not prover.held and not prover.gone
        assert prover.peak_held == (0 if budget == 26 else 27)


def test_the_nodes_of_several_extents_taken_never_exceed_the_cap() -> None:
    """Past the cap, `add` refuses a node of several extents and keeps it in `past_cap` (the caller
    proves those in a further pass); nodes of one extent are always taken (they keep nothing), and
    a node refused for a blob outside the run's packs is not kept there (the restore's reader
    proves it)."""
    blobs = [b"a" * 10, b"b" * 10]
    index = index_of(blobs, [[0], [1]])
    proved: list[Content] = []
    prover = NodeProver(index, PACKS, proved.append, reopener(blobs), cap=3)
    many = []
    for n in range(5):
        extents = Extents.of([Extent(blob_id(1), 0, 1 + n), Extent(blob_id(0), 0, 10)])
        many.append((extents, extents.size, hashlib.sha256(blobs[1][: 1 + n] + blobs[0]).hexdigest()))
    one = (Extents.of([Extent(blob_id(0), 2, 3)]), 3, hashlib.sha256(b"aaa").hexdigest())
    assert [prover.add(c) for c in many] == [True, True, True, False, False]
    assert prover.add(one) and prover.taken == 3 and prover.refused == 2
    assert prover.past_cap == many[3:]
    for i in (0, 1):
        prover.feed(blob_id(i), blobs[i], sealed_of(blobs[i]))
    assert set(proved) == {*many[:3], one}
    further = NodeProver(index, PACKS[1:], proved.append, reopener(blobs), cap=3)  # blob 0's pack not read
    assert not further.add(many[3]) and further.past_cap == [] and not further.refused


def test_packs_are_read_in_the_order_the_largest_nodes_need_them_and_outside_blobs_refuse() -> None:
    blobs = [b"a" * 10, b"b" * 10, b"c" * 10]
    index = index_of(blobs, [[0], [1], [2]])
    prover = NodeProver(index, PACKS[:3], lambda content: None, reopener(blobs))
    large = (Extents.of([Extent(blob_id(2), 0, 10), Extent(blob_id(0), 0, 10)]), 20, "0" * 64)
    small = (Extents.of([Extent(blob_id(1), 0, 10)]), 10, "0" * 64)
    assert prover.add(large) and prover.add(small)
    names = [pack_name(p) for p in PACKS]
    assert prover.order(names) == [names[2], names[0], names[1], names[3]]
    # A run that reads only packs 0 and 1 cannot prove a node with a blob in pack 2: not taken.
    partial = NodeProver(index, PACKS[:2], lambda content: None, reopener(blobs))
    assert not partial.add(large)
    assert partial.add(small)
    assert partial.order(names) == names  # a node of one extent holds nothing: it orders nothing


def test_an_empty_node_is_proved_at_once_and_a_wrong_one_is_not() -> None:
    proved: list[Content] = []
    prover = NodeProver(Index(), [], proved.append, reopener([]))
    empty = (Extents(), 0, hashlib.sha256(b"").hexdigest())
    assert prover.add(empty) and prover.add((Extents(), 0, "0" * 64))
    assert proved == [empty]


def test_a_held_blob_larger_than_the_budget_is_opened_once_per_feed_not_once_per_extent() -> None:
    """Blob 0 is larger than the budget (the default chunker's blobs average 1.5 MiB, the budget
    is 1 MiB) and node `zigzag` takes 200 slices of it, alternating with slices of blob 1, which
    comes after it. Blob 0, held (compressible: its sealed bytes fit) or let go (random: they do
    not), is opened again once when blob 1 arrives, as the restore's reader keeps the blob it just
    opened whatever its size (reader.py `_Ahead`), not once per slice: 200 decryptions, or 200 reads
    of its pack, of a blob that may be 8 MiB."""
    import random

    rnd = random.Random(5)
    for first, opened in ((bytes(4000), "reopened"), (rnd.randbytes(4000), "reread")):
        blobs = [first, rnd.randbytes(400)]
        index = index_of(blobs, [[0], [1]])
        records = [(b, 2 * k + b, 2) for k in range(100) for b in (1, 0)]
        extents = Extents.of([Extent(blob_id(b), off, length) for b, off, length in records])
        sha = hashlib.sha256(b"".join(blobs[b][off : off + length] for b, off, length in records)).hexdigest()
        proved: list[Content] = []
        prover = NodeProver(index, PACKS, proved.append, reopener(blobs), budget=1000)
        assert prover.add((extents, extents.size, sha))
        for i in (0, 1):
            prover.feed(blob_id(i), blobs[i], sealed_of(blobs[i]))
        assert proved == [(extents, extents.size, sha)]
        assert (prover.reopened, prover.reread) == ((1, 0) if opened == "reopened" else (0, 1)), opened
