"""The TensorRT build recipe as pure Python, without TensorRT or a GPU: the FP32 plan, the
decoder's optimization profile and the engine cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

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


def attention_block_graph() -> onnx.ModelProto:
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
    plan = fp32_plan(ops_from_onnx(attention_block_graph()))
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
    ops = ops_from_onnx(attention_block_graph())
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
