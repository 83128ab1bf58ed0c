"""``segfast bench-decoder`` and ``segfast bench-segany`` on the shipped demo model: the rows,
the comparison of two graphs' outputs, and errors that name what is wrong."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from segfast_ros.bench.decoder import bench_decoders
from segfast_ros.bench.segany_speed import bench_segany, parse_size
from segfast_ros.cli import main

DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"


def _demo_copy(folder: Path, *, scale_iou: bool = False) -> Path:
    """The demo model's fp32 files in ``folder``; with ``scale_iou`` a decoder whose IoU output
    is doubled (an Identity turned into a Mul), to be told apart."""
    folder.mkdir()
    shutil.copy(DEMO / "encoder.fp32.onnx", folder)
    if not scale_iou:
        shutil.copy(DEMO / "decoder.fp32.onnx", folder)
        return folder
    model = onnx.load(str(DEMO / "decoder.fp32.onnx"))
    out = model.graph.output[1].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    two = onnx.helper.make_tensor("two", onnx.TensorProto.FLOAT, [], [2.0])
    model.graph.initializer.append(two)
    model.graph.node.append(onnx.helper.make_node("Mul", [f"{out}_raw", "two"], [out]))
    onnx.save(model, str(folder / "decoder.fp32.onnx"))
    return folder


def test_two_graphs_are_timed_per_prompt_and_compared(tmp_path: Path) -> None:
    base = _demo_copy(tmp_path / "base")
    other = _demo_copy(tmp_path / "other", scale_iou=True)
    rows = bench_decoders([base, other], batches=(1, 4), rounds=1, calls=2, threads=1)
    assert [(r.batch, r.graph) for r in rows] == [
        (1, "base"), (1, "other"), (4, "base"), (4, "other")
    ]  # fmt: skip
    for row in rows:
        assert row.calls == 2 and row.median_ms > 0 and row.p95_ms >= row.median_ms
    assert rows[0].speedup == 1.0 and rows[0].max_iou_diff == 0.0
    assert rows[1].max_logit_diff == 0.0 and rows[1].max_iou_diff > 0  # only the IoUs differ


def test_bench_decoder_cli_writes_json_and_names_a_missing_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dec.json"
    args = ["bench-decoder", str(DEMO), "--batch", "2", "--rounds", "1", "--calls", "1"]
    assert main([*args, "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["batch"] for r in doc["rows"]] == [2] and doc["context"]["threads"] == 1
    assert main(["bench-decoder", str(tmp_path / "nothing")]) == 2
    assert "ONNX folder not found" in capsys.readouterr().err


def test_segany_stages_on_a_large_frame_without_upstream() -> None:
    image = np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    rows = bench_segany(image, DEMO, threads=1, rounds=1, calls=2)
    assert [r.stage for r in rows] == ["predict", "decoder only", "~/segment handler"]
    assert all(r.speedup is None and r.calls == 2 and r.median_ms > 0 for r in rows)


def test_segany_refuses_an_upstream_it_cannot_use(tmp_path: Path) -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="--checkpoint"):
        bench_segany(image, DEMO, upstream=tmp_path, rounds=1, calls=1)
    with pytest.raises(FileNotFoundError, match="no mobile_sam package"):
        bench_segany(image, DEMO, upstream=tmp_path, checkpoint=tmp_path / "w.pt")
    assert parse_size("2068x1450") == (1450, 2068)


def test_bench_segany_cli_on_a_generated_scene(tmp_path: Path) -> None:
    out = tmp_path / "segany.json"
    args = ["bench-segany", "--onnx-dir", str(DEMO), "--size", "300x200", "--rounds", "1"]
    assert main([*args, "--calls", "1", "--threads", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["context"]["frame_hw"] == [200, 300]
    assert doc["rows"][0]["stage"] == "predict"
    assert main(["bench-segany", "--onnx-dir", str(tmp_path / "nothing")]) == 2
