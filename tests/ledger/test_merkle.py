"""The RFC 9162 Merkle tree: reference vectors, proofs at every size up to 70, tampering, cost."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest

from ledger import merkle
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

# Reference vectors of Certificate Transparency, as published in transparency-dev/merkle
# (testonly/constants.go: LeafInputs, NodeHashes, RootHashes; testonly/reference_test.go and
# proof/verify_test.go: inclusion and consistency proofs), which descend from Google's
# certificate-transparency merkle_tree_test.cc. Written out here by hand; indexes are 0-based.
LEAVES = [
    bytes.fromhex(h)
    for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")
]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# Named nodes of the 8-leaf tree: L<i> is leaf i, N<a>_<b> the subtree of leaves a..b-1.
L0 = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
L1 = "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"
L4 = "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
L6 = "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"
N0_2 = "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"
N2_4 = "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"
N4_6 = "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"
N6_8 = "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"
N0_4 = "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
N4_8 = "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"

INCLUSION = [  # (index, size, proof)
    (0, 1, []),
    (0, 2, [L1]),
    (1, 2, [L0]),
    (2, 3, [N0_2]),
    (1, 5, [L0, N2_4, L4]),
    (0, 8, [L1, N2_4, N4_8]),
    (5, 8, [L4, N6_8, N0_4]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, [L1, N2_4, N4_8]),
    (6, 8, [N4_6, N6_8, N0_4]),
    (2, 5, [N2_4, L4]),
    (6, 7, [N4_6, L6, N0_4]),
]

N = 70
HASHES = [leaf_hash(i.to_bytes(4, "big")) for i in range(N)]
FULL = MerkleTree(HASHES)
ROOTS_N = [MerkleTree(HASHES[:n]).root() for n in range(N + 1)]


def reference_tree() -> MerkleTree:
    """The tree over the eight reference leaves."""
    return MerkleTree(leaf_hash(d) for d in LEAVES)


def flip(proof: list[bytes], element: int, byte: int) -> list[bytes]:
    """A copy of ``proof`` with one byte of one element changed."""
    changed = bytearray(proof[element])
    changed[byte] ^= 0x01
    return [*proof[:element], bytes(changed), *proof[element + 1 :]]


def test_hash_functions() -> None:
    """Leaf and node hashes are domain-separated SHA-256, and the empty root is SHA-256 of nothing."""
    assert leaf_hash(b"").hex() == L0
    assert leaf_hash(b"\x00").hex() == L1
    assert node_hash(bytes.fromhex(L0), bytes.fromhex(L1)).hex() == N0_2
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT


@pytest.mark.parametrize("size", range(9))
def test_reference_roots(size: int) -> None:
    """Roots of the reference leaves match CT's vectors, built fresh and read back historically."""
    assert MerkleTree(leaf_hash(d) for d in LEAVES[:size]).root().hex() == ROOTS[size]
    assert reference_tree().root(size).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    """Inclusion proofs match CT's reference proofs and verify against the reference root."""
    got = reference_tree().inclusion_proof(index, size)
    assert [p.hex() for p in got] == proof
    leaf = leaf_hash(LEAVES[index])
    assert verify_inclusion(leaf, index, size, got, bytes.fromhex(ROOTS[size]))
    assert root_from_inclusion(leaf, index, size, got).hex() == ROOTS[size]


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    """Consistency proofs match CT's reference proofs and verify between the reference roots."""
    got = reference_tree().consistency_proof(old, new)
    assert [p.hex() for p in got] == proof
    assert verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), got)


def test_historical_roots_equal_fresh_trees() -> None:
    """root(size) of a grown tree equals the root of a tree built from the first ``size`` leaves."""
    for size in range(N + 1):
        assert FULL.root(size) == ROOTS_N[size]
    assert FULL.root() == ROOTS_N[N] and FULL.size == len(FULL) == N


def test_append_and_extend_agree() -> None:
    """Appending one by one, extending in uneven batches, and mixing both build the same tree."""
    one_by_one = MerkleTree()
    for i, h in enumerate(HASHES):
        assert one_by_one.append(h) == i
        assert one_by_one.root() == ROOTS_N[i + 1]
    batched = MerkleTree()
    for start, stop in ((0, 1), (1, 4), (4, 4), (4, 13), (13, 64), (64, N)):
        batched.extend(HASHES[start:stop])
        batched.append(leaf_hash(b"probe"))
        assert batched.root(stop) == ROOTS_N[stop]
        batched = MerkleTree(batched.leaf(i) for i in range(stop))
    assert batched.root() == one_by_one.root() == ROOTS_N[N]


def test_every_inclusion_proof_verifies() -> None:
    """For every size 1..70 and every index, the inclusion proof verifies against that size's root."""
    for size in range(1, N + 1):
        for index in range(size):
            proof = FULL.inclusion_proof(index, size)
            assert verify_inclusion(HASHES[index], index, size, proof, ROOTS_N[size]), (index, size)


def test_every_consistency_proof_verifies() -> None:
    """For every 0 <= old <= new <= 70, the consistency proof verifies between the two roots."""
    for new in range(N + 1):
        for old in range(new + 1):
            proof = FULL.consistency_proof(old, new)
            assert verify_consistency(old, new, ROOTS_N[old], ROOTS_N[new], proof), (old, new)


def test_tampered_inclusion_proofs_fail() -> None:
    """A changed proof byte, index, size, leaf or root, or a proof one element off, never verifies."""
    other = leaf_hash(b"not in the tree")
    for size in range(1, N + 1):
        for index in range(size):
            proof = FULL.inclusion_proof(index, size)
            leaf, root = HASHES[index], ROOTS_N[size]
            for e in range(len(proof)):
                assert not verify_inclusion(leaf, index, size, flip(proof, e, (index + e) % 32), root)
            for wrong in (index - 1, index + 1, index ^ 2):
                if wrong != index:
                    assert not verify_inclusion(leaf, wrong, size, proof, root)
            for wrong in (size - 1, size + 1, size * 2, size // 2):
                if wrong != size and 0 < wrong <= N:
                    assert not verify_inclusion(leaf, index, wrong, proof, ROOTS_N[wrong])
            assert not verify_inclusion(other, index, size, proof, root)
            assert not verify_inclusion(leaf, index, size, proof, ROOTS_N[size - 1])
            assert not verify_inclusion(leaf, index, size, [*proof, root], root)
            if proof:
                assert not verify_inclusion(leaf, index, size, proof[:-1], root)


def test_tampered_consistency_proofs_fail() -> None:
    """A changed proof byte, size or root, or a proof one element off, never verifies."""
    for new in range(2, N + 1):
        for old in range(1, new):
            proof = FULL.consistency_proof(old, new)
            r1, r2 = ROOTS_N[old], ROOTS_N[new]
            for e in range(len(proof)):
                assert not verify_consistency(old, new, r1, r2, flip(proof, e, (old + new + e) % 32))
            for o, n in ((old - 1, new), (old + 1, new), (old, new - 1), (old, new + 1), (old, new * 2)):
                # The roots must be those of the claimed sizes: a signed checkpoint pairs them.
                if (o, n) != (old, new) and 0 <= o <= n <= N:
                    assert not verify_consistency(o, n, ROOTS_N[o], ROOTS_N[n], proof), (old, new, o, n)
            assert not verify_consistency(old, new, ROOTS_N[old - 1], r2, proof)
            assert not verify_consistency(old, new, r1, ROOTS_N[new - 1], proof)
            assert not verify_consistency(old, new, r2, r1, proof)
            assert not verify_consistency(old, new, r1, r2, [])
            assert not verify_consistency(old, new, r1, r2, proof[:-1])
            assert not verify_consistency(old, new, r1, r2, [*proof, r2])
            assert not verify_consistency(old, new, r1, r2, [r1, *proof])


@pytest.mark.parametrize(("index", "size"), [(0, 1), (5, 8), (1, 5), (37, 70), (69, 70), (64, 65)])
def test_every_byte_of_an_inclusion_proof_matters(index: int, size: int) -> None:
    """Flipping any single byte of any element of an inclusion proof makes it fail."""
    proof = FULL.inclusion_proof(index, size)
    for e in range(len(proof)):
        for b in range(32):
            assert not verify_inclusion(HASHES[index], index, size, flip(proof, e, b), ROOTS_N[size])


@pytest.mark.parametrize(("old", "new"), [(1, 8), (6, 8), (2, 5), (6, 7), (33, 70), (64, 70), (31, 64)])
def test_every_byte_of_a_consistency_proof_matters(old: int, new: int) -> None:
    """Flipping any single byte of any element of a consistency proof makes it fail."""
    proof = FULL.consistency_proof(old, new)
    for e in range(len(proof)):
        for b in range(32):
            assert not verify_consistency(old, new, ROOTS_N[old], ROOTS_N[new], flip(proof, e, b))


def test_trivial_consistency_cases() -> None:
    """Equal sizes need equal roots and no proof; size 0 needs the empty root and no proof."""
    r = ROOTS_N[5]
    assert verify_consistency(5, 5, r, r, [])
    assert not verify_consistency(5, 5, r, ROOTS_N[4], [])
    assert not verify_consistency(5, 5, r, r, [r])
    assert verify_consistency(0, 5, EMPTY_ROOT, r, [])
    assert verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    assert not verify_consistency(0, 5, r, r, [])
    assert not verify_consistency(0, 5, EMPTY_ROOT, r, [EMPTY_ROOT])
    assert not verify_consistency(6, 5, ROOTS_N[6], r, FULL.consistency_proof(5, 6))


@pytest.mark.parametrize(
    "call",
    [
        lambda: verify_inclusion(HASHES[0], 0, 1, None, ROOTS_N[1]),  # type: ignore[arg-type]
        lambda: verify_inclusion(HASHES[0], 0, 1, b"", ROOTS_N[1]),
        lambda: verify_inclusion(HASHES[0], 0, 1, "ab", ROOTS_N[1]),
        lambda: verify_inclusion(HASHES[0], -1, 1, [], ROOTS_N[1]),
        lambda: verify_inclusion(HASHES[0], 0, 0, [], EMPTY_ROOT),
        lambda: verify_inclusion(HASHES[0], 1, 1, [], ROOTS_N[1]),
        lambda: verify_inclusion(HASHES[0], False, True, [], ROOTS_N[1]),
        lambda: verify_inclusion(HASHES[0][:31], 0, 1, [], ROOTS_N[1][:31]),
        lambda: verify_inclusion(HASHES[0], 0, 1, [], "root"),  # type: ignore[arg-type]
        lambda: verify_inclusion(HASHES[0], 0, 2, [b"x"], ROOTS_N[2]),
        lambda: verify_inclusion(HASHES[0], 0, 2**64, [HASHES[1]] * 100, ROOTS_N[2]),
        lambda: verify_inclusion(HASHES[0], 0, 1.0, [], ROOTS_N[1]),  # type: ignore[arg-type]
        lambda: verify_consistency(1, 2, ROOTS_N[1], ROOTS_N[2], None),  # type: ignore[arg-type]
        lambda: verify_consistency(-1, 2, ROOTS_N[1], ROOTS_N[2], [HASHES[1]]),
        lambda: verify_consistency(1, 2, ROOTS_N[1], b"short", [HASHES[1]]),
        lambda: verify_consistency(1, 2, ROOTS_N[1], ROOTS_N[2], [HASHES[1][:16]]),
        lambda: verify_consistency(1, 2**64, ROOTS_N[1], ROOTS_N[2], [HASHES[1]] * 100),
        lambda: verify_consistency(1, "2", ROOTS_N[1], ROOTS_N[2], [HASHES[1]]),  # type: ignore[arg-type]
    ],
)
def test_verifiers_return_false_on_garbage(call: Callable[[], bool]) -> None:
    """Verifiers given malformed arguments return False instead of raising."""
    assert call() is False


def test_root_from_inclusion_raises_on_bad_shape() -> None:
    """root_from_inclusion refuses a proof of the wrong length with a ValueError."""
    proof = FULL.inclusion_proof(3, 10)
    with pytest.raises(ValueError, match="too short"):
        root_from_inclusion(HASHES[3], 3, 10, proof[:-1])
    with pytest.raises(ValueError, match="too long"):
        root_from_inclusion(HASHES[3], 3, 10, [*proof, HASHES[0]])
    with pytest.raises(ValueError, match="not below"):
        root_from_inclusion(HASHES[3], 10, 10, proof)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.root(N + 1), "tree size 71 is out of range 0..70"),
        (lambda t: t.root(-1), "tree size -1"),
        (lambda t: t.inclusion_proof(5, 5), "leaf index 5 is out of range for a tree of size 5"),
        (lambda t: t.inclusion_proof(-1), "leaf index -1"),
        (lambda t: t.inclusion_proof(0, 0), "leaf index 0 is out of range for a tree of size 0"),
        (lambda t: t.inclusion_proof(0, N + 1), "tree size 71"),
        (lambda t: t.consistency_proof(6, 5), "old size 6 is out of range 0..5"),
        (lambda t: t.consistency_proof(-1), "old size -1"),
        (lambda t: t.consistency_proof(1, N + 1), "tree size 71"),
        (lambda t: t.leaf(N), "leaf index 70"),
        (lambda t: t.append(b"short"), "must be 32 bytes"),
        (lambda t: t.extend([HASHES[0], "x" * 32]), "leaf hash #1 must be 32 bytes"),
    ],
)
def test_out_of_range_arguments_raise(call: Callable[[MerkleTree], object], message: str) -> None:
    """Out-of-range sizes and indexes and malformed leaf hashes raise ValueError saying what is wrong."""
    tree = MerkleTree(HASHES)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(tree)
    assert tree.root() == ROOTS_N[N]  # a refused extend leaves the tree as it was


def test_proofs_cost_logarithmic_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Roots and proofs of a 100,000-leaf tree take O(log n) hashes, from the cached subtrees."""
    size = 100_000
    tree = MerkleTree(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(size))
    calls = 0
    real = hashlib.sha256

    def counting(data: bytes) -> hashlib._Hash:
        nonlocal calls
        calls += 1
        return real(data)

    monkeypatch.setattr(merkle, "_sha256", counting)
    for call in (
        lambda: tree.root(),
        lambda: tree.root(size - 1),
        lambda: tree.root(65_537),
        lambda: tree.inclusion_proof(0),
        lambda: tree.inclusion_proof(size - 2, size - 1),
        lambda: tree.inclusion_proof(70_001, 99_999),
        lambda: tree.consistency_proof(1, size),
        lambda: tree.consistency_proof(65_535, 99_999),
        lambda: tree.consistency_proof(size - 1),
    ):
        calls = 0
        call()
        assert calls <= 2 * size.bit_length(), calls
