"""TinyViT image encoder as used by MobileSAM and TinySAM (1024 px input, 64x64x256 output).

Module and parameter names follow the published checkpoints (``mobile_sam.pt``,
``tinysam_42.3.pth``) so that their ``image_encoder.*`` keys load strictly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import sam_neck


class Conv2dBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (children ``c`` and ``bn``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c", nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)
        )
        self.add_module("bn", nn.BatchNorm2d(out_ch))


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convs: ``(B, 3, S, S)`` to ``(B, dim, S/4, S/4)``."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            Conv2dBN(in_chans, dim // 2, 3, 2, 1), nn.GELU(), Conv2dBN(dim // 2, dim, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (1x1 expand, 3x3 depthwise, 1x1 project) on ``(B, C, H, W)``."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsampling between stages; returns tokens ``(B, H' * W', out_dim)``."""

    def __init__(self, resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens from an attention stage
            h, w = self.resolution
            x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class ConvLayer(nn.Module):
    """The first stage: MBConv blocks then an optional downsample."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class Mlp(nn.Module):
    """Pre-norm MLP of a TinyViT block (``norm``, ``fc1``, GELU, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Windowed multi-head attention with a learned bias per absolute (dy, dx) offset."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.scale = self.key_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Offsets (|dy|, |dx|) are numbered in raster order, dy * window + dx, which is the
        # order the published checkpoints store them in.
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        idx = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, n, self.num_heads, 3, self.key_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (B, heads, N, key_dim)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + self.attention_biases[:, self.attention_bias_idxs]
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    """Window attention, a depthwise 3x3 "local" conv, then the MLP; on ``(B, H*W, C)``."""

    def __init__(
        self, dim: int, resolution: tuple[int, int], num_heads: int, window: int, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = Attention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        ws = self.window
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        x = x.reshape(b, h, w, c)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = self.attn(x)
        x = x.reshape(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        x = x + self._window_attention(x)
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.reshape(b, c, n).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """An attention stage: TinyViT blocks then an optional downsample."""

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window: int,
        mlp_ratio: float,
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio) for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


def _down(size: int, stride: int) -> int:
    """Output side of a 3x3, padding-1 conv with this stride."""
    return (size - 1) // stride + 1


class TinyViT(nn.Module):
    """TinyViT backbone plus the SAM neck: ``(B, 3, S, S)`` to ``(B, out_chans, S/16, S/16)``.

    The last stage keeps the resolution of the one before it (its patch merging has stride 1),
    so a 1024 px input gives a 64x64 embedding, as in MobileSAM.

    Args:
        img_size: input side ``S`` in pixels.
        embed_dims: channels of the four stages.
        depths: blocks per stage (the first stage is convolutional).
        num_heads: attention heads per stage (the first entry is unused).
        window_sizes: attention window per stage (the first entry is unused).
        out_chans: channels of the neck output (the prompt embedding dim).
        num_classes: size of the unused classifier head kept for strict checkpoint loading;
            0 drops it.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        out_chans: int = 256,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        res = _down(_down(img_size, 2), 2)
        num_stages = len(embed_dims)
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            downsample = None
            next_res = res
            if i < num_stages - 1:
                stride = 1 if i == num_stages - 2 else 2
                next_res = _down(res, stride)
                downsample = PatchMerging((res, res), embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                layer: nn.Module = ConvLayer(
                    embed_dims[0], depths[0], mbconv_expand_ratio, downsample
                )
            else:
                layer = BasicLayer(
                    embed_dims[i],
                    (res, res),
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    downsample,
                )
            self.layers.append(layer)
            res = next_res
        self.out_size = res
        # ImageNet classifier head: unused by SAM, present in the official checkpoints.
        self.norm_head = nn.LayerNorm(embed_dims[-1]) if num_classes else None
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes else None
        self.neck = sam_neck(embed_dims[-1], out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        b, _, c = x.shape
        x = x.reshape(b, self.out_size, self.out_size, c).permute(0, 3, 1, 2)
        return self.neck(x)
