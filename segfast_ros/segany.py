"""SegAny on a frame's embedding: prompt sets in, masks best-first out.

The node's ``~/segment`` service and the offline replay's scripted prompts both go through
here, so a prompt gives the same masks live and offline. Prompts arrive flat, as in
``srv/Segment.srv`` (points with labels, grouped by ``points_per_set``; boxes; optional
low-res mask input); :func:`prompt_kwargs` checks what the flat layout adds (lengths,
groupings), and the :class:`~segfast_ros.runtime.predictor.Predictor` checks the values (NaN,
out-of-image, labels) and names the offending prompt.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .masks import MaskWindows, lowest_threshold, threshold_regions
from .runtime.predictor import Predictor
from .runtime.transforms import upscale_group_size


@dataclass(frozen=True)
class PromptSetMasks:
    """The answer for one prompt set.

    Attributes:
        masks: ``(K, H, W)`` bool, best predicted IoU first (``K`` = 1, or 3 with multimask).
        scores: ``(K,)`` predicted IoU, in the same order.
        stability: ``(K,)`` stability scores.
        prompt: ``(4,)`` the set's box, or None when the set had no box.
        low_res: ``(L, L)`` float32 low-res logits of the best mask (the next ``mask_input``).
        windows: the same masks, each as its box (boxes and areas too), as thresholding made
            them: what the RLE and the box of a message are read from; None where only the
            full masks are known.
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    prompt: np.ndarray | None
    low_res: np.ndarray
    windows: MaskWindows | None = None


def prompt_kwargs(
    points: npt.ArrayLike,
    labels: npt.ArrayLike,
    boxes: npt.ArrayLike = (),
    *,
    points_per_set: int = 0,
    multimask: bool = False,
    mask_input: npt.ArrayLike = (),
    low_res_size: int,
    max_sets: int | None = None,
) -> dict[str, Any]:
    """Predictor keyword arguments for flat prompts, always batched (sets on the first axis).

    Args:
        points: ``(N, 2)`` X, Y pixels (or a flat ``2N`` list).
        labels: ``(N,)`` 1 foreground, 0 background.
        boxes: ``(M, 4)`` XYXY pixels, or a flat list of ``4M`` values. Every box is a set.
        points_per_set: 0, all points form one set (shared by every box); ``G > 0``,
            consecutive groups of ``G`` points are separate sets.
        multimask: three masks per set instead of one.
        mask_input: low-res logits: ``L * L`` values shared by all sets, or one block per set.
        low_res_size: the model's low-res mask side ``L``.
        max_sets: refuse more prompt sets than this in one call (None: no cap).

    Returns:
        Keyword arguments for :meth:`Predictor.predict_low_res`.

    Raises:
        ValueError: mismatched lengths or groupings, no prompt, or more than ``max_sets``
            prompt sets, saying what was expected.
    """
    coords, labels = _points_and_labels(points, labels)
    box_array = _boxes(boxes)
    per_set = _points_per_set(points_per_set, len(coords))
    num_sets = _count_sets(len(coords), per_set, len(box_array), max_sets)
    kwargs: dict[str, Any] = {"multimask_output": bool(multimask)}
    kwargs.update(_point_kwargs(coords, labels, per_set, num_sets))
    if len(box_array):
        kwargs["box"] = box_array
    elif not len(coords):
        raise ValueError("no prompt: expected points with labels, or boxes")
    mask = _mask_input(mask_input, low_res_size, num_sets)
    if mask is not None:
        kwargs["mask_input"] = mask
    return kwargs


def _points_and_labels(
    points: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 2)`` float64 points from pairs or a flat list, and their ``(N,)`` labels."""
    coords = np.asarray(points, dtype=np.float64).reshape(-1)
    if coords.size % 2:
        raise ValueError(f"points: expected (x, y) pairs, got {coords.size} values")
    coords = coords.reshape(-1, 2)
    flat_labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if len(flat_labels) != len(coords):
        raise ValueError(
            f"labels: expected one label per point ({len(coords)} points), got {len(flat_labels)}"
        )
    return coords, flat_labels


def _boxes(boxes: npt.ArrayLike) -> np.ndarray:
    """``(M, 4)`` float64 XYXY boxes from groups of 4 or a flat list."""
    flat = np.asarray(boxes, dtype=np.float64).reshape(-1)
    if flat.size % 4:
        raise ValueError(
            f"boxes: expected a flat list of [x1, y1, x2, y2] groups (a multiple of 4 values), "
            f"got {flat.size} values"
        )
    return flat.reshape(-1, 4)


def _points_per_set(points_per_set: int, n_points: int) -> int:
    """``points_per_set`` as an int that divides the number of points (0: one shared set)."""
    per_set = int(points_per_set)
    if per_set < 0:
        raise ValueError(f"points_per_set must be >= 0, got {per_set}")
    if per_set and n_points % per_set:
        raise ValueError(
            f"points_per_set={per_set}: expected a multiple of {per_set} points, got {n_points}"
        )
    return per_set


def _count_sets(n_points: int, per_set: int, n_boxes: int, max_sets: int | None) -> int:
    """Prompt sets of the request: one per box, else one per point group, else one.

    Raises:
        ValueError: point groups that do not pair with the boxes, or more than ``max_sets``.
    """
    point_sets = n_points // per_set if per_set else None
    if point_sets is not None and n_boxes and point_sets != n_boxes:
        raise ValueError(
            f"{point_sets} point groups (points_per_set={per_set}) and {n_boxes} boxes: "
            "with both, each box needs one group of points (or set points_per_set=0 to share "
            "the points with every box)"
        )
    num_sets = n_boxes or point_sets or 1
    if max_sets is not None and num_sets > max_sets:
        raise ValueError(
            f"{num_sets} prompt sets in one request; this node answers at most {max_sets} "
            "(parameter max_prompt_sets): split the request"
        )
    return num_sets


def _point_kwargs(
    coords: np.ndarray, labels: np.ndarray, per_set: int, num_sets: int
) -> dict[str, np.ndarray]:
    """``point_coords`` ``(B, n, 2)`` and ``point_labels`` ``(B, n)``; none without points."""
    if not len(coords):
        return {}
    if per_set:
        return {
            "point_coords": coords.reshape(-1, per_set, 2),
            "point_labels": labels.reshape(-1, per_set),
        }
    # Shared points: repeat them per set, so that every call is batched.
    return {
        "point_coords": np.broadcast_to(coords, (num_sets, len(coords), 2)),
        "point_labels": np.broadcast_to(labels, (num_sets, len(coords))),
    }


def _mask_input(mask_input: npt.ArrayLike, low_res_size: int, num_sets: int) -> np.ndarray | None:
    """``(B, 1, L, L)`` float32 low-res logits, shared or one block per set; None if empty."""
    mask = np.asarray(mask_input, dtype=np.float32)
    if not mask.size:
        return None
    lr = int(low_res_size)
    block = lr * lr
    if mask.size == block:
        return np.broadcast_to(mask.reshape(1, 1, lr, lr), (num_sets, 1, lr, lr))
    if mask.size == num_sets * block:
        return mask.reshape(num_sets, 1, lr, lr)
    raise ValueError(
        f"mask_input: expected {block} values ({lr}x{lr} low-res logits, shared) or "
        f"{num_sets} x {block} (one block per prompt set), got {mask.size}"
    )


def decode_prompt_sets(
    predictor: Predictor,
    kwargs: dict[str, Any],
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    upscale_budget: int | None = None,
) -> Iterator[PromptSetMasks]:
    """Decode all prompt sets in one decoder batch, then yield each set's masks best first.

    Masks are upscaled one set at a time and, within a set, in groups of at most
    ``upscale_budget`` pixels of float32 logits (at least one mask); each group is reduced to
    boolean masks and stability scores before the next. So a call with many sets on a large
    frame holds the low-res logits, one group of full-size logits and one set's boolean masks
    (``K x H x W`` bytes), never all of them: a consumer that drops each answer before asking
    for the next stays bounded.

    Args:
        predictor: with the frame's image or embedding set.
        kwargs: from :func:`prompt_kwargs`.
        mask_threshold: logit above which a pixel is in the mask.
        stability_offset: logit offset of the stability score.
        upscale_budget: pixels of full-size logits upscaled at once; None:
            :data:`~segfast_ros.runtime.transforms.UPSCALE_BUDGET_PIXELS`.

    Raises:
        ValueError: an out-of-image or malformed prompt, or a budget below 1 (raised before
            anything is yielded).
    """
    low_res, scores = predictor.predict_low_res(**kwargs)
    hw = predictor.original_size
    assert hw is not None  # predict_low_res raised otherwise
    group = upscale_group_size(hw, upscale_budget)
    boxes = kwargs.get("box")
    offset = stability_offset
    above = lowest_threshold(mask_threshold, offset)
    for i in range(low_res.shape[0]):
        order = np.argsort(-scores[i], kind="stable")
        masks = np.zeros((len(order), *hw), dtype=bool)
        parts = []
        for start in range(0, len(order), group):
            # Each mask is upscaled and thresholded only where it may exceed a threshold.
            regions = predictor.upscale_regions(low_res[i][order[start : start + group]], above)
            part = threshold_regions(regions, mask_threshold, offset)
            del regions  # before the next group is upscaled
            for j, window in enumerate(part.windows):  # pasted, then kept as views of masks
                x0, y0 = part.origin(j)
                view = masks[start + j, y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]]
                view[:] = window
                part.windows[j] = view
            parts.append(part)
        windows = MaskWindows.concat(parts)
        yield PromptSetMasks(
            masks=masks,
            scores=np.asarray(scores[i][order], dtype=np.float32),
            stability=windows.stability,
            prompt=None if boxes is None else boxes[i],
            low_res=np.ascontiguousarray(low_res[i, order[0]], dtype=np.float32),
            windows=windows,
        )
        del masks, windows  # the consumer holds the answer; the next set's replace it
