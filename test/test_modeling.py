"""Model building and strict loading of checkpoints in the official layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segfast_ros.modeling import MODEL_REGISTRY, CheckpointMismatchError, build_sam
from segfast_ros.modeling.checkpoints import load_checkpoint


def _tiny_state(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    torch.manual_seed(0)
    state = build_sam("tinyvit_s256").state_dict()
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    return state, path


def test_registry_has_official_models() -> None:
    for name in ("mobile_sam", "tinysam", "sam_vit_b", "sam_vit_l", "sam_vit_h"):
        assert name in MODEL_REGISTRY
    assert MODEL_REGISTRY["mobile_sam"].official_checkpoint == "mobile_sam.pt"
    assert MODEL_REGISTRY["tinysam"].official_checkpoint == "tinysam_42.3.pth"


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'.*mobile_sam"):
        build_sam("sam_vit_x")


def test_round_trip_loads_strictly(tmp_path: Path) -> None:
    state, path = _tiny_state(tmp_path)
    sam = build_sam("tinyvit_s256", path)
    loaded = sam.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not sam.training


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        build_sam("tinyvit_s256", tmp_path / "nope.pt")


def test_partial_checkpoint_names_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state, _ = _tiny_state(tmp_path)
    state.pop("mask_decoder.iou_token.weight")
    state["image_encoder.extra.weight"] = torch.zeros(1)
    state["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 64)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointMismatchError) as err:
        build_sam("tinyvit_s256", path)
    msg = str(err.value)
    assert "missing keys (1)" in msg and "mask_decoder.iou_token.weight" in msg
    assert "unexpected keys (1)" in msg and "image_encoder.extra.weight" in msg
    assert "mask_decoder.mask_tokens.weight: checkpoint (3, 64) vs model (4, 64)" in msg


def test_wrong_model_for_checkpoint_is_a_mismatch(parity_dir: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match="does not match model 'tinyvit_s256'"):
        build_sam("tinyvit_s256", parity_dir / "mobile_sam_random.pt")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="not a flat state_dict"):
        build_sam("tinyvit_s256", path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot load .*garbage.pt"):
        build_sam("tinyvit_s256", garbage)


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    """weights_only=True: a checkpoint carrying arbitrary objects is not unpickled."""
    path = tmp_path / "evil.pt"
    torch.save({"image_encoder.x": torch.zeros(1), "obj": Path("/")}, path)
    with pytest.raises(ValueError, match="cannot load"):
        load_checkpoint(build_sam("tinyvit_s256"), path)


def test_official_mobile_sam_layout_loads(parity_dir: Path) -> None:
    sam = build_sam("mobile_sam", parity_dir / "mobile_sam_random.pt")
    assert sam.info.embed_size == 64 and sam.info.image_size == 1024


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        (
            "sam_vit_b",
            {
                "image_encoder.pos_embed": (1, 64, 64, 768),
                "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
                "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),
                "image_encoder.blocks.2.attn.rel_pos_w": (127, 64),
                "image_encoder.blocks.11.mlp.lin2.weight": (768, 3072),
                "image_encoder.neck.0.weight": (256, 768, 1, 1),
                "image_encoder.neck.3.bias": (256,),
            },
        ),
        ("sam_vit_l", {"image_encoder.blocks.23.attn.rel_pos_h": (127, 64)}),
        ("sam_vit_h", {"image_encoder.blocks.31.attn.qkv.weight": (3840, 1280)}),
    ],
)
def test_sam_vit_key_layout(name: str, keys: dict[str, tuple[int, ...]]) -> None:
    """The official sam_vit_* key names and shapes (checked without allocating weights)."""
    with torch.device("meta"):
        state = build_sam(name).state_dict()
    for key, shape in keys.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("image_encoder.head") for k in state)


@pytest.mark.parametrize("form", ["tokens_to_image", "image_to_tokens"])
@pytest.mark.parametrize("image_batch", [1, 3])
def test_factored_cross_attention_is_the_plain_one(form: str, image_batch: int) -> None:
    from segfast_ros.modeling.transformer import Attention

    torch.manual_seed(0)
    factored = Attention(32, 4, downsample_rate=2, form=form)  # type: ignore[arg-type]
    plain = Attention(32, 4, downsample_rate=2)
    with torch.no_grad():  # biases too: the forms must handle each of them
        for p in factored.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    plain.load_state_dict(factored.state_dict())
    factored.eval()  # the factored order is evaluation's; training computes the plain one
    assert factored.training is False and plain.training is True
    tokens = torch.randn(3, 7, 32)  # B = 3 prompt sets of 7 tokens
    image = torch.randn(image_batch, 50, 32)  # one image shared by the sets, or one per set
    expanded = image.expand(3, -1, -1)
    with torch.no_grad():
        if form == "tokens_to_image":
            got, want = (
                factored(tokens, image, image * 0.5),
                plain(tokens, expanded, expanded * 0.5),
            )
        else:
            got, want = (
                factored(image, tokens, tokens * 0.5),
                plain(expanded, tokens, tokens * 0.5),
            )
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
