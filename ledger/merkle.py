"""The RFC 9162 (section 2.1) Merkle tree: hashes, an append-only tree, and proof verifiers.

The tree is built over leaf hashes, ``leaf_hash(entry)``, not over entries, so the ledger keeps
the entries wherever it likes. Pass ``leaf_hash(data)`` of each leaf's data (for the ledger, the
32-byte entry hash), never the data itself: the 0x00 prefix is what keeps a leaf from passing
for an interior node.

Next to the leaf hashes the tree caches the hash of every complete, aligned subtree: level ``k``
holds one hash per complete block of ``2**k`` leaves. The levels sum to about ``2 * n`` hashes,
64 bytes per leaf. Every subtree that RFC 9162 recurses into is either such a block or lies on
the ragged right edge, so a root or a proof at any size ``<= n`` costs O(log n) hashes.

The verifiers at the bottom take only bytes and ints, for an offline auditor. They follow the
algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 step by step, and return False rather than
raise on malformed input.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

# A proof never needs more elements than the height of a tree with 2**64 leaves, plus one.
_MAX_PROOF_LEN = 65

_sha256 = hashlib.sha256


def leaf_hash(data: bytes) -> bytes:
    """Return the RFC 9162 leaf hash SHA-256(0x00 || data)."""
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the RFC 9162 interior node hash SHA-256(0x01 || left || right)."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Return the largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class MerkleTree:
    """An append-only RFC 9162 Merkle tree over 32-byte leaf hashes.

    Not thread-safe: appends and reads must not overlap (the caller holds one lock for both).
    """

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Build a tree holding ``leaf_hashes`` in order."""
        # Level k packs, 32 bytes each, the hash of leaves [i * 2**k, (i + 1) * 2**k) for every
        # complete block; level 0 is the leaf hashes. One bytearray per level keeps memory at
        # 32 bytes per hash (a bytes object per hash would cost 73), and puts two siblings
        # next to each other, so a parent is the hash of one 64-byte slice.
        self._levels: list[bytearray] = [bytearray()]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def __len__(self) -> int:
        """The number of leaves."""
        return len(self._levels[0]) // HASH_SIZE

    def leaf(self, index: int) -> bytes:
        """Return the leaf hash at ``index``."""
        self._check_index(index, self.size)
        return self._node(0, index)

    def append(self, leaf_hash: bytes) -> int:
        """Append one leaf hash and return its index."""
        if not _is_hash(leaf_hash):
            raise ValueError(f"a leaf hash must be {HASH_SIZE} bytes, got {leaf_hash!r:.80}")
        levels = self._levels
        index = self.size
        levels[0] += leaf_hash
        level = 0
        # A level holding an even number of hashes has just completed a block of the level above.
        while len(levels[level]) % (2 * HASH_SIZE) == 0:
            parent = _sha256(b"\x01" + levels[level][-2 * HASH_SIZE :]).digest()
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += parent
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes, level by level (faster than repeated ``append``)."""
        new = list(leaf_hashes)
        for i, h in enumerate(new):
            if not _is_hash(h):
                raise ValueError(f"leaf hash #{i} must be {HASH_SIZE} bytes, got {h!r:.80}")
        levels = self._levels
        levels[0] += b"".join(new)
        pair = 2 * HASH_SIZE
        level = 0
        while True:
            row = levels[level]
            if level + 1 == len(levels):
                if len(row) < pair:
                    return
                levels.append(bytearray())
            parents = levels[level + 1]
            # Children of the parents we have end at byte 2 * len(parents); hash the new pairs.
            children = bytes(row[2 * len(parents) : len(row) - len(row) % pair])
            if not children:
                return  # no new complete block here, so none above either
            sha = _sha256
            parents += b"".join([sha(b"\x01" + children[i : i + pair]).digest() for i in range(0, len(children), pair)])
            level += 1

    def root(self, size: int | None = None) -> bytes:
        """Return the root hash of the first ``size`` leaves (default: all of them)."""
        size = self._check_size(size)
        return EMPTY_ROOT if size == 0 else self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 (2.1.3.1) inclusion proof PATH(index, D[0:size])."""
        size = self._check_size(size)
        self._check_index(index, size)
        proof: list[bytes] = []  # collected root-first; RFC order is leaf-first
        lo, hi = 0, size
        while hi - lo > 1:
            mid = lo + _split(hi - lo)
            if index < mid:
                proof.append(self._range_hash(mid, hi))
                hi = mid
            else:
                proof.append(self._range_hash(lo, mid))
                lo = mid
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the RFC 9162 (2.1.4.1) consistency proof PROOF(old_size, D[0:new_size])."""
        new_size = self._check_size(new_size)
        if not _is_size(old_size) or old_size > new_size:
            raise ValueError(f"old size {old_size!r} is out of range 0..{new_size}")
        if old_size in (0, new_size):
            return []
        # SUBPROOF(m, D[lo:hi], b), unrolled; collected root-first, returned leaf-first.
        proof: list[bytes] = []
        lo, hi, m, whole = 0, new_size, old_size, True
        while m != hi - lo:
            mid = lo + _split(hi - lo)
            if m <= mid - lo:
                proof.append(self._range_hash(mid, hi))
                hi = mid
            else:
                proof.append(self._range_hash(lo, mid))
                m -= mid - lo
                lo = mid
                whole = False
        if not whole:
            proof.append(self._range_hash(lo, hi))
        proof.reverse()
        return proof

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """MTH(D[lo:hi]) for a range RFC 9162 recurses into: cached blocks, folded from the right."""
        # The range splits into complete blocks whose sizes are the bits of hi - lo, largest
        # first; ``lo`` is aligned to the largest one, so each block is in the cache.
        blocks: list[bytes] = []
        n = hi - lo
        while n:
            k = n.bit_length() - 1
            blocks.append(self._node(k, lo >> k))
            lo += 1 << k
            n -= 1 << k
        h = blocks.pop()
        while blocks:
            h = _sha256(b"\x01" + blocks.pop() + h).digest()
        return h

    def _node(self, level: int, index: int) -> bytes:
        """The cached hash of complete block ``index`` of ``level``."""
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not _is_size(size) or size > self.size:
            raise ValueError(f"tree size {size!r} is out of range 0..{self.size}")
        return size

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not _is_size(index) or index >= size:
            raise ValueError(f"leaf index {index!r} is out of range for a tree of size {size}")


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """Return the root that ``proof`` implies for ``leaf_hash`` at ``index`` (RFC 9162 2.1.3.2).

    Raises ``ValueError`` if the inputs are malformed or the proof has the wrong length.
    """
    if not (_is_hash(leaf_hash) and _is_size(index) and _is_size(size)):
        raise ValueError("malformed leaf hash, index or size")
    if index >= size:
        raise ValueError(f"leaf index {index} is not below tree size {size}")
    if not isinstance(proof, Sequence) or isinstance(proof, bytes | str) or len(proof) > _MAX_PROOF_LEN:
        raise ValueError("a proof must be a short sequence of hashes")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if not _is_hash(p):
            raise ValueError(f"proof elements must be {HASH_SIZE} bytes")
        if sn == 0:
            raise ValueError("proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof is too short")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Return whether ``proof`` shows ``leaf_hash`` at ``index`` in the tree of ``size`` with ``root``."""
    try:
        computed = root_from_inclusion(leaf_hash, index, size, proof)
    except ValueError:
        return False
    return _is_hash(root) and hmac.compare_digest(computed, root)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Return whether ``proof`` shows the tree (old_size, old_root) is a prefix of (new_size, new_root).

    Follows RFC 9162 2.1.4.2. Two cases the RFC leaves to the caller: equal sizes need an empty
    proof and equal roots; from size 0, an empty proof and the empty-tree root.
    """
    if not (_is_size(old_size) and _is_size(new_size) and _is_hash(old_root) and _is_hash(new_root)):
        return False
    if not isinstance(proof, Sequence) or isinstance(proof, bytes | str) or len(proof) > _MAX_PROOF_LEN:
        return False
    if not all(_is_hash(p) for p in proof):
        return False
    if old_size > new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and hmac.compare_digest(old_root, new_root)
    if old_size == 0:
        return len(proof) == 0 and hmac.compare_digest(old_root, EMPTY_ROOT)
    if len(proof) == 0:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and hmac.compare_digest(fr, old_root) and hmac.compare_digest(sr, new_root)
