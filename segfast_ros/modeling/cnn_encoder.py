"""A NanoSAM-style CNN image encoder: a timm backbone plus SAM's neck.

NanoSAM distilled MobileSAM's encoder into a ResNet-18 so the cheapest Jetson could run SAM's
decoder on its embedding. This is that kind of student for distillation (issue 19):

* the backbone is any timm CNN with a stride-16 and a stride-32 stage, built with
  ``features_only=True`` and ``pretrained=False`` (nothing is downloaded; a distilled student
  learns from its teacher, and ImageNet weights can be loaded into ``backbone`` by hand);
* its last two stages are fused at stride 16: the stride-32 map is upsampled 2x (bilinear)
  and concatenated with the stride-16 map;
* SAM's neck (:func:`~segfast_ros.modeling.common.sam_neck`) maps the concatenation to the
  prompt embedding dim, so the output is ``(B, out_chans, S/16, S/16)``, the shape SAM's
  prompt encoder and mask decoder expect. Its 1x1 conv is where the two stages mix.

Keys are ``backbone.*`` (timm's own names) and ``neck.*`` (the official SAM neck's), under
``image_encoder.`` in a :class:`~segfast_ros.modeling.sam.Sam`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .common import sam_neck

#: Strides of the two backbone stages the encoder fuses (the embedding is at the first).
FUSED_STRIDES = (16, 32)


class CnnImageEncoder(nn.Module):
    """A timm CNN backbone's stride-16 and stride-32 stages, fused, then SAM's neck.

    ``(B, 3, S, S)`` (SAM-normalised, padded) to ``(B, out_chans, S/16, S/16)``.

    Args:
        backbone: a timm model name (``resnet18``, ``resnet34``, ``mobilenetv3_large_100``, ...)
            whose last two feature stages have strides 16 and 32.
        img_size: input side ``S`` in pixels; a multiple of 32.
        out_chans: channels of the embedding (the decoder's transformer dim).

    Attributes:
        img_size: the input side.
        out_size: the embedding side, ``img_size // 16``.
        in_chans: channels entering the neck (the two stages' channels together).

    Raises:
        ValueError: ``img_size`` not a positive multiple of 32, ``out_chans`` not positive, an
            unknown timm name, or a backbone whose last two stages are not at strides 16
            and 32.
    """

    def __init__(self, backbone: str = "resnet18", img_size: int = 1024, out_chans: int = 256):
        super().__init__()
        stride = FUSED_STRIDES[-1]
        if img_size <= 0 or img_size % stride:
            raise ValueError(
                f"img_size {img_size} is not a positive multiple of {stride} (the backbone's "
                f"stride), e.g. 256 or 1024"
            )
        if out_chans <= 0:
            raise ValueError(f"out_chans must be positive, got {out_chans}")
        import timm  # on use: timm is needed by this encoder only, not by the runtime

        if not timm.is_model(backbone):
            raise ValueError(
                f"unknown timm backbone {backbone!r}; expected a timm CNN name such as "
                "resnet18 (timm.list_models() lists them)"
            )
        self.backbone = timm.create_model(
            backbone, pretrained=False, features_only=True, out_indices=(-2, -1)
        )
        reductions = tuple(self.backbone.feature_info.reduction())
        if reductions != FUSED_STRIDES:
            raise ValueError(
                f"timm backbone {backbone!r}: its last two feature stages have strides "
                f"{reductions}; this encoder needs strides {FUSED_STRIDES} (a CNN like "
                "resnet18)"
            )
        self.backbone_name = backbone
        self.img_size = img_size
        self.out_size = img_size // FUSED_STRIDES[0]
        self.in_chans = sum(self.backbone.feature_info.channels())
        self.neck = sam_neck(self.in_chans, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s16, s32 = self.backbone(x)
        up = F.interpolate(s32, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.neck(torch.cat((s16, up), dim=1))
