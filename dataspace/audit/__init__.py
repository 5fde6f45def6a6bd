"""The transparency log: RFC 9162 Merkle tree, C2SP checkpoints and notes, events, verification."""
