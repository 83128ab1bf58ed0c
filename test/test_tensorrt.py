"""The TensorRT backend and ``segfast build-engine`` without a GPU, driven by a fake
``tensorrt`` and cuda-python (see ``fake_tensorrt.py``: it proves our calls and their order,
not TensorRT's behaviour). The build recipe is tested in ``test_tensorrt_plan.py``, the
builder in ``test_tensorrt_build.py``."""

from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
import fake_tensorrt  # noqa: E402
from onnx import helper  # noqa: E402
from test_onnx_backend import INFO, make_decoder, make_encoder  # noqa: E402

from segfast_ros.runtime import load_backend  # noqa: E402
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from segfast_ros.runtime.tensorrt.backend import TensorRTBackend, trt_source_files  # noqa: E402
from segfast_ros.runtime.tensorrt.cuda import (  # noqa: E402
    TensorRTUnavailableError,
    cuda_device,
    import_cudart,
)
from segfast_ros.runtime.tensorrt.plan import DecoderProfile  # noqa: E402
from segfast_ros.spec import ModelInfo  # noqa: E402


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    return fake_tensorrt.install(monkeypatch)


def _names(calls: list[tuple]) -> list[str]:
    return [c[0] for c in calls]


# ------------------------------------------------------------------ backend with a fake TRT


@pytest.fixture
def trt_onnx_dir(tmp_path: Path) -> Path:
    d = tmp_path / "onnx"
    d.mkdir()
    make_encoder(d / "encoder.fp32.onnx")
    make_decoder(d / "decoder.fp32.onnx")
    return d


def test_no_cuda_device_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, trt_onnx_dir: Path
) -> None:
    fake_tensorrt.install(monkeypatch, devices=0)
    with pytest.raises(TensorRTUnavailableError, match="no CUDA device"):
        TensorRTBackend(trt_onnx_dir, info=INFO)


def test_no_cuda_driver_names_the_cuda_error(
    monkeypatch: pytest.MonkeyPatch, trt_onnx_dir: Path
) -> None:
    fake_tensorrt.install(monkeypatch, driver=False)
    with pytest.raises(TensorRTUnavailableError, match="cudaErrorInsufficientDriver"):
        TensorRTBackend(trt_onnx_dir, info=INFO)


def test_real_cuda_python_without_a_gpu_names_the_cuda_error() -> None:
    """cuda-python itself (a dependency of the dev venv's torch) on a machine without a GPU."""
    pytest.importorskip("cuda.bindings.runtime")
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err == cudart.cudaError_t.cudaSuccess and count:
        pytest.skip(f"this machine has {count} CUDA device(s)")
    with pytest.raises(TensorRTUnavailableError, match=f"no CUDA device available .*{err.name}"):
        cuda_device(cudart)


def test_missing_cuda_python_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, trt_onnx_dir: Path
) -> None:
    fake_tensorrt.install(monkeypatch)
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(TensorRTUnavailableError, match="needs cuda-python"):
        TensorRTBackend(trt_onnx_dir, info=INFO)


def test_backend_matches_onnxruntime_and_splits_big_batches(trt, trt_onnx_dir: Path) -> None:
    lines: list[str] = []
    backend = load_backend(
        "tensorrt",
        trt_onnx_dir,
        precision="fp16",
        info=INFO,
        profile=DecoderProfile(1, 2, 4, max_points=3),
        log=lines.append,
    )
    assert isinstance(backend, TensorRTBackend)
    reference = OnnxRuntimeBackend.from_dir(trt_onnx_dir, intra_op_threads=1)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    emb = backend.encode(image)
    np.testing.assert_allclose(emb, reference.encode(image), rtol=1e-6)
    coords = rng.uniform(0, 64, (10, 2, 2)).astype(np.float32)  # 10 sets > max_sets 4
    labels = np.ones((10, 2), np.float32)
    mask = np.zeros((1, 1, 16, 16), np.float32)
    has = np.zeros(1, np.float32)
    masks, iou = backend.decode(emb, coords, labels, mask, has)
    ref_masks, ref_iou = reference.decode(emb, coords, labels, mask, has)
    np.testing.assert_allclose(masks, ref_masks, rtol=1e-6)
    np.testing.assert_allclose(iou, ref_iou, rtol=1e-5)
    runs = [c[1] for c in fake_tensorrt.CALLS if c[0] == "execute_async_v3"]
    assert [r["point_coords"][0] for r in runs if "point_coords" in r] == [4, 4, 2]
    with pytest.raises(ValueError, match="at most 3"):
        backend.decode(
            emb, np.zeros((1, 4, 2), np.float32), np.ones((1, 4), np.float32), mask, has
        )
    backend.close()
    assert any("no cached engine" in line for line in lines)


def test_backend_is_safe_to_share_between_threads(
    monkeypatch: pytest.MonkeyPatch, trt_onnx_dir: Path
) -> None:
    """The node decodes from its service threads and SegEvery's thread at once, and encodes on
    a third: each caller gets the result it would get alone, and no execution context is used
    by two threads at a time or from a thread with another device current."""
    fake_tensorrt.install(monkeypatch, devices=2)
    backend = TensorRTBackend(
        trt_onnx_dir,
        info=INFO,
        device_id=1,
        profile=DecoderProfile(1, 2, 4, max_points=3),
        log=lambda s: None,
    )
    rng = np.random.default_rng(3)
    images = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(3)]
    embeddings = [backend.encode(image) for image in images]

    def decode_job(k: int):
        sets = 3 + 2 * k  # 3, 5, 7 sets: the last two split into chunks of max_sets=4
        coords = rng.uniform(0, 64, (sets, 2, 2)).astype(np.float32)
        labels = np.ones((sets, 2), np.float32)
        masks = rng.standard_normal((sets, 1, 16, 16)).astype(np.float32)
        args = (embeddings[k], coords, labels, masks, np.ones(1, np.float32))
        return lambda: backend.decode(*args)

    jobs = [decode_job(k) for k in range(3)]
    jobs += [lambda image=image: (backend.encode(image),) for image in images]
    serial = [job() for job in jobs]
    assert not fake_tensorrt.MISUSE

    monkeypatch.setattr(fake_tensorrt, "DWELL", 0.001)  # overlapping calls would show
    start = threading.Barrier(len(jobs))

    def repeat(job):
        start.wait()
        try:
            return [job() for _ in range(3)]
        except Exception as err:  # a garbled run: report the misuse behind it first
            return err

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(repeat, jobs))
    assert fake_tensorrt.MISUSE == []
    assert not [r for r in results if isinstance(r, Exception)]
    for alone, together in zip(serial, results, strict=True):
        for result in together:
            for want, got in zip(alone, result, strict=True):
                np.testing.assert_array_equal(got, want)


def test_closed_backend_refuses_calls(trt, trt_onnx_dir: Path) -> None:
    backend = TensorRTBackend(trt_onnx_dir, info=INFO, log=lambda s: None)
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        backend.encode(np.zeros((1, 3, 64, 64), np.float32))


def test_backend_reuses_the_cache_and_rebuilds_corrupt_engines(trt, trt_onnx_dir: Path) -> None:
    cache = trt_onnx_dir / "engines"
    TensorRTBackend(trt_onnx_dir, info=INFO, log=lambda s: None).close()
    assert sorted(p.name for p in cache.iterdir()) == [
        "decoder.fp16.engine",
        "decoder.fp16.json",
        "encoder.fp16.engine",
        "encoder.fp16.json",
    ]
    fake_tensorrt.CALLS.clear()
    TensorRTBackend(trt_onnx_dir, info=INFO, log=lambda s: None).close()
    assert "build_serialized_network" not in _names(fake_tensorrt.CALLS)

    (cache / "encoder.fp16.engine").write_bytes(b"\x00garbage")
    lines: list[str] = []
    fake_tensorrt.CALLS.clear()
    TensorRTBackend(trt_onnx_dir, info=INFO, log=lines.append).close()
    assert _names(fake_tensorrt.CALLS).count("build_serialized_network") == 1
    assert any("could not be deserialized; rebuilding" in line for line in lines)
    assert (cache / "encoder.fp16.engine").read_bytes().startswith(fake_tensorrt.MAGIC)


def test_engine_from_another_gpu_is_never_loaded(trt, trt_onnx_dir: Path) -> None:
    TensorRTBackend(trt_onnx_dir, info=INFO, log=lambda s: None).close()
    key_path = trt_onnx_dir / "engines" / "encoder.fp16.json"
    key = json.loads(key_path.read_text())
    key["gpu_name"], key["compute_capability"] = "NVIDIA A100-SXM4-40GB", "8.0"
    key_path.write_text(json.dumps(key))
    lines: list[str] = []
    fake_tensorrt.CALLS.clear()
    TensorRTBackend(trt_onnx_dir, info=INFO, log=lines.append).close()
    deserialized = [c for c in fake_tensorrt.CALLS if c[0] == "deserialize_cuda_engine"]
    built = _names(fake_tensorrt.CALLS).count("build_serialized_network")
    # Encoder: rebuilt, then loaded once (the built one); decoder: from the cache.
    assert built == 1 and len(deserialized) == 2
    assert any("gpu_name: 'NVIDIA A100-SXM4-40GB' -> 'Orin'" in line for line in lines)


def test_int8_needs_the_tensorrt_quantized_encoder(trt_onnx_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"encoder.int8.tensorrt.onnx not found"):
        trt_source_files(trt_onnx_dir, "int8")
    assert trt_source_files(trt_onnx_dir, "fp16")[0].name == "encoder.fp32.onnx"


# ------------------------------------------------------------------ segfast build-engine


def _with_metadata(path: Path, info: ModelInfo) -> Path:
    from segfast_ros.spec import METADATA_KEY

    model = onnx.load(str(path))
    helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.save(model, str(path))
    return path


def _build_engine_args(*argv: str):
    import argparse

    from segfast_ros.export.tensorrt_build import add_build_engine_parser

    parser = argparse.ArgumentParser()
    add_build_engine_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["build-engine", *argv])


def test_build_engine_command_prints_time_and_precision_summary(
    trt,
    trt_onnx_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _with_metadata(trt_onnx_dir / "decoder.fp32.onnx", INFO)
    args = _build_engine_args(str(trt_onnx_dir), "--profile", "orin_nano", "--layers")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "TensorRT 10.3.0 on Orin (compute 8.7)" in out
    # The Orin Nano profile's decoder sizes, so the node's cache key matches.
    assert "decoder profile: 1/8/64 prompt sets" in out
    assert "encoder.fp16: built in" in out and "decoder.fp16: built in" in out
    assert "FP32 (pinned)" in out and "FP16 allowed" in out
    assert "engine inspector gave no per-layer detail" in out  # the fake has no inspector
    key = json.loads((trt_onnx_dir / "engines" / "decoder.fp16.json").read_text())
    assert key["profile"] == [1, 8, 64, 16] and key["precision"] == "fp16"

    args = _build_engine_args(str(trt_onnx_dir), "--opt-sets", "8", "--max-sets", "64")
    args.func(args)
    out = capsys.readouterr().out
    assert "encoder.fp16: up to date" in out and "decoder.fp16: up to date" in out


def test_build_engine_int8_without_quantized_encoder_or_calib(trt, trt_onnx_dir: Path) -> None:
    args = _build_engine_args(str(trt_onnx_dir), "--precision", "int8")
    with pytest.raises(FileNotFoundError, match="pass --calib IMAGES"):
        args.func(args)


def test_engine_inspector_precision_counts() -> None:
    from segfast_ros.export.tensorrt_build import engine_layer_precisions

    info = {
        "Layers": [
            {"Name": "conv", "Outputs": [{"Format/Datatype": "Channel major FP16 format"}]},
            {"Name": "ln", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
            {"Name": "q", "Outputs": [{"Format/Datatype": "Int8 NC32HW32 format"}]},
            "a layer name only (ProfilingVerbosity below DETAILED)",
        ]
    }
    counts = engine_layer_precisions(json.dumps(info))
    assert counts == {"FP16": 1, "FP32": 1, "INT8": 1, "unknown": 1}


def test_profile_build_settings_follow_the_profile_files() -> None:
    from segfast_ros.export.tensorrt_build import profile_build_settings

    repo = Path(__file__).resolve().parents[1]
    nano = profile_build_settings(repo / "config" / "profiles" / "orin_nano.yaml")
    assert nano == {"precision": "fp16", "opt_sets": 8, "max_sets": 64}
    assert "opt_sets" not in profile_build_settings(repo / "config" / "profiles" / "cpu.yaml")


def test_bench_names_the_missing_tensorrt(tiny_onnx_dir, capsys, monkeypatch) -> None:
    """`segfast bench --backends tensorrt` without TensorRT: exit 2 and what to install."""
    import sys as _sys

    from segfast_ros.cli import main

    monkeypatch.setitem(_sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    args = ["bench", "--onnx-dir", str(tiny_onnx_dir), "--backends", "tensorrt"]
    assert main([*args, "--precisions", "fp32"]) == 2
    assert "needs the `tensorrt` Python package" in capsys.readouterr().err
