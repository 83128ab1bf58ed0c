"""The two-way transformer of the SAM mask decoder (tokens attend to the image and back)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .common import MLPBlock

#: How an :class:`Attention` computes: ``plain``; ``tokens_to_image``, few token queries and
#: many image keys; ``image_to_tokens``, many image queries and few token keys.
AttentionForm = Literal["plain", "tokens_to_image", "image_to_tokens"]


class Attention(nn.Module):
    """Multi-head attention with optional downscaling of the internal dimension.

    ``form`` picks one of three orders of the same arithmetic, in evaluation mode (a module in
    training mode computes the plain one, see :meth:`forward`). ``plain`` projects queries, keys
    and values; a shared image (batch 1) broadcasts over the prompt sets in any form. The
    decoder's cross attentions pair a handful of tokens (``T``, about 7) with thousands of
    image pixels (``n``); for them ``tokens_to_image`` (:meth:`_tokens_to_image`)
    and ``image_to_tokens`` (:meth:`_image_to_tokens`) never project the ``n`` pixels: each
    head's token-side factor is folded into the projection weights first (``T x C`` per head),
    and the pixels meet those ``heads * T`` columns instead of the ``internal`` output channels
    of a projection. For SAM's decoder (``C`` 256, ``internal`` 128, 8 heads) that is 56
    columns instead of 128 per pixel, for each of the two image-side products of a cross
    attention. The weights and the function are the same in every form.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        form: AttentionForm = "plain",
    ) -> None:
        super().__init__()
        internal = embed_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"{num_heads} heads do not divide the internal dim {internal}")
        self.num_heads = num_heads
        self.form = form
        self.q_proj = nn.Linear(embed_dim, internal)
        self.k_proj = nn.Linear(embed_dim, internal)
        self.v_proj = nn.Linear(embed_dim, internal)
        self.out_proj = nn.Linear(internal, embed_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _head_weights(self, proj: nn.Linear) -> torch.Tensor:
        """``proj``'s weight split by head: ``(heads, internal / heads, C)``."""
        return proj.weight.reshape(self.num_heads, -1, proj.weight.shape[-1])

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # Training keeps the plain order: with the factored one, two seeded demo trainings in
        # one long test process once differed in their last bits (MKL's GEMMs are bitwise
        # reproducible only for the same shapes and memory alignment), and seeded runs must
        # match. Evaluation, the torch backend and the ONNX export take the factored order.
        if self.form == "tokens_to_image" and not self.training:
            return self._tokens_to_image(q, k, v)
        if self.form == "image_to_tokens" and not self.training:
            return self._image_to_tokens(q, k, v)
        q, k, v = (
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        )
        attn = (q @ k.transpose(-2, -1)) / (q.shape[-1] ** 0.5)
        out = attn.softmax(dim=-1) @ v
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))

    def _tokens_to_image(
        self, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor
    ) -> torch.Tensor:
        """``T`` token queries ``(B, T, C)``, ``n`` image keys and values ``(1 or B, n, C)``;
        returns ``(B, T, C)``.

        Per head ``h``: ``q_h . (W_k,h x + b_k,h) = (q_h W_k,h) . x + q_h . b_k,h``. The last
        term is the same for every pixel, so the softmax over pixels drops it. The softmax rows
        sum to one, so ``sum_j a_j (W_v,h y_j + b_v,h) = W_v,h (sum_j a_j y_j) + b_v,h``.
        """
        q = self._heads(self.q_proj(tokens))  # (B, H, T, d)
        b, heads, t, d = q.shape
        q = q / (d**0.5)  # the scores' scale, on the T queries rather than the H*T x n scores
        qk = (q @ self._head_weights(self.k_proj)).reshape(b, heads * t, -1)  # (B, H*T, C)
        attn = (qk @ image_k.transpose(1, 2)).softmax(dim=-1)  # (B, H*T, n)
        ay = (attn @ image_v).reshape(b, heads, t, -1)  # (B, H, T, C)
        out = ay @ self._head_weights(self.v_proj).transpose(1, 2)  # (B, H, T, d)
        out = out + self.v_proj.bias.reshape(heads, 1, d)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, heads * d))

    def _image_to_tokens(
        self, image_q: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor
    ) -> torch.Tensor:
        """``n`` image queries ``(1 or B, n, C)``, ``T`` token keys and values ``(B, T, C)``;
        returns ``(B, n, C)``.

        Per head ``h``: ``(W_q,h x + b_q,h) . k_h = x . (W_q,h^T k_h) + b_q,h . k_h`` (a bias per
        token), and the output projection distributes over the heads' sum:
        ``sum_h o_h W_o,h = sum_h A_h (v_h W_o,h)``, with ``v_h W_o,h`` only ``T x C``.
        """
        k = self._heads(self.k_proj(tokens_k))  # (B, H, T, d)
        v = self._heads(self.v_proj(tokens_v))
        b, heads, t, d = k.shape
        k = k / (d**0.5)  # the scores' scale, on the T keys rather than the n x H*T scores
        wq = self._head_weights(self.q_proj)  # (H, d, C)
        qk = (wq.transpose(1, 2) @ k.transpose(2, 3)).transpose(1, 2)  # (B, C, H, T)
        bias = self.q_proj.bias.reshape(heads, 1, d) @ k.transpose(2, 3)  # (B, H, 1, T)
        scores = image_q @ qk.reshape(b, -1, heads * t) + bias.reshape(b, 1, heads * t)
        n = scores.shape[1]
        attn = scores.reshape(b, n, heads, t).softmax(dim=-1)  # (B, n, H, T)
        wo = self.out_proj.weight.transpose(0, 1).reshape(heads, d, -1)  # (H, d, C)
        # Each pixel's weights sum to one per head, so to ``heads`` over the H*T rows: the
        # output bias, divided by ``heads``, joins every row instead of an add over n x C.
        vo = (v @ wo + self.out_proj.bias / heads).reshape(b, heads * t, -1)  # (B, H*T, C)
        return attn.reshape(b, n, heads * t) @ vo


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image, MLP on tokens, image-to-token attention."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.cross_attn_token_to_image = Attention(
            embed_dim, num_heads, downsample_rate, "tokens_to_image"
        )
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp = MLPBlock(embed_dim, mlp_dim, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(embed_dim)
        self.norm4 = nn.LayerNorm(embed_dim)
        self.cross_attn_image_to_token = Attention(
            embed_dim, num_heads, downsample_rate, "image_to_tokens"
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Runs ``depth`` two-way blocks and a final token-to-image attention."""

    def __init__(
        self, depth: int, embed_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embed_dim, num_heads, mlp_dim, downsample_rate, i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embed_dim, num_heads, downsample_rate, "tokens_to_image"
        )
        self.norm_final_attn = nn.LayerNorm(embed_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, h, w)`` image, ``(1 or B, C, h, w)`` PE, ``(B, T, C)`` tokens.

        Returns the updated tokens ``(B, T, C)`` and image ``(B, h*w, C)``.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        q, k = queries + tokens, keys + key_pe
        attn = self.final_attn_token_to_image(q, k, keys)
        queries = self.norm_final_attn(queries + attn)
        return queries, keys
