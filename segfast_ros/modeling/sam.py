"""The SAM-family model: an image encoder, the prompt encoder and the mask decoder."""

from __future__ import annotations

import torch
from torch import nn

from ..spec import ModelInfo
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Holds the three parts under the names the official checkpoints use.

    ``encode`` and ``decode`` are exactly the two graphs every runtime backend runs (see
    :mod:`segfast_ros.spec`); the ONNX export traces these methods.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        info: ModelInfo,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.info = info

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalised, padded float32 to ``(B, C, h, w)`` embeddings."""
        return self.image_encoder(image)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode ``B`` prompt sets against one embedding.

        Args:
            image_embeddings: ``(1, C, h, w)``.
            point_coords: ``(B, N, 2)`` (X, Y) in encoder-input pixels, box corners included.
            point_labels: ``(B, N)`` float labels in {-1, 0, 1, 2, 3}.
            mask_input: ``(1 or B, 1, 4h, 4w)`` low-res mask logits.
            has_mask_input: ``(1,)``, 1.0 to use ``mask_input``.

        Returns:
            Low-res mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)`` for all ``M``
            mask tokens (token 0 is the single-mask output, 1.. the multimask outputs).
        """
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels)
        dense = self.prompt_encoder.embed_mask(mask_input, has_mask_input)
        image_pe = self.prompt_encoder.get_dense_pe()
        return self.mask_decoder(image_embeddings, image_pe, sparse, dense)
