"""ONNX export: parity with torch, dynamic prompt dims, metadata and fp16, on the small model.

The full-size MobileSAM export is checked once, against torch and the reference
implementation, by ``test_parity.py`` (its ONNX Runtime backend).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segfast_ros.export import (
    DecoderCase,
    ExportValidationError,
    export_decoder,
    export_encoder,
    export_model,
    read_metadata,
    validate_export,
)
from segfast_ros.export.fp16 import FP16_KEEP_FP32_OPS, fp16_node_summary
from segfast_ros.export.onnx_export import DYNAMIC_DIMS
from segfast_ros.modeling import build_sam
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend, onnx_file_names
from segfast_ros.runtime.transforms import prepare_image
from segfast_ros.spec import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    METADATA_KEY,
    ModelInfo,
)

PARITY_DIR = Path(__file__).resolve().parents[1] / "../shared/fixtures/upstream_parity"


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build_sam("tinyvit_s256")


@pytest.fixture(scope="module")
def small_dir(small, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + fp16 export of the small model, validated against torch by export_model."""
    out = tmp_path_factory.mktemp("small_export")
    written = export_model(small, out, precisions=("fp32", "fp16"))
    assert set(written) == {"encoder.fp32", "decoder.fp32", "encoder.fp16", "decoder.fp16"}
    return out


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_model_writes_the_names_the_runtime_loads(small, small_dir: Path) -> None:
    for precision in ("fp32", "fp16"):
        enc, dec = onnx_file_names(precision)
        assert (small_dir / enc).is_file() and (small_dir / dec).is_file()
        backend = OnnxRuntimeBackend.from_dir(small_dir, precision)
        assert backend.info == small.info


def test_metadata_round_trips_through_model_info(small, small_dir: Path) -> None:
    for path in sorted(small_dir.glob("*.onnx")):
        role, precision = path.name.split(".")[:2]
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert ModelInfo.from_json(props[METADATA_KEY]) == small.info
        assert props[f"{METADATA_KEY}.role"] == role
        assert props[f"{METADATA_KEY}.precision"] == precision
        meta = read_metadata(path)
        assert (meta.info, meta.role, meta.precision) == (small.info, role, precision)


def test_read_metadata_rejects_foreign_files(tmp_path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match="no segfast metadata"):
        read_metadata(tmp_path / "foreign.onnx")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.onnx")


def test_graph_interface(small, small_dir: Path) -> None:
    """Opset 17, plain ONNX ops, the spec's names, static encoder, named dynamic dims."""
    s, c, h = small.info.image_size, small.info.embed_dim, small.info.embed_size
    enc = onnx.load(str(small_dir / "encoder.fp32.onnx"))
    dec = onnx.load(str(small_dir / "decoder.fp32.onnx"))
    for model in (enc, dec):
        assert {o.domain: o.version for o in model.opset_import} == {"": 17}
        assert {n.domain for n in model.graph.node} == {""}
        assert model.ir_version == 8  # what TensorRT 8.6's parser was built against

    def dims(vi: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    assert [i.name for i in enc.graph.input] == list(ENCODER_INPUTS)
    assert [o.name for o in enc.graph.output] == list(ENCODER_OUTPUTS)
    assert dims(enc.graph.input[0]) == [1, 3, s, s]
    assert dims(enc.graph.output[0]) == [1, c, h, h]
    assert any(n.op_type == "LayerNormalization" for n in enc.graph.node)

    b, n, mb = DYNAMIC_DIMS["prompts"], DYNAMIC_DIMS["points"], DYNAMIC_DIMS["mask_batch"]
    lr = small.info.low_res_size
    inputs = {i.name: dims(i) for i in dec.graph.input}
    assert list(inputs) == list(DECODER_INPUTS)  # no orig_im_size
    assert inputs == {
        "image_embeddings": [1, c, h, h],
        "point_coords": [b, n, 2],
        "point_labels": [b, n],
        "mask_input": [mb, 1, lr, lr],
        "has_mask_input": [1],
    }
    outputs = {o.name: dims(o) for o in dec.graph.output}
    assert outputs == {"low_res_masks": [b, 4, lr, lr], "iou_predictions": [b, 4]}
    assert list(outputs) == list(DECODER_OUTPUTS)


def test_decoder_dynamic_prompts_and_points(small, small_dir: Path) -> None:
    """B in {1, 3, 17} x N in 1..4, with no, shared (1) and per-prompt (B) mask inputs."""
    cases = [
        DecoderCase(b, n, mask=mask)
        for b in (1, 3, 17)
        for n in (1, 2, 3, 4)
        for mask in (("off", "per_prompt") if n % 2 else ("shared",))
    ]
    cases += [DecoderCase(3, 4, box=True, mask="shared"), DecoderCase(17, 3, pad=True)]
    results = validate_export(
        small, decoder_path=small_dir / "decoder.fp32.onnx", decoder_cases=cases
    )
    assert len(results) == 2 * len(cases)
    assert all(r.passed for r in results)
    assert max(r.max_abs_diff for r in results) < 1e-4


def test_decoder_output_shapes_follow_b(small_dir: Path, small) -> None:
    session = _session(small_dir / "decoder.fp32.onnx")
    info = small.info
    lr, rng = info.low_res_size, np.random.default_rng(1)
    for b, n in ((1, 1), (17, 4)):
        feeds = {
            "image_embeddings": rng.standard_normal(
                (1, info.embed_dim, info.embed_size, info.embed_size)
            ).astype(np.float32),
            "point_coords": rng.uniform(0, info.image_size, (b, n, 2)).astype(np.float32),
            "point_labels": np.ones((b, n), np.float32),
            "mask_input": np.zeros((1, 1, lr, lr), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
        }
        masks, iou = session.run(list(DECODER_OUTPUTS), feeds)
        assert masks.shape == (b, 4, lr, lr) and iou.shape == (b, 4)


def test_dynamo_exporter_writes_the_same_decoder_interface(small, tmp_path: Path) -> None:
    """The torch.export-based path (opset 18): same names, dims and parity as TorchScript's."""
    path = export_decoder(
        small,
        tmp_path / "decoder.fp32.onnx",
        exporter="dynamo",
        opset=18,
        validate=False,
    )
    model = onnx.load(str(path))
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    b, n, mb = DYNAMIC_DIMS["prompts"], DYNAMIC_DIMS["points"], DYNAMIC_DIMS["mask_batch"]
    dims = {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in (*model.graph.input, *model.graph.output)
    }
    lr = small.info.low_res_size
    assert dims["point_coords"] == [b, n, 2] and dims["mask_input"] == [mb, 1, lr, lr]
    assert dims["low_res_masks"] == [b, 4, lr, lr]
    cases = [DecoderCase(1, 1), DecoderCase(3, 2, mask="per_prompt"), DecoderCase(17, 4, "shared")]
    assert all(r.passed for r in validate_export(small, decoder_path=path, decoder_cases=cases))


def test_validation_catches_a_wrong_graph(small, small_dir: Path) -> None:
    drifted = copy.deepcopy(small)
    with torch.no_grad():
        drifted.mask_decoder.iou_token.weight.add_(0.5)
        drifted.image_encoder.neck[3].bias.add_(0.5)  # (a conv before a LayerNorm would not show)
    with pytest.raises(ExportValidationError, match="does not reproduce torch") as err:
        validate_export(
            drifted,
            small_dir / "encoder.fp32.onnx",
            small_dir / "decoder.fp32.onnx",
            decoder_cases=[DecoderCase(1, 1)],
        )
    assert "FAIL" in str(err.value)
    results = validate_export(
        drifted,
        small_dir / "encoder.fp32.onnx",
        decoder_cases=[DecoderCase(1, 1)],
        raise_on_failure=False,
    )
    assert not results[0].passed


def test_validate_export_rejects_a_wrong_image(small, small_dir: Path) -> None:
    with pytest.raises(ValueError, match="prepare_image"):
        validate_export(
            small, small_dir / "encoder.fp32.onnx", image=np.zeros((1, 3, 8, 8), np.float32)
        )


def test_fp16_keeps_overflow_prone_ops_in_fp32(small_dir: Path) -> None:
    for role in ("encoder", "decoder"):
        path = small_dir / f"{role}.fp16.onnx"
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        summary = fp16_node_summary(path)
        for op in FP16_KEEP_FP32_OPS:
            assert "fp16" not in summary.get(op, {}), (role, op, summary[op])
        for op in ("Conv", "MatMul"):
            if op in summary:
                assert summary[op].get("fp16", 0) > 0 and "fp32" not in summary[op], (role, op)
        model = onnx.load(str(path))
        float32 = onnx.TensorProto.FLOAT
        for vi in (*model.graph.input, *model.graph.output):  # keep_io_types
            if vi.name != "has_mask_input" or role == "decoder":
                assert vi.type.tensor_type.elem_type == float32
        # Weights of fp16 nodes are stored as fp16: the file is about half the size.
        ratio = path.stat().st_size / (small_dir / f"{role}.fp32.onnx").stat().st_size
        assert ratio < 0.65


def test_fp16_runs_through_the_runtime(small_dir: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (200, 240, 3), dtype=np.uint8)
    fp32 = OnnxRuntimeBackend.from_dir(small_dir, "fp32")
    fp16 = OnnxRuntimeBackend.from_dir(small_dir, "fp16")
    x, _ = prepare_image(image, fp32.info)
    a, b = fp32.encode(x), fp16.encode(x)
    assert b.dtype == np.float32
    cosine = float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.999


def test_weights_go_to_external_data_above_the_limit(small, tmp_path: Path) -> None:
    path = export_encoder(small, tmp_path / "encoder.fp32.onnx", max_inline_bytes=0)
    data = tmp_path / "encoder.fp32.onnx.data"
    assert data.is_file() and data.stat().st_size > path.stat().st_size
    results = validate_export(small, encoder_path=path)  # ORT reads the data file
    assert results[0].passed


def test_exporter_and_precision_errors(small, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset >= 18"):
        export_decoder(small, tmp_path / "d.onnx", exporter="dynamo", opset=17)
    with pytest.raises(ValueError, match="opset >= 17"):
        export_encoder(small, tmp_path / "e.onnx", opset=16)
    with pytest.raises(ValueError, match="unknown exporter"):
        export_encoder(small, tmp_path / "e.onnx", exporter="jit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown precisions"):
        export_model(small, tmp_path, precisions=("fp32", "bf16"))
    with pytest.raises(ValueError, match="calibration_images"):
        export_model(small, tmp_path, precisions=("int8",))
    assert not list(tmp_path.glob("*.onnx"))  # argument errors come before any export
