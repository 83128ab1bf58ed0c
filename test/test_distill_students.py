"""Distillation students (issue 19): the half-width TinyViT and the NanoSAM-style CNN encoders.

A student must give its teacher's embedding shape, keep the official key layout (strict
checkpoints, ``segfast export``), start from the teacher's prompt encoder and mask decoder, and
run in the torch-free runtime once exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the students are torch models")

from segfast_ros.bench.scenes import generate_scene  # noqa: E402
from segfast_ros.cli import main as segfast  # noqa: E402
from segfast_ros.export.onnx_weights import sam_from_onnx  # noqa: E402
from segfast_ros.modeling import CheckpointMismatchError, build_sam  # noqa: E402
from segfast_ros.modeling.cnn_encoder import CnnImageEncoder  # noqa: E402
from segfast_ros.modeling.sam import Sam  # noqa: E402
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from segfast_ros.runtime.predictor import Predictor  # noqa: E402
from segfast_ros.runtime.torch_backend import TorchBackend  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
#: Students of the shipped demo teacher (256 px, 64x16x16 embedding, the demo's decoder).
DEMO_STUDENTS = ("demo_tinyvit_half", "demo_resnet18")
OFFICIAL_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


@pytest.fixture(scope="module")
def teacher() -> Sam:
    return sam_from_onnx("demo_tinyvit", DEMO)


def _encoder_params(sam: Sam) -> int:
    return sum(p.numel() for p in sam.image_encoder.parameters())


def _student_of(teacher: Sam, name: str, seed: int = 0) -> Sam:
    """A seeded random student of ``name`` carrying the teacher's prompt encoder and decoder
    (where distillation starts), both loaded strictly."""
    torch.manual_seed(seed)
    student = build_sam(name)
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict(), strict=True)
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict(), strict=True)
    return student.eval()


@pytest.mark.parametrize("name", [*DEMO_STUDENTS, "resnet18_sam"])
def test_a_student_gives_its_registered_embedding_shape(name: str) -> None:
    sam = build_sam(name)
    info, encoder = sam.info, sam.image_encoder
    assert (encoder.img_size, encoder.out_size) == (info.image_size, info.embed_size)
    x = torch.randn(2, 3, info.image_size, info.image_size, generator=torch.Generator())
    with torch.no_grad():
        emb = encoder(x)
    assert emb.shape == (2, info.embed_dim, info.embed_size, info.embed_size)
    assert torch.isfinite(emb).all()
    print(f"{name}: encoder {_encoder_params(sam):,} parameters, embedding {tuple(emb.shape)}")


def test_the_half_width_student_is_much_smaller_than_the_demo_encoder(teacher: Sam) -> None:
    half = build_sam("demo_tinyvit_half")
    assert _encoder_params(half) < 0.5 * _encoder_params(teacher)
    # Narrower, not shallower: the attention stages keep >= 16 dims per head.
    assert [layer.blocks[0].attn.key_dim for layer in half.image_encoder.layers[1:]] == [16] * 3


@pytest.mark.parametrize("name", DEMO_STUDENTS)
def test_a_student_checkpoint_round_trips_strictly(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    original = build_sam(name)
    with torch.no_grad():  # BatchNorm statistics too: every tensor must come back
        for value in original.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.rand_like(value))
    state = original.state_dict()
    assert all(k.startswith(OFFICIAL_PREFIXES) for k in state)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    loaded = build_sam(name, path).state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_a_checkpoint_of_another_student_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(build_sam("demo_resnet18").state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="demo_tinyvit_half"):
        build_sam("demo_tinyvit_half", path)


@pytest.mark.parametrize("name", DEMO_STUDENTS)
def test_the_teachers_decoder_loads_into_a_student_and_decodes_alike(
    name: str, teacher: Sam
) -> None:
    student = _student_of(teacher, name)
    emb = np.random.default_rng(3).standard_normal((1, 64, 16, 16)).astype(np.float32)
    point = {"point_coords": np.array([[90.0, 140.0]]), "point_labels": np.array([1])}
    outs = []
    for sam in (teacher, student):
        predictor = Predictor(TorchBackend(sam))
        predictor.set_embedding(emb, (256, 256))
        outs.append(predictor.predict(**point, return_logits=True))
    np.testing.assert_array_equal(outs[1].masks, outs[0].masks)
    np.testing.assert_array_equal(outs[1].scores, outs[0].scores)


@pytest.mark.parametrize("name", DEMO_STUDENTS)
def test_an_exported_student_runs_in_the_runtime(name: str, teacher: Sam, tmp_path: Path) -> None:
    student = _student_of(teacher, name)
    checkpoint = tmp_path / "student.pt"
    torch.save(student.state_dict(), checkpoint)
    out = tmp_path / "onnx"
    # What `segfast export --model NAME --checkpoint PATH` does (export_model underneath).
    argv = ["export", "--model", name, "--checkpoint", str(checkpoint), "--out-dir", str(out)]
    assert segfast(argv) == 0
    backend = OnnxRuntimeBackend.from_dir(out, "fp32")
    assert backend.info == student.info
    assert (backend.info.image_size, backend.info.embed_dim, backend.info.embed_size) == (
        256,
        64,
        16,
    )
    scene = generate_scene(np.random.default_rng(7), (256, 256))
    onnx, torch_ref = Predictor(backend), Predictor(TorchBackend(student))
    for predictor in (onnx, torch_ref):
        predictor.set_image(scene.image)
    np.testing.assert_allclose(
        onnx.get_image_embedding(), torch_ref.get_image_embedding(), atol=1e-4, rtol=0
    )
    point = {"point_coords": np.array([[120.0, 100.0]]), "point_labels": np.array([1])}
    pred = onnx.predict(**point, multimask_output=True, return_logits=True)
    assert pred.masks.shape == (3, 256, 256) and np.isfinite(pred.masks).all()
    # The exported decoder is the teacher's: the demo's own ONNX decoder gives the same logits.
    demo = Predictor(OnnxRuntimeBackend.from_dir(DEMO, "fp32"))
    demo.set_embedding(onnx.get_image_embedding(), (256, 256))
    same = demo.predict(**point, multimask_output=True, return_logits=True)
    np.testing.assert_allclose(pred.masks, same.masks, atol=1e-3, rtol=0)


def test_a_cnn_encoder_refuses_bad_configurations() -> None:
    with pytest.raises(ValueError, match="img_size 250 is not a positive multiple of 32"):
        CnnImageEncoder("resnet18", img_size=250, out_chans=64)
    with pytest.raises(ValueError, match="out_chans must be positive"):
        CnnImageEncoder("resnet18", img_size=256, out_chans=0)
    with pytest.raises(ValueError, match="unknown timm backbone 'not_a_backbone'"):
        CnnImageEncoder("not_a_backbone", img_size=256, out_chans=64)
    # A ViT's features are all at stride 16: there is no stride-32 stage to fuse.
    with pytest.raises(ValueError, match=r"strides \(16, 16\); this encoder needs"):
        CnnImageEncoder("vit_tiny_patch16_224", img_size=256, out_chans=64)
