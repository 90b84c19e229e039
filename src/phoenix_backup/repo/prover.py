"""Proving file and database nodes from the plaintext `verify --read-data`'s pack pass opens
(repo/checker.py), so that each blob is decrypted once, whatever the nodes that need it.

A node's content is a list of extents, each a slice of one data blob; the node is proved when
those slices, hashed in order, give its size and SHA-256 (what a restore's `NodeReader` checks).
The pack pass opens every blob of every pack it reads and checks each against its id, and feeds
the copy a restore reads (the index's first location; repo/checker.py), so the node can be hashed
from those very bytes: each node
keeps a running SHA-256 and the position of its next extent; when a blob arrives, every node
whose next extent is in it hashes forward as far as the blobs it has received allow. A node of
one extent (most files) is hashed at once, with nothing kept but its place in the waiting list.

A blob that arrives before a node reaches it (the node needs it further on: its extents are out of
pack order, it repeats the blob, or another node pulled that pack forward) is held for that node
until it gets there. `order` reads the packs by the first byte of any node that needs them, so
the nodes move forward together (the versions of one database in many snapshots share most of
their blobs at the same offsets) and a file written in one go holds at most the part of it that
the backup's second pack being filled at the same time took. What is held is bounded: at most HOLD_BUDGET bytes of
plaintext at once; past it the node holding the most is given up (it goes to the restore's reader
after the pass, as every node of several blobs did before, and is still proved there), until what
is held fits again.

A node not proved here (its bytes do not match, an extent lies past its blob's end, a blob that
does not open, a pack this run does not read, or given up for the budget) is simply left: the
caller reads it back through `NodeReader`, which proves it or names what fails, with the same
error text as ever.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable

from phoenix_backup.repo.crypto import Sha256, sha256_hex
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.tree import Extents

# Plaintext held for nodes that need it further on, at most (a blob held for several nodes counts
# once). Four packs' worth. Measured (docs/proving.md): the medium sample holds 3.4 MB at most, a
# 1 GB file 8 MB (the backup fills two packs at once, so a pack read first holds the blobs that
# follow ones still in the other), 100,000 small files nothing; the medium sample with seven
# simulated days would hold 94 MB (each day's pack is needed from byte 0 on: SQLite's first page
# changes with every write), so 8 of its 334 nodes go to the reader. Past it, the nodes holding the
# most go to the restore's reader, as every node of several blobs did before (their blobs are
# then decrypted twice).
HOLD_BUDGET = 32 * 1024 * 1024

# A distinct node to prove: its extents, its size and its SHA-256 (the same bytes, proved once).
Content = tuple[Extents, int, str | None]


class _Proof:
    """A node of several extents being hashed: its next extent, its digest so far, the blobs held
    for it (`pending`: their bytes)."""

    __slots__ = ("content", "digest", "done", "holding", "pending", "pos", "uses")

    def __init__(self, content: Content, uses: Counter[bytes] | None) -> None:
        self.content = content
        self.uses = uses  # None: each blob once (most nodes), else how often each is still needed
        self.pos = 0
        self.digest = Sha256()
        self.holding: set[bytes] | None = None
        self.pending = 0
        self.done = False  # proved, failed or given up: no longer fed


class NodeProver:
    """Nodes added (`add`) before the pass, blobs fed (`feed`) as the pass opens them; `proved` is
    called with each node whose bytes matched. `packs` are the ids of the packs the run reads: a
    node with a blob none of them holds is not taken (`add` says False)."""

    def __init__(
        self, index: Index, packs: Iterable[str], proved: Callable[[Content], None], budget: int | None = None
    ) -> None:
        self.index = index
        self.packs = set(packs)
        self.proved = proved
        self.budget = HOLD_BUDGET if budget is None else budget
        # blob -> the nodes it has not reached yet: a node of one extent as its content itself
        # (nothing to keep between blobs), one of several as its `_Proof`
        self.waiting: dict[bytes, list[_Proof | Content]] = {}
        self.held: dict[bytes, bytes] = {}  # blob -> its plaintext, held for nodes further on
        self.holders: dict[bytes, int] = {}  # blob -> how many nodes it is held for
        self.held_bytes = 0
        self.peak_held = 0
        self.given_up = 0  # nodes sent to the restore's reader for the budget
        self.rank: dict[str, int] = {}  # pack id -> the first byte of a node that needs it
        self._largest: list[tuple[int, int, _Proof]] = []  # (-pending, n, node): whom to give up
        self._n = itertools.count()

    # -- before the pass ------------------------------------------------------------------------

    def add(self, content: Content) -> bool:
        """Take a node to prove in the pass: False for a node of several extents with a blob in no
        pack of the run (it would hold the others to the end)."""
        extents, size, sha256 = content
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
        uses = Counter(extents.blobs())
        first: dict[bytes, int] = {}  # blob -> the byte of the node where it is first needed
        start = 0
        for blob, _offset, length in extents.records():
            first.setdefault(blob, start)
            start += length
        if not all(self._rank(blob, start) for blob, start in first.items()):
            return False
        proof = _Proof(content, None if len(uses) == len(extents) else uses)
        for blob in uses:
            self.waiting.setdefault(blob, []).append(proof)
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

    def feed(self, blob: bytes, plain: bytes) -> None:
        """The plaintext of data blob `blob`, opened from the copy a restore reads and checked
        against its id; fed once (a second feed finds no node waiting)."""
        for node in self.waiting.pop(blob, ()):
            if isinstance(node, tuple):  # one extent: hashed at once
                extents, _size, sha256 = node
                _blob, offset, length = extents.record(0)
                if offset + length <= len(plain) and sha256_hex(memoryview(plain)[offset : offset + length]) == sha256:
                    self.proved(node)
            elif node.done:
                continue
            elif node.content[0].blob(node.pos) == blob:
                self._advance(node, blob, plain)
            else:
                self._hold(node, blob, plain)
        while self.held_bytes > self.budget and self._give_up_largest():
            pass
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
        self.holders.clear()
        self.held_bytes = 0
        self._largest.clear()

    def _advance(self, proof: _Proof, blob: bytes, plain: bytes) -> None:
        """Hash `proof` forward from its next extent, which is in `blob`, while its blobs are here."""
        extents, _size, sha256 = proof.content
        count, digest = len(extents), proof.digest
        while proof.pos < count:
            b, offset, length = extents.record(proof.pos)
            data = plain if b == blob else self.held.get(b)
            if data is None:
                break  # it waits for `b`, which has not come yet
            if offset + length > len(data):
                self._drop(proof)  # the restore's reader names it
                return
            digest.update(memoryview(data)[offset : offset + length])
            proof.pos += 1
            if proof.uses is not None:
                proof.uses[b] -= 1
                if proof.uses[b]:
                    continue
            if b != blob:
                self._unhold(proof, b)
        if proof.pos < count:
            if proof.uses is not None and proof.uses[blob]:
                self._hold(proof, blob, plain)  # needed again further on
            return
        proof.done = True  # a node that does not match is left to the reader, which names it
        if digest.hexdigest() == sha256:
            self.proved(proof.content)

    def _hold(self, proof: _Proof, blob: bytes, plain: bytes) -> None:
        count = self.holders.get(blob, 0)
        if not count:
            self.held[blob] = plain
            self.held_bytes += len(plain)
        self.holders[blob] = count + 1
        if proof.holding is None:
            proof.holding = set()
        proof.holding.add(blob)
        proof.pending += len(plain)
        heapq.heappush(self._largest, (-proof.pending, next(self._n), proof))

    def _unhold(self, proof: _Proof, blob: bytes) -> None:
        if proof.holding is None or blob not in proof.holding:
            return
        proof.holding.discard(blob)
        size = len(self.held[blob])
        proof.pending -= size
        count = self.holders[blob] - 1
        if count:
            self.holders[blob] = count
        else:
            del self.holders[blob]
            del self.held[blob]
            self.held_bytes -= size
            if not self.held_bytes:
                self._largest.clear()  # every entry is stale: nothing is held

    def _drop(self, proof: _Proof) -> None:
        """Leave `proof` to the restore's reader, releasing what is held for it."""
        proof.done = True
        for blob in list(proof.holding or ()):
            self._unhold(proof, blob)

    def _give_up_largest(self) -> bool:
        """Send the node holding the most to the restore's reader (entries of nodes whose
        holdings changed since are stale: put back with their current size, or skipped). False
        when no node holds anything."""
        while self._largest:
            pending, _n, proof = heapq.heappop(self._largest)
            if proof.done or not proof.pending:
                continue
            if -pending != proof.pending:
                heapq.heappush(self._largest, (-proof.pending, next(self._n), proof))
                continue
            self._drop(proof)
            self.given_up += 1
            return True
        return False
