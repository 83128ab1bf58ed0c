"""Builders for every supported model, keyed by name.

Building a model is separate from using it: ``build_sam(name, checkpoint)`` returns a
:class:`~segfast_ros.modeling.sam.Sam` in eval mode; the runtime's predictor takes it (through
a backend). Checkpoints load strictly (:mod:`~segfast_ros.modeling.checkpoints`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from torch import nn

from ..spec import ModelInfo
from .checkpoints import load_checkpoint
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer
from .vit import ImageEncoderViT


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and where its official weights come from."""

    name: str
    description: str
    build_encoder: Callable[[], nn.Module]
    image_size: int = 1024
    embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    official_checkpoint: str | None = None
    single_mask_from_multimask: bool = False


def _tiny_vit_5m(img_size: int = 1024) -> TinyViT:
    return TinyViT(
        img_size=img_size,
        embed_dims=(64, 128, 160, 320),
        depths=(2, 2, 6, 2),
        num_heads=(2, 4, 5, 10),
        window_sizes=(7, 7, 14, 7),
    )


def _sam_vit(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]):
    return ImageEncoderViT(
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, global_attn_indexes=global_attn
    )


def _cnn_encoder(backbone: str, img_size: int, out_chans: int) -> nn.Module:
    # Imported on use: it needs timm, which the other models do not.
    from .cnn_encoder import CnnImageEncoder

    return CnnImageEncoder(backbone, img_size=img_size, out_chans=out_chans)


def _efficientvit_sam_l2() -> nn.Module:
    # Imported on use: it needs timm, which the other models do not.
    from .efficientvit import efficientvit_sam_encoder

    return efficientvit_sam_encoder("l2")


MODEL_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "mobile_sam",
            "MobileSAM: TinyViT-5M encoder distilled from SAM ViT-H",
            _tiny_vit_5m,
            official_checkpoint="mobile_sam.pt",
        ),
        ModelSpec(
            "tinysam",
            "TinySAM: TinyViT-5M encoder, full-stage distillation",
            _tiny_vit_5m,
            official_checkpoint="tinysam_42.3.pth",
            # TinySAM's decoder returns only the three multimask outputs.
            single_mask_from_multimask=True,
        ),
        ModelSpec(
            "sam_vit_b",
            "SAM ViT-B",
            partial(_sam_vit, 768, 12, 12, (2, 5, 8, 11)),
            official_checkpoint="sam_vit_b_01ec64.pth",
        ),
        ModelSpec(
            "sam_vit_l",
            "SAM ViT-L",
            partial(_sam_vit, 1024, 24, 16, (5, 11, 17, 23)),
            official_checkpoint="sam_vit_l_0b3195.pth",
        ),
        ModelSpec(
            "sam_vit_h",
            "SAM ViT-H",
            partial(_sam_vit, 1280, 32, 16, (7, 15, 23, 31)),
            official_checkpoint="sam_vit_h_4b8939.pth",
        ),
        ModelSpec(
            "mobilesamv2_efficientvit_l2",
            "MobileSAMv2: EfficientViT-SAM-L2 encoder + prompt-guided decoder (two release "
            "files; see modeling.mobilesamv2.build_mobilesamv2)",
            _efficientvit_sam_l2,
            official_checkpoint="l2.pt + Prompt_guided_Mask_Decoder.pt",
        ),
        ModelSpec(
            "tinyvit_s256",
            "Small TinyViT at 256 px with narrow dims, for tests and quick experiments",
            partial(
                TinyViT,
                img_size=256,
                embed_dims=(32, 64, 96, 128),
                depths=(1, 1, 2, 1),
                num_heads=(1, 2, 3, 4),
                out_chans=64,
                num_classes=0,
            ),
            image_size=256,
            embed_dim=64,
            decoder_mlp_dim=256,
            decoder_heads=4,
            iou_head_hidden_dim=64,
        ),
    )
}

# The demo model (segfast_ros.demo) is tinyvit_s256 with attention windows that tile its 32, 16
# and 16 token grids exactly (the default 7/14/7 windows pad them), trained from scratch on
# generated scenes by `python -m segfast_ros.demo.train`; not a general-purpose segmenter.
MODEL_REGISTRY["demo_tinyvit"] = replace(
    MODEL_REGISTRY["tinyvit_s256"],
    name="demo_tinyvit",
    description="Demo model for synthetic scenes: tinyvit_s256 with 8/16/16 windows, trained "
    "here (models/demo)",
    build_encoder=partial(
        MODEL_REGISTRY["tinyvit_s256"].build_encoder, window_sizes=(8, 8, 16, 16)
    ),
)

# Distillation students (issue 19). Each keeps its teacher's embedding shape and decoder dims,
# so the teacher's prompt encoder and mask decoder load into it unchanged.
MODEL_REGISTRY["demo_tinyvit_half"] = replace(
    MODEL_REGISTRY["demo_tinyvit"],
    name="demo_tinyvit_half",
    description="Student of demo_tinyvit: its encoder at half the widths (16 dims per head), "
    "same 64x16x16 embedding and decoder",
    build_encoder=partial(
        MODEL_REGISTRY["demo_tinyvit"].build_encoder,
        embed_dims=(16, 32, 48, 64),
        num_heads=(1, 2, 3, 4),
    ),
)
MODEL_REGISTRY["demo_resnet18"] = replace(
    MODEL_REGISTRY["demo_tinyvit"],
    name="demo_resnet18",
    description="NanoSAM-style student of demo_tinyvit: timm ResNet-18 + SAM neck, 256 px, "
    "64x16x16 embedding, the demo's decoder",
    build_encoder=partial(_cnn_encoder, "resnet18", 256, 64),
)
MODEL_REGISTRY["resnet18_sam"] = ModelSpec(
    "resnet18_sam",
    "NanoSAM-style student of SAM/MobileSAM/TinySAM: timm ResNet-18 + SAM neck, 1024 px, "
    "256x64x64 embedding, SAM's decoder",
    partial(_cnn_encoder, "resnet18", 1024, 256),
)


def build_sam(name: str, checkpoint: str | Path | None = None) -> Sam:
    """Build a registered model in eval mode, optionally loading a checkpoint strictly.

    Args:
        name: a key of :data:`MODEL_REGISTRY`.
        checkpoint: path of a flat state_dict with ``image_encoder.`` / ``prompt_encoder.`` /
            ``mask_decoder.`` keys (the official layout). ``None`` keeps the random init.

    Raises:
        ValueError: unknown name, or a checkpoint that does not fit the model.
        FileNotFoundError: the checkpoint path does not exist.
    """
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODEL_REGISTRY)}")
    spec = MODEL_REGISTRY[name]
    encoder = spec.build_encoder()
    embed_size = encoder.out_size
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(spec.embed_dim, spec.image_size, embed_size),
        mask_decoder=MaskDecoder(
            spec.embed_dim,
            TwoWayTransformer(2, spec.embed_dim, spec.decoder_heads, spec.decoder_mlp_dim),
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        info=ModelInfo(
            name=name,
            image_size=spec.image_size,
            embed_dim=spec.embed_dim,
            embed_size=embed_size,
            single_mask_from_multimask=spec.single_mask_from_multimask,
        ),
    )
    if checkpoint is not None:
        load_checkpoint(sam, checkpoint)
    return sam.eval()
