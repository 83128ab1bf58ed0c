"""SAM mask decoder: prompt tokens and the image embedding to mask logits and IoU predictions."""

from __future__ import annotations

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts ``num_multimask_outputs + 1`` masks per prompt set.

    Args:
        transformer_dim: token / embedding channels ``C``.
        transformer: the two-way transformer.
        num_multimask_outputs: masks for ambiguous prompts (token 0 is the single-mask output).
        iou_head_depth: layers of the IoU head.
        iou_head_hidden_dim: hidden width of the IoU head.
    """

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(
                transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2
            ),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every mask token.

        Args:
            image_embeddings: ``(1, C, h, w)``, broadcast over the prompt sets.
            image_pe: ``(1, C, h, w)`` positional encoding of the embedding grid.
            sparse_embeddings: ``(B, N, C)`` prompt tokens.
            dense_embeddings: ``(1 or B, C, h, w)`` mask-input embedding.

        Returns:
            Mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``, ``M`` all tokens.
        """
        b = sparse_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse_embeddings], dim=1)
        src = (image_embeddings + dense_embeddings).expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack(
            [mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, uc, uh, uw = upscaled.shape
        masks = (hyper @ upscaled.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
        return masks, self.iou_prediction_head(iou_out)
