"""Proving file and database nodes from the plaintext `verify --read-data`'s pack pass opens
(repo/checker.py), so that each blob is decrypted once, whatever the nodes that need it.

A node's content is a list of extents, each a slice of one data blob; the node is proved when
those slices, hashed in order, give its size and SHA-256 (what a restore's `NodeReader` checks).
The pack pass opens every blob of every pack it reads and checks each against its id, and feeds
the copy a restore reads (the index's first location; repo/checker.py), so the node can be hashed
from those very bytes: each node keeps a running SHA-256 and the position of its next extent; when
a blob arrives, every node whose next extent is in it hashes forward as far as the blobs it has
received allow. A node of one extent (most files) is hashed at once, with nothing kept but its
place in the waiting list.

A blob that arrives before a node reaches it (the node needs it further on: its extents are out of
pack order, it repeats the blob, or another node pulled that pack forward) is held for that node
until it gets there, as its sealed bytes (compressed and encrypted, as the pack holds them: a
database's pages compress several times over), not its plaintext; when the node gets there they are
opened again as a restore opens them (AEAD tag checked, decompressed, length checked). What is held
is bounded: at most HOLD_BUDGET sealed bytes at once; past it the blobs held longest are let go and
read again from their pack (the copy a restore reads) when a node reaches them. While one blob is
fed, the held blobs opened again are kept as plaintext, HOLD_BUDGET bytes at most or the one
opened last, whatever its size (a node whose extents alternate between them opens each once; a blob
larger than the budget is opened once a feed, not once per extent), and dropped when it is done. No node leaves the
pass for the budget, and nothing held grows with the repository's size.

The nodes of several extents that wait in the pass are bounded too (MAX_WAITING, their bookkeeping
a few hundred bytes each): past it, `add` refuses a node and keeps it in `past_cap`. The caller
proves those in further passes (repo/checker.py `_prove_past_the_cap`), each a new prover under the
same cap, fed only the blobs its nodes need, each read once a pass as a restore reads it; a node none
of them proves is read back through the restore's reader, as every node of several blobs was once.

A node not proved here (its bytes do not match, an extent lies past its blob's end, a blob that
does not open, a pack this run does not read, or refused past MAX_WAITING in every pass) is simply left: the
caller reads it back through `NodeReader`, which proves it or names what fails, with the same
error text as ever.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from phoenix_backup.repo.crypto import Sha256, sha256_hex
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.tree import Extent, Extents, ListedExtents

# Sealed bytes held for nodes that need a blob further on, at most (a blob held for several nodes
# counts once). Past it the blobs held longest are let go and read again from their pack when a
# node reaches them. Measured (docs/proving.md): the medium sample with seven simulated days would
# hold 94 MB of plaintext (each day's pack is needed from byte 0 on: SQLite's first page changes
# with every write); the medium sample alone, a 1 GB file and 100,000 small files hold a few MB or
# nothing. The same bound applies to the plaintext of held blobs opened again while one blob is fed.
# On bench/run.py's medium sample with 7 days (docs/benchmarks.md) 1 MiB gave a peak of 70 MB and
# 6.1 CPU-s, 4 MiB 80 MB and 5.3 CPU-s, nothing kept 67 MB and 8.9 CPU-s (restic: 74 MB).
HOLD_BUDGET = 1024 * 1024

# The nodes of several extents taken into the pass, at most (each keeps its place, its running
# SHA-256 and the blobs held for it: a few hundred bytes). Past it `add` refuses: the caller proves
# the node in a further pass under the same cap, over only the packs those nodes need. (Read back
# one at a time through the restore's reader instead, 20,000 nodes of two far-apart blobs of 512 KiB
# took 4.26 CPU-s against 0.87 with no cap; now 0.75: docs/benchmarks.md.)
MAX_WAITING = 10_000


class ListedContent:
    """A listed node's extents (format 6, `ListedExtents`) as the key of a node to prove: equal and
    hashed by its list blobs' ids, so keying it reads no list blob (a `ListedExtents` hashes and
    compares its extents, read whole); its extents are streamed one list blob at a time. The same
    bytes stored inline elsewhere are another key: proved twice, never wrongly."""

    __slots__ = ("extents",)

    def __init__(self, extents: ListedExtents) -> None:
        self.extents = extents

    @property
    def size(self) -> int:
        return self.extents.size

    def records(self) -> Iterator[tuple[bytes, int, int]]:
        return self.extents.records()

    def blobs(self) -> Iterator[bytes]:
        return self.extents.blobs()

    def blob(self, index: int) -> bytes:
        return self.extents[index].blob

    def __len__(self) -> int:
        return len(self.extents)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListedContent) and self.extents.refs == other.extents.refs

    def __hash__(self) -> int:
        return hash(self.extents.refs)


def content_key(extents: Sequence[Extent]) -> Extents | ListedContent:
    """A node's extents as the key of its content: a listed node's by its list blobs (nothing read)."""
    if isinstance(extents, ListedExtents):
        return ListedContent(extents)
    return Extents.of(extents)


# A distinct node to prove: its extents, its size and its SHA-256 (the same bytes, proved once).
Content = tuple[Extents | ListedContent, int, str | None]


# Opens a held blob again as a restore opens it: from `sealed`, its sealed bytes held since the
# pass read them, or with None from its pack again (the copy a restore reads); None when it does
# not open (the node is left to the restore's reader, which names what fails).
Reopen = Callable[[bytes, bytes | None], bytes | None]


class _Proof:
    """A node of several extents being hashed: its next extent, its digest so far (None before its
    first extent), the blobs held for it."""

    __slots__ = ("content", "digest", "done", "holding", "pos", "uses")

    def __init__(self, content: Content, again: array[int] | None) -> None:
        self.content = content
        # None: each blob once (most nodes); else for each extent the next one of the same blob,
        # or -1 (4 bytes an extent, where a count per blob kept a key of 32 bytes and more)
        self.uses = again
        self.pos = 0
        self.digest: Sha256 | None = None
        self.holding: set[bytes] | None = None
        self.done = False  # proved, failed or dropped: no longer fed


class NodeProver:
    """Nodes added (`add`) before the pass, blobs fed (`feed`) as the pass opens them; `proved` is
    called with each node whose bytes matched. `packs` are the ids of the packs the run reads: a
    node with a blob none of them holds is not taken (`add` says False). `reopen` opens a held
    blob again (see `Reopen`)."""

    def __init__(
        self,
        index: Index,
        packs: Iterable[str],
        proved: Callable[[Content], None],
        reopen: Reopen,
        budget: int | None = None,
        cap: int | None = None,
    ) -> None:
        self.index = index
        self.packs = set(packs)
        self.proved = proved
        self.reopen = reopen
        self.budget = HOLD_BUDGET if budget is None else budget
        self.cap = MAX_WAITING if cap is None else cap
        # blob -> the nodes it has not reached yet: a node of one extent as its content itself
        # (nothing to keep between blobs), one of several as its `_Proof`
        self.waiting: dict[bytes, list[_Proof | Content]] = {}
        self.taken = 0  # nodes of several extents taken (at most `cap`)
        self.refused = 0  # nodes of several extents refused past the cap
        self.past_cap: list[Content] = []  # those nodes, for a further pass (repo/checker.py)
        # blob -> its sealed bytes, held for nodes further on, in the order they were held; `gone`:
        # those let go for the budget (read again from their pack when a node reaches them)
        self.held: dict[bytes, bytes] = {}
        self.gone: set[bytes] = set()
        self.holders: dict[bytes, int] = {}  # blob -> how many nodes it is held for
        self.held_bytes = 0  # sealed bytes held (those not let go)
        self.peak_held = 0
        self.reopened = 0  # held blobs opened again from their sealed bytes
        self.reread = 0  # blobs let go for the budget, read again from their pack
        self.rank: dict[str, int] = {}  # pack id -> the first byte of a node that needs it
        # During a feed: the plaintexts of held blobs opened again, the most recent last, at most
        # `budget` bytes or the last one (a node whose extents alternate between held blobs opens
        # each once)
        self._opened: dict[bytes, bytes] = {}
        self._opened_bytes = 0

    # -- before the pass ------------------------------------------------------------------------

    def add(self, content: Content) -> bool:
        """Take a node to prove in the pass: False for a node of several extents with a blob in no
        pack of the run (it would hold the others to the end), or past the cap."""
        extents, size, sha256 = content
        if isinstance(extents, ListedContent):
            # Not taken: a proof here keeps 4 bytes and more an extent (`again`, `first`, `last`);
            # the restore's reader proves it a window of list blobs at a time (repo/checker.py).
            return False
        if extents.size != size:
            return True  # never proved here: the reader names it (a decoded tree cannot hold one)
        if not len(extents):
            if sha256_hex(b"") == sha256:
                self.proved(content)
            return True
        if len(extents) == 1:
            # Nothing is ever held for it, so it neither orders the packs nor waits in vain: a
            # blob that no pack of the run holds never comes, and the node is left to the reader.
            self.waiting.setdefault(extents.blob(0), []).append(content)
            return True
        if self.taken >= self.cap:
            self.refused += 1
            self.past_cap.append(content)
            return False
        first: dict[bytes, int] = {}  # blob -> the byte of the node where it is first needed
        last: dict[bytes, int] = {}  # blob -> its last extent so far
        again = array("i", [-1]) * len(extents)
        start = 0
        for i, (blob, _offset, length) in enumerate(extents.records()):
            first.setdefault(blob, start)
            start += length
            j = last.get(blob)
            if j is not None:
                again[j] = i
            last[blob] = i
        if not all(self._rank(blob, start) for blob, start in first.items()):
            return False
        proof = _Proof(content, None if len(last) == len(extents) else again)
        for blob in last:
            self.waiting.setdefault(blob, []).append(proof)
        self.taken += 1
        return True

    def _rank(self, blob: bytes, start: int) -> bool:
        """Rank the pack holding the copy of `blob` a restore reads (the index's first location of
        it as a data blob: the pass proves nodes from that copy only) by `start`, where a node
        first needs the blob; False when this run does not read that pack."""
        packs = self.index.data_packs(blob)
        if not packs or packs[0] not in self.packs:
            return False
        pack = packs[0]
        if start < self.rank.get(pack, start + 1):
            self.rank[pack] = start
        return True

    def order(self, names: list[str]) -> list[str]:
        """The pack names by the first byte of a node added that needs them (a node of several
        extents: the others hold nothing); the others after, as given."""
        last = max(self.rank.values(), default=0) + 1
        return sorted(names, key=lambda name: self.rank.get(name.rsplit("/", 1)[-1], last))

    # -- the pass ---------------------------------------------------------------------------------

    def feed(self, blob: bytes, plain: bytes, sealed: bytes | memoryview) -> None:
        """The plaintext of data blob `blob`, opened from `sealed`, the copy a restore reads, and
        checked against its id; fed once (a second feed finds no node waiting)."""
        for node in self.waiting.pop(blob, ()):
            if isinstance(node, tuple):  # one extent: hashed at once
                extents, _size, sha256 = node
                assert isinstance(extents, Extents)  # a listed node is never taken (`add`)
                _blob, offset, length = extents.record(0)
                if offset + length <= len(plain) and sha256_hex(memoryview(plain)[offset : offset + length]) == sha256:
                    self.proved(node)
            elif node.done:
                continue
            elif node.content[0].blob(node.pos) == blob:
                self._advance(node, blob, plain, sealed)
            else:
                self._hold(node, blob, sealed)
        self._opened.clear()
        self._opened_bytes = 0
        self._fit()
        self.peak_held = max(self.peak_held, self.held_bytes)

    def lost(self, blob: bytes) -> None:
        """`blob` will not come (damaged or missing): the nodes waiting for it are left unproved."""
        for node in self.waiting.pop(blob, ()):
            if isinstance(node, _Proof):
                self._drop(node)

    def close(self) -> None:
        """The pass is over: nodes still waiting (a blob that never opened) are left unproved."""
        self.waiting.clear()
        self.held.clear()
        self.gone.clear()
        self.holders.clear()
        self.held_bytes = 0
        self._opened.clear()
        self._opened_bytes = 0

    def _advance(self, proof: _Proof, blob: bytes, plain: bytes, sealed: bytes | memoryview) -> None:
        """Hash `proof` forward from its next extent, which is in `blob`, while its blobs are here."""
        extents, _size, sha256 = proof.content
        assert isinstance(extents, Extents)  # a listed node is never taken (`add`)
        count = len(extents)
        if proof.digest is None:
            proof.digest = Sha256()
        digest = proof.digest
        later = False  # whether `blob` is needed again past the extents hashed here
        while proof.pos < count:
            b, offset, length = extents.record(proof.pos)
            if b == blob:
                data = plain
            elif proof.holding is not None and b in proof.holding:
                again = self._open_held(b)
                if again is None:
                    self._drop(proof)  # it does not open again: the restore's reader names it
                    return
                data = again
            else:
                break  # it waits for `b`, which has not come yet
            if offset + length > len(data):
                self._drop(proof)  # the restore's reader names it
                return
            digest.update(memoryview(data)[offset : offset + length])
            needed = proof.uses is not None and proof.uses[proof.pos] >= 0
            proof.pos += 1
            if b == blob:
                later = needed
            elif not needed:
                self._unhold(proof, b)
        if proof.pos < count:
            if later:
                self._hold(proof, blob, sealed)  # needed again further on
            return
        proof.done = True  # a node that does not match is left to the reader, which names it
        if digest.hexdigest() == sha256:
            self.proved(proof.content)

    def _open_held(self, blob: bytes) -> bytes | None:
        """The plaintext of a held blob, opened again from its sealed bytes, or read again from its
        pack when it was let go. Those opened are kept until the feed ends, the most recent up to
        the budget in plaintext bytes and the last one whatever its size (the nodes moving together
        reach the same blobs, and a node may alternate between them)."""
        plain = self._opened.pop(blob, None)
        if plain is None:
            sealed = self.held.get(blob)
            if sealed is None:
                self.reread += 1
            else:
                self.reopened += 1
            plain = self.reopen(blob, sealed)
            if plain is None:
                return None
            self._opened_bytes += len(plain)
        self._opened[blob] = plain  # the most recent last, kept whatever its size (as the restore's
        # reader keeps the blob it just opened): a blob larger than the budget, dropped at once, was
        # opened again, or read again from its pack, for each of the node's extents in it
        while self._opened_bytes > self.budget and len(self._opened) > 1:
            oldest = next(iter(self._opened))
            self._opened_bytes -= len(self._opened.pop(oldest))
        return plain

    def _hold(self, proof: _Proof, blob: bytes, sealed: bytes | memoryview) -> None:
        if proof.holding is None:
            proof.holding = set()
        elif blob in proof.holding:
            return
        count = self.holders.get(blob, 0)
        if not count:
            kept = bytes(sealed)  # a copy: a slice of the pack would keep the whole pack
            self.held[blob] = kept
            self.held_bytes += len(kept)
        self.holders[blob] = count + 1
        proof.holding.add(blob)

    def _unhold(self, proof: _Proof, blob: bytes) -> None:
        if proof.holding is None or blob not in proof.holding:
            return
        proof.holding.discard(blob)
        count = self.holders[blob] - 1
        if count:
            self.holders[blob] = count
            return
        del self.holders[blob]
        sealed = self.held.pop(blob, None)
        if sealed is not None:
            self.held_bytes -= len(sealed)
        self.gone.discard(blob)
        opened = self._opened.pop(blob, None)
        if opened is not None:
            self._opened_bytes -= len(opened)

    def _fit(self) -> None:
        """Let go of the blobs held longest until what is held fits the budget: a node reaching
        one reads it again from its pack."""
        while self.held_bytes > self.budget:
            blob = next(iter(self.held))
            self.held_bytes -= len(self.held.pop(blob))
            self.gone.add(blob)

    def _drop(self, proof: _Proof) -> None:
        """Leave `proof` to the restore's reader, releasing what is held for it."""
        proof.done = True
        for blob in list(proof.holding or ()):
            self._unhold(proof, blob)
