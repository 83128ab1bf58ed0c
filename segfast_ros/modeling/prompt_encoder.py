"""SAM prompt encoder: labelled points (and box corners as points) to sparse tokens, and a
low-resolution mask to a dense embedding. Names follow the official ``prompt_encoder.*`` keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..spec import LABEL_PAD
from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords01: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` coordinates in [0, 1] to ``(..., 2 * num_pos_feats)`` features."""
        proj = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def dense(self, size: int) -> torch.Tensor:
        """Encoding of the centres of a ``size x size`` grid: ``(2 * feats, size, size)``."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) / size
        y, x = torch.meshgrid(centres, centres, indexing="ij")
        return self.encode(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Embeds prompts for the mask decoder.

    Args:
        embed_dim: token and embedding channels ``C``.
        image_size: encoder input side ``S`` in pixels (coordinates are in this frame).
        embed_size: image embedding side ``h``; mask inputs are ``4h x 4h``.
        mask_in_chans: hidden channels of the mask downscaling convs.
    """

    def __init__(
        self, embed_dim: int, image_size: int, embed_size: int, mask_in_chans: int = 16
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_size = image_size
        self.embed_size = embed_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # fg point, bg point, box top-left, box bottom-right
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: ``(1, C, h, w)``."""
        return self.pe_layer.dense(self.embed_size)[None]

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sparse tokens ``(B, N, C)`` from ``(B, N, 2)`` input-frame pixels and ``(B, N)`` labels.

        Coordinates are shifted to pixel centres (+0.5). Padding points (label -1) carry only the
        "not a point" embedding; box corners are labels 2 and 3.
        """
        pe = self.pe_layer.encode((coords + 0.5) / self.image_size)
        labels = labels[..., None]
        pad = (labels == LABEL_PAD).to(pe.dtype)
        tokens = pe * (1 - pad) + self.not_a_point_embed.weight * pad
        for label, emb in enumerate(self.point_embeddings):
            tokens = tokens + emb.weight * (labels == label).to(pe.dtype)
        return tokens

    def embed_mask(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """Dense embedding ``(1 or B, C, h, w)`` from ``(1 or B, 1, 4h, 4w)`` mask logits.

        ``has_mask_input`` ``(1,)`` selects between the downscaled mask and the learned
        "no mask" embedding, so one graph serves both.
        """
        no_mask = self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        flag = has_mask_input.reshape(-1, 1, 1, 1)
        return self.mask_downscaling(mask_input) * flag + no_mask * (1 - flag)
