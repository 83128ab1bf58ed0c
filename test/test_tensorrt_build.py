"""Building TensorRT engines, driven by a fake ``tensorrt`` (see ``fake_tensorrt.py``: it proves
our builder calls and their order, not TensorRT's behaviour), and the checks that ``tensorrt``
is there and of a supported version."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
import fake_tensorrt  # noqa: E402
from test_onnx_backend import INFO, make_decoder  # noqa: E402
from test_tensorrt_plan import attention_block_graph  # noqa: E402

from segfast_ros.runtime.tensorrt.build import EngineBuildError, build_engine  # noqa: E402
from segfast_ros.runtime.tensorrt.cuda import (  # noqa: E402
    TensorRTUnavailableError,
    check_tensorrt,
)
from segfast_ros.runtime.tensorrt.plan import DecoderProfile, decoder_profile_shapes  # noqa: E402

# ------------------------------------------------------------------ builder with a fake TRT


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch):
    return fake_tensorrt.install(monkeypatch)


@pytest.fixture
def block_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    onnx.save(attention_block_graph(), str(path))
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
