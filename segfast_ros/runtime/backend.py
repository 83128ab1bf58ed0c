"""The small interface every inference backend implements (ONNX Runtime, PyTorch, TensorRT).

A backend runs exactly two graphs:

* the **encoder**: ``(1, 3, S, S)`` float32, normalised and zero-padded (see
  :mod:`segfast_ros.runtime.transforms`) to an image embedding ``(1, C, h, w)`` float32;
* the **decoder**: one image embedding plus ``B`` prompt sets to ``B x M`` low-resolution mask
  logits ``(B, M, L, L)`` and predicted IoUs ``(B, M)``, where ``M`` is every mask token of the
  model (1 single-mask token + 3 multimask tokens for SAM) and ``L = 4 * h``.

Prompts reach the decoder already encoded as labelled points in the encoder's input frame
(pixels of the resized, padded ``S x S`` image, *without* the +0.5 pixel-centre shift, which the
graph applies):

* label 1 foreground point, 0 background point, 2 box top-left corner, 3 box bottom-right
  corner, -1 padding ("not a point", used only when a prompt set has no box, as SAM does).

This module must never import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from ..spec import (  # noqa: F401  (re-exported: the runtime's view of the contract)
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    METADATA_KEY,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    ModelInfo,
)


@runtime_checkable
class Backend(Protocol):
    """An inference backend: two graphs and the model facts around them."""

    #: Short name for logs and benchmark tables ("onnxruntime", "torch", "tensorrt").
    name: str
    info: ModelInfo

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Encode one preprocessed image.

        Args:
            image: ``(1, 3, S, S)`` float32, normalised and zero-padded.

        Returns:
            ``(1, C, h, w)`` float32 image embedding.
        """
        ...

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode ``B`` prompt sets against one image embedding in one call.

        Args:
            image_embeddings: ``(1, C, h, w)`` float32, broadcast over the prompt sets.
            point_coords: ``(B, N, 2)`` float32, (X, Y) in encoder-input pixels.
            point_labels: ``(B, N)`` float32 in {-1, 0, 1, 2, 3} (see module docstring).
            mask_input: ``(1 or B, 1, L, L)`` float32 low-res mask logits from a previous call.
            has_mask_input: ``(1,)`` float32, 1.0 to use ``mask_input``, 0.0 to ignore it.

        Returns:
            ``low_res_masks`` ``(B, M, L, L)`` float32 logits and ``iou_predictions``
            ``(B, M)`` float32.
        """
        ...


#: The decoder's five inputs in :data:`DECODER_INPUTS` order.
DecoderInputs = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def decode_in_runs(
    run: Callable[[DecoderInputs, bool], tuple[np.ndarray, np.ndarray]],
    inputs: DecoderInputs,
    max_sets: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``B`` prompt sets in runs of at most ``max_sets`` (None: one run), joined.

    A shared ``mask_input`` (first axis 1) goes to every run, a per-set one is split with the
    prompts. Each run's outputs are written into the joined ones as they come, so a split call
    never holds a second copy of all the logits.

    Args:
        run: one decoder run, ``run(inputs, last)`` -> ``(masks (b, M, L, L), iou (b, M))``;
            ``last`` is True for the final run of the call.
        inputs: ``(image_embeddings, point_coords, point_labels, mask_input, has_mask_input)``.
        max_sets: most prompt sets per run.

    Returns:
        ``(B, M, L, L)`` float32 logits and ``(B, M)`` IoUs, in prompt order.
    """
    embeddings, coords, labels, mask_input, has_mask = inputs
    total = coords.shape[0]
    if max_sets is None or total <= max_sets:
        return run(inputs, True)
    per_set_mask = mask_input.shape[0] != 1
    masks = iou = np.empty(0, np.float32)  # sized by the first run (M and L come from it)
    for lo in range(0, total, max_sets):
        hi = lo + max_sets
        part = (
            embeddings,
            coords[lo:hi],
            labels[lo:hi],
            mask_input[lo:hi] if per_set_mask else mask_input,
            has_mask,
        )
        part_masks, part_iou = run(part, hi >= total)
        if lo == 0:
            masks = np.empty((total, *part_masks.shape[1:]), np.float32)
            iou = np.empty((total, *part_iou.shape[1:]), np.float32)
        masks[lo:hi], iou[lo:hi] = part_masks, part_iou
    return masks, iou
