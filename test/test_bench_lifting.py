"""``segfast bench-lifting`` on a small frame: what it prints and writes, and that its scene is
what it says (instances as the node holds them, depth with planes and holes).

Only the shape of the report is checked: timed assertions do not belong in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.lifting import lifting_scene
from segfast_ros.cli import main
from segfast_ros.spatial.lift import lift_masks


def test_bench_lifting_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "depth" / "bench.json"
    argv = ["bench-lifting", "--size", "160x120", "--instances", "12", "--runs", "3"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())

    for text in ("Depth lifting:", "oriented boxes", "cloud_points", "80x60 -> 160x120", "CPU "):
        assert text in printed
    assert set(doc) == {"context", "scene", "rows", "notes"}
    assert doc["context"]["cpu_count"] >= 1 and len(doc["context"]["load_average_before"]) == 3

    scene = doc["scene"]
    assert scene["image_hw"] == [120, 160] and scene["instances"] == 12
    assert 0 < scene["valid_instances"] <= 12
    assert 0 < scene["cloud_points"] <= scene["lifted_points"] < scene["mask_pixels"]
    assert 0.8 < scene["valid_depth_fraction"] < 1.0

    rows = doc["rows"]
    assert [r["part"] for r in rows] == ["lift", "lift", "lift", "lift", "cloud", "resample"]
    assert rows[1]["detail"].strip() == "cv2 on one thread"
    assert doc["context"]["cv2_threads"] >= 1
    for row in rows:
        assert row["runs"] == 3 and 0 < row["median_ms"] <= row["p95_ms"]
    # The goal is for 100 instances at 640x480: not judged on this frame, and said so.
    assert all(r["goal_ms"] is None and r["goal_met"] is None for r in rows)
    assert any("goal (< 5 ms) is for 100 instances at 640x480" in n for n in doc["notes"])


def test_goal_row_at_the_goal_size() -> None:
    from segfast_ros.bench.lifting import bench_lifting, lifting_notes

    scene = lifting_scene((480, 640), 100)
    rows, summary = bench_lifting(scene, runs=1, warmup=0)
    assert rows[0].goal_ms == 5.0 and rows[0].goal_met == (rows[0].median_ms < 5.0)
    assert all(r.goal_ms is None for r in rows[1:])
    assert lifting_notes(rows, summary)[0].startswith("lift: 100 instances 640x480")


def test_lifting_scene_puts_each_instance_on_its_own_plane() -> None:
    scene = lifting_scene((120, 160), 10, seed=3)
    assert scene.depth.shape == (120, 160) and scene.depth.dtype == np.float32
    assert np.isnan(scene.depth).any() and (scene.depth == 0).any()
    lifted = lift_masks(scene.counts, scene.rois, scene.depth, scene.camera)
    valid = [one for one in lifted if one.valid]
    assert len(valid) >= 8
    # Instances painted later are nearer: depths fall between 0.5 and 2.8 m, the wall beyond.
    assert all(0.4 < one.centroid[2] < 2.9 for one in valid)
    assert np.nanmax(scene.depth) > 3.0
