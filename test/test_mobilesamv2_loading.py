"""Loading MobileSAMv2's release files: the prompt-guided decoder (``PromtEncoder`` /
``MaskDecoder`` dict) and the EfficientViT-SAM-L2 encoder's key mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from segfast_ros.modeling import MODEL_REGISTRY, CheckpointMismatchError, build_sam
from segfast_ros.modeling.checkpoints import load_state_dict_strict
from segfast_ros.modeling.efficientvit import (
    EfficientViTSamImageEncoder,
    efficientvit_sam_encoder,
    encoder_state_from_checkpoint,
    load_efficientvit_sam_checkpoint,
    ours_to_published,
    published_to_ours,
)
from segfast_ros.modeling.mobilesamv2 import (
    DECODER_FILE_KEYS,
    build_mobilesamv2,
    load_prompt_guided_decoder,
)

# ------------------------------------------------------------- Prompt_guided_Mask_Decoder.pt


def _decoder_file(tmp_path: Path, seed: int = 1) -> tuple[Path, dict[str, dict]]:
    """A synthetic ``Prompt_guided_Mask_Decoder.pt`` in the published layout, from our
    modules' state_dicts (small model: the layout, not the sizes, is under test)."""
    torch.manual_seed(seed)
    donor = build_sam("tinyvit_s256")
    content = {
        "PromtEncoder": donor.prompt_encoder.state_dict(),
        "MaskDecoder": donor.mask_decoder.state_dict(),
    }
    path = tmp_path / "Prompt_guided_Mask_Decoder.pt"
    torch.save(content, path)
    return path, content


def test_published_keys_are_spelled_as_released() -> None:
    assert set(DECODER_FILE_KEYS) == {"PromtEncoder", "MaskDecoder"}


def test_decoder_file_loads_strictly(tmp_path: Path) -> None:
    path, content = _decoder_file(tmp_path)
    torch.manual_seed(2)
    sam = build_sam("tinyvit_s256")
    encoder_before = {k: v.clone() for k, v in sam.image_encoder.state_dict().items()}
    load_prompt_guided_decoder(sam, path)
    for k, v in content["PromtEncoder"].items():
        assert torch.equal(sam.prompt_encoder.state_dict()[k], v)
    for k, v in content["MaskDecoder"].items():
        assert torch.equal(sam.mask_decoder.state_dict()[k], v)
    for k, v in sam.image_encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k])  # the encoder is untouched


def test_broken_decoder_file_names_the_keys_and_loads_nothing(tmp_path: Path) -> None:
    path, content = _decoder_file(tmp_path)
    content["MaskDecoder"].pop("iou_token.weight")
    content["PromtEncoder"]["not_a_point_embed.weight"] = torch.zeros(1, 3)
    torch.save(content, path)
    torch.manual_seed(3)
    sam = build_sam("tinyvit_s256")
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as err:
        load_prompt_guided_decoder(sam, path)
    msg = str(err.value)
    assert "'PromtEncoder' as prompt_encoder.*" in msg and "'tinyvit_s256'" in msg
    assert "missing keys (1)" in msg and "mask_decoder.iou_token.weight" in msg
    assert "prompt_encoder.not_a_point_embed.weight: checkpoint (1, 3) vs model (1, 64)" in msg
    assert all(torch.equal(v, before[k]) for k, v in sam.state_dict().items())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"PromptEncoder": {}, "MaskDecoder": {}}, r"spells it 'PromtEncoder'"),
        ({"MaskDecoder": {}}, r"expected top-level keys \['MaskDecoder', 'PromtEncoder'\]"),
        ([1, 2], r"expected a dict with keys"),
        ({"PromtEncoder": [1], "MaskDecoder": {}}, r"\['PromtEncoder'\] is not a flat state"),
    ],
)
def test_wrong_decoder_layout(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message):
        load_prompt_guided_decoder(build_sam("tinyvit_s256"), path)


def test_missing_decoder_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Prompt_guided_Mask_Decoder.pt"):
        load_prompt_guided_decoder(build_sam("tinyvit_s256"), tmp_path / "nope.pt")


def test_build_mobilesamv2_with_another_encoder(tmp_path: Path) -> None:
    """Encoder checkpoint first (official layout), then the decoder file replaces the
    prompt encoder and mask decoder."""
    torch.manual_seed(4)
    full = build_sam("tinyvit_s256").state_dict()
    encoder_path = tmp_path / "encoder_full.pt"
    torch.save(full, encoder_path)
    decoder_path, content = _decoder_file(tmp_path, seed=5)
    sam = build_mobilesamv2(encoder_path, decoder_path, encoder="tinyvit_s256")
    state = sam.state_dict()
    assert torch.equal(state["image_encoder.neck.0.weight"], full["image_encoder.neck.0.weight"])
    assert torch.equal(
        state["mask_decoder.iou_token.weight"], content["MaskDecoder"]["iou_token.weight"]
    )
    assert not sam.training


# ------------------------------------------------------------- EfficientViT-SAM-L2 (l2.pt)

#: Published names and shapes, read off mit-han-lab's module tree as MobileSAMv2 vendors it
#: (``efficientvit/models/efficientvit/{backbone,sam}.py``, ``nn/ops.py``): stage 0 is the
#: stem, stages 1-3 have depth + 1 blocks, stage 4 a downsample and 8 EfficientViT blocks
#: (linear attention: 16 heads of 32 dims), the neck takes stages 4, 3, 2 in that order.
PUBLISHED_SAMPLES: dict[str, tuple[int, ...]] = {
    "backbone.stages.0.op_list.0.conv.weight": (32, 3, 3, 3),
    "backbone.stages.0.op_list.1.main.conv1.conv.weight": (32, 32, 3, 3),
    "backbone.stages.1.op_list.0.main.spatial_conv.conv.weight": (512, 32, 3, 3),
    "backbone.stages.1.op_list.2.main.point_conv.norm.running_var": (64,),
    "backbone.stages.2.op_list.2.main.spatial_conv.norm.num_batches_tracked": (),
    "backbone.stages.3.op_list.0.main.inverted_conv.conv.bias": (2048,),
    "backbone.stages.3.op_list.8.main.depth_conv.conv.weight": (1024, 1, 3, 3),
    "backbone.stages.4.op_list.0.main.inverted_conv.conv.weight": (6144, 256, 1, 1),
    "backbone.stages.4.op_list.8.context_module.main.qkv.conv.weight": (1536, 512, 1, 1),
    "backbone.stages.4.op_list.8.context_module.main.aggreg.0.0.weight": (1536, 1, 5, 5),
    "backbone.stages.4.op_list.8.context_module.main.aggreg.0.1.weight": (1536, 32, 1, 1),
    "backbone.stages.4.op_list.8.context_module.main.proj.conv.weight": (512, 1024, 1, 1),
    "backbone.stages.4.op_list.8.local_module.main.inverted_conv.conv.weight": (3072, 512, 1, 1),
    "backbone.stages.4.op_list.8.local_module.main.point_conv.norm.bias": (512,),
    "neck.input_ops.0.op_list.0.conv.weight": (256, 512, 1, 1),
    "neck.input_ops.2.op_list.0.conv.weight": (256, 128, 1, 1),
    "neck.input_ops.1.op_list.0.norm.running_mean": (256,),
    "neck.middle.op_list.11.main.spatial_conv.conv.weight": (256, 256, 3, 3),
    "neck.middle.op_list.11.main.point_conv.norm.weight": (256,),
    "neck.output_ops.0.op_list.0.conv.weight": (256, 256, 1, 1),
    "neck.output_ops.0.op_list.0.conv.bias": (256,),
    "norm.weight": (256,),
    "norm.bias": (256,),
}
#: Tensors in the published encoder (parameters and BatchNorm buffers).
PUBLISHED_KEY_COUNT = 508


@pytest.fixture(scope="module")
def l2_encoder() -> EfficientViTSamImageEncoder:
    torch.manual_seed(0)
    return efficientvit_sam_encoder("l2").eval()


def test_l2_keys_map_onto_the_published_layout(l2_encoder: EfficientViTSamImageEncoder) -> None:
    ours = l2_encoder.state_dict()
    published = ours_to_published(ours)
    assert len(published) == len(ours) == PUBLISHED_KEY_COUNT
    for key, shape in PUBLISHED_SAMPLES.items():
        assert key in published, key
        assert tuple(published[key].shape) == shape, key
    assert published_to_ours(published).keys() == ours.keys()
    assert not any(k.startswith("backbone.head") for k in ours)  # no classifier weights


def test_l2_checkpoint_loads_strictly(l2_encoder: EfficientViTSamImageEncoder) -> None:
    """A synthetic l2.pt's content: published names under 'image_encoder.' in 'state_dict',
    next to keys that MobileSAMv2 ignores (the EfficientViT-SAM decoder). In memory: the file
    would be 230 MB."""
    torch.manual_seed(7)
    donor = {
        k: torch.randn_like(v.float()).to(v.dtype) for k, v in l2_encoder.state_dict().items()
    }
    state = {f"module.image_encoder.{k}": v for k, v in ours_to_published(donor).items()}
    state["module.mask_decoder.iou_token.weight"] = torch.zeros(1, 256)
    raw = {"state_dict": state, "epoch": 3}
    load_state_dict_strict(l2_encoder, encoder_state_from_checkpoint(raw, "l2.pt"), "l2.pt")
    loaded = l2_encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in donor.items())

    state.pop("module.image_encoder.neck.middle.op_list.3.main.point_conv.conv.weight")
    with pytest.raises(
        CheckpointMismatchError, match=r"neck\.blocks\.3\.point_conv\.conv\.weight"
    ):
        load_state_dict_strict(l2_encoder, encoder_state_from_checkpoint(raw, "l2.pt"), "l2.pt")


def test_l2_file_is_read_safely_and_strictly(
    tmp_path: Path, l2_encoder: EfficientViTSamImageEncoder
) -> None:
    path = tmp_path / "l2.pt"
    torch.save({"state_dict": {"image_encoder.norm.weight": torch.ones(256)}}, path)
    with pytest.raises(CheckpointMismatchError) as err:
        load_efficientvit_sam_checkpoint(l2_encoder, path)
    assert "missing keys (507)" in str(err.value) and "renamed from mit-han-lab" in str(err.value)
    with pytest.raises(FileNotFoundError, match="weight/l2.pt"):
        load_efficientvit_sam_checkpoint(l2_encoder, tmp_path / "nope.pt")


def test_l2_checkpoint_without_encoder_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 'image_encoder.\\*' tensors"):
        encoder_state_from_checkpoint({"state_dict": {"mask_decoder.x": torch.zeros(1)}}, "x.pt")
    with pytest.raises(ValueError, match="not an EfficientViT-SAM checkpoint"):
        encoder_state_from_checkpoint([1, 2], "x.pt")


def test_l2_runs_its_backbone_at_512(l2_encoder: EfficientViTSamImageEncoder) -> None:
    """The padded 1024 input is resized to 512 (bilinear) for the backbone; the neck fuses
    its 1/8, 1/16, 1/32 features into a 256 x 64 x 64 embedding. (The backbone is stubbed:
    its numerics were checked once against mit-han-lab's code, see the module docstring.)"""
    seen: list[torch.Tensor] = []

    class Stub(nn.Module):
        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            seen.append(x)
            b = x.shape[0]
            return [
                torch.zeros(b, 512, 16, 16),
                torch.zeros(b, 256, 32, 32),
                torch.ones(b, 128, 64, 64),
            ]

    backbone = l2_encoder.backbone
    try:
        l2_encoder.backbone = Stub()
        x = torch.randn(1, 3, 1024, 1024)
        with torch.inference_mode():
            out = l2_encoder(x)
    finally:
        l2_encoder.backbone = backbone
    assert out.shape == (1, 256, 64, 64)
    assert seen[0].shape == (1, 3, 512, 512)
    # Bilinear 2x downscaling without antialias averages each 2 x 2 block.
    expected = x.reshape(1, 3, 512, 2, 512, 2).mean(dim=(3, 5))
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-5)


def test_registry_knows_mobilesamv2() -> None:
    spec = MODEL_REGISTRY["mobilesamv2_efficientvit_l2"]
    assert "l2.pt" in (spec.official_checkpoint or "")
    assert "Prompt_guided_Mask_Decoder.pt" in (spec.official_checkpoint or "")
