"""SegAny over ROS: a ``Segment`` request becomes prompt sets, their masks ``SegmentResult``\\ s.

The prompt checks and the decoding live in :mod:`segfast_ros.segany` (shared with
the offline replay); this module only reads the request's fields and builds the messages.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from segfast_ros.pipeline.render import InstanceRecord, answer_records
from segfast_ros.ros.conversions import mask_to_mono8_msg, record_to_msg
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.segany import decode_prompt_sets, prompt_kwargs


def request_prompts(req: Any, low_res_size: int, max_sets: int | None = None) -> dict[str, Any]:
    """Predictor keyword arguments for a ``segfast_ros/srv/Segment`` request.

    Args:
        req: the request (``points``, ``labels``, ``points_per_set``, ``boxes``, ``multimask``,
            ``mask_input``).
        low_res_size: the model's low-res mask side ``L`` (for ``mask_input``).
        max_sets: refuse requests with more prompt sets than this (None: no cap).

    Raises:
        ValueError: mismatched lengths or groupings, saying what was expected.
    """
    return prompt_kwargs(
        [(p.x, p.y) for p in req.points],
        req.labels,
        req.boxes,
        points_per_set=req.points_per_set,
        multimask=req.multimask,
        mask_input=req.mask_input,
        low_res_size=low_res_size,
        max_sets=max_sets,
    )


def check_image_bytes(kwargs: dict[str, Any], predictor: Predictor, limit: int) -> None:
    """Refuse a request whose mono8 images would exceed ``limit`` bytes.

    At 8K one mono8 mask is 33 MB, and a response is copied about three times on its way out
    (Python message, C message, serialized): 64 sets of 3 masks would take the node past any
    robot's memory, so such a request is refused before any decoding.

    Raises:
        ValueError: the images' size, how it adds up, and the limit.
    """
    h, w = predictor.original_size or (0, 0)
    prompts = kwargs.get("box", kwargs.get("point_coords"))
    sets = len(prompts) if prompts is not None else 1
    masks = 3 if kwargs["multimask_output"] else 1
    size = sets * masks * h * w
    if size > limit:
        raise ValueError(
            f"return_images: {sets} prompt sets x {masks} masks of {w}x{h} mono8 = "
            f"{size / 2**20:,.0f} MiB of images, more than segment.max_image_bytes = "
            f"{limit / 2**20:,.0f} MiB; ask for fewer sets or single masks, leave "
            "return_images off (every mask also comes as RLE), or raise the parameter"
        )


def segment(
    predictor: Predictor,
    req: Any,
    header: Any,
    result_type: type,
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    max_sets: int | None = None,
    max_image_bytes: int | None = None,
    lift: Callable[[list[InstanceRecord]], list[InstanceRecord]] | None = None,
) -> list[Any]:
    """Answer a ``Segment`` request on ``predictor``'s embedding: one result per prompt set.

    Args:
        predictor: with the requested frame's embedding set.
        req: the request.
        header: the frame's ``std_msgs/Header`` (for the mono8 images).
        result_type: ``segfast_ros.msg.SegmentResult``.
        mask_threshold: logit above which a pixel is in the mask.
        stability_offset: logit offset of the stability score.
        max_sets: refuse requests with more prompt sets than this (None: no cap).
        max_image_bytes: with ``return_images``, refuse requests whose mono8 images would
            take more bytes than this, before decoding (None: no cap).
        lift: with ``return_3d``, each set's records with their ``position_3d`` (the node's
            depth lift on the frame); None or ``return_3d`` off: 2D only.

    Raises:
        ValueError: a malformed or out-of-image prompt, more prompt sets than ``max_sets``,
            or images over ``max_image_bytes`` (the message says which and why).
    """
    lr = predictor.info.low_res_size
    kwargs = request_prompts(req, lr, max_sets)
    if req.return_images and max_image_bytes is not None:
        check_image_bytes(kwargs, predictor, max_image_bytes)
    sets = decode_prompt_sets(
        predictor,
        kwargs,
        mask_threshold=mask_threshold,
        stability_offset=stability_offset,
    )
    results = []
    for answer in sets:
        result = result_type()
        records = answer_records(answer)
        if req.return_3d and lift is not None:
            records = lift(records)
        result.masks = [record_to_msg(rec) for rec in records]
        if req.return_images:
            result.images = [mask_to_mono8_msg(m, header) for m in answer.masks]
        if req.return_low_res:
            result.low_res_logits = array("f", answer.low_res.tobytes())
            result.low_res_size = lr
        results.append(result)
        # Release this set's masks (K x H x W bool) before the next set's are made: only the
        # messages (RLE, and mono8 images if asked for) accumulate.
        del answer
    return results
