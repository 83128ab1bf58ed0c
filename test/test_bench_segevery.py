"""The SegEvery benchmark (library and `segfast bench-segevery`) on the small random model.

Only counts and the shape of the report are checked: timed assertions do not belong in tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segfast_ros.bench.latency import (
    SegEveryBenchRow,
    bench_segevery,
    format_segevery_table,
    segevery_notes,
)
from segfast_ros.bench.report import write_rows_json
from segfast_ros.bench.scenes import frame
from segfast_ros.bench.synthetic_detector import spread_boxes, write_detector_for_image
from segfast_ros.cli import main
from segfast_ros.masks import box_iou
from segfast_ros.modeling import build_sam
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.torch_backend import TorchBackend
from segfast_ros.segevery.detector import ObjectDetector

HW = (150, 200)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench_segevery")
    torch.manual_seed(0)
    # "random" in the name: the CLI then says the weights are random.
    ckpt = root / "tinyvit_random.pt"
    torch.save(build_sam("tinyvit_s256").state_dict(), ckpt)
    image = root / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(frame(HW), cv2.COLOR_RGB2BGR))
    return {"ckpt": ckpt, "image": image, "root": root}


@pytest.fixture(scope="module")
def predictor(files: dict[str, Path]) -> tuple[Predictor, np.ndarray]:
    image = cv2.cvtColor(cv2.imread(str(files["image"])), cv2.COLOR_BGR2RGB)
    predictor = Predictor(TorchBackend(build_sam("tinyvit_s256", files["ckpt"])))
    predictor.set_image(image)
    return predictor, image


def _check_rows(rows: list[dict]) -> None:
    """Rows of grid-8, hierarchical-8 and object-aware with 5 and 10 boxes, as dicts."""
    by_label = {(r["strategy"], r["boxes"]): r for r in rows}
    assert list(by_label) == [
        ("grid", None),
        ("hierarchical", None),
        ("object_aware", 5),
        ("object_aware", 10),
    ]
    assert by_label["grid", None]["decoder_prompts"] == 64
    assert by_label["grid", None]["grid_decoder_ratio"] == pytest.approx(1.0)
    # Round 1 decodes the 2 x 2 sparse grid; round 2 at most the 64 dense points.
    assert 4 <= by_label["hierarchical", None]["decoder_prompts"] <= 4 + 64
    assert "round 1: 4" in by_label["hierarchical", None]["note"]
    for n in (5, 10):
        row = by_label["object_aware", n]
        assert row["decoder_prompts"] == n
        assert 0 <= row["instances"] <= n  # no filters: only empty masks are dropped
    for r in rows:
        assert r["decoder_ms"] > 0 and r["end_to_end_ms"] >= r["decoder_ms"]
        assert r["runs"] == 1 and r["grid_decoder_ratio"] > 0


def test_library_rows_for_every_strategy(
    predictor: tuple[Predictor, np.ndarray], tmp_path: Path
) -> None:
    pred, image = predictor
    embedding = pred.get_image_embedding()
    rows = bench_segevery(pred, image, points_per_side=8, box_counts=(5, 10), work_dir=tmp_path)
    assert all(isinstance(r, SegEveryBenchRow) for r in rows)
    _check_rows([r.__dict__ for r in rows])
    assert pred.get_image_embedding() is embedding  # no strategy re-encoded the image
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == [
        "synthetic_10_boxes.onnx",
        "synthetic_5_boxes.onnx",
    ]

    table = format_segevery_table(rows)
    assert "object_aware[10]" in table and "decoder ms" in table
    notes = segevery_notes(rows, points_per_side=8, random_weights=True)
    assert notes[0].startswith("RANDOM WEIGHTS")
    assert any(n.startswith("hierarchical vs grid") for n in notes)
    assert not any(n.startswith("target") for n in notes)  # the target is against grid-32
    path = tmp_path / "out" / "bench.json"
    write_rows_json(rows, path, notes=notes)
    doc = json.loads(path.read_text())
    assert doc["context"]["notes"] == notes
    _check_rows(doc["rows"])


def test_object_aware_only_has_no_grid_ratio(predictor: tuple[Predictor, np.ndarray]) -> None:
    pred, image = predictor
    rows = bench_segevery(pred, image, strategies=["object_aware"], box_counts=[3])
    assert [(r.label, r.decoder_prompts, r.grid_decoder_ratio) for r in rows] == [
        ("object_aware[3]", 3, None)
    ]


def test_a_real_detector_file_replaces_the_box_counts(
    predictor: tuple[Predictor, np.ndarray], tmp_path: Path
) -> None:
    pred, image = predictor
    path = write_detector_for_image(
        tmp_path / "det.onnx", HW, [[10, 10, 90, 80], [100, 40, 190, 140]], [0.9, 0.8]
    )
    rows = bench_segevery(pred, image, strategies=["object_aware"], detector=path)
    assert [(r.label, r.decoder_prompts, r.note) for r in rows] == [
        ("object_aware", 2, "det.onnx: 2 boxes")
    ]


def test_bad_arguments(predictor: tuple[Predictor, np.ndarray]) -> None:
    pred, image = predictor
    with pytest.raises(ValueError, match=r"unknown SegEvery strategy \['everything'\]"):
        bench_segevery(pred, image, strategies=["everything"])
    with pytest.raises(ValueError, match="box counts must be >= 1, got \\[0\\]"):
        bench_segevery(pred, image, strategies=["object_aware"], box_counts=[0])
    with pytest.raises(ValueError, match="runs must be >= 1"):
        bench_segevery(pred, image, runs=0)
    with pytest.raises(ValueError, match="not the frame set on the predictor"):
        bench_segevery(pred, image[:100])
    with pytest.raises(ValueError, match="no image is set"):
        bench_segevery(Predictor(pred.backend), image)


@pytest.mark.parametrize("n", [1, 50, 100])
def test_spread_boxes_are_distinct_and_survive_the_detector(tmp_path: Path, n: int) -> None:
    boxes = spread_boxes((770, 769), n)
    assert boxes.shape == (n, 4)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= [769, 770]).all()
    assert (boxes[:, 2:] > boxes[:, :2]).all()
    iou = box_iou(boxes, boxes) - np.eye(n)
    assert iou.max() <= 0.5
    np.testing.assert_array_equal(spread_boxes((770, 769), n), boxes)  # seeded
    path = write_detector_for_image(tmp_path / "d.onnx", (770, 769), boxes, np.full(n, 0.9))
    found = ObjectDetector(path, border_snap_px=0)(np.zeros((770, 769, 3), np.uint8))
    assert len(found) == n


def test_spread_boxes_says_when_they_do_not_fit() -> None:
    with pytest.raises(ValueError, match=r"only \d+ of 50 boxes fit in 10x10 px"):
        spread_boxes((10, 10), 50, min_side=0.5, max_iou=0.1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        spread_boxes((100, 100), -1)


def test_cli_prints_the_table_and_writes_json(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench_segevery.json"
    argv = ["bench-segevery", "--model", "tinyvit_s256", "--checkpoint", str(files["ckpt"])]
    argv += ["--onnx-dir", str(tmp_path / "onnx"), "--image", str(files["image"])]
    argv += ["--points-per-side", "8", "--boxes", "5", "10", "--threads", "2"]
    assert main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shared encoder (set_image, once)" in printed
    assert "object_aware[5]" in printed and "note: RANDOM WEIGHTS" in printed
    doc = json.loads(out.read_text())
    _check_rows(doc["rows"])
    assert doc["context"]["points_per_side"] == 8 and doc["context"]["encoder_ms"] > 0

    assert main([*argv, "--strategies", "grid", "everything"]) == 2
    assert "unknown SegEvery strategy ['everything']" in capsys.readouterr().err
