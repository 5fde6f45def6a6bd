"""RFC 9162 proofs: the 196 transparency-dev vectors and hypothesis properties."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataspace.audit import merkle
from dataspace.audit.merkle import MemoryTree, ProofError


def _vectors(vectors_dir: Path, kind: str) -> list[Path]:
    return sorted((vectors_dir / "merkle" / kind).rglob("*.json"))


def _b64(s):
    return base64.b64decode(s) if s is not None else None


def _proof(v) -> list[bytes]:
    return [base64.b64decode(p) for p in (v["proof"] or [])]


def test_all_196_vectors_present(vectors_dir: Path) -> None:
    inc, con = _vectors(vectors_dir, "inclusion"), _vectors(vectors_dir, "consistency")
    assert len(inc) == 98 and len(con) == 98


def test_inclusion_vectors(vectors_dir: Path) -> None:
    for path in _vectors(vectors_dir, "inclusion"):
        v = json.loads(path.read_text())
        args = (
            v["leafIdx"],
            v["treeSize"],
            _b64(v["leafHash"]) or b"",
            _proof(v),
            _b64(v["root"]) or b"",
        )
        if v["wantErr"]:
            with pytest.raises(ProofError):
                merkle.verify_inclusion(*args)
        else:
            merkle.verify_inclusion(*args)


def test_consistency_vectors(vectors_dir: Path) -> None:
    for path in _vectors(vectors_dir, "consistency"):
        v = json.loads(path.read_text())
        args = (v["size1"], v["size2"], _proof(v), _b64(v["root1"]) or b"", _b64(v["root2"]) or b"")
        if v["wantErr"]:
            with pytest.raises(ProofError):
                merkle.verify_consistency(*args)
        else:
            merkle.verify_consistency(*args)


def test_vector_proofs_are_the_ones_we_generate(vectors_dir: Path) -> None:
    """The happy-path vectors come from the RFC's 8-leaf test tree: our generator agrees."""
    entries = [
        bytes.fromhex(h)
        for h in [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
    ]
    tree = MemoryTree.from_entries(entries)
    checked = 0
    for path in _vectors(vectors_dir, "inclusion"):
        v = json.loads(path.read_text())
        if v["wantErr"] or v["treeSize"] > 8 or path.parent.name == "additional":
            continue
        if tree.root(v["treeSize"]) != _b64(v["root"]):
            continue
        assert tree.inclusion_proof(v["leafIdx"], v["treeSize"]) == _proof(v)
        checked += 1
    for path in _vectors(vectors_dir, "consistency"):
        v = json.loads(path.read_text())
        if v["wantErr"] or v["size2"] > 8 or tree.root(v["size2"]) != _b64(v["root2"]):
            continue
        assert tree.consistency_proof(v["size1"], v["size2"]) == _proof(v)
        checked += 1
    assert checked >= 5


def test_empty_tree_root() -> None:
    assert MemoryTree().root() == merkle.EMPTY_ROOT == merkle.root_hash([])


@st.composite
def tree_and_index(draw):
    n = draw(st.integers(1, 300))
    size = draw(st.integers(1, n))
    index = draw(st.integers(0, size - 1))
    return n, size, index


def _tree(n: int) -> MemoryTree:
    return MemoryTree.from_entries([i.to_bytes(4, "big") for i in range(n)])


@settings(max_examples=200, deadline=None)
@given(tree_and_index(), st.data())
def test_inclusion_proofs_verify_and_alterations_fail(tni, data) -> None:
    n, size, index = tni
    tree = _tree(n)
    root = tree.root(size)
    assert root == merkle.root_hash([i.to_bytes(4, "big") for i in range(size)])
    leaf = merkle.leaf_hash(index.to_bytes(4, "big"))
    proof = tree.inclusion_proof(index, size)
    assert len(proof) <= math.ceil(math.log2(size)) if size > 1 else not proof
    merkle.verify_inclusion(index, size, leaf, proof, root)
    alteration = data.draw(st.sampled_from(["flip", "drop", "extra", "index", "size", "leaf"]))
    if alteration == "flip" and proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        proof[i] = (int.from_bytes(proof[i], "big") ^ (1 << bit)).to_bytes(32, "big")
    elif alteration == "drop" and proof:
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif alteration == "extra":
        proof.insert(data.draw(st.integers(0, len(proof))), merkle.EMPTY_ROOT)
    elif alteration == "index" and size > 1:
        index = (index + data.draw(st.integers(1, size - 1))) % size
    elif alteration == "size" and n > index + 1:
        # the proof is checked against the root of the tree of the claimed size
        size = data.draw(st.integers(index + 1, n).filter(lambda s: s != size))
        root = tree.root(size)
    else:
        leaf = merkle.leaf_hash(b"not-" + index.to_bytes(4, "big"))
    with pytest.raises(ProofError):
        merkle.verify_inclusion(index, size, leaf, proof, root)


@st.composite
def two_sizes(draw):
    n = draw(st.integers(1, 300))
    new = draw(st.integers(1, n))
    old = draw(st.integers(1, new))
    return n, old, new


@settings(max_examples=200, deadline=None)
@given(two_sizes(), st.data())
def test_consistency_proofs_verify_and_alterations_fail(sizes, data) -> None:
    n, old, new = sizes
    tree = _tree(n)
    r1, r2 = tree.root(old), tree.root(new)
    proof = tree.consistency_proof(old, new)
    merkle.verify_consistency(old, new, proof, r1, r2)
    alteration = data.draw(st.sampled_from(["flip", "drop", "extra", "old", "new", "root"]))
    if alteration == "flip" and proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        proof[i] = bytes([proof[i][0] ^ 1]) + proof[i][1:]
    elif alteration == "drop" and proof:
        proof.pop(data.draw(st.integers(0, len(proof) - 1)))
    elif alteration == "extra":
        proof.append(merkle.EMPTY_ROOT)
    elif alteration == "old" and new > 1:
        old = data.draw(st.integers(1, new).filter(lambda s: s != old))
    elif alteration == "new":
        new = data.draw(st.integers(old, n).filter(lambda s: s != new)) if n > old else new + 1
        r2 = tree.root(new) if new <= n else r2
    else:
        r1 = merkle.leaf_hash(b"x")
    with pytest.raises(ProofError):
        merkle.verify_consistency(old, new, proof, r1, r2)


def test_bad_requests_raise_typed_errors() -> None:
    tree = _tree(5)
    with pytest.raises(ProofError, match="index 5"):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ProofError):
        tree.inclusion_proof(0, 6)
    with pytest.raises(ProofError):
        tree.consistency_proof(4, 3)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(9, 5, merkle.EMPTY_ROOT, [], tree.root())
    with pytest.raises(ProofError):
        merkle.verify_inclusion(0, 1, b"short", [], tree.root())


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(0, 300))
def test_the_one_fold_resumes_and_emits_the_stored_post_order(start: int, more: int) -> None:
    """RootAccumulator: the root of every prefix, resumed from a tree's right-edge peaks,
    emitting each leaf's hashes in the order the log's ``hashes`` file stores them."""
    from dataspace.audit.storage import node_position, peaks_of, stored_nodes

    entries = [i.to_bytes(4, "big") for i in range(start + more)]
    tree = MemoryTree.from_entries(entries)
    peaks = [tree.node(level, k) for level, k in peaks_of(start)]
    acc = merkle.RootAccumulator(start, peaks)
    assert acc.root() == tree.root(start) == merkle.root_hash(entries[:start])
    out = bytearray()
    for e in entries[start:]:
        acc.add(e, out)
    assert acc.size == start + more and acc.root() == tree.root()
    assert merkle.root_from_leaf_hashes(map(merkle.leaf_hash, entries)) == tree.root()
    stored = {}  # the post-order file of the whole tree, from its node positions
    for level, row in enumerate(tree.levels):
        for k, h in enumerate(row):
            stored[node_position(level, k)] = h
    expect = [stored[p] for p in range(stored_nodes(start), stored_nodes(start + more))]
    assert bytes(out) == b"".join(expect)
    with pytest.raises(ProofError):  # one peak per set bit of the size, or it is no tree
        merkle.RootAccumulator(start, [*peaks, merkle.EMPTY_ROOT])
