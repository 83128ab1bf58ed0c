"""Torch weights read back from this project's fp32 ONNX export (``export.onnx_weights``): the
shipped demo model, which exists only as ONNX, rebuilt as a torch model whose outputs equal ONNX
Runtime's (what distillation needs of a teacher), and an export of known weights read back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="rebuilding a torch model needs torch")

from segfast_ros.bench.scenes import generate_scene  # noqa: E402
from segfast_ros.export.onnx_weights import OnnxWeightsError, sam_from_onnx  # noqa: E402
from segfast_ros.modeling.registry import build_sam  # noqa: E402
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from segfast_ros.runtime.predictor import Predictor  # noqa: E402
from segfast_ros.runtime.torch_backend import TorchBackend  # noqa: E402

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def test_the_demo_model_rebuilt_from_its_onnx_gives_onnx_runtimes_outputs() -> None:
    sam = sam_from_onnx("demo_tinyvit", DEMO)
    scene = generate_scene(np.random.default_rng(5), (256, 192))
    onnx, rebuilt = (
        Predictor(OnnxRuntimeBackend.from_dir(DEMO, "fp32")),
        Predictor(TorchBackend(sam)),
    )
    for p in (onnx, rebuilt):
        p.set_image(scene.image)
    np.testing.assert_allclose(
        rebuilt.get_image_embedding(), onnx.get_image_embedding(), atol=1e-4, rtol=0
    )
    point = {"point_coords": np.array([[100.0, 120.0]]), "point_labels": np.array([1])}
    a = onnx.predict(**point, multimask_output=True, return_logits=True)
    b = rebuilt.predict(**point, multimask_output=True, return_logits=True)
    np.testing.assert_allclose(b.masks, a.masks, atol=1e-3, rtol=0)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-4, rtol=0)
    # A box with the previous logits as mask_input: the "mask given" path too.
    box = {"box": scene.boxes[0].astype(np.float32), "mask_input": a.low_res_logits[:1]}
    a2 = onnx.predict(**box, multimask_output=False, return_logits=True)
    b2 = rebuilt.predict(**box, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(b2.masks, a2.masks, atol=1e-3, rtol=0)


def test_an_export_of_known_weights_reads_back_to_the_same_model(tmp_path: Path) -> None:
    from segfast_ros.export.onnx_export import export_model

    torch.manual_seed(0)
    original = build_sam("demo_tinyvit").eval()
    with torch.no_grad():  # distinct values: the exporter shares equal initializers
        for name, value in original.state_dict().items():
            if value.is_floating_point():
                value.add_(torch.randn_like(value) * 0.02)
            if name.endswith("running_var"):
                value.abs_().add_(0.5)
    export_model(original, tmp_path, ("fp32",))
    rebuilt = sam_from_onnx("demo_tinyvit", tmp_path)
    image = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 3, 256, 256)).astype("f4"))
    with torch.no_grad():
        want, got = original.image_encoder(image), rebuilt.image_encoder(image)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    weights = dict(rebuilt.named_parameters())
    for name, value in original.named_parameters():
        if ".bn." in name or name.endswith(".c.weight"):  # BatchNorm is folded
            continue
        if "_token_to_image.k_proj.bias" in name:  # drops out of the softmax: not in the graph
            assert not weights[name].any(), name
            continue
        torch.testing.assert_close(weights[name], value, atol=1e-6, rtol=0, msg=name)
    # The decoder computes the same function, the token-to-image key biases included.
    emb = torch.randn(1, 64, 16, 16, generator=torch.Generator().manual_seed(2))
    coords, labels = torch.tensor([[[40.0, 90.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]])
    no_mask, flag = torch.zeros(1, 1, 64, 64), torch.zeros(1)
    with torch.no_grad():
        want = original.decode(emb, coords, labels, no_mask, flag)
        got = rebuilt.decode(emb, coords, labels, no_mask, flag)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=0)


def test_graphs_that_do_not_hold_the_model_are_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxWeightsError, match=r"encoder.fp32.onnx, .*decoder.fp32.onnx missing"):
        sam_from_onnx("demo_tinyvit", tmp_path)
    with pytest.raises(OnnxWeightsError, match="another model's export"):
        sam_from_onnx("mobile_sam", DEMO)  # 256-dim MobileSAM against the 64-dim demo graphs
    shutil.copy(DEMO / "encoder.int8.onnx", tmp_path / "encoder.fp32.onnx")  # not fp32 weights
    shutil.copy(DEMO / "decoder.fp32.onnx", tmp_path / "decoder.fp32.onnx")
    with pytest.raises(OnnxWeightsError, match="do not give"):
        sam_from_onnx("demo_tinyvit", tmp_path)
