"""``segfast bench-ops``: ONNX Runtime's profile read back per operator type and run, and the
shipped demo encoders profiled side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segfast_ros.bench.op_profile import _read_profile, op_kind, profile_graphs
from segfast_ros.cli import main

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def _event(cat: str, name: str, ts: int, dur: int, op: str | None = None) -> dict:
    event = {"cat": cat, "name": name, "ts": ts, "dur": dur}
    if op is not None:
        event["args"] = {"op_name": op}
    return event


def test_kernels_are_added_to_their_run_and_the_warmup_is_left_out(tmp_path: Path) -> None:
    events = [
        _event("Session", "model_run", 0, 1000),  # warm-up
        _event("Node", "mm_kernel_time", 10, 900, "MatMul"),
        _event("Session", "model_run", 2000, 500),
        _event("Node", "mm_kernel_time", 2010, 300, "MatMul"),
        _event("Node", "mm2_kernel_time", 2320, 100, "MatMul"),
        _event("Node", "act_kernel_time", 2430, 50, "Gelu"),
        _event("Node", "act_fence_before", 2425, 1, "Gelu"),  # not a kernel
        _event("Session", "model_run", 3000, 400),
        _event("Node", "mm_kernel_time", 3010, 200, "MatMul"),
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    walls, per_run, nodes = _read_profile(str(path), warmup=1)
    assert walls == [0.5, 0.4]
    assert per_run == [{"MatMul": 0.4, "Gelu": 0.05}, {"MatMul": 0.2}]
    assert nodes == {"MatMul": 2, "Gelu": 1}


def test_operator_kinds() -> None:
    assert op_kind("QGemm") == op_kind("MatMulInteger") == "int8 mm/conv"
    assert op_kind("DynamicQuantizeLinear") == "(de)quantize"
    assert op_kind("FusedConv") == "fp32 mm/conv"
    assert op_kind("Softmax") == "other"


@pytest.mark.skipif(not (DEMO / "encoder.int8.onnx").is_file(), reason="no models/demo")
def test_the_demo_encoders_side_by_side() -> None:
    fp32, int8 = profile_graphs(
        [DEMO / "encoder.fp32.onnx", DEMO / "encoder.int8.onnx"], runs=2, threads=1
    )
    assert (fp32.label, int8.label) == ("encoder.fp32.onnx", "encoder.int8.onnx")
    assert fp32.runs == int8.runs == 2
    assert fp32.kind_ms("int8 mm/conv") == 0 and fp32.int8_free_ms is None
    assert int8.kind_ms("int8 mm/conv") > 0 and int8.kind_ms("(de)quantize") > 0
    for p in (fp32, int8):
        assert 0 < p.kernel_ms <= p.run_ms  # kernels run inside the runs
        assert p.plain_ms > 0
    assert int8.int8_free_ms == pytest.approx(int8.run_ms - int8.kind_ms("int8 mm/conv"))


def test_graphs_that_cannot_be_fed_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["bench-ops", str(tmp_path / "nope.onnx")]) == 2
    assert "no ONNX graph at" in capsys.readouterr().err
    if (DEMO / "decoder.fp32.onnx").is_file():
        assert main(["bench-ops", str(DEMO / "decoder.fp32.onnx"), "--runs", "1"]) == 2
        err = capsys.readouterr().err
        assert "static shapes" in err and "point_coords" in err
