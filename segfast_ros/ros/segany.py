"""SegAny over ROS: a ``Segment`` request becomes Predictor prompts, a prediction its results.

Checks here cover what the message layout adds (flattened arrays, grouping, lengths); the
:class:`~segfast_ros.runtime.predictor.Predictor` checks the values (NaN, out-of-image, labels)
and names the offending prompt.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

from segfast_ros.everything.masks import stability_score
from segfast_ros.ros.conversions import mask_instance_msg, mask_to_mono8_msg
from segfast_ros.runtime.predictor import Predictor


def request_prompts(req: Any, low_res_size: int) -> dict[str, Any]:
    """Predictor keyword arguments for a ``segfast_ros/srv/Segment`` request.

    Args:
        req: the request (``points``, ``labels``, ``points_per_set``, ``boxes``, ``multimask``,
            ``mask_input``).
        low_res_size: the model's low-res mask side ``L`` (for ``mask_input``).

    Returns:
        Keyword arguments for :meth:`Predictor.predict_low_res`, always batched (prompt sets
        on the leading axis).

    Raises:
        ValueError: mismatched lengths or groupings, saying what was expected.
    """
    n_points = len(req.points)
    if len(req.labels) != n_points:
        raise ValueError(
            f"labels: expected one label per point ({n_points} points), got {len(req.labels)}"
        )
    coords = np.array([(p.x, p.y) for p in req.points], dtype=np.float64).reshape(-1, 2)
    labels = np.asarray(req.labels, dtype=np.float64)

    boxes_flat = np.asarray(req.boxes, dtype=np.float64)
    if boxes_flat.size % 4:
        raise ValueError(
            f"boxes: expected a flat list of [x1, y1, x2, y2] groups (a multiple of 4 values), "
            f"got {boxes_flat.size} values"
        )
    boxes = boxes_flat.reshape(-1, 4)

    per_set = int(req.points_per_set)
    if per_set and n_points % per_set:
        raise ValueError(
            f"points_per_set={per_set}: expected a multiple of {per_set} points, got {n_points}"
        )
    point_sets = n_points // per_set if per_set else None
    if point_sets is not None and len(boxes) and point_sets != len(boxes):
        raise ValueError(
            f"{point_sets} point groups (points_per_set={per_set}) and {len(boxes)} boxes: "
            "with both, each box needs one group of points (or set points_per_set=0 to share "
            "the points with every box)"
        )
    num_sets = len(boxes) or point_sets or 1

    kwargs: dict[str, Any] = {"multimask_output": bool(req.multimask)}
    if n_points:
        if per_set:
            kwargs["point_coords"] = coords.reshape(-1, per_set, 2)
            kwargs["point_labels"] = labels.reshape(-1, per_set)
        else:
            # Shared points: repeat them per set, so that every call is batched.
            kwargs["point_coords"] = np.broadcast_to(coords, (num_sets, n_points, 2))
            kwargs["point_labels"] = np.broadcast_to(labels, (num_sets, n_points))
    if len(boxes):
        kwargs["box"] = boxes
    elif not n_points:
        raise ValueError("no prompt: expected points with labels, or boxes")

    mask = np.asarray(req.mask_input, dtype=np.float32)
    if mask.size:
        block = low_res_size * low_res_size
        if mask.size == block:
            kwargs["mask_input"] = np.broadcast_to(
                mask.reshape(1, 1, low_res_size, low_res_size),
                (num_sets, 1, low_res_size, low_res_size),
            )
        elif mask.size == num_sets * block:
            kwargs["mask_input"] = mask.reshape(num_sets, 1, low_res_size, low_res_size)
        else:
            raise ValueError(
                f"mask_input: expected {block} values ({low_res_size}x{low_res_size} low-res "
                f"logits, shared) or {num_sets} x {block} (one block per prompt set), got "
                f"{mask.size}"
            )
    return kwargs


def segment(
    predictor: Predictor,
    req: Any,
    header: Any,
    result_type: type,
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
) -> list[Any]:
    """Answer a ``Segment`` request on ``predictor``'s embedding: one result per prompt set.

    All prompt sets go to the decoder in one batch. Masks are upscaled one prompt set at a
    time, so a request with many boxes on a large frame never holds all full-size logits.

    Args:
        predictor: with the requested frame's embedding set.
        req: the request.
        header: the frame's ``std_msgs/Header`` (for the mono8 images).
        result_type: ``segfast_ros.msg.SegmentResult``.
        mask_threshold: logit above which a pixel is in the mask.
        stability_offset: logit offset of the stability score.

    Raises:
        ValueError: a malformed or out-of-image prompt (the message says which and why).
    """
    lr = predictor.info.low_res_size
    kwargs = request_prompts(req, lr)
    low_res, scores = predictor.predict_low_res(**kwargs)
    boxes = kwargs.get("box")
    results = []
    for i in range(low_res.shape[0]):
        order = np.argsort(-scores[i], kind="stable")
        logits = predictor.upscale(low_res[i][order])
        masks = logits > mask_threshold
        stability = stability_score(logits, mask_threshold, stability_offset)
        prompt = None if boxes is None else boxes[i]
        result = result_type()
        result.masks = [
            mask_instance_msg(masks[j], float(scores[i, k]), float(stability[j]), j, prompt)
            for j, k in enumerate(order)
        ]
        if req.return_images:
            result.images = [mask_to_mono8_msg(m, header) for m in masks]
        if req.return_low_res:
            best = np.ascontiguousarray(low_res[i, order[0]], dtype=np.float32)
            result.low_res_logits = array("f", best.tobytes())
            result.low_res_size = lr
        results.append(result)
    return results
