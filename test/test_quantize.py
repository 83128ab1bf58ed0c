"""INT8 static quantization of the encoder (small model) and the INT8 report.

The graph checks look at both the QDQ file and the kernels ONNX Runtime actually runs after
its fusions: weighted ops become int8 kernels, LayerNorm / Softmax / GELU stay float.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from segfast_ros.export import (
    CalibrationError,
    QuantizationError,
    export_decoder,
    export_encoder,
    format_int8_report,
    int8_report_from_dir,
    quantize_encoder,
    read_metadata,
    write_report_json,
)
from segfast_ros.export.embedding_cosine import embedding_cosines
from segfast_ros.export.quant_graph import attention_matmuls, ort_kernel_summary, qdq_summary
from segfast_ros.export.quant_targets import QUANT_TARGETS, resolve_target
from segfast_ros.export.quantize import (
    QUANTIZATION_KEY,
    ImageFolderReader,
    quantization_settings,
)
from segfast_ros.modeling import build_sam
from segfast_ros.runtime import onnx_backend
from segfast_ros.runtime.cpu_features import (
    Int8SaturationWarning,
    detect_cpu_features,
    parse_cpuinfo,
    saturates_on,
)
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend

#: What the int8 files are checked on: printed with every accuracy gate, since ORT's int8
#: kernels differ per CPU.
CPU = detect_cpu_features().describe()
AVX2_ONLY = parse_cpuinfo("model name: AMD EPYC 7R32\nflags: fpu sse avx avx2\n", "x86_64")
WITH_VNNI = parse_cpuinfo("flags: fpu avx2 avx512f avx512bw avx512_vnni\n", "x86_64")

#: Float ops that must never be handed to an int8 kernel.
FLOAT_OPS = ("LayerNormalization", "Softmax", "Gelu")


def make_scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A synthetic BGR frame: gradient background, coloured shapes, sensor noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    image = base + 60 * np.stack([xx / w, yy / h, (xx + yy) / (h + w)], axis=-1)
    image = image.astype(np.uint8)
    for _ in range(rng.integers(3, 7)):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        if rng.random() < 0.5:
            x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
            cv2.rectangle(image, (x0, y0), (x1, y1), color, -1)
        else:
            cv2.circle(image, (x0, y0), int(rng.integers(8, min(h, w) // 3)), color, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_scenes(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = int(rng.integers(150, 260)), int(rng.integers(150, 300))
        suffix = ".png" if i % 2 else ".jpg"
        cv2.imwrite(str(folder / f"scene_{i:02d}{suffix}"), make_scene(rng, h, w))
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 encoder and decoder of the small model, plus calibration and held-out images."""
    torch.manual_seed(0)
    sam = build_sam("tinyvit_s256")
    out = tmp_path_factory.mktemp("quant")
    export_encoder(sam, out / "encoder.fp32.onnx")
    export_decoder(sam, out / "decoder.fp32.onnx", validate=False)
    write_scenes(out / "calib", 8, seed=0)
    write_scenes(out / "held_out", 3, seed=1)
    return out


@pytest.fixture(scope="module")
def int8_cpu(exported: Path) -> Path:
    return quantize_encoder(
        exported / "encoder.fp32.onnx", exported / "encoder.int8.onnx", exported / "calib"
    )


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def test_weighted_ops_are_quantized_and_float_ops_are_not(int8_cpu: Path) -> None:
    model = onnx.load(str(int8_cpu))
    summary = qdq_summary(int8_cpu)
    for op in ("Conv", "Gemm"):
        assert summary[op] == {"dq_input": summary[op]["dq_input"]}, (op, summary[op])
    # GELU is one node (see quantize.py), LayerNorm and Softmax keep float weights/inputs.
    assert "Erf" not in summary and summary["Gelu"]
    producers = _producers(model)
    inits = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            assert all(name in inits for name in node.input[1:]), node.name  # float gamma/beta
        if node.op_type == "Softmax":
            assert producers[node.input[0]].op_type != "DequantizeLinear", node.name
    # Weights are int8, per output channel, symmetric.
    for node in model.graph.node:
        if node.op_type == "Conv":
            dq = producers[node.input[1]]
            assert dq.op_type == "DequantizeLinear"
            weight = next(t for t in model.graph.initializer if t.name == dq.input[0])
            scale = next(t for t in model.graph.initializer if t.name == dq.input[1])
            assert weight.data_type == onnx.TensorProto.INT8
            assert scale.dims[0] == weight.dims[0] > 1  # per channel


def test_onnxruntime_runs_int8_kernels_and_float_norms(int8_cpu: Path) -> None:
    kernels = ort_kernel_summary(int8_cpu)
    assert kernels["com.microsoft:QLinearConv"] > 0
    assert kernels["com.microsoft:QGemm"] > 0
    assert kernels["Conv"] == 0 and kernels["Gemm"] == 0  # every conv/linear runs int8
    for op in FLOAT_OPS:
        assert kernels[op] > 0, op
    assert not [k for k in kernels if "QLinear" in k and any(f in k for f in FLOAT_OPS)]


def test_int8_embedding_stays_close_to_fp32(exported: Path, int8_cpu: Path) -> None:
    info = read_metadata(int8_cpu).info
    reader = ImageFolderReader(sorted((exported / "held_out").iterdir()), info)
    cosines = embedding_cosines(
        exported / "encoder.fp32.onnx", int8_cpu, [d["image"] for d in reader]
    )
    assert len(cosines) == 3
    assert min(cosines) > 0.98, (cosines, CPU)


def test_int8_metadata(exported: Path, int8_cpu: Path) -> None:
    fp32 = read_metadata(exported / "encoder.fp32.onnx")
    meta = read_metadata(int8_cpu)
    assert (meta.info, meta.role, meta.precision) == (fp32.info, "encoder", "int8")
    props = {p.key: p.value for p in onnx.load(str(int8_cpu)).metadata_props}
    settings = json.loads(props[QUANTIZATION_KEY])
    assert settings["target"] == "cpu" and settings["calibration_images"] == 8
    assert settings["quantize_attention_matmuls"] is False and settings["gelu_fused"] > 0
    assert (settings["activation_type"], settings["weight_type"]) == ("uint8", "int8")
    assert settings["reduce_range"] is True and settings["activation_symmetric"] is False
    assert settings["built_on"] == detect_cpu_features().to_dict()
    check = settings["validation"]  # the accuracy gate's result and where it ran
    assert check["images"] == 4 and check["cpu"] == CPU
    assert 0.95 <= check["mean_cosine"] <= 1.0 + 1e-6
    assert quantization_settings(int8_cpu) == settings
    assert quantization_settings(exported / "encoder.fp32.onnx") is None
    onnx.checker.check_model(onnx.load(str(int8_cpu)), full_check=True)


def _weights_of(model: onnx.ModelProto, op_types: tuple[str, ...]) -> list[np.ndarray]:
    """The quantized weight tensors read by ``op_types`` (through their DequantizeLinear)."""
    producers = _producers(model)
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type in op_types:
            dq = producers.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                found.append(onnx.numpy_helper.to_array(inits[dq.input[0]]))
    return found


def test_default_target_cannot_saturate_x86_without_vnni(int8_cpu: Path) -> None:
    """The default file is right on every CPU: 7-bit weights keep every pair of u8 x s8
    products within int16 (255 * 64 * 2 = 32640 <= 32767), where VPMADDUBSW saturates."""
    weights = _weights_of(onnx.load(str(int8_cpu)), ("Conv", "Gemm", "MatMul"))
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64


@pytest.mark.parametrize("target", ["cpu-vnni", "cpu-avx2", "arm"])
def test_targets_write_their_types(exported: Path, tmp_path: Path, target: str) -> None:
    recipe = QUANT_TARGETS[target]
    # On x86 without VNNI a full-range int8 file saturates, and the export's check refuses it,
    # naming this CPU and the targets to use; the types are then checked without the check.
    probe = {"target": target, "weight_type": recipe.weight_type, "reduce_range": False}
    saturates = saturates_on(probe, detect_cpu_features())

    def quantize(name: str, validate: bool) -> Path:
        return quantize_encoder(
            exported / "encoder.fp32.onnx",
            tmp_path / name,
            exported / "calib",
            target=target,  # type: ignore[arg-type]
            max_images=4,
            validate=validate,
        )

    if saturates:
        with pytest.raises(QuantizationError, match="this CPU saturates .* use target 'cpu'"):
            quantize("refused.onnx", validate=True)
    path = quantize(f"encoder.int8.{target}.onnx", validate=not saturates)
    settings = quantization_settings(path)
    assert settings is not None and settings["target"] == target
    assert settings["activation_type"] == recipe.activation_type
    assert settings["weight_type"] == recipe.weight_type
    assert settings["reduce_range"] is False
    model = onnx.load(str(path))
    weights = _weights_of(model, ("Conv", "Gemm"))
    assert {w.dtype for w in weights} == {np.dtype(recipe.weight_type)}
    if recipe.weight_type == "int8":  # full 8 bits, symmetric
        assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 127
    # Activations are quantized at run time (QuantizeLinear); weights are stored quantized.
    inits = {t.name: t for t in model.graph.initializer}
    activation_types = {
        inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"
    }
    assert activation_types == {
        onnx.helper.np_dtype_to_tensor_dtype(np.dtype(recipe.activation_type))
    }
    if not saturates:
        assert settings["validation"]["mean_cosine"] >= 0.95, (settings["validation"], CPU)


def test_auto_target_follows_the_cpu() -> None:
    orin = parse_cpuinfo("Features: fp asimd asimddp\n", "aarch64")
    assert resolve_target("auto", WITH_VNNI) == "cpu-vnni"
    assert resolve_target("auto", AVX2_ONLY) == "cpu"  # the fast unsaturated kernels
    assert resolve_target("auto", orin) == "arm"
    assert resolve_target("auto", parse_cpuinfo("", "riscv64")) == "cpu"
    assert resolve_target("cpu-avx2") == "cpu-avx2"
    with pytest.raises(ValueError, match=r"unknown target 'avx2'.*'cpu-avx2'"):
        resolve_target("avx2")


def _with_settings(src: Path, dst: Path, settings: dict | None) -> Path:
    """A copy of an int8 file with other quantization metadata (or none)."""
    model = onnx.load(str(src))
    kept = [p for p in model.metadata_props if p.key != QUANTIZATION_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if settings is not None:
        model.metadata_props.add(key=QUANTIZATION_KEY, value=json.dumps(settings))
    onnx.save(model, str(dst))
    return dst


def _load_warnings(path: Path, decoder: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        OnnxRuntimeBackend(path, decoder)
    return [str(w.message) for w in caught if issubclass(w.category, Int8SaturationWarning)]


def test_loading_warns_when_the_file_saturates_on_this_cpu(
    exported: Path, int8_cpu: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = exported / "decoder.fp32.onnx"
    vnni_file = _with_settings(
        int8_cpu,
        tmp_path / "encoder.int8.onnx",
        {"target": "cpu-vnni", "activation_type": "uint8", "weight_type": "int8"},
    )
    legacy = _with_settings(  # as written before targets existed (models/demo's file)
        int8_cpu, tmp_path / "legacy.onnx", {"target": "cpu", "calibration_images": 32}
    )
    foreign = _with_settings(int8_cpu, tmp_path / "foreign.onnx", None)

    monkeypatch.setattr(onnx_backend, "detect_cpu_features", lambda: AVX2_ONLY)
    (message,) = _load_warnings(vnni_file, decoder)
    assert str(vnni_file) in message and "'cpu-vnni'" in message
    assert "AMD EPYC 7R32" in message and "--quant-target cpu" in message
    assert len(_load_warnings(legacy, decoder)) == 1
    assert _load_warnings(int8_cpu, decoder) == []  # 7-bit weights: right here
    assert _load_warnings(foreign, decoder) == []  # no segfast settings: nothing to say
    assert OnnxRuntimeBackend(foreign, decoder).quantization is None

    monkeypatch.setattr(onnx_backend, "detect_cpu_features", lambda: WITH_VNNI)
    assert _load_warnings(vnni_file, decoder) == []
    assert OnnxRuntimeBackend(vnni_file, decoder).quantization["target"] == "cpu-vnni"


def test_attention_matmuls_are_an_option(exported: Path, int8_cpu: Path, tmp_path: Path) -> None:
    default = onnx.load(str(int8_cpu))
    names = attention_matmuls(default)
    assert names  # q @ k^T and attn @ v of every attention block
    producers = _producers(default)
    for node in default.graph.node:
        if node.name in names:
            assert all(producers[i].op_type != "DequantizeLinear" for i in node.input)
    path = quantize_encoder(
        exported / "encoder.fp32.onnx",
        tmp_path / "encoder.int8.onnx",
        exported / "calib",
        quantize_attention_matmuls=True,
        max_images=4,
    )
    model = onnx.load(str(path))
    producers = _producers(model)
    quantized = [
        n
        for n in model.graph.node
        if n.name in names and all(producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    assert len(quantized) == len(names)


def test_tensorrt_target_is_symmetric_int8_opset17(exported: Path, tmp_path: Path) -> None:
    path = quantize_encoder(
        exported / "encoder.fp32.onnx",
        tmp_path / "encoder.int8.onnx",
        exported / "calib",
        target="tensorrt",
        max_images=4,
    )
    model = onnx.load(str(path))
    info = read_metadata(path).info
    images = [
        d["image"] for d in ImageFolderReader(sorted((exported / "held_out").iterdir()), info)
    ]
    assert min(embedding_cosines(exported / "encoder.fp32.onnx", path, images)) > 0.98
    assert {o.domain: o.version for o in model.opset_import} == {"": 17}
    assert {n.domain for n in model.graph.node} == {""}
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:
        zero_point = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert inits[node.input[2]].data_type == onnx.TensorProto.INT8
        assert not zero_point.any(), node.name  # TensorRT accepts zero point 0 only
    # Activations are quantized only where a weighted op reads them (NVIDIA's placement).
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in inits:
            assert set(consumers[node.output[0]]) & {"Conv", "Gemm", "MatMul"}, node.name
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == onnx.TensorProto.INT8  # no int32 bias


def test_percentile_calibration(exported: Path, tmp_path: Path) -> None:
    path = quantize_encoder(
        exported / "encoder.fp32.onnx",
        tmp_path / "encoder.int8.onnx",
        exported / "calib",
        calibration_method="percentile",
        max_images=4,
    )
    settings = json.loads(
        {p.key: p.value for p in onnx.load(str(path)).metadata_props}[QUANTIZATION_KEY]
    )
    assert settings["calibration_method"] == "percentile"
    assert settings["calibration_images"] == 4


def test_calibration_errors(exported: Path, tmp_path: Path) -> None:
    src = exported / "encoder.fp32.onnx"
    out = tmp_path / "encoder.int8.onnx"
    with pytest.raises(CalibrationError, match="does not exist"):
        quantize_encoder(src, out, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(CalibrationError, match=r"no images .*notes\.txt"):
        quantize_encoder(src, out, empty)
    with pytest.raises(CalibrationError, match="is a file"):
        quantize_encoder(src, out, empty / "notes.txt")
    broken = tmp_path / "broken"
    write_scenes(broken, 2, seed=3)
    (broken / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CalibrationError, match=r"cannot read .*zz_corrupt\.png"):
        quantize_encoder(src, out, broken)
    with pytest.raises(CalibrationError, match="empty"):
        quantize_encoder(src, out, [])
    with pytest.raises(CalibrationError, match="not found"):
        quantize_encoder(src, out, [tmp_path / "nope.jpg"])
    assert not out.exists()  # all of these fail before calibration starts


def test_argument_errors(exported: Path, tmp_path: Path) -> None:
    out = tmp_path / "encoder.int8.onnx"
    calib = exported / "calib"
    with pytest.raises(ValueError, match="needs the fp32 encoder"):
        quantize_encoder(exported / "decoder.fp32.onnx", out, calib)
    with pytest.raises(ValueError, match="unknown target"):
        quantize_encoder(exported / "encoder.fp32.onnx", out, calib, target="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_encoder(
            exported / "encoder.fp32.onnx",
            out,
            calib,
            calibration_method="mse",  # type: ignore[arg-type]
        )


def test_drift_check_raises(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="drifts from fp32"):
        quantize_encoder(
            exported / "encoder.fp32.onnx",
            tmp_path / "encoder.int8.onnx",
            exported / "calib",
            max_images=2,
            min_cosine=1.01,  # unreachable: checks that the check runs
        )
    assert not (tmp_path / "encoder.int8.onnx").exists()  # a drifted file never lands


def test_runtime_loads_int8_and_report(exported: Path, int8_cpu: Path, tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend.from_dir(exported, "int8")
    assert backend.info == read_metadata(exported / "encoder.fp32.onnx").info

    json_path = tmp_path / "reports" / "int8.json"
    report = int8_report_from_dir(exported, exported / "held_out", repeats=1, json_path=json_path)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(report))
    assert report["cpu"]["describe"] == CPU and report["cpu"]["kind"] in CPU
    (entry,) = report["int8"]
    assert entry["file"] == str(int8_cpu) and entry["target"] == "cpu"
    assert entry["quantization"]["reduce_range"] is True and entry["saturates_here"] is False
    assert [r["image"] for r in entry["images"]] == sorted(
        p.name for p in (exported / "held_out").iterdir()
    )
    for row in (*entry["images"], entry["mean"]):
        assert 0.98 < row["embedding_cosine"] <= 1.0 + 1e-6, (row, CPU)
        assert 0.0 <= row["point_iou"] <= 1.0 and 0.0 <= row["box_iou"] <= 1.0
        assert row["fp32_ms"] > 0 and row["int8_ms"] > 0
    assert entry["speedup"] > 0
    table = format_int8_report(report)
    assert "mean" in table and "emb cos" in table and entry["images"][0]["image"] in table
    assert f"CPU: {CPU}" in table and "(target cpu)" in table
    path = write_report_json(report, tmp_path / "again.json")
    assert json.loads(path.read_text())["model"] == "tinyvit_s256"
    with pytest.raises(FileNotFoundError, match="encoder.int8.onnx"):
        int8_report_from_dir(tmp_path, exported / "held_out")


def test_quantize_and_report_import_without_torch() -> None:
    """Calibrating on the robot with its own frames needs onnx and onnxruntime, not torch."""
    code = (
        "import sys\n"
        "from segfast_ros.export import quantize_encoder, int8_report, export_fp16\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
