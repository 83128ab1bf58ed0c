"""Our SAM modules against Meta's `segment_anything` package (a test-only oracle).

The upstream-parity fixture covers MobileSAM (TinyViT). This covers the SAM ViT encoder and the
point/box/mask-input paths of the prompt encoder and mask decoder, on small random models with
every parameter randomised (zeros would hide wrong indexing).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from segfast_ros.modeling.mask_decoder import MaskDecoder
from segfast_ros.modeling.prompt_encoder import PromptEncoder
from segfast_ros.modeling.sam import Sam
from segfast_ros.modeling.transformer import TwoWayTransformer
from segfast_ros.modeling.vit import ImageEncoderViT
from segfast_ros.spec import ModelInfo

sa = pytest.importorskip("segment_anything.modeling", reason="segment-anything (dev oracle)")

IMG, EMB, DIM = 256, 16, 32


def _randomise(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2 + (0.5 if t.ndim == 1 else 0))


def test_vit_encoder_matches_reference() -> None:
    ref = sa.ImageEncoderViT(
        img_size=IMG,
        patch_size=16,
        embed_dim=64,
        depth=4,
        num_heads=2,
        mlp_ratio=4.0,
        out_chans=DIM,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=7,  # 16x16 grid: exercises the window padding
        global_attn_indexes=(1, 3),
    ).eval()
    _randomise(ref, 0)
    ours = ImageEncoderViT(
        img_size=IMG,
        embed_dim=64,
        depth=4,
        num_heads=2,
        out_chans=DIM,
        window_size=7,
        global_attn_indexes=(1, 3),
    ).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def decoders() -> tuple[Sam, nn.Module, nn.Module]:
    ref_pe = sa.PromptEncoder(
        embed_dim=DIM,
        image_embedding_size=(EMB, EMB),
        input_image_size=(IMG, IMG),
        mask_in_chans=16,
    ).eval()
    ref_md = sa.MaskDecoder(
        transformer_dim=DIM,
        transformer=sa.TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=64, num_heads=2),
        num_multimask_outputs=3,
        iou_head_depth=3,
        iou_head_hidden_dim=DIM,
    ).eval()
    _randomise(ref_pe, 2)
    _randomise(ref_md, 3)
    sam = Sam(
        nn.Identity(),
        PromptEncoder(DIM, IMG, EMB),
        MaskDecoder(DIM, TwoWayTransformer(2, DIM, 2, 64), iou_head_hidden_dim=DIM),
        ModelInfo("oracle", image_size=IMG, embed_dim=DIM, embed_size=EMB),
    ).eval()
    sam.prompt_encoder.load_state_dict(ref_pe.state_dict(), strict=True)
    sam.mask_decoder.load_state_dict(ref_md.state_dict(), strict=True)
    return sam, ref_pe, ref_md


@pytest.mark.parametrize("case", ["points", "box", "boxes_and_points", "mask_input"])
def test_decoder_matches_reference(decoders: tuple[Sam, nn.Module, nn.Module], case: str) -> None:
    sam, ref_pe, ref_md = decoders
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(1, DIM, EMB, EMB, generator=gen)
    pts = torch.tensor([[[40.0, 70.0], [200.0, 31.5]]])
    lbl = torch.tensor([[1.0, 0.0]])
    boxes = torch.tensor([[10.0, 20.0, 120.0, 150.0], [60.0, 5.0, 250.0, 99.0], [0, 0, 255, 255]])
    mask = torch.randn(1, 1, 4 * EMB, 4 * EMB, generator=gen)
    b = 1
    points, box, mask_in = (pts, lbl), None, None
    if case == "box":
        points, box, b = None, boxes, 3
    elif case == "boxes_and_points":
        points, box, b = (pts.expand(3, -1, -1), lbl.expand(3, -1)), boxes, 3
    elif case == "mask_input":
        mask_in = mask

    # Ours: boxes are two labelled corners after the points; a pad point only without boxes.
    parts_c, parts_l = [], []
    if points is not None:
        parts_c.append(points[0].expand(b, -1, -1))
        parts_l.append(points[1].expand(b, -1))
    if box is None:
        parts_c.append(torch.zeros(b, 1, 2))
        parts_l.append(-torch.ones(b, 1))
    else:
        parts_c.append(box.reshape(b, 2, 2))
        parts_l.append(torch.tensor([[2.0, 3.0]]).expand(b, -1))
    has_mask = torch.ones(1) if mask_in is not None else torch.zeros(1)
    mask_arg = mask_in if mask_in is not None else torch.zeros(1, 1, 4 * EMB, 4 * EMB)

    with torch.no_grad():
        masks, iou = sam.decode(
            emb, torch.cat(parts_c, 1), torch.cat(parts_l, 1), mask_arg, has_mask
        )
        sparse, dense = ref_pe(points=points, boxes=box, masks=mask_in)
        for multimask, sl in ((True, slice(1, None)), (False, slice(0, 1))):
            ref_masks, ref_iou = ref_md(
                image_embeddings=emb,
                image_pe=ref_pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            torch.testing.assert_close(masks[:, sl], ref_masks, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(iou[:, sl], ref_iou, rtol=1e-4, atol=1e-4)
