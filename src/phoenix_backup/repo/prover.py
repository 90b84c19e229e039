"""Proving file and database nodes from the plaintext `verify --read-data`'s pack pass opens
(repo/checker.py), so that each blob is decrypted once, whatever the nodes that need it.

A node's content is a list of extents, each a slice of one data blob; the node is proved when
those slices, hashed in order, give its size and SHA-256 (what a restore's `NodeReader` checks).
The pack pass opens every blob of every pack it reads and checks each against its id, and every
copy of a blob that opens is those very bytes, so the node can be hashed from them: each node
keeps a running SHA-256 and the position of its next extent; when a blob arrives, every node
whose next extent is in it hashes forward as far as the blobs it has received allow.

A blob that arrives before a node reaches it (the node needs it further on: its extents are out of
pack order, it repeats the blob, or another node pulled that pack forward) is held for that node
until it gets there. `order` reads the packs in the order the nodes first need them, largest
node first, so a file written in one go (its blobs in pack order) holds nothing. What is held is
bounded: at most HOLD_BUDGET bytes of plaintext at once; past it the node holding the most is
given up (it goes to the restore's reader after the pass, as every node did before, and is still
proved there), until what is held fits again.

A node not proved here (its bytes do not match, an extent lies past its blob's end, a blob that
does not open, a pack this run does not read, or given up for the budget) is simply left: the
caller reads it back through `NodeReader`, which proves it or names what fails, with the same
error text as ever.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

from phoenix_backup.repo.crypto import BlobType, Sha256
from phoenix_backup.repo.index import Index
from phoenix_backup.repo.tree import Extents

# Plaintext held for nodes that need it further on, at most (the blobs are shared: a blob held
# for several nodes counts once). Four packs' worth: on the medium sample, a 1 GB file and 100,000
# small files nothing is held at all (docs/proving.md). Past it, the nodes holding the most go to
# the restore's reader, as every node of several blobs did before (their blobs decrypted twice).
HOLD_BUDGET = 32 * 1024 * 1024

K = TypeVar("K", bound=Hashable)


class _Proof(Generic[K]):
    """One node being hashed: its next extent, its digest so far, the blobs held for it."""

    __slots__ = ("digest", "dropped", "extents", "holding", "key", "pending", "pos", "sha256", "size", "uses")

    def __init__(self, key: K, extents: Extents, size: int, sha256: str | None, uses: Counter[bytes] | None) -> None:
        self.key = key
        self.extents = extents
        self.size = size
        self.sha256 = sha256
        self.uses = uses  # None: each blob once (most nodes), else how often each is still needed
        self.pos = 0
        self.digest: Sha256 | None = None
        self.holding: set[bytes] | None = None
        self.pending = 0  # bytes of the blobs held for this node
        self.dropped = False


class NodeProver(Generic[K]):
    """Nodes added (`add`) before the pass, blobs fed (`feed`) as the pass opens them; `proved` is
    called with the key of each node whose bytes matched. `packs` are the ids of the packs the run
    reads: a node with a blob none of them holds is not taken (`add` says False)."""

    def __init__(
        self, index: Index, packs: Iterable[str], proved: Callable[[K], None], budget: int | None = None
    ) -> None:
        self.index = index
        self.packs = set(packs)
        self.proved = proved
        self.budget = HOLD_BUDGET if budget is None else budget
        self.waiting: dict[bytes, list[_Proof[K]]] = {}  # blob -> the nodes it has not reached yet
        self.held: dict[bytes, bytes] = {}  # blob -> its plaintext, held for nodes further on
        self.holders: dict[bytes, int] = {}  # blob -> how many nodes it is held for
        self.held_bytes = 0
        self.peak_held = 0
        self.given_up = 0  # nodes sent to the restore's reader for the budget
        self.rank: dict[str, int] = {}  # pack id -> when a node first needs it
        self._largest: list[tuple[int, int, _Proof[K]]] = []  # (-pending, n, node): whom to give up
        self._n = itertools.count()

    # -- before the pass ------------------------------------------------------------------------

    def add(self, key: K, extents: Extents, size: int, sha256: str | None) -> bool:
        """Take a node to prove in the pass: False when a blob it needs lies in no pack of the run.
        Nodes added largest first make `order` follow the largest ones."""
        if not len(extents):
            if size == 0 and Sha256().hexdigest() == sha256:
                self.proved(key)
            return True
        uses = Counter(extents.blobs())  # in order of first need
        found: list[str] = []
        for blob in uses:
            pack = self._pack_of(blob)
            if pack is None:
                return False
            found.append(pack)
        for pack in found:
            self.rank.setdefault(pack, len(self.rank))
        proof = _Proof(key, extents, size, sha256, None if len(uses) == len(extents) else uses)
        for blob in uses:
            self.waiting.setdefault(blob, []).append(proof)
        return True

    def _pack_of(self, blob: bytes) -> str | None:
        """The pack of the run that holds `blob` as a data blob (the index's first choice first)."""
        for loc in self.index.locations(blob):
            if loc.type == BlobType.DATA and loc.pack_id in self.packs:
                return loc.pack_id
        return None

    def order(self, names: list[str]) -> list[str]:
        """The pack names in the order the nodes added first need them; the others after, as given."""
        last = len(self.rank)
        return sorted(names, key=lambda name: self.rank.get(name.rsplit("/", 1)[-1], last))

    # -- the pass ---------------------------------------------------------------------------------

    def feed(self, blob: bytes, plain: bytes) -> None:
        """The plaintext of data blob `blob`, opened and checked against its id. A second copy of
        the blob (another pack) finds no node waiting."""
        proofs = self.waiting.pop(blob, None)
        if proofs is None:
            return
        for proof in proofs:
            if proof.dropped:
                continue
            if proof.extents.blob(proof.pos) == blob:
                self._advance(proof, blob, plain)
            else:
                self._hold(proof, blob, plain)
        while self.held_bytes > self.budget and self._give_up_largest():
            pass
        self.peak_held = max(self.peak_held, self.held_bytes)

    def lost(self, blob: bytes) -> None:
        """`blob` will not come (damaged or missing): the nodes waiting for it are left unproved."""
        for proof in self.waiting.pop(blob, ()):
            self._drop(proof)

    def close(self) -> None:
        """The pass is over: nodes still waiting (a blob that never opened) are left unproved."""
        self.waiting.clear()
        self.held.clear()
        self.holders.clear()
        self.held_bytes = 0
        self._largest.clear()

    def _advance(self, proof: _Proof[K], blob: bytes, plain: bytes) -> None:
        """Hash `proof` forward from its next extent, which is in `blob`, while its blobs are here."""
        extents, count = proof.extents, len(proof.extents)
        digest = proof.digest if proof.digest is not None else Sha256()
        proof.digest = digest
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
        if extents.size == proof.size and digest.hexdigest() == proof.sha256:
            self.proved(proof.key)
        proof.digest = None
        proof.dropped = True  # done either way: a node that does not match is left to the reader

    def _hold(self, proof: _Proof[K], blob: bytes, plain: bytes) -> None:
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

    def _unhold(self, proof: _Proof[K], blob: bytes) -> None:
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

    def _drop(self, proof: _Proof[K]) -> None:
        """Leave `proof` to the restore's reader, releasing what is held for it."""
        proof.dropped = True
        proof.digest = None
        for blob in list(proof.holding or ()):
            self._unhold(proof, blob)

    def _give_up_largest(self) -> bool:
        """Send the node holding the most to the restore's reader (entries of nodes whose
        holdings changed since are stale: put back with their current size, or skipped). False
        when no node holds anything."""
        while self._largest:
            pending, _n, proof = heapq.heappop(self._largest)
            if proof.dropped or not proof.pending:
                continue
            if -pending != proof.pending:
                heapq.heappush(self._largest, (-proof.pending, next(self._n), proof))
                continue
            self._drop(proof)
            self.given_up += 1
            return True
        return False
