"""The SegEvery interface: one call per frame, instances out, whatever the strategy.

A strategy works on a :class:`~segfast_ros.runtime.predictor.Predictor` whose image (or cached
embedding) is already set, so the encoder never runs twice for a frame. Strategies that look at
pixels (the object-aware detector) also get the RGB image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..masks import Instance
from ..runtime.predictor import Predictor


@dataclass
class SegEveryResult:
    """What one SegEvery call returns.

    Attributes:
        instances: the kept instances, best first (by score).
        image_hw: ``(H, W)`` of the original image.
        timings_ms: wall time per stage in milliseconds (e.g. ``detector``, ``decoder``,
            ``postprocess``), for diagnostics and benchmarks.
        decoder_prompts: prompt sets the decoder evaluated (the cost SegEvery strategies
            compete on).
        strategy: name of the strategy that produced it.
    """

    instances: list[Instance]
    image_hw: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)
    decoder_prompts: int = 0
    strategy: str = ""


@runtime_checkable
class SegEvery(Protocol):
    """A segment-everything strategy, configured at construction with typed keyword args."""

    name: str

    def __call__(self, predictor: Predictor, image: np.ndarray | None = None) -> SegEveryResult:
        """Segment everything in the predictor's current image.

        Args:
            predictor: with ``set_image`` (or ``set_embedding``) already called.
            image: the same frame as ``(H, W, 3)`` uint8 RGB; required by strategies that look
                at pixels (object-aware), ignored by the others.
        """
        ...


def require_image(image: np.ndarray | None, hw: tuple[int, int], why: str, what: str = "") -> None:
    """A ValueError unless ``image`` has the ``(H, W)`` of the predictor's frame.

    For strategies that look at pixels: ``why`` says what they need it for, ``what`` is added
    after the expected shape (e.g. ``" uint8 RGB"``).
    """
    if image is None or tuple(np.shape(image)[:2]) != hw:
        got = None if image is None else tuple(np.shape(image))
        raise ValueError(
            f"{why}: pass the frame set on the predictor as image (H, W, 3) = {(*hw, 3)}{what}, "
            f"got {got}"
        )
