"""SAM mask decoder: prompt tokens and the image embedding to mask logits and IoU predictions."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

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
        masks, iou, _ = self._decode(
            image_embeddings, image_pe, sparse_embeddings, dense_embeddings
        )
        return masks, iou

    def forward_with_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` plus the transformer's output tokens, for distillation.

        Same arguments and computation as :meth:`forward` (one shared helper).

        Returns:
            Mask logits ``(B, M, 4h, 4w)``, IoU predictions ``(B, M)`` and the output tokens
            ``(B, T, C)``: the IoU token, the ``M`` mask tokens, then one per prompt token
            (``T = 1 + M + N``).
        """
        return self._decode(image_embeddings, image_pe, sparse_embeddings, dense_embeddings)

    def _decode(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        dense_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder itself: ``(masks, iou, hs)`` (see :meth:`forward_with_tokens`)."""
        b = sparse_embeddings.shape[0]
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse_embeddings], dim=1)
        # Not expanded to the B prompt sets: the first layer's cross attentions broadcast the
        # shared image over them, and the image becomes per-set only where it changes.
        src = image_embeddings + dense_embeddings
        h, w = src.shape[-2:]

        hs, src = self.transformer(src, image_pe, tokens)
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        hyper = torch.stack(
            [mlp(mask_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self._upscale_masks(src, hyper, h, w)
        return masks, self.iou_prediction_head(iou_out), hs

    def _upscale_masks(
        self, src: torch.Tensor, hyper: torch.Tensor, h: int, w: int
    ) -> torch.Tensor:
        """``output_upscaling`` then the dot product with each mask token's hypernetwork output.

        Each 2x2, stride-2 transposed conv maps one pixel to its own 2x2 output block, so it is a
        matmul on the ``(B, h*w, C)`` tokens the transformer returns. Working channels-last
        (LayerNorm on the last axis) the only image-layout rearrangement left is the one of the
        final ``M``-channel masks, instead of transposing 64- and 32-channel maps at 4x and 16x
        the embedding's resolution: the same arithmetic, several times less memory traffic.

        Args:
            src: ``(B, h*w, C)`` image tokens.
            hyper: ``(B, M, C/8)`` hypernetwork outputs.

        Returns:
            ``(B, M, 4h, 4w)`` mask logits.
        """
        up1, norm, _, up2, _ = self.output_upscaling
        x = _deconv2x2(src, up1)  # (B, hw, 2, 2, C/4)
        x = F.gelu(F.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps))
        x = F.gelu(_deconv2x2(x, up2))  # (B, hw, 2, 2, 2, 2, C/8)
        b, m = hyper.shape[:2]
        masks = x.reshape(b, -1, x.shape[-1]) @ hyper.transpose(1, 2)  # (B, hw * 16, M)
        # (i, j, di, dj, ei, ej) is output pixel (4i + 2di + ei, 4j + 2dj + ej).
        masks = masks.reshape(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)


def _deconv2x2(x: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2, stride-2 ``ConvTranspose2d`` on channels-last pixels ``(..., Cin)``.

    Returns ``(..., 2, 2, Cout)``: the output block (row offset, column offset) of each pixel.
    """
    cin, cout = conv.weight.shape[:2]
    weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin)
    # One 2-D linear map with its bias (a Gemm in ONNX, which fuses the bias add; a batched
    # MatMul exports with a separate Add over its whole output).
    y = F.linear(x.reshape(-1, cin), weight, conv.bias.repeat(4))
    return y.reshape(*x.shape[:-1], 2, 2, cout)
