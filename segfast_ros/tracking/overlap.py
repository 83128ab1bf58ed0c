"""Exact mask IoU between two sets of masks, fast enough to run on every SegEvery frame.

Both trackers compare masks all the time: a frame's SegEvery instances against every track's
last mask (association), a target's new mask against its previous one (lost checks), lost
targets against SegEvery instances (re-acquisition). Full-resolution boolean masks would cost
``Na * Nb * H * W`` per comparison; a reduced grid would be fast but wrong for small objects (an
object a few cells wide loses most of its IoU to the rounding). So :class:`Footprints` keeps
every mask *exactly*, in a form whose comparisons cost only what the masks share:

* each image column is cut into *blocks* of :data:`BLOCK` (64) rows, numbered in column-major
  order (``block = x * ceil(H / 64) + y // 64``), the order COCO RLE runs in;
* a mask is the list of blocks it touches, each with a 64-bit word: bit ``r`` set when the
  pixel ``r`` rows below the block's top is in the mask. Blocks it does not touch cost nothing.

The intersection of two masks is the popcount of the AND of their words, summed over the
blocks both touch; :func:`intersections` finds those pairs for two whole sets at once (a sorted
join on the block numbers) and sums them per mask pair. Nothing is approximated:
:func:`iou_matrix` equals the IoU of the full-resolution masks. Its cost grows with the blocks
the masks share (mostly each mask with itself a frame later), not with the image size. A mask
holds one word per column and 64 rows it touches: a 100 x 100 pixel object, about 300 words.

Footprints are built straight from the RLE runs of all instances at once
(:meth:`Footprints.from_instances`: no mask is decoded, no per-instance numpy work) or from
boolean masks (:meth:`Footprints.from_masks`: the columns of each mask's box are packed).
:meth:`Footprints.shifted` moves masks by whole pixels (a track's mask, where its motion says the
object is now) without rebuilding them.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..masks import Instance, rle_counts

#: Rows per block: one block of one column is one uint64 word.
BLOCK: int = 64
_BLOCK_BITS = 6  # BLOCK == 1 << _BLOCK_BITS

# _LOW[k]: the k lowest bits set (k = 0..64).
_LOW = np.array([(1 << k) - 1 for k in range(BLOCK + 1)], dtype=np.uint64)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64, as int64."""
    bitwise_count = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    if bitwise_count is not None:
        return bitwise_count(words).astype(np.int64)
    table = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
    return table[words.view(np.uint8).reshape(-1, 8)].sum(axis=1)


@dataclass(frozen=True, eq=False)
class Footprints:
    """``N`` masks of one ``(H, W)`` image, kept for exact, fast IoU (:func:`iou_matrix`).

    Build with :meth:`from_masks` (boolean masks) or :meth:`from_instances` (SegEvery's RLE
    instances); select and join with :meth:`take` and :meth:`concat`. Immutable.

    Attributes:
        hw: ``(H, W)`` of the image the masks belong to.
        areas: ``(N,)`` int64 mask pixels.
        indptr: ``(N + 1,)`` int64: mask ``i``'s blocks are ``blocks[indptr[i]:indptr[i+1]]``.
        blocks: ``(K,)`` int64 block numbers (see the module docstring), ascending per mask.
        words: ``(K,)`` uint64 the mask's pixels in each of its blocks.
    """

    hw: tuple[int, int]
    areas: np.ndarray
    indptr: np.ndarray
    blocks: np.ndarray
    words: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)

    @classmethod
    def empty(cls, hw: Sequence[int]) -> Footprints:
        """No masks, for an image of ``hw``."""
        none = np.zeros(0, np.int64)
        return cls(_check_hw(hw), none, np.zeros(1, np.int64), none, np.zeros(0, np.uint64))

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> Footprints:
        """Footprints of ``(N, H, W)`` masks (nonzero is foreground)."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
        hw = _check_hw(masks.shape[1:])
        parts = [_mask_words(m.astype(bool, copy=False)) for m in masks]
        if not parts:
            return cls.empty(hw)
        sizes = [len(p[0]) for p in parts]
        words = np.concatenate([p[1] for p in parts])
        areas = np.array([int(_popcount(p[1]).sum()) for p in parts], np.int64)
        return cls(hw, areas, _indptr(sizes), np.concatenate([p[0] for p in parts]), words)

    @classmethod
    def from_instances(cls, instances: Sequence[Instance], hw: Sequence[int]) -> Footprints:
        """Footprints of SegEvery instances (their uncompressed COCO RLE masks) of ``hw``.

        Raises:
            ValueError: an instance whose RLE size is not ``hw``, compressed counts, or counts
                that do not cover the image exactly (the message names the instance).
        """
        hw = _check_hw(hw)
        counts = []
        for i, inst in enumerate(instances):
            size = [int(v) for v in inst.rle["size"]]
            if size != list(hw):
                raise ValueError(
                    f"instance {i}: mask size {size} is not the image's (H, W) {list(hw)}"
                )
            runs = inst.rle["counts"]
            counts.append(runs if isinstance(runs, list) else rle_counts(inst.rle).tolist())
        return _from_runs(hw, counts)

    def take(self, indices: Sequence[int] | np.ndarray) -> Footprints:
        """The masks at ``indices``, in that order (repeats allowed)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices {idx.tolist()} out of range for {len(self)} masks")
        idx = idx % max(len(self), 1)
        start, stop = self.indptr[idx], self.indptr[idx + 1]
        sizes = stop - start
        pick = _ranges(start, sizes)
        return Footprints(
            self.hw, self.areas[idx], _indptr(sizes), self.blocks[pick], self.words[pick]
        )

    @staticmethod
    def concat(parts: Sequence[Footprints], hw: Sequence[int] | None = None) -> Footprints:
        """The masks of ``parts`` one after the other (``hw`` needed only when empty).

        Raises:
            ValueError: parts of different image sizes, or no parts and no ``hw``.
        """
        sizes = {p.hw for p in parts} | ({_check_hw(hw)} if hw is not None else set())
        if len(sizes) != 1:
            if not sizes:
                raise ValueError("Footprints.concat needs hw when there are no parts")
            raise ValueError(f"footprints of different image sizes (H, W): {sorted(sizes)}")
        if not parts:
            return Footprints.empty(sizes.pop())
        return Footprints(
            parts[0].hw,
            np.concatenate([p.areas for p in parts]),
            _indptr(np.concatenate([np.diff(p.indptr) for p in parts])),
            np.concatenate([p.blocks for p in parts]),
            np.concatenate([p.words for p in parts]),
        )

    def shifted(self, dx: npt.ArrayLike, dy: npt.ArrayLike) -> Footprints:
        """Each mask ``i`` moved by ``dx[i]`` columns and ``dy[i]`` rows (whole pixels, either
        sign); the pixels moved off the image are dropped, so areas may shrink.

        Raises:
            ValueError: ``dx`` or ``dy`` not one integer per mask.
        """
        n = len(self)
        dx, dy = (np.asarray(d).reshape(-1) for d in (dx, dy))
        if len(dx) != n or len(dy) != n or not all(d.dtype.kind in "iu" for d in (dx, dy)):
            raise ValueError(
                f"expected one integer shift per mask ({n}), got dx {dx.shape} {dx.dtype} and "
                f"dy {dy.shape} {dy.dtype}"
            )
        h, w = self.hw
        per_col = -(-h // BLOCK)
        owner = np.repeat(np.arange(n), np.diff(self.indptr))
        column, row_block = np.divmod(self.blocks, per_col)
        # Rows moved by dy = q * 64 + s (0 <= s < 64): a word shifted left by s bits (s rows down)
        # lands in row block + q, the s bits that overflow in row block + q + 1.
        q, s = np.divmod(dy.astype(np.int64)[owner], BLOCK)
        s = s.astype(np.uint64)
        low = self.words << s
        high = np.where(s > 0, self.words >> ((np.uint64(BLOCK) - s) % np.uint64(BLOCK)), 0)
        rows = np.stack([row_block + q, row_block + q + 1], axis=1).reshape(-1)
        words = np.stack([low, high.astype(np.uint64)], axis=1).reshape(-1)
        columns = np.repeat(column + dx.astype(np.int64)[owner], 2)
        owner = np.repeat(owner, 2)
        words[rows == per_col - 1] &= _LOW[h - (per_col - 1) * BLOCK]  # the rows below the image
        keep = (columns >= 0) & (columns < w) & (rows >= 0) & (rows < per_col) & (words != 0)
        blocks, words, owner = columns[keep] * per_col + rows[keep], words[keep], owner[keep]
        # Per mask the blocks stay ascending; the high part of one word and the low part of the
        # next one in its column share a block: OR them together.
        if len(blocks):
            new = np.flatnonzero(np.diff(owner * (w * per_col) + blocks, prepend=-1))
            words, blocks, owner = np.bitwise_or.reduceat(words, new), blocks[new], owner[new]
        areas = np.bincount(owner, weights=_popcount(words), minlength=n).astype(np.int64)
        return Footprints(self.hw, areas, _indptr(np.bincount(owner, minlength=n)), blocks, words)

    @functools.cached_property
    def _by_block(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(first, count, owners, words)``: the entries sorted by block; block ``g``'s are
        ``first[g]`` to ``first[g] + count[g]`` (cached: a set is often compared twice)."""
        owners = np.repeat(np.arange(len(self)), np.diff(self.indptr))
        order = np.argsort(self.blocks, kind="stable")
        count = np.bincount(self.blocks, minlength=self.hw[1] * -(-self.hw[0] // BLOCK))
        return np.cumsum(count) - count, count, owners[order], self.words[order]


def iou_matrix(a: Footprints, b: Footprints) -> np.ndarray:
    """Pairwise mask IoU, exact (equal to the full-resolution masks' IoU).

    Returns:
        ``(len(a), len(b))`` float32; 0 where both masks are empty.

    Raises:
        ValueError: footprints of different image sizes.
    """
    inter = _intersections(a, b)
    union = a.areas[:, None] + b.areas[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0).astype(np.float32)


def intersections(a: Footprints, b: Footprints) -> np.ndarray:
    """``(len(a), len(b))`` int64 pixels in both masks of each pair (exact).

    Raises:
        ValueError: footprints of different image sizes.
    """
    return _intersections(a, b).astype(np.int64)


def _intersections(a: Footprints, b: Footprints) -> np.ndarray:
    """:func:`intersections` as float64 (exact: whole numbers far below 2**53)."""
    if a.hw != b.hw:
        raise ValueError(f"footprints of different image sizes (H, W): {a.hw} and {b.hw}")
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return np.zeros((na, nb))
    first, count, a_owner, a_words = a._by_block
    hits = count[b.blocks]
    ia = _ranges(first[b.blocks], hits)  # every a entry in the same block as each b entry
    b_owner = np.repeat(np.arange(nb), np.diff(b.indptr))
    shared = _popcount(a_words[ia] & np.repeat(b.words, hits))
    pair = a_owner[ia] * nb + np.repeat(b_owner, hits)
    inter = np.bincount(pair, weights=shared, minlength=na * nb)  # int64 when nothing is shared
    return inter.astype(np.float64, copy=False).reshape(na, nb)


def _from_runs(hw: tuple[int, int], counts: Sequence[list[int]]) -> Footprints:
    """Footprints of masks given as column-major RLE run lengths (zeros first), all at once."""
    h, w = hw
    n = len(counts)
    if n == 0:
        return Footprints.empty(hw)
    lengths = np.fromiter(map(len, counts), np.int64, n)
    runs = np.fromiter(itertools.chain.from_iterable(counts), np.int64, int(lengths.sum()))
    _check_runs(runs, lengths, h * w)
    # The foreground runs: the odd ones of each mask, where it starts with a run of zeros.
    n_fg = lengths // 2
    owner = np.repeat(np.arange(n), n_fg)
    first_fg = _indptr(lengths)[:-1] + 1 - 2 * (np.cumsum(n_fg) - n_fg)
    fg = 2 * np.arange(len(owner)) + np.repeat(first_fg, n_fg)
    end = np.cumsum(runs)[fg] - owner * (h * w)  # within its own mask
    size = runs[fg]
    start = end - size
    areas = np.bincount(owner, weights=size, minlength=n).astype(np.int64)
    # Blocks are consecutive in column-major order: a run touches blocks g(start)..g(end - 1).
    per_col = -(-h // BLOCK)
    x0 = start // h
    x1 = (end - 1) // h
    g0 = x0 * per_col + ((start - x0 * h) >> _BLOCK_BITS)
    pieces = np.maximum(x1 * per_col + ((end - 1 - x1 * h) >> _BLOCK_BITS) - g0 + 1, 0)
    block = _ranges(g0, pieces)  # empty runs: no pieces
    piece_of = np.repeat(np.arange(len(pieces)), pieces)
    column = block // per_col
    row_block = block - column * per_col
    top = column * h + (row_block << _BLOCK_BITS)  # the block's first pixel
    rows = np.minimum(BLOCK, h - np.arange(per_col) * BLOCK)[row_block]
    lo = np.maximum(start[piece_of] - top, 0)
    hi = np.minimum(end[piece_of] - top, rows)
    words = _LOW[hi] ^ _LOW[lo]  # bits lo..hi - 1
    owner = owner[piece_of]
    # Pieces of one mask in one block are disjoint and adjacent in order: OR them together.
    # (Convex masks have none: one run per column and block.)
    if len(block) > 1 and (block[1:] == block[:-1]).any():
        new = np.flatnonzero(np.diff(owner * (w * per_col) + block, prepend=-1))
        words, block, owner = np.bitwise_or.reduceat(words, new), block[new], owner[new]
    return Footprints(hw, areas, _indptr(np.bincount(owner, minlength=n)), block, words)


def _check_runs(runs: np.ndarray, lengths: np.ndarray, total: int) -> None:
    """A ValueError naming the first instance whose runs are negative or do not sum to H * W."""
    first = _indptr(lengths)[:-1]
    sums = np.add.reduceat(runs, np.minimum(first, len(runs) - 1)) if len(runs) else first * 0
    bad = (sums != total) | (lengths == 0)
    if runs.min(initial=0) < 0:
        bad |= np.add.reduceat(runs < 0, np.minimum(first, len(runs) - 1)) > 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        got = int(sums[i]) if lengths[i] else 0
        raise ValueError(
            f"instance {i}: RLE counts sum to {got} (or are negative); expected non-negative "
            f"runs summing to H * W = {total}"
        )


def _mask_words(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(blocks, words)`` of one ``(H, W)`` bool mask: the columns of its box, packed."""
    h, _ = mask.shape
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.uint64)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    per_col = -(-h // BLOCK)
    columns = np.zeros((x1 - x0, per_col * BLOCK), bool)
    columns[:, :h] = mask[:, x0:x1].T
    words = np.packbits(columns, axis=1, bitorder="little").view("<u8").astype(np.uint64)
    words = words.reshape(-1)
    keep = np.flatnonzero(words)
    return keep + x0 * per_col, words[keep]


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concat(arange(s, s + n) for s, n in zip(starts, sizes))``, vectorised."""
    total = int(sizes.sum())
    offsets = np.cumsum(sizes) - sizes
    return np.arange(total) + np.repeat(starts - offsets, sizes)


def _indptr(sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    out = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def _check_hw(hw: Sequence[int]) -> tuple[int, int]:
    if len(hw) != 2 or min(int(v) for v in hw) < 1:
        raise ValueError(f"hw must be (H, W) with both sides >= 1, got {tuple(hw)}")
    return int(hw[0]), int(hw[1])
