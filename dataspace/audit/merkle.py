"""RFC 9162 section 2.1 Merkle tree hashing, proofs and proof verification.

Small pure functions over bytes, in the style of sigstore-python's ``merkle.py``
and Go's ``golang.org/x/mod/sumdb/tlog``. Every function names the section it
implements. Proof *generation* takes a ``subtree(start, end) -> hash`` callable
so that a store of interior hashes (``dataspace.audit.storage``) answers it in
O(log n) reads, and an in-memory :class:`MemoryTree` answers it for small trees.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from dataspace.errors import DataspaceError

_sha256 = hashlib.sha256
#: RFC 9162 2.1.1: MTH({}) = SHA-256() -- the hash of the empty string.
EMPTY_ROOT = _sha256(b"").digest()
HASH_SIZE = 32

#: ``subtree(start, end)`` returns MTH(D[start:end]) of the tree being proved.
SubtreeFn = Callable[[int, int], bytes]


class ProofError(DataspaceError):
    """A Merkle proof that does not verify, or a proof request that cannot be answered."""


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1: SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """RFC 9162 2.1.1: k, the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH(D[n]) given the leaf hashes, in O(n) time and O(log n) memory."""
    acc = RootAccumulator()
    for h in leaf_hashes:
        acc.add_leaf_hash(h)
    return acc.root()


def root_hash(entries: Iterable[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH over the entries themselves."""
    acc = RootAccumulator()
    for e in entries:
        acc.add(e)
    return acc.root()


class RootAccumulator:
    """RFC 9162 2.1.1 MTH computed while leaves stream past, in O(log n) memory.

    The one Merkle fold of the package: the log's appends and ``fsck``, the auditor's
    loop and :func:`root_hash` all use it. It keeps the roots of the perfect subtrees on
    the right edge of the tree (``peaks``, largest first: one per set bit of ``size``),
    as a compact range does. Adding leaf ``n`` hashes it, then closes one subtree per
    trailing zero bit of ``n + 1``: on average one node hash per leaf.

    ``out`` collects the hashes an added leaf produces in post-order (the leaf hash,
    then each perfect subtree it completes, smallest first): exactly what
    :mod:`dataspace.audit.storage` appends to the ``hashes`` file.
    """

    __slots__ = ("peaks", "size")

    def __init__(self, size: int = 0, peaks: Iterable[bytes] = ()) -> None:
        """Resume a tree of ``size`` leaves from its right-edge subtree roots (largest first)."""
        peaks = list(peaks)
        if size < 0 or len(peaks) != size.bit_count():
            want = max(size, 0).bit_count()
            raise ProofError(f"a tree of size {size} has {want} right-edge peaks, not {len(peaks)}")
        self.peaks = peaks
        self.size = size

    def add(self, entry: bytes, out: bytearray | None = None) -> None:
        """Add the leaf of ``entry`` (RFC 9162 2.1.1: SHA-256(0x00 || entry))."""
        self.add_leaf_hash(_sha256(b"\x00" + entry).digest(), out)

    def add_leaf_hash(self, h: bytes, out: bytearray | None = None) -> None:
        """Add a leaf by its hash; closes every perfect subtree it completes."""
        if out is not None:
            out += h
        peaks = self.peaks
        self.size = n = self.size + 1
        while not n & 1:  # each trailing zero bit of the new size closes a subtree
            h = _sha256(b"\x01" + peaks.pop() + h).digest()  # RFC 9162 2.1.1 node hash
            if out is not None:
                out += h
            n >>= 1
        peaks.append(h)

    def root(self) -> bytes:
        """MTH of the leaves added so far: the peaks folded right to left."""
        peaks = self.peaks
        if not peaks:
            return EMPTY_ROOT
        h = peaks[-1]
        for left in reversed(peaks[:-1]):
            h = node_hash(left, h)
        return h


def subtree_hash(start: int, end: int, node: Callable[[int, int], bytes]) -> bytes:
    """MTH(D[start:end]) from stored perfect subtrees: ``node(level, k)`` is the hash of
    leaves [k * 2**level, (k + 1) * 2**level). O(log n) calls to ``node``.

    Every range that RFC 9162 2.1.3.1 and 2.1.4.1 ask for starts at a multiple of
    the largest power of two not exceeding its length, so it splits into at most
    one perfect subtree per level.
    """
    n = end - start
    if n <= 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return node(level, start >> level)
    k = split_point(n)
    return node_hash(subtree_hash(start, start + k, node), subtree_hash(start + k, end, node))


def inclusion_proof(index: int, size: int, subtree: SubtreeFn) -> list[bytes]:
    """RFC 9162 2.1.3.1 PATH(m, D[n]): the audit path of leaf ``index`` in the tree of ``size``."""
    if not 0 <= index < size:
        raise ProofError(f"no inclusion proof: index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            path.append(subtree(start + k, end))
            end = start + k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            path.append(subtree(start, start + k))
            start += k
    path.reverse()  # the RFC lists the deepest sibling first
    return path


def consistency_proof(old: int, new: int, subtree: SubtreeFn) -> list[bytes]:
    """RFC 9162 2.1.4.1 PROOF(m, D[n]) = SUBPROOF(m, D[n], true)."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    path: list[bytes] = []
    m, start, end, complete = old, 0, new, True
    while True:
        n = end - start
        if m == n:
            if not complete:  # SUBPROOF(m, D[m], false) = {MTH(D[m])}
                path.append(subtree(start, end))
            break
        k = split_point(n)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            path.append(subtree(start + k, end))
            end = start + k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            path.append(subtree(start, start + k))
            start += k
            m -= k
            complete = False
    path.reverse()
    return path


def _check_hash(name: str, h: bytes) -> None:
    if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
        size = len(h) if isinstance(h, bytes | bytearray) else type(h).__name__
        raise ProofError(f"{name} must be a {HASH_SIZE}-byte hash, got {size}")


def root_from_inclusion_proof(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.3.2 steps 1-5: the root that ``proof`` implies for ``leaf`` (a leaf hash)."""
    if not 0 <= index < size:
        raise ProofError(f"inclusion proof: index {index} is beyond the tree of size {size}")
    _check_hash("leaf hash", leaf)
    fn, sn, r = index, size - 1, bytes(leaf)
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
        if sn == 0:
            raise ProofError(f"inclusion proof has {len(proof)} hashes, more than the path")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof has {len(proof)} hashes, fewer than the path")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 2.1.3.2: raise :class:`ProofError` unless ``proof`` proves ``leaf`` at ``index``."""
    _check_hash("root", root)
    got = root_from_inclusion_proof(index, size, leaf, proof)
    if got != root:
        raise ProofError(
            f"inclusion proof for index {index} in size {size} gives root {got.hex()}, "
            f"expected {bytes(root).hex()}"
        )


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 2.1.4.2: raise :class:`ProofError` unless the tree of ``size1`` with ``root1``
    is a prefix of the tree of ``size2`` with ``root2``."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"consistency: old size {size1} is larger than new size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError(f"consistency between equal sizes {size1} needs an empty proof")
        if root1 != root2:
            raise ProofError(f"fork: two different roots for size {size1}")
        if size1 == 0 and root1 != EMPTY_ROOT:
            raise ProofError("the root of the empty tree must be SHA-256 of the empty string")
        return
    _check_hash("old root", root1)
    _check_hash("new root", root2)
    if size1 == 0:
        if proof:
            raise ProofError("consistency from the empty tree needs an empty proof")
        if root1 != EMPTY_ROOT:
            raise ProofError("the root of the empty tree must be SHA-256 of the empty string")
        return
    if not proof:
        raise ProofError(f"consistency proof from {size1} to {size2} is empty")
    for i, p in enumerate(proof):
        _check_hash(f"proof hash {i}", p)
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # step 2: an exact power of two is its own first node
        path.insert(0, bytes(root1))
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"consistency proof from {size1} to {size2} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"consistency proof from {size1} to {size2} is too short")
    if fr != root1:
        raise ProofError(f"consistency proof does not lead to the old root of size {size1}")
    if sr != root2:
        raise ProofError(f"consistency proof does not lead to the new root of size {size2}")


class MemoryTree:
    """A tree held in memory: every level of perfect subtrees (for tests, bundles, small logs)."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for h in leaf_hashes:
            self.add_leaf_hash(h)

    @classmethod
    def from_entries(cls, entries: Sequence[bytes]) -> MemoryTree:
        return cls([leaf_hash(e) for e in entries])

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def add_leaf_hash(self, h: bytes) -> None:
        self.levels[0].append(h)
        level = 0
        while len(self.levels[level]) % 2 == 0:
            row = self.levels[level]
            if level + 1 == len(self.levels):
                self.levels.append([])
            self.levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1

    def node(self, level: int, k: int) -> bytes:
        return self.levels[level][k]

    def subtree(self, start: int, end: int) -> bytes:
        return subtree_hash(start, end, self.node)

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ProofError(f"no root for size {size}: the tree has {self.size} leaves")
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise ProofError(f"no proof for size {size}: the tree has {self.size} leaves")
        return inclusion_proof(index, size, self.subtree)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        if new > self.size:
            raise ProofError(f"no proof for size {new}: the tree has {self.size} leaves")
        return consistency_proof(old, new, self.subtree)
