"""Offline replay: scripted SegAny prompts, answered from the frame their bag time or stamp
names, and prompts files that cannot be read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from replay_bags import DT, T0, read_bag, rle, segevery, tiny_predictor, write_bag

from segfast_ros.masks import rle_to_mask
from segfast_ros.replay import PromptFileError, ReplayOptions, load_prompts, replay
from segfast_ros.replay.prompts import parse_prompts
from segfast_ros.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_onnx_dir: Path) -> Predictor:
    return tiny_predictor(tiny_onnx_dir)


def test_scripted_prompts_match_predict(tmp_path: Path, predictor: Predictor) -> None:
    images = write_bag(tmp_path / "in", 3, extra_topics=False)
    prompts = parse_prompts(
        {
            "prompts": [
                {"time": 0.0, "points": [[30, 30]], "name": "at the first frame"},
                {"time": 0.15, "boxes": [[15, 10, 60, 50], [70, 40, 110, 80]]},
                {"stamp": 202 * 10**9 + 2007, "points": [[30, 30], [90, 60]], "labels": [1, 0]},
                {"time": 0.05, "points": [[500, 30]], "name": "outside"},
                {"stamp": 5, "points": [[3, 3]], "name": "no such stamp"},
            ]
        }
    )
    summary = replay(
        tmp_path / "in",
        tmp_path / "out",
        predictor,
        segevery(),
        ReplayOptions(prompts=prompts),
    )
    assert summary.prompts_answered == 3
    assert len(summary.prompt_errors) == 2
    assert (
        "outside: point 0" in summary.prompt_errors[0]
        and "outside the image" in (summary.prompt_errors[0])
    )
    assert "no such stamp: no processed frame has header stamp 5" in summary.prompt_errors[1]
    answers = read_bag(tmp_path / "out")["/segfast/segment"]
    # time 0.0 -> frame 0; time 0.15 s -> frame 1 (the latest at or before it); stamp -> 2.
    assert [t for t, _ in answers] == [T0, T0 + DT, T0 + 2 * DT]
    assert [m.header.frame_id for _, m in answers] == ["cam_0", "cam_1", "cam_2"]
    reference = Predictor(predictor.backend)
    reference.set_image(images[1])
    boxes_xyxy = np.array([[15, 10, 60, 50], [70, 40, 110, 80]], float)
    pred = reference.predict(box=boxes_xyxy, multimask_output=False)
    boxes = answers[1][1]
    assert boxes.strategy == "segany" and boxes.decoder_prompts == 2
    for got, want in zip(boxes.instances, pred.masks[:, 0], strict=True):
        np.testing.assert_array_equal(rle_to_mask(rle(got)), want)
    reference.set_image(images[2])
    points = np.array([[30, 30], [90, 60]], float)
    pred = reference.predict(points, np.array([1, 0]), multimask_output=False)
    np.testing.assert_array_equal(rle_to_mask(rle(answers[2][1].instances[0])), pred.masks[0])


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"prompts": [{"points": [[1, 2]]}]}, "exactly one of time"),
        ({"prompts": [{"time": -1, "points": [[1, 2]]}]}, "time must be >= 0"),
        ({"prompts": [{"time": 1, "pointz": [[1, 2]]}]}, r"unknown field\(s\) pointz"),
        ({"prompts": [{"time": 1, "boxes": [[1, 2, 3]]}]}, r"boxes must be a list like"),
        ({"prompts": [{"stamp": 1.5, "points": [[1, 2]]}]}, "stamp must be integer"),
        ({"prompts": "nope"}, "expected a list under 'prompts:'"),
    ],
)
def test_bad_prompt_files_are_named(doc: Any, match: str) -> None:
    with pytest.raises(PromptFileError, match=match):
        parse_prompts(doc, "p.yaml")


def test_prompt_file_must_exist_and_parse(tmp_path: Path) -> None:
    with pytest.raises(PromptFileError, match="does not exist"):
        load_prompts(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("prompts: [\n")
    with pytest.raises(PromptFileError, match="not valid YAML"):
        load_prompts(tmp_path / "bad.yaml")
