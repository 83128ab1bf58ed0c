"""EfficientViT-SAM-L2 image encoder, as MobileSAMv2 runs it (``weight/l2.pt``).

The backbone is timm's ``efficientvit_l2`` (the MIT EfficientViT "large" family). Only its stem
and four stages are used, not the classifier head. A SAM neck follows, then a channel
LayerNorm:

* The neck projects the backbone's stage 4, 3 and 2 outputs (512, 256 and 128 channels at
  1/32, 1/16 and 1/8 of the backbone input) to 256 channels. Each projection is a 1x1 conv with
  BatchNorm and no activation. Each is upsampled bicubically to 64x64, and the three are
  summed. Then come 12 residual fused-MBConv blocks (3x3 conv + BN + GELU(tanh), then 1x1 conv
  + BN, expand ratio 1), and a 1x1 conv with bias to 256 channels.
* Every BatchNorm and the final LayerNorm2d use ``eps = 1e-6`` (the reference's
  ``set_norm_eps(image_encoder, 1e-6)``). The linear attention uses ``eps = 1e-15`` (timm's
  default is 1e-5).

MobileSAMv2 feeds the encoder SAM's normalised, zero-padded 1024x1024 input and resizes it to
512x512 (bilinear, ``align_corners=False``) before the backbone. We do the same, so the
encoder is a drop-in :class:`~segfast_ros.modeling.sam.Sam` image encoder: 1024 input,
``(B, 256, 64, 64)`` output.

The published checkpoint ``l2.pt`` is ``{"state_dict": {...}}``. MobileSAMv2 keeps the keys
that contain ``image_encoder.``, strips everything up to that, and loads them strictly into
mit-han-lab's module tree. :func:`published_to_ours` renames that tree's keys to ours:

=========================================== ==========================================
published (mit-han-lab names)               ours (timm backbone, our neck)
=========================================== ==========================================
``backbone.stages.0.op_list.0.*``           ``backbone.stem.in_conv.*``
``backbone.stages.0.op_list.{k}.*`` (k>=1)   ``backbone.stem.res{k-1}.*``
``backbone.stages.{s}.op_list.{k}.*`` (s>=1) ``backbone.stages.{s-1}.blocks.{k}.*``
``neck.input_ops.{i}.op_list.0.*``          ``neck.inputs.{i}.*``
``neck.middle.op_list.{j}.main.*``          ``neck.blocks.{j}.*``
``neck.output_ops.0.op_list.0.conv.*``      ``neck.out_conv.*``
``norm.*``                                  ``norm.*``
=========================================== ==========================================

Below these prefixes the names agree (``main``, ``conv1``/``conv2``, ``spatial_conv``,
``point_conv``, ``inverted_conv``, ``depth_conv``, ``context_module``, ``local_module``,
``qkv``, ``aggreg``, ``proj``, ``conv``, ``norm``).

How this was checked (once, outside CI: the reference code is not a dependency): the module
tree and forward of MobileSAMv2's vendored ``efficientvit`` package were transcribed, and
randomised weights (BatchNorm statistics included) were saved in its layout as
``{"state_dict": {"image_encoder.…": …}}``. All 508 tensors loaded strictly through
:func:`load_efficientvit_sam_checkpoint`. The two encoders' outputs on a random 1024 input
agreed to 1e-6 (max abs; outputs of magnitude ~1). The published ``l2.pt`` itself was not
available.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .checkpoints import CheckpointMismatchError, load_state_dict_strict, read_weights
from .common import LayerNorm2d

#: Normalisation eps of every BatchNorm and LayerNorm in the encoder (reference: 1e-6).
NORM_EPS = 1e-6
#: eps of the linear attention's normaliser (mit-han-lab ``LiteMLA``: 1e-15; timm: 1e-5).
ATTENTION_EPS = 1e-15


@dataclass(frozen=True)
class EfficientViTSamConfig:
    """Hyper-parameters of one EfficientViT-SAM image encoder.

    Attributes:
        timm_variant: the timm backbone (``efficientvit_l2``).
        stage_channels: channels of backbone stages 2, 3 and 4 (1/8, 1/16, 1/32).
        neck_width: channels inside the neck.
        neck_depth: fused-MBConv blocks in the neck.
        out_dim: channels of the image embedding.
        backbone_size: side the padded input is resized to before the backbone.
        image_size: side of the encoder input (SAM's padded frame).
        out_size: side of the image embedding.
    """

    timm_variant: str
    stage_channels: tuple[int, int, int] = (128, 256, 512)
    neck_width: int = 256
    neck_depth: int = 12
    out_dim: int = 256
    backbone_size: int = 512
    image_size: int = 1024
    out_size: int = 64


#: Encoders that MobileSAMv2 ships weights for (``weight/l2.pt``).
EFFICIENTVIT_SAM_CONFIGS: dict[str, EfficientViTSamConfig] = {
    "l2": EfficientViTSamConfig("efficientvit_l2"),
}


class ConvBN(nn.Sequential):
    """Conv2d without bias, then BatchNorm2d (children ``conv``, ``norm``), no activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.add_module(
            "conv", nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        )
        self.add_module("norm", nn.BatchNorm2d(out_ch, eps=NORM_EPS))


class FusedMBConvBlock(nn.Module):
    """Residual fused MBConv, expand ratio 1: ``x + point(gelu(spatial(x)))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.spatial_conv = ConvBN(width, width, 3)
        self.point_conv = ConvBN(width, width, 1)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.point_conv(self.act(self.spatial_conv(x)))


class SamNeck(nn.Module):
    """EfficientViT-SAM's neck: fuse three backbone stages at the embedding size.

    Args:
        in_channels: channels of the inputs, **deepest first** (stage 4, 3, 2), the order in
            which the reference sums them.
        width: channels inside the neck.
        depth: residual fused-MBConv blocks.
        out_dim: output channels.
        out_size: side of the output (64).
    """

    def __init__(
        self, in_channels: Sequence[int], width: int, depth: int, out_dim: int, out_size: int
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.inputs = nn.ModuleList(ConvBN(c, width, 1) for c in in_channels)
        self.blocks = nn.Sequential(*(FusedMBConvBlock(width) for _ in range(depth)))
        self.out_conv = nn.Conv2d(width, out_dim, kernel_size=1, bias=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features`` deepest first, each ``(B, C_i, h_i, w_i)``, to ``(B, out_dim, s, s)``."""
        size = (self.out_size, self.out_size)
        projected = []
        for proj, feat in zip(self.inputs, features, strict=True):
            y = proj(feat)
            if tuple(y.shape[-2:]) != size:
                # A same-size bicubic resize is the identity; skip it (and its graph nodes).
                y = F.interpolate(y, size=size, mode="bicubic", align_corners=False)
            projected.append(y)
        # Sum right to left, a + (b + c), as the reference's recursive list_sum does.
        x = projected[-1]
        for y in reversed(projected[:-1]):
            x = y + x
        return self.out_conv(self.blocks(x))


class EfficientViTLargeBackbone(nn.Module):
    """timm's EfficientViT-L stem and stages, returning the outputs of stages 2, 3 and 4.

    Stage numbering follows mit-han-lab: stage 0 is timm's ``stem``, stage ``s >= 1`` is
    timm's ``stages[s - 1]``.
    """

    def __init__(self, timm_variant: str) -> None:
        super().__init__()
        import timm
        from timm.models.efficientvit_mit import LiteMLA

        net = timm.create_model(timm_variant, pretrained=False, num_classes=0, norm_eps=NORM_EPS)
        self.stem = net.stem
        self.stages = net.stages
        for module in self.modules():
            if isinstance(module, LiteMLA):
                module.eps = ATTENTION_EPS

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, s, s)`` to stage 4, 3 and 2 features (deepest first)."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return [outs[3], outs[2], outs[1]]


class EfficientViTSamImageEncoder(nn.Module):
    """EfficientViT-SAM image encoder with MobileSAMv2's 1024 -> 512 input resize.

    Input ``(B, 3, 1024, 1024)`` float32, SAM-normalised and zero-padded; output
    ``(B, 256, 64, 64)`` float32. Children: ``backbone``, ``neck``, ``norm``.

    Args:
        config: the encoder's hyper-parameters (see :data:`EFFICIENTVIT_SAM_CONFIGS`).
    """

    def __init__(self, config: EfficientViTSamConfig) -> None:
        super().__init__()
        self.config = config
        self.img_size = config.image_size
        self.out_size = config.out_size
        self.backbone = EfficientViTLargeBackbone(config.timm_variant)
        self.neck = SamNeck(
            tuple(reversed(config.stage_channels)),
            config.neck_width,
            config.neck_depth,
            config.out_dim,
            config.out_size,
        )
        self.norm = LayerNorm2d(config.out_dim, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.config.backbone_size, self.config.backbone_size)
        # MobileSAMv2 runs the backbone at 512 on the padded 1024 input (F.interpolate's
        # default bilinear, no antialias).
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.norm(self.neck(self.backbone(x)))


def efficientvit_sam_encoder(variant: str = "l2") -> EfficientViTSamImageEncoder:
    """Build the EfficientViT-SAM image encoder ``variant`` (random weights)."""
    if variant not in EFFICIENTVIT_SAM_CONFIGS:
        raise ValueError(
            f"unknown EfficientViT-SAM variant {variant!r}; expected one of "
            f"{sorted(EFFICIENTVIT_SAM_CONFIGS)}"
        )
    return EfficientViTSamImageEncoder(EFFICIENTVIT_SAM_CONFIGS[variant])


# ----------------------------------------------------------------------- key mapping

_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

_TO_OURS: list[_Rule] = [
    (re.compile(r"^backbone\.stages\.0\.op_list\.0\."), lambda m: "backbone.stem.in_conv."),
    (
        re.compile(r"^backbone\.stages\.0\.op_list\.(\d+)\."),
        lambda m: f"backbone.stem.res{int(m[1]) - 1}.",
    ),
    (
        re.compile(r"^backbone\.stages\.(\d+)\.op_list\.(\d+)\."),
        lambda m: f"backbone.stages.{int(m[1]) - 1}.blocks.{m[2]}.",
    ),
    (re.compile(r"^neck\.input_ops\.(\d+)\.op_list\.0\."), lambda m: f"neck.inputs.{m[1]}."),
    (re.compile(r"^neck\.middle\.op_list\.(\d+)\.main\."), lambda m: f"neck.blocks.{m[1]}."),
    (re.compile(r"^neck\.output_ops\.0\.op_list\.0\.conv\."), lambda m: "neck.out_conv."),
]

_TO_PUBLISHED: list[_Rule] = [
    (re.compile(r"^backbone\.stem\.in_conv\."), lambda m: "backbone.stages.0.op_list.0."),
    (
        re.compile(r"^backbone\.stem\.res(\d+)\."),
        lambda m: f"backbone.stages.0.op_list.{int(m[1]) + 1}.",
    ),
    (
        re.compile(r"^backbone\.stages\.(\d+)\.blocks\.(\d+)\."),
        lambda m: f"backbone.stages.{int(m[1]) + 1}.op_list.{m[2]}.",
    ),
    (re.compile(r"^neck\.inputs\.(\d+)\."), lambda m: f"neck.input_ops.{m[1]}.op_list.0."),
    (re.compile(r"^neck\.blocks\.(\d+)\."), lambda m: f"neck.middle.op_list.{m[1]}.main."),
    (re.compile(r"^neck\.out_conv\."), lambda m: "neck.output_ops.0.op_list.0.conv."),
]


def _rename(key: str, rules: list[_Rule]) -> str:
    for pattern, repl in rules:
        m = pattern.match(key)
        if m:
            return repl(m) + key[m.end() :]
    return key  # unknown keys pass through, so the strict load reports them as unexpected


def published_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an EfficientViT-SAM encoder state_dict (mit-han-lab names) to ours."""
    return {_rename(k, _TO_OURS): v for k, v in state.items()}


def ours_to_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our encoder's state_dict to the published (mit-han-lab) names."""
    return {_rename(k, _TO_PUBLISHED): v for k, v in state.items()}


def encoder_state_from_checkpoint(raw: object, source: str) -> dict[str, torch.Tensor]:
    """The image encoder's weights, in our names, from a loaded EfficientViT-SAM checkpoint.

    Like MobileSAMv2's loader: take ``raw["state_dict"]`` (or ``raw`` itself if it is already
    flat), keep the keys that contain ``image_encoder.``, drop everything up to and including
    it, and rename the rest with :func:`published_to_ours`.

    Raises:
        ValueError: not a mapping of tensors, or no ``image_encoder.`` key in it.
    """
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{source} is not an EfficientViT-SAM checkpoint: expected a dict "
            f"{{'state_dict': {{'image_encoder.…': tensor, ...}}}}, found {type(raw).__name__}"
        )
    marker = "image_encoder."
    encoder = {
        k[k.index(marker) + len(marker) :]: v
        for k, v in state.items()
        if isinstance(k, str) and marker in k and isinstance(v, torch.Tensor)
    }
    if not encoder:
        keys = list(state)[:5]
        raise ValueError(
            f"{source} holds no 'image_encoder.*' tensors (found {keys}); expected "
            "EfficientViT-SAM's checkpoint, e.g. MobileSAMv2's weight/l2.pt"
        )
    return published_to_ours(encoder)


def load_efficientvit_sam_checkpoint(
    encoder: EfficientViTSamImageEncoder, path: str | Path
) -> None:
    """Load a published EfficientViT-SAM encoder checkpoint (``l2.pt``) strictly.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a weights-only EfficientViT-SAM checkpoint.
        CheckpointMismatchError: after renaming, keys or shapes do not match the encoder (the
            message lists them, in our names).
    """
    raw = read_weights(path, "MobileSAMv2's weight/l2.pt (EfficientViT-SAM-L2)")
    state = encoder_state_from_checkpoint(raw, str(path))
    load_state_dict_strict(
        encoder, state, f"{path} (image_encoder.* renamed from mit-han-lab's names to ours)"
    )


__all__ = [
    "EFFICIENTVIT_SAM_CONFIGS",
    "CheckpointMismatchError",
    "EfficientViTSamConfig",
    "EfficientViTSamImageEncoder",
    "SamNeck",
    "efficientvit_sam_encoder",
    "encoder_state_from_checkpoint",
    "load_efficientvit_sam_checkpoint",
    "ours_to_published",
    "published_to_ours",
]
