"""``segfast bench-tracking`` on small sizes: what it prints and writes, and that N targets cost
one decoder call per frame (counted at the backend), not N.

Only counts and the shape of the report are checked: timed assertions do not belong in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.tracking import CountingBackend, moving_instances, parse_size
from segfast_ros.cli import main
from segfast_ros.masks import rle_to_mask
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.paths import DEMO_MODEL, resolve_model_path

DEMO = resolve_model_path(DEMO_MODEL)
SMALL = ["--sizes", "160x120", "96x64", "--instances", "12", "--runs", "3"]


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, dict]:
    out = tmp_path / "bench.json"
    argv = ["bench-tracking", "--precision", "fp32", *SMALL, "--json", str(out), *extra]
    assert main(argv) == 0
    return capsys.readouterr().out, json.loads(out.read_text())


def test_association_and_targets_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("--targets", "1", "3", "5", "--frames", "2", "--size", "128x96", "--node-targets", "0")
    printed, doc = _run(tmp_path, capsys, *args)

    for title in ("Association:", "Targets:", "footprints", "IoU matrix", "calls/frame", "CPU "):
        assert title in printed
    assert "Node:" not in printed and doc["node"] is None

    context = doc["context"]
    assert context["cpu_count"] >= 1 and context["cpu"]["arch"]
    assert isinstance(context["otherwise_idle"], bool) and len(context["load_average_before"]) == 3
    assert context["model_dir"] == str(DEMO) and context["precision"] == "fp32"

    assert [r["image"] for r in doc["association"]] == ["160x120", "96x64"]
    for row in doc["association"]:
        assert row["instances"] == 12 and row["runs"] == 3
        # Every instance moved by a few pixels: each continues its own track.
        assert row["tracks"] == row["matched"] == row["kept_id"] == 12
        parts = row["footprints_ms"] + row["iou_matrix_ms"] + row["assignment_ms"]
        assert parts > 0 and row["update_ms"] == pytest.approx(parts + row["rest_ms"])
        assert row["goal_met"] == (row["update_ms"] < 2.0)

    rows = {r["targets"]: r for r in doc["targets"]}
    assert list(rows) == [1, 3, 5]
    for n, row in rows.items():
        assert row["frames"] == 2
        # The point of batching: one decoder call per frame whatever N, against N without it.
        assert row["decoder_calls_per_frame"] == 1.0, row
        assert row["separate_calls_per_frame"] == n
        # Several targets in that one call (a target the tracker loses is no longer decoded).
        assert n / 2 < row["decoded_per_frame"] <= n
        assert row["speedup"] == pytest.approx(row["separate_ms"] / row["step_ms"])
    assert any("one call for any N: yes" in note for note in doc["notes"])


def test_counting_backend_counts_calls_and_prompt_sets() -> None:
    from segfast_ros.runtime import Predictor

    counting = CountingBackend(OnnxRuntimeBackend.from_dir(DEMO, "fp32"))
    predictor = Predictor(counting)
    predictor.set_image(np.full((64, 80, 3), 128, np.uint8))
    predictor.predict(box=np.array([[4, 4, 40, 40], [10, 10, 60, 50]]), multimask_output=False)
    predictor.predict(np.array([[20.0, 20.0]]), np.array([1]))
    assert (counting.decode_calls, counting.prompt_sets) == (2, 3)


def test_moving_instances_move_a_few_pixels() -> None:
    a, b = moving_instances((120, 160), 20, shift=3.0)
    assert len(a) == len(b) == 20
    for x, y in zip(a, b, strict=True):
        assert x.area > 0 and y.area > 0
        assert np.abs(x.box - y.box).max() <= 4  # 3 px, rounded to the pixel grid
        assert rle_to_mask(x.rle).sum() == x.area


@pytest.mark.parametrize(
    ("flag", "text", "expected"),
    [
        ("--size", "640", "expected a frame size WxH"),
        ("--size", "x480", "expected a frame size WxH"),
        ("--sizes", "10x480", "both sides >= 32"),
        ("--targets", "0", "expected an integer >= 1, got '0'"),
        ("--runs", "two", "expected an integer >= 1, got 'two'"),
        ("--node-targets", "-1", "expected an integer >= 0, got '-1'"),
    ],
)
def test_bad_flags_name_what_was_expected(
    flag: str, text: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["bench-tracking", flag, text])
    assert expected in capsys.readouterr().err
    assert parse_size("640x480") == (480, 640)


def test_node_part_reports_frame_to_tracks_over_the_encoder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed: run `make setup`")
    args = ("--targets", "2", "--frames", "1", "--size", "160x120")
    printed, doc = _run(tmp_path, capsys, *args, "--node-targets", "2", "--node-frames", "3")

    assert "Node: 2 targets" in printed and "frame->~/tracks" in printed
    node = doc["node"]
    assert node["targets"] == 2 and node["frames"] == 3
    stages = [r["stage"] for r in node["rows"]]
    assert stages == [
        "set_image",
        "encoder (in node)",
        "frame->embedding",
        "targets step",
        "frame->~/tracks",
    ]
    assert node["frame_to_tracks_ms"] > 0 and node["node_encoder_ms"] > 0
    assert node["over_encoder_ms"] == pytest.approx(
        node["frame_to_tracks_ms"] - node["node_encoder_ms"]
    )
    assert 0 <= node["tracked_per_frame"] <= 2
    # Frame 0 and 3 timed frames (the warm-up ones too), each sent at least once.
    assert node["frames_sent"] >= 1 + 3 + 3 + node["frames_resent"]
    assert 1 + 3 + 3 <= node["node_frames_received"] <= node["frames_sent"]
    assert any("frame -> ~/tracks median" in note for note in doc["notes"])
