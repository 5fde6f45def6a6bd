"""RFC 9162 section 2.1 Merkle tree hashing (Certificate Transparency v2).

Small pure functions over bytes. Proof generation and verification live beside
these as they are added; every function names the section it implements.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

#: RFC 9162 2.1.1: MTH({}) = SHA-256() -- the hash of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 2.1.1: MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 2.1.1: SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH(D[n]) given the leaf hashes, bottom-up in O(n).

    Pairing adjacent nodes level by level and carrying an odd last node up
    unchanged gives the same tree as the RFC's split at the largest power of
    two smaller than n.
    """
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root_hash(entries: Sequence[bytes]) -> bytes:
    """RFC 9162 2.1.1 MTH over the entries themselves."""
    return root_from_leaf_hashes([leaf_hash(e) for e in entries])
