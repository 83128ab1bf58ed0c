"""The SAM ViT image encoder (ViT-B/L/H): windowed blocks with a few global-attention blocks
and decomposed relative position biases. Names follow the official ``sam_vit_*`` checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import MLPBlock, sam_neck


def _relative_table(rel_pos: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """Rows of ``rel_pos`` ``(2 * size - 1, C)`` for every (query, key) pair: ``(q, k, C)``.

    The table is resampled linearly when the stored length differs from what the sizes need
    (a checkpoint trained at another resolution).
    """
    span = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != span:
        rel_pos = F.interpolate(rel_pos.T[None], size=span, mode="linear", align_corners=False)[
            0
        ].T
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q - k) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]


class RelPosAttention(nn.Module):
    """Multi-head attention on ``(B, H, W, C)`` with decomposed relative position biases."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * nh, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        # Decomposed relative position bias: one term per axis, from the unscaled queries.
        rq = q.reshape(b * nh, h, w, -1)
        bias_h = torch.einsum("bhwc,hkc->bhwk", rq, _relative_table(self.rel_pos_h, h, h))
        bias_w = torch.einsum("bhwc,wkc->bhwk", rq, _relative_table(self.rel_pos_w, w, w))
        attn = attn.reshape(b * nh, h, w, h, w) + bias_h[..., :, None] + bias_w[..., None, :]
        attn = attn.reshape(b * nh, h * w, h * w).softmax(dim=-1)
        x = (attn @ v).reshape(b, nh, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(x)


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window`` 0 means global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int, grid: int):
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        size = (window, window) if window else (grid, grid)
        self.attn = RelPosAttention(dim, num_heads, size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window:
            b, h, w, c = y.shape
            ws = self.window
            pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
            ph, pw = h + pad_h, w + pad_w
            y = y.reshape(b, ph // ws, ws, pw // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            y = self.attn(y.reshape(-1, ws, ws, c))
            y = y.reshape(b, ph // ws, pw // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
            y = y.reshape(b, ph, pw, c)[:, :h, :w]
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT encoder: ``(B, 3, S, S)`` to ``(B, out_chans, S/16, S/16)``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.out_size = grid
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                0 if i in global_attn_indexes else window_size,
                grid,
            )
            for i in range(depth)
        )
        self.neck = sam_neck(embed_dim, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))
