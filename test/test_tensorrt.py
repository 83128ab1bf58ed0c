"""The TensorRT path without a GPU: FP32 plan, decoder profile, engine cache, and the builder
and backend driven by a fake ``tensorrt`` (see ``fake_tensorrt.py``: it proves our calls and
their order, not TensorRT's behaviour)."""

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
from onnx import TensorProto, helper  # noqa: E402
from test_onnx_backend import INFO, make_decoder, make_encoder  # noqa: E402

from segfast_ros.runtime import load_backend  # noqa: E402
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend  # noqa: E402
from segfast_ros.runtime.tensorrt.backend import (  # noqa: E402
    EngineBuildError,
    TensorRTBackend,
    TensorRTUnavailableError,
    build_engine,
    check_tensorrt,
    cuda_device,
    import_cudart,
    trt_source_files,
)
from segfast_ros.runtime.tensorrt.cache import EngineCache, EngineKey, file_sha256  # noqa: E402
from segfast_ros.runtime.tensorrt.plan import (  # noqa: E402
    DecoderProfile,
    Op,
    decoder_profile_shapes,
    fp32_plan,
    ops_from_onnx,
    plan_summary,
)
from segfast_ros.spec import DECODER_INPUTS, ModelInfo  # noqa: E402

F = TensorProto.FLOAT


def _attention_block_graph() -> onnx.ModelProto:
    """x -> decomposed LayerNorm -> q/k/v projections -> softmax(q k^T * s) v -> LayerNorm
    op -> Conv. Named like the torch exporter names nodes."""
    n = helper.make_node
    nodes = [
        # LayerNorm2d as the neck writes it: (x - mean) / sqrt(mean((x - mean)^2) + eps)
        n("ReduceMean", ["x"], ["u"], name="/neck/ln/ReduceMean", axes=[1]),
        n("Sub", ["x", "u"], ["xc"], name="/neck/ln/Sub"),
        n("Pow", ["xc", "two"], ["sq"], name="/neck/ln/Pow"),
        n("ReduceMean", ["sq"], ["var"], name="/neck/ln/ReduceMean_1", axes=[1]),
        n("Add", ["var", "eps"], ["var_eps"], name="/neck/ln/Add"),
        n("Sqrt", ["var_eps"], ["std"], name="/neck/ln/Sqrt"),
        n("Div", ["xc", "std"], ["xn"], name="/neck/ln/Div"),
        n("Mul", ["xn", "gamma"], ["xg"], name="/neck/ln/Mul"),  # affine: not the norm
        # An unrelated mean that is not centred: stays out of the plan.
        n("ReduceMean", ["xg"], ["pooled"], name="/head/ReduceMean", axes=[1]),
        # attention
        n("MatMul", ["xg", "wq"], ["q"], name="/attn/q/MatMul"),
        n("MatMul", ["xg", "wk"], ["k"], name="/attn/k/MatMul"),
        n("MatMul", ["xg", "wv"], ["v"], name="/attn/v/MatMul"),
        n("Transpose", ["k"], ["kt"], name="/attn/Transpose", perm=[0, 2, 1]),
        n("MatMul", ["q", "kt"], ["logits"], name="/attn/MatMul"),
        n("Mul", ["logits", "scale"], ["scaled"], name="/attn/Mul"),
        n("Softmax", ["scaled"], ["p"], name="/attn/Softmax", axis=-1),
        n("MatMul", ["p", "v"], ["ctx"], name="/attn/MatMul_1"),
        n("MatMul", ["ctx", "wo"], ["proj"], name="/attn/proj/MatMul"),
        n("LayerNormalization", ["proj", "gamma", "beta"], ["y"], name="/norm/LayerNorm"),
    ]
    dims = [1, 4, 4]
    inits = [
        helper.make_tensor(name, F, shape, np.ones(int(np.prod(shape)), np.float32))
        for name, shape in [
            ("two", []), ("eps", []), ("scale", []), ("gamma", [4]), ("beta", [4]),
            ("wq", [4, 4]), ("wk", [4, 4]), ("wv", [4, 4]), ("wo", [4, 4]),
        ]
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", F, dims)],
        [
            helper.make_tensor_value_info("y", F, dims),
            helper.make_tensor_value_info("pooled", F, None),
        ],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# ------------------------------------------------------------------ the FP32 plan


def test_fp32_plan_per_layer_type() -> None:
    plan = fp32_plan(ops_from_onnx(_attention_block_graph()))
    layernorm = {f"/neck/ln/{s}" for s in ("ReduceMean", "Sub", "Pow", "ReduceMean_1", "Add")}
    layernorm |= {"/neck/ln/Sqrt", "/neck/ln/Div", "/norm/LayerNorm"}
    assert {k for k, v in plan.items() if v == "layernorm"} == layernorm
    assert {k for k, v in plan.items() if v == "softmax"} == {"/attn/Softmax"}
    # q @ k^T (through the scale Mul) and attn @ v; the projections stay FP16/INT8.
    assert {k for k, v in plan.items() if v == "attention matmul"} == {
        "/attn/MatMul",
        "/attn/MatMul_1",
    }
    for free in ("/attn/q/MatMul", "/attn/proj/MatMul", "/neck/ln/Mul", "/head/ReduceMean"):
        assert free not in plan


def test_plan_summary_counts_per_op_type() -> None:
    ops = ops_from_onnx(_attention_block_graph())
    rows = {t: (fp32, free) for t, fp32, free in plan_summary(ops, fp32_plan(ops))}
    assert rows["MatMul"] == (2, 4)
    assert rows["Softmax"] == (1, 0)
    assert rows["ReduceMean"] == (2, 1)


def test_matmul_far_from_softmax_is_not_attention() -> None:
    ops = [
        Op("mm", "MatMul", ("a", "b"), ("c",)),
        Op("r1", "Reshape", ("c",), ("d",)),
        Op("r2", "Reshape", ("d",), ("e",)),
        Op("r3", "Reshape", ("e",), ("f",)),
        Op("r4", "Reshape", ("f",), ("g",)),
        Op("sm", "Softmax", ("g",), ("h",)),
    ]
    assert fp32_plan(ops) == {"sm": "softmax"}
    assert "mm" in fp32_plan([ops[0], ops[1], Op("sm", "Softmax", ("d",), ("h",))])


def test_mobile_sam_exported_graph_plan(tiny_onnx_dir: Path) -> None:
    """On a real export (TinyViT encoder) every Softmax and LayerNormalization is planned FP32,
    and each softmax has its two attention MatMuls."""
    ops = ops_from_onnx(onnx.load(str(tiny_onnx_dir / "encoder.fp32.onnx")))
    plan = fp32_plan(ops)
    softmax = [o for o in ops if o.op_type == "Softmax"]
    assert softmax and all(plan[o.name] == "softmax" for o in softmax)
    assert all(plan[o.name] == "layernorm" for o in ops if o.op_type == "LayerNormalization")
    attention = [k for k, v in plan.items() if v == "attention matmul"]
    assert len(attention) == 2 * len(softmax)


# ------------------------------------------------------------------ the decoder profile


def test_decoder_profile_shapes() -> None:
    info = ModelInfo("m", image_size=1024, embed_dim=256, embed_size=64)
    shapes = decoder_profile_shapes(info, DecoderProfile(1, 16, 320, max_points=8))
    assert tuple(shapes) == DECODER_INPUTS
    assert shapes["point_coords"] == ((1, 1, 2), (16, 2, 2), (320, 8, 2))
    assert shapes["point_labels"] == ((1, 1), (16, 2), (320, 8))
    assert shapes["mask_input"] == ((1, 1, 256, 256), (1, 1, 256, 256), (320, 1, 256, 256))
    assert shapes["image_embeddings"] == ((1, 256, 64, 64),) * 3
    assert shapes["has_mask_input"] == ((1,),) * 3


@pytest.mark.parametrize(
    ("args", "match"), [((4, 2, 8), "min_sets <= opt_sets"), ((0, 1, 8), "1 <= min_sets")]
)
def test_decoder_profile_refuses_unordered_ranges(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DecoderProfile(*args)


# ------------------------------------------------------------------ the engine cache


def _key(**changes: object) -> EngineKey:
    base = dict(
        onnx_sha256="ab" * 32,
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability="8.7",
        precision="fp16",
        profile=[1, 16, 320, 16],
    )
    return EngineKey(**{**base, **changes})  # type: ignore[arg-type]


def test_file_hash_covers_external_data(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"graph")
    before = file_sha256(path)
    (tmp_path / "m.onnx.data").write_bytes(b"weights")
    assert file_sha256(path) != before


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "cd" * 32},
        {"tensorrt_version": "8.6.2"},
        {"gpu_name": "NVIDIA GeForce RTX 4090"},
        {"compute_capability": "8.9"},
        {"precision": "int8"},
        {"profile": [1, 16, 64, 16]},
    ],
    ids=lambda c: next(iter(c)),
)
def test_cache_key_mismatch_rebuilds_with_a_log_line(tmp_path: Path, change: dict) -> None:
    lines: list[str] = []
    cache = EngineCache(tmp_path, lines.append)
    cache.store("encoder.fp16", _key(), b"engine")
    assert cache.load("encoder.fp16", _key()).engine == b"engine"
    hit = cache.load("encoder.fp16", _key(**change))
    assert hit.engine is None
    field = next(iter(change))
    assert "stale" in lines[-1] and field in lines[-1] and "rebuilding" in lines[-1]


def test_cache_miss_and_unreadable_key(tmp_path: Path) -> None:
    lines: list[str] = []
    cache = EngineCache(tmp_path, lines.append)
    assert cache.load("decoder.fp16", _key()).engine is None
    assert "no cached engine" in lines[-1]
    engine_path, key_path = cache.paths("decoder.fp16")
    engine_path.write_bytes(b"x")
    key_path.write_text("{not json")
    assert cache.load("decoder.fp16", _key()).engine is None
    assert "unreadable key file" in lines[-1]


def test_cache_store_writes_the_key_sidecar(tmp_path: Path) -> None:
    path = EngineCache(tmp_path / "new", print).store("encoder.int8", _key(), b"e")
    stored = json.loads(path.with_suffix(".json").read_text())
    assert stored == _key().to_dict() and path.read_bytes() == b"e"
    with pytest.raises(ValueError, match="empty engine"):
        EngineCache(tmp_path, print).store("x", _key(), b"")


# ------------------------------------------------------------------ builder with a fake TRT


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    return fake_tensorrt.install(monkeypatch)


@pytest.fixture
def block_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    onnx.save(_attention_block_graph(), str(path))
    return path


def _names(calls: list[tuple]) -> list[str]:
    return [c[0] for c in calls]


def test_fp16_build_calls_in_order(trt, block_onnx: Path) -> None:
    built = build_engine(block_onnx, "fp16", log=lambda s: None)
    names = _names(fake_tensorrt.CALLS)
    order = ["Builder", "create_network", "OnnxParser", "parse_from_file", "create_builder_config"]
    assert names[: len(order)] == order
    assert ("create_network", 0) in fake_tensorrt.CALLS  # TensorRT 10: no EXPLICIT_BATCH flag
    flags = [c[1] for c in fake_tensorrt.CALLS if c[0] == "config.set_flag"]
    assert flags == [trt.BuilderFlag.FP16, trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS]
    # Every planned layer is pinned to FP32, with its outputs, before the build.
    pinned = {c[1] for c in fake_tensorrt.CALLS if c[0] == "layer.precision"}
    assert pinned == set(built.plan) and "/attn/Softmax" in pinned
    typed = {c[1] for c in fake_tensorrt.CALLS if c[0] == "layer.set_output_type"}
    assert typed == pinned
    assert names.index("build_serialized_network") > max(
        i for i, n in enumerate(names) if n == "layer.set_output_type"
    )
    assert "create_optimization_profile" not in names  # static input: no profile
    assert built.engine.startswith(fake_tensorrt.MAGIC)


def test_trt86_uses_explicit_batch_and_int8_sets_both_flags(
    monkeypatch: pytest.MonkeyPatch, block_onnx: Path
) -> None:
    trt = fake_tensorrt.install(monkeypatch, version="8.6.2")
    build_engine(block_onnx, "int8", log=lambda s: None)
    assert ("create_network", 1) in fake_tensorrt.CALLS
    flags = [c[1] for c in fake_tensorrt.CALLS if c[0] == "config.set_flag"]
    assert flags[:2] == [trt.BuilderFlag.FP16, trt.BuilderFlag.INT8]


def test_fp32_build_pins_nothing(trt, block_onnx: Path) -> None:
    built = build_engine(block_onnx, "fp32", log=lambda s: None)
    assert built.plan == {}
    assert not [c for c in fake_tensorrt.CALLS if c[0] in ("config.set_flag", "layer.precision")]


def test_decoder_build_sets_the_profile_for_dynamic_inputs(trt, tmp_path: Path) -> None:
    decoder = make_decoder(tmp_path / "decoder.fp32.onnx")
    shapes = decoder_profile_shapes(INFO, DecoderProfile(1, 16, 320, 8))
    build_engine(decoder, "fp16", profile_shapes=shapes, log=lambda s: None)
    set_shapes = {c[1]: c[2:] for c in fake_tensorrt.CALLS if c[0] == "profile.set_shape"}
    # Only the dynamic inputs, with the computed min/opt/max.
    assert set(set_shapes) == {"point_coords", "point_labels", "mask_input"}
    assert set_shapes["point_coords"] == shapes["point_coords"]
    names = _names(fake_tensorrt.CALLS)
    assert names.index("config.add_optimization_profile") < names.index("build_serialized_network")


def test_dynamic_input_without_profile_is_a_clear_error(trt, tmp_path: Path) -> None:
    decoder = make_decoder(tmp_path / "decoder.fp32.onnx")
    with pytest.raises(EngineBuildError, match=r"dynamic inputs \['mask_input', 'point_coords'"):
        build_engine(decoder, "fp16", log=lambda s: None)


def test_parse_and_build_failures_are_clear(trt, tmp_path: Path, block_onnx: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(block_onnx.read_bytes())
    with pytest.raises(EngineBuildError, match="could not parse .*bad.onnx: .*INVALID_NODE"):
        build_engine(bad, "fp16", log=lambda s: None)
    trt.Builder.fail_build = True
    with pytest.raises(EngineBuildError, match="failed to build a fp16 engine from .*block.onnx"):
        build_engine(block_onnx, "fp16", log=lambda s: None)


def test_missing_tensorrt_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(TensorRTUnavailableError, match="needs the `tensorrt` Python package"):
        check_tensorrt()


def test_tensorrt_type_stubs_alone_are_not_tensorrt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NVIDIA's type stubs (tensorrt-stubs, for the type checker) make `import tensorrt` give an
    empty namespace package without a version: that is "not installed", not "TensorRT 0"."""
    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("__version__: str\n")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # so the import below is undone after
    monkeypatch.delitem(sys.modules, "tensorrt")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TensorRTUnavailableError, match="found a package without a version at"):
        check_tensorrt()
    assert sys.modules["tensorrt"].__file__ is None  # the stubs' namespace package


@pytest.mark.parametrize("version", ["8.5.3", "11.0.0"])
def test_unsupported_tensorrt_versions(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    fake_tensorrt.install(monkeypatch, version=version)
    with pytest.raises(TensorRTUnavailableError, match=f"TensorRT {version} is not supported"):
        check_tensorrt()


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
