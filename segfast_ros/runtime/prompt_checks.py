"""Checks of the prompts a :class:`~segfast_ros.runtime.predictor.Predictor` is given.

Each check takes the caller's array-likes, in original-image pixels, and either returns them
as arrays with the prompt-set count ``B`` (None for an unbatched prompt) or raises a
ValueError that names the offending point, box or mask and what was expected, so a bad
service request is answered with the reason rather than a decoder error.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from segfast_ros.spec import LABEL_BG, LABEL_FG


def _as_real_array(value: npt.ArrayLike, name: str) -> np.ndarray:
    """``value`` as a float64 array, or a ValueError naming ``name``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from err
    return arr


def check_points(
    point_coords: npt.ArrayLike | None,
    point_labels: npt.ArrayLike | None,
    original_hw: tuple[int, int],
) -> tuple[np.ndarray | None, np.ndarray | None, int | None]:
    """Validate points: coords ``([B,] N, 2)`` float64, labels, B (None if unbatched)."""
    if point_coords is None and point_labels is None:
        return None, None, None
    if point_coords is None or point_labels is None:
        missing = "point_labels" if point_labels is None else "point_coords"
        raise ValueError(f"point_coords and point_labels go together: {missing} is missing")
    coords = _as_real_array(point_coords, "point_coords")
    labels = _as_real_array(point_labels, "point_labels")
    if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
        raise ValueError(
            f"point_coords must be (N, 2) or (B, N, 2) (X, Y) pixels, got shape {coords.shape}"
        )
    if labels.shape != coords.shape[:-1]:
        raise ValueError(
            f"point_labels must have shape {coords.shape[:-1]} to match point_coords "
            f"{coords.shape}, got {labels.shape}"
        )
    bad = ~np.isfinite(coords).all(axis=-1)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"point_coords contains NaN or inf: point {_fmt_idx(idx)}")
    bad_label = (labels != LABEL_FG) & (labels != LABEL_BG)
    if bad_label.any():
        idx = tuple(int(i) for i in np.argwhere(bad_label)[0])
        raise ValueError(
            f"point_labels must be 1 (foreground) or 0 (background), "
            f"got {labels[idx]:g} for point {_fmt_idx(idx)}"
        )
    h, w = original_hw
    outside = (
        (coords[..., 0] < 0) | (coords[..., 0] > w) | (coords[..., 1] < 0) | (coords[..., 1] > h)
    )
    if outside.any():
        idx = tuple(int(i) for i in np.argwhere(outside)[0])
        x, y = coords[idx]
        raise ValueError(
            f"point {_fmt_idx(idx)} at (X={x:g}, Y={y:g}) is outside the image of {w}x{h} "
            "(W x H); expected (X, Y) original pixels in [0, W] x [0, H]"
        )
    batch = coords.shape[0] if coords.ndim == 3 else None
    return coords, labels, batch


def check_boxes(
    box: npt.ArrayLike | None, original_hw: tuple[int, int]
) -> tuple[np.ndarray | None, int | None]:
    """Validate boxes; returns ``([B,] 4)`` float64 XYXY and B (None if unbatched)."""
    if box is None:
        return None, None
    boxes = _as_real_array(box, "box")
    if boxes.ndim not in (1, 2) or boxes.shape[-1] != 4:
        raise ValueError(f"box must be (4,) or (B, 4) XYXY pixels, got shape {boxes.shape}")
    flat = boxes.reshape(-1, 4)

    def name(i: int) -> str:
        return f"box {i} {flat[i].tolist()}" if boxes.ndim == 2 else f"box {flat[i].tolist()}"

    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise ValueError(f"{name(int(np.argmax(bad)))} contains NaN or inf")
    flipped = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
    if flipped.any():
        raise ValueError(
            f"{name(int(np.argmax(flipped)))} has x1 < x0 or y1 < y0; expected XYXY "
            "(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
        )
    h, w = original_hw
    outside = (flat[:, :2] < 0).any(axis=1) | (flat[:, 2] > w) | (flat[:, 3] > h)
    if outside.any():
        raise ValueError(
            f"{name(int(np.argmax(outside)))} is outside the image of {w}x{h} (W x H); "
            "expected XYXY original pixels in [0, W] x [0, H]"
        )
    return boxes, (boxes.shape[0] if boxes.ndim == 2 else None)


def check_mask_input(
    mask_input: npt.ArrayLike | None, lr: int
) -> tuple[np.ndarray | None, int | None]:
    """Validate low-res mask logits; returns ``(1 or B, 1, L, L)`` float32 and B (None if 1)."""
    if mask_input is None:
        return None, None
    arr = np.asarray(mask_input)
    if arr.shape not in ((lr, lr), (1, lr, lr)) and not (
        arr.ndim == 4 and arr.shape[1:] == (1, lr, lr)
    ):
        raise ValueError(
            f"mask_input must be low-res logits of shape ({lr}, {lr}), (1, {lr}, {lr}) or "
            f"(B, 1, {lr}, {lr}), got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"mask_input must be float logits, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise ValueError("mask_input contains NaN or inf")
    batch = arr.shape[0] if arr.ndim == 4 else None
    return np.ascontiguousarray(arr.reshape(-1, 1, lr, lr), dtype=np.float32), batch


def _fmt_idx(idx: tuple[int, ...]) -> str:
    """Index of a point: ``3`` for (N, 2) inputs, ``1 of prompt set 2`` for (B, N, 2)."""
    return str(idx[0]) if len(idx) == 1 else f"{idx[1]} of prompt set {idx[0]}"
