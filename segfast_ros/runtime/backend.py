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
