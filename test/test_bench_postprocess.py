"""``segfast bench-postprocess``'s own checks, without replaying: a tree whose code does not
import from it is refused, and the rows are medians over the rounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.postprocess import (
    BenchError,
    TreeRun,
    check_imports,
    compare_results,
    tree_row,
)
from segfast_ros.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def test_trees_must_import_their_own_code(tmp_path: Path) -> None:
    assert Path(check_imports(REPO)).resolve() == REPO / "segfast_ros" / "__init__.py"
    # A folder without segfast_ros in it: the process imports the installed one, from elsewhere.
    with pytest.raises(BenchError, match=f"{tmp_path}: segfast_ros imports from"):
        check_imports(tmp_path)


def run(tree: str, round_: int, post: float, decoder: float, fps: float) -> TreeRun:
    stages = {"decoder": decoder, "postprocess": post, "render": 1.0, "inference": 1e3 / fps}
    return TreeRun(tree, round_, 2.0, stages, fps, fps / 2, 409)


def test_rows_are_medians_over_the_rounds() -> None:
    runs = [run("base", 1, 10.0, 20.0, 12.0), run("this", 1, 5.0, 30.0, 14.0)]
    runs += [run("base", 2, 12.0, 25.0, 11.0), run("base", 3, 30.0, 21.0, 13.0)]
    row = tree_row("base", runs)
    assert (row.runs, row.postprocess_ms, row.decoder_ms, row.inference_bound_fps) == (
        3,
        12.0,
        21.0,
        12.0,
    )
    assert row.post_per_decoder == pytest.approx(12.0 / 21.0)
    assert row.post_render_per_decoder == pytest.approx(13.0 / 21.0)
    assert tree_row("this", runs).runs == 1


def test_the_command_line() -> None:
    args = build_parser().parse_args(["bench-postprocess", "--base", "/tmp/base"])
    assert (args.base, args.rounds, args.mode, args.json) == ("/tmp/base", 3, "object_aware", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench-postprocess"])  # --base is required


def test_results_may_differ_by_rounding_not_by_instances() -> None:
    from segfast_ros.masks import mask_to_rle

    mask = np.zeros((1, 20, 30), bool)
    mask[0, 5:15, 5:25] = True
    edge = mask.copy()
    edge[0, 5, 5] = False  # one pixel of 200 off
    one = {"image_id": 1, "segmentation": mask_to_rle(mask)[0], "score": 0.9}
    near = {**one, "segmentation": mask_to_rle(edge)[0], "score": 0.9 + 1e-5}
    agree = compare_results([one], [near])
    assert agree["pixels_differing"] == 1 and agree["min_mask_iou"] == 199 / 200
    with pytest.raises(BenchError, match="other instances"):
        compare_results([one], [one, one])
    with pytest.raises(BenchError, match="scores by up to"):
        compare_results([one], [{**one, "score": 0.5}])
