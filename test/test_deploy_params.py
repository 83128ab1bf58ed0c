"""The node parameters the platform profiles set: backend options and the ~/segment cap."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from segfast_ros.ros.params import NODE_PARAMS, NodeConfig, backend_options


def _config(**changes: object) -> NodeConfig:
    values = {s.name: s.default for s in NODE_PARAMS}
    values.update(changes)
    return NodeConfig.from_values(values)


def test_tensorrt_backend_options() -> None:
    cfg = _config(
        backend="tensorrt",
        precision="fp16",
        **{"tensorrt.decoder_opt_sets": 8, "tensorrt.decoder_max_sets": 64},
    )
    options = backend_options(cfg, Path("/models/mobile_sam"))
    assert options["precision"] == "fp16"
    assert options["engine_cache_dir"] == Path("/models/mobile_sam/engines")
    assert (options["profile"].opt_sets, options["profile"].max_sets) == (8, 64)
    with pytest.raises(ValueError, match="min_sets <= opt_sets <= max_sets"):
        backend_options(
            _config(
                backend="tensorrt",
                **{"tensorrt.decoder_opt_sets": 100, "tensorrt.decoder_max_sets": 64},
            ),
            Path("m"),
        )


def test_onnxruntime_tensorrt_provider_gets_fp16_and_the_cache() -> None:
    cfg = _config(providers=["tensorrt", "cuda", "cpu"], precision="fp16", engine_cache_dir="/c")
    options = backend_options(cfg, Path("m"))
    assert options["providers"] == ["tensorrt", "cuda", "cpu"]
    assert options["trt_fp16"] is True and options["trt_engine_cache_dir"] == Path("/c")
    cpu = backend_options(_config(), Path("m"))
    assert "trt_fp16" not in cpu and cpu["providers"] == ["cpu"]


def test_segment_refuses_more_prompt_sets_than_the_cap() -> None:
    pytest.importorskip("rclpy")
    from segfast_ros.ros.segany import segment

    point = SimpleNamespace(x=1.0, y=1.0, z=0.0)
    req = SimpleNamespace(
        points=[point],
        labels=[1],
        points_per_set=0,
        boxes=[0.0, 0.0, 4.0, 4.0] * 3,
        multimask=False,
        mask_input=[],
        return_images=False,
        return_low_res=False,
    )
    predictor = SimpleNamespace(info=SimpleNamespace(low_res_size=16))
    with pytest.raises(ValueError, match="3 prompt sets in one request; .* at most 2"):
        segment(predictor, req, None, object, max_sets=2)
