"""The replay's per-frame rows (``replay(..., on_row=...)``, the fleet table's source): one per
processed frame, in order, counting what the output bag holds for that frame and adding up to
the summary's stage times.

The shipped demo model on demo scenes, with SegEvery on every other frame, a target followed
from frame 2 and SegAny calls on two frames, so that every kind of count is exercised.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from replay_bags import DT, REPO, T0, read_bag, stamp, write_bag

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.replay import ReplayOptions, replay
from segfast_ros.replay.prompts import parse_prompts
from segfast_ros.replay.summary import FrameRow
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS
from segfast_ros.segevery.registry import build_segevery
from segfast_ros.tracking.states import TRACK_TRACKED

FRAMES = 8


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(OnnxRuntimeBackend.from_dir(REPO / "models/demo", "fp32", intra_op_threads=1))


def test_one_row_per_frame_counts_what_the_bag_holds_and_adds_up_to_the_summary(
    tmp_path: Path, predictor: Predictor
) -> None:
    scenes = generate_sequence(5, FRAMES, (240, 320), num_objects=(3, 5), radius=(0.12, 0.2))
    write_bag(tmp_path / "in", FRAMES, extra_topics=False, images=[s.image for s in scenes])
    box = [float(v) for v in scenes[2].boxes[0]]
    prompts = parse_prompts(
        {
            "prompts": [
                {"time": 0.2, "boxes": [box], "track": True},
                {"time": 0.2, "points": [[100, 100]]},
                {"time": 0.5, "points": [[50, 60]]},
                {"time": 0.5, "boxes": [box]},
            ]
        }
    )
    rows: list[FrameRow] = []
    segevery = build_segevery("grid", points_per_side=8, **DEMO_SEGEVERY_PARAMS["grid"])
    # SegEvery at 5 Hz of bag time on a 10 Hz bag: every other frame.
    opts = ReplayOptions(prompts=prompts, segevery_rate_hz=5.0)
    summary = replay(
        tmp_path / "in", tmp_path / "out", predictor, segevery, opts, on_row=rows.append
    )
    assert summary.complete and not summary.prompt_errors

    assert [r.index for r in rows] == list(range(FRAMES)) == list(range(summary.processed))
    assert [r.bag_time_ns for r in rows] == [T0 + i * DT for i in range(FRAMES)]
    assert [r.stamp_ns for r in rows] == [s * 10**9 + ns for s, ns in map(stamp, range(FRAMES))]
    out = read_bag(tmp_path / "out")
    arrays = {t: msg for t, msg in out["/segfast/instances"]}
    tracks = {t: msg for t, msg in out["/segfast/tracks"]}
    for row in rows:
        arr = arrays.get(row.bag_time_ns)
        assert row.segevery == (arr is not None)
        assert row.instances == (len(arr.instances) if arr else 0)
        born = [i for i in arr.instances if i.track_state == TRACK_TRACKED] if arr else []
        assert row.tracks == len(born)
        found = tracks[row.bag_time_ns].instances if row.bag_time_ns in tracks else []
        assert row.targets == sum(i.track_state == TRACK_TRACKED for i in found)
        assert ("segany" in row.stages_ms) == (row.prompts > 0)
        assert ("decoder" in row.stages_ms) == row.segevery
        assert row.stages_ms["encoder"] > 0 and row.stages_ms["inference"] > 0
    assert [r.segevery for r in rows] == [i % 2 == 0 for i in range(FRAMES)]
    assert [r.prompts for r in rows] == [0, 0, 2, 0, 0, 2, 0, 0]
    assert all(r.targets == 0 for r in rows[:2]) and rows[2].targets == 1
    assert sum(r.instances for r in rows) == summary.instances
    for stage, times in summary.timings_ms.items():
        in_rows = sum(r.stages_ms.get(stage, 0.0) for r in rows)
        assert math.isclose(in_rows, sum(times), rel_tol=1e-9, abs_tol=1e-9), stage
