"""Exact mask IoU between two sets of masks, fast enough to run on every SegEvery frame.

Both trackers compare masks all the time: a frame's SegEvery instances against every track's
last mask (association), a target's new mask against its previous one (lost checks), lost
targets against SegEvery instances (re-acquisition). Full-resolution boolean masks would cost
``Na * Nb * H * W`` per comparison; a reduced grid would be fast but wrong for small objects
(an object a few cells wide loses most of its IoU to the rounding). So :class:`Footprints`
keeps every mask *exactly*, in a form whose comparisons cost what the masks share:

* the image is cut into :data:`CELL` x :data:`CELL` pixel cells (aligned at the top-left
  corner; the last row and column of cells are cut by the image edge);
* per mask, the cells it fills completely (*full*), and for the cells it covers partly their
  pixel count and their 256-bit bitmap (*partial*). Cells it does not touch cost nothing.

The intersection of masks ``a`` and ``b`` is a sum over the cells both touch: where ``a`` is
full, ``b``'s pixel count; where ``a`` is partial and ``b`` full, ``a``'s count; where both are
partial, the popcount of the two bitmaps' AND. The first two terms are one sparse matrix
product (scipy), the third a join of the two sets' partial cells; nothing is approximated, so
:func:`iou_matrix` equals the IoU of the full-resolution masks. Its cost grows with the cells
the masks share (mostly each mask with itself a frame later), not with the image size.

Building footprints decodes each mask once and visits only the cells of its box.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from ..masks import Instance, masks_to_boxes, rle_area, rle_counts, rle_to_mask

#: Side of a footprint cell in pixels: a cell's bitmap is 256 bits, four uint64 words.
CELL: int = 16
_CELL_PIXELS = CELL * CELL
_WORDS = _CELL_PIXELS // 64

_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a ``(K, _WORDS)`` uint64 array, as int64 ``(K,)``."""
    bitwise_count = getattr(np, "bitwise_count", None)  # numpy >= 2.0
    if bitwise_count is not None:
        return bitwise_count(words).sum(axis=1, dtype=np.int64)
    return _BYTE_BITS[words.view(np.uint8)].sum(axis=1, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Footprints:
    """``N`` masks of one ``(H, W)`` image, kept for exact, fast IoU (:func:`iou_matrix`).

    Build with :meth:`from_masks` (boolean masks) or :meth:`from_instances` (SegEvery's RLE
    instances); select and join with :meth:`take` and :meth:`concat`. Immutable.

    Attributes:
        hw: ``(H, W)`` of the image the masks belong to.
        areas: ``(N,)`` int64 mask pixels.
        full: per mask, int64 indices (row-major in the cell grid) of the cells it fills.
        part: per mask, int64 indices of the cells it covers partly.
        counts: per mask, int64 pixels of each of its ``part`` cells.
        bits: per mask, ``(len(part), 4)`` uint64 bitmaps of its ``part`` cells.
    """

    hw: tuple[int, int]
    areas: np.ndarray
    full: tuple[np.ndarray, ...]
    part: tuple[np.ndarray, ...]
    counts: tuple[np.ndarray, ...]
    bits: tuple[np.ndarray, ...]

    def __len__(self) -> int:
        return len(self.areas)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the cell grid."""
        return -(-self.hw[0] // CELL), -(-self.hw[1] // CELL)

    @classmethod
    def empty(cls, hw: tuple[int, int]) -> Footprints:
        """No masks, for an image of ``hw``."""
        return cls(_check_hw(hw), np.zeros(0, np.int64), (), (), (), ())

    @classmethod
    def from_masks(cls, masks: np.ndarray) -> Footprints:
        """Footprints of ``(N, H, W)`` masks (nonzero is foreground)."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected masks (N, H, W), got shape {masks.shape}")
        masks = masks.astype(bool, copy=False)
        hw = _check_hw(masks.shape[1:])
        boxes = masks_to_boxes(masks) if len(masks) else np.zeros((0, 4), np.float32)
        return cls._build(hw, [_mask_cells(m, b) for m, b in zip(masks, boxes, strict=True)])

    @classmethod
    def from_instances(cls, instances: Sequence[Instance], hw: tuple[int, int]) -> Footprints:
        """Footprints of SegEvery instances (their RLE masks) of an image of ``hw``.

        Only the columns of each instance's box are decoded (a box that does not hold the
        whole mask is replaced by the mask's own).

        Raises:
            ValueError: an instance whose RLE size is not ``hw`` (names it), or a bad RLE.
        """
        hw = _check_hw(hw)
        rows = []
        for i, inst in enumerate(instances):
            size = tuple(int(v) for v in inst.rle["size"])
            if size != hw:
                raise ValueError(
                    f"instance {i}: mask size {list(size)} is not the image's (H, W) {list(hw)}"
                )
            rows.append(_rle_cells(inst.rle, np.asarray(inst.box), hw))
        return cls._build(hw, rows)

    @classmethod
    def _build(cls, hw: tuple[int, int], rows: Sequence[_Cells]) -> Footprints:
        if not rows:
            return cls.empty(hw)
        full, part, counts, bits = zip(*rows, strict=True)
        areas = [len(f) * _CELL_PIXELS + int(c.sum()) for f, c in zip(full, counts, strict=True)]
        return cls(hw, np.asarray(areas, np.int64), full, part, counts, bits)

    def take(self, indices: Sequence[int] | np.ndarray) -> Footprints:
        """The masks at ``indices``, in that order (repeats allowed)."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        return Footprints(
            self.hw,
            self.areas[idx] if idx else np.zeros(0, np.int64),
            tuple(self.full[i] for i in idx),
            tuple(self.part[i] for i in idx),
            tuple(self.counts[i] for i in idx),
            tuple(self.bits[i] for i in idx),
        )

    @staticmethod
    def concat(parts: Sequence[Footprints], hw: tuple[int, int] | None = None) -> Footprints:
        """The masks of ``parts`` one after the other (``hw`` needed only when empty).

        Raises:
            ValueError: parts of different image sizes, or no parts and no ``hw``.
        """
        if not parts:
            if hw is None:
                raise ValueError("Footprints.concat needs hw when there are no parts")
            return Footprints.empty(hw)
        sizes = sorted({p.hw for p in parts} | ({_check_hw(hw)} if hw is not None else set()))
        if len(sizes) > 1:
            raise ValueError(f"footprints of different image sizes (H, W): {sizes}")
        return Footprints(
            parts[0].hw,
            np.concatenate([p.areas for p in parts]),
            *(
                sum((getattr(p, name) for p in parts), ())
                for name in ("full", "part", "counts", "bits")
            ),
        )

    @functools.cached_property
    def _packed(self) -> _Packed:
        return _Packed.of(self)


@dataclass(frozen=True)
class _Packed:
    """One set's cells as flat arrays, built once per :class:`Footprints` (cached)."""

    left: scipy.sparse.csr_array  # [full | partial counts]: the ``a`` side of the product
    right: scipy.sparse.csr_array  # [all counts | full]: the ``b`` side
    part_owner: np.ndarray  # (K,) mask of each partial cell, sorted by cell
    part_cell: np.ndarray  # (K,) sorted
    part_bits: np.ndarray  # (K, 4)

    @staticmethod
    def of(fp: Footprints) -> _Packed:
        n = len(fp)
        cells = fp.grid[0] * fp.grid[1]
        n_full = np.array([len(c) for c in fp.full], np.int64)
        n_part = np.array([len(c) for c in fp.part], np.int64)
        full = _cat(fp.full, np.int64)
        part = _cat(fp.part, np.int64)
        counts = _cat(fp.counts, np.int64)
        owner_full = np.repeat(np.arange(n), n_full)
        owner_part = np.repeat(np.arange(n), n_part)
        left = _csr(n, 2 * cells, (owner_full, full, 1), (owner_part, part + cells, counts))
        right = _csr(
            n,
            2 * cells,
            (owner_full, full, _CELL_PIXELS),
            (owner_part, part, counts),
            (owner_full, full + cells, 1),
        )
        order = np.argsort(part, kind="stable")
        bits = np.concatenate(fp.bits) if n else np.zeros((0, _WORDS), np.uint64)
        return _Packed(left, right, owner_part[order], part[order], bits[order])


def iou_matrix(a: Footprints, b: Footprints) -> np.ndarray:
    """Pairwise mask IoU, exact (equal to the full-resolution masks' IoU).

    Returns:
        ``(len(a), len(b))`` float32; 0 where both masks are empty.

    Raises:
        ValueError: footprints of different image sizes.
    """
    if a.hw != b.hw:
        raise ValueError(f"footprints of different image sizes (H, W): {a.hw} and {b.hw}")
    inter = intersections(a, b).astype(np.float64)
    union = a.areas[:, None] + b.areas[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou.astype(np.float32)


def intersections(a: Footprints, b: Footprints) -> np.ndarray:
    """``(len(a), len(b))`` int64 pixels in both masks of each pair (exact)."""
    if a.hw != b.hw:
        raise ValueError(f"footprints of different image sizes (H, W): {a.hw} and {b.hw}")
    na, nb = len(a), len(b)
    if na == 0 or nb == 0:
        return np.zeros((na, nb), np.int64)
    pa, pb = a._packed, b._packed
    # full cells of a x every cell of b, and partial cells of a x full cells of b
    inter = np.rint((pa.left @ pb.right.T).toarray()).astype(np.int64)
    # partial x partial: join the two sorted cell lists, popcount the ANDed bitmaps
    lo = np.searchsorted(pa.part_cell, pb.part_cell, side="left")
    hi = np.searchsorted(pa.part_cell, pb.part_cell, side="right")
    hits = hi - lo
    total = int(hits.sum())
    if total:
        ib = np.repeat(np.arange(len(hits)), hits)
        ia = np.arange(total) + np.repeat(lo - (np.cumsum(hits) - hits), hits)
        shared = _popcount(pa.part_bits[ia] & pb.part_bits[ib])
        pair = pa.part_owner[ia] * nb + pb.part_owner[ib]
        inter += (
            np.bincount(pair, weights=shared, minlength=na * nb).astype(np.int64).reshape(na, nb)
        )
    return inter


#: One mask's ``(full, part, counts, bits)``.
_Cells = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _cell_span(box: np.ndarray, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: the cell rows and columns an XYXY box (pixel edges) touches."""
    h, w = hw
    x1, y1, x2, y2 = (float(v) if math.isfinite(v) else 0.0 for v in np.asarray(box).reshape(4))
    c0 = min(max(math.floor(x1), 0), w) // CELL
    r0 = min(max(math.floor(y1), 0), h) // CELL
    c1 = -(-min(max(math.ceil(x2), 0), w) // CELL)
    r1 = -(-min(max(math.ceil(y2), 0), h) // CELL)
    return r0, max(r0, r1), c0, max(c0, c1)


def _mask_cells(mask: np.ndarray, box: np.ndarray) -> _Cells:
    """The cells of an ``(H, W)`` bool mask that lie in ``box`` (its box, XYXY edges)."""
    r0, r1, c0, c1 = _cell_span(box, mask.shape)
    region = mask[r0 * CELL : r1 * CELL, c0 * CELL : c1 * CELL]
    return _region_cells(region, r0, c0, -(-mask.shape[1] // CELL))


def _rle_cells(rle: dict, box: np.ndarray, hw: tuple[int, int]) -> _Cells:
    """The cells of an RLE mask, decoding only the columns of ``box`` (the whole mask if the
    box misses some of it)."""
    h, w = hw
    r0, r1, c0, c1 = _cell_span(box, hw)
    x0, x1 = c0 * CELL, min(w, c1 * CELL)
    columns = rle_to_mask({"size": [h, x1 - x0], "counts": _rle_columns(rle, h, x0, x1)})
    cells = _region_cells(columns[r0 * CELL : r1 * CELL], r0, c0, -(-w // CELL))
    if len(cells[0]) * _CELL_PIXELS + int(cells[2].sum()) != rle_area(rle):
        mask = rle_to_mask(rle)
        cells = _mask_cells(mask, masks_to_boxes(mask[None])[0])
    return cells


def _rle_columns(rle: dict, h: int, x0: int, x1: int) -> np.ndarray:
    """Run lengths of columns ``[x0, x1)`` of a column-major RLE of height ``h``.

    Raises:
        ValueError: counts that do not cover the image (a bad RLE).
    """
    counts = rle_counts(rle)
    ends = np.cumsum(counts)
    if len(ends) == 0 or ends[-1] < x1 * h or (counts < 0).any():
        raise ValueError(f"RLE counts do not cover its size {rle.get('size')}")
    lo, hi = x0 * h, x1 * h
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(ends - counts, hi, side="left"))
    runs = np.minimum(ends[first:last], hi) - np.maximum(ends[first:last] - counts[first:last], lo)
    # the slice starts with a run of zeros, as an RLE does; an odd first run means ones
    return np.concatenate(([0], runs)) if first % 2 else runs


def _region_cells(region: np.ndarray, r0: int, c0: int, grid_w: int) -> _Cells:
    """The cells of a mask region whose top-left cell is ``(r0, c0)`` (cut regions padded)."""
    rows, cols = -(-region.shape[0] // CELL), -(-region.shape[1] // CELL)
    if rows == 0 or cols == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros((0, _WORDS), np.uint64)
    if region.shape != (rows * CELL, cols * CELL):  # cut by the image edge
        padded = np.zeros((rows * CELL, cols * CELL), bool)
        padded[: region.shape[0], : region.shape[1]] = region
        region = padded
    blocks = region.reshape(rows, CELL, cols, CELL)
    counts = np.count_nonzero(blocks, axis=(1, 3)).reshape(-1)
    index = ((r0 + np.arange(rows))[:, None] * grid_w + (c0 + np.arange(cols))).reshape(-1)
    is_full = counts == _CELL_PIXELS
    is_part = (counts > 0) & ~is_full
    ry, rx = np.divmod(np.flatnonzero(is_part), cols)
    bits = np.packbits(blocks[ry, :, rx, :].reshape(-1, _CELL_PIXELS), axis=1)
    return (
        index[is_full],
        index[is_part],
        counts[is_part].astype(np.int64),
        bits.view(np.uint64).reshape(-1, _WORDS),
    )


def _csr(n: int, cols: int, *blocks: tuple[np.ndarray, np.ndarray, object]):
    """An ``(n, cols)`` float64 CSR matrix from ``(rows, cols, values)`` triplets."""
    rows = np.concatenate([b[0] for b in blocks])
    col = np.concatenate([b[1] for b in blocks])
    val = np.concatenate(
        [np.broadcast_to(np.asarray(b[2], np.float64), b[0].shape) for b in blocks]
    )
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return scipy.sparse.csr_array((val[order], col[order], indptr), shape=(n, cols))


def _cat(arrays: Sequence[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype, copy=False) if arrays else np.zeros(0, dtype)


def _check_hw(hw: Sequence[int]) -> tuple[int, int]:
    if len(hw) != 2 or min(int(v) for v in hw) < 1:
        raise ValueError(f"hw must be (H, W) with both sides >= 1, got {tuple(hw)}")
    return int(hw[0]), int(hw[1])
