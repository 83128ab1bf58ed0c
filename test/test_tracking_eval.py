"""The tracking evaluation: its measures on hand-made cases with known answers, and one small
run of ``segfast eval-tracking`` with the shipped demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segfast_ros.demo.metrics import DEFAULT_MODEL_DIR
from segfast_ros.demo.tracking_eval import tracking_settings
from segfast_ros.demo.tracking_metrics import (
    MotFrame,
    TargetTrace,
    ids_kept,
    lost_latency,
    match_truth,
    mot_metrics,
    target_miou,
    target_summary,
    wrong_frames,
)

NAN = float("nan")


def test_match_truth_is_optimal_not_greedy_and_drops_weak_pairs():
    # Greedy would give truth 0 its best (pred 0, 0.6) and leave truth 1 unmatched.
    iou = np.array([[0.6, 0.55], [0.58, 0.0]])
    assert match_truth(iou) == {0: 1, 1: 0}
    assert match_truth(np.array([[0.49, 0.2]])) == {}
    assert match_truth(np.zeros((0, 3))) == {} and match_truth(np.zeros((2, 0))) == {}


def test_ids_kept_counts_objects_matched_on_consecutive_frames():
    frames = [{1: 10, 2: 20}, {1: 10, 2: 21}, {1: 10}, {2: 21}, {2: 21}]
    # f1: object 1 kept, object 2 switched; f2: object 1 kept; f3: object 2 not on f2;
    # f4: object 2 kept.
    assert ids_kept(frames) == (3, 4)
    assert ids_kept([]) == (0, 0)


def test_mot_metrics_on_a_known_sequence():
    """Two objects over four frames: one false track, one switch, one miss."""
    f = MotFrame
    frames = [
        f(np.array([1, 2]), np.array([10, 20, 30]), np.array([[0.9, 0, 0], [0, 0.8, 0]])),
        f(np.array([1, 2]), np.array([10, 20]), np.array([[0.9, 0], [0, 0.8]])),
        f(np.array([1, 2]), np.array([10, 21]), np.array([[0.9, 0], [0, 0.8]])),
        f(np.array([1, 2]), np.array([10, 21]), np.array([[0.4, 0], [0, 0.8]])),
    ]
    m = mot_metrics([frames])
    assert m["objects"] == 8 and m["misses"] == 1 and m["false_positives"] == 2
    assert m["id_switches"] == 1
    assert m["mota"] == pytest.approx(1 - (1 + 2 + 1) / 8)
    # Best global pairing: 1<->10 on 3 frames, 2<->20 (or 21) on 2: IDTP 5 of 8 truth + 9 hyps.
    assert m["idf1"] == pytest.approx(2 * 5 / (8 + 9))


def _trace(tracked, own, other, oracle, exits=()):
    return TargetTrace(
        7,
        np.array(tracked, dtype=bool),
        np.array(own, dtype=float),
        np.array(other, dtype=float),
        np.array(oracle, dtype=float),
        list(exits),
    )


def test_target_miou_counts_lost_frames_as_zero_and_skips_hidden_frames():
    t = _trace([1, 1, 0, 1], [0.8, NAN, 0.5, 0.6], [0, 0, 0, 0], [0.9, NAN, 0.9, 0.9])
    own, oracle, frames = target_miou(t)
    assert frames == 3
    assert own == pytest.approx((0.8 + 0.0 + 0.6) / 3)
    assert oracle == pytest.approx(0.9)
    hidden = _trace([1, 1], [NAN, NAN], [0, 0], [NAN, NAN])
    assert target_miou(hidden)[2] == 0 and np.isnan(target_miou(hidden)[0])


def test_wrong_frames_need_tracked_and_a_better_other_object_above_the_floor():
    t = _trace(
        [1, 1, 1, 0, 1],
        [0.6, NAN, 0.2, NAN, 0.5],
        [0.7, 0.35, 0.25, 0.9, 0.45],
        [0.9] * 5,
    )
    # f0: 0.7 beats own 0.6; f1: own object hidden, 0.35 > 0.3; f2: 0.25 under the 0.3
    # floor; f3: lost; f4: own 0.5 is better.
    np.testing.assert_array_equal(wrong_frames(t), [True, True, False, False, False])


def test_lost_latency():
    tracked = np.array([1, 1, 1, 0, 0], dtype=bool)
    assert lost_latency(tracked, 1) == 2
    assert lost_latency(tracked, 3) == 0
    assert lost_latency(np.ones(5, bool), 0) is None


def test_target_summary_judges_exits_and_rates():
    # Target a: exit on frame 2, lost on frame 3 (latency 1); never wrong.
    a = _trace([1, 1, 1, 0, 0, 0], [0.8, 0.8, NAN, NAN, NAN, NAN], [0] * 6, [0.9] * 6, [2])
    # Target b: exit on frame 1, tracked to the end (5 frames left: a miss); wrong on f1..f5.
    b = _trace([1] * 6, [0.9] + [NAN] * 5, [0.0] + [0.6] * 5, [0.9] * 6, [1])
    # Target c: exit on frame 4 with 2 frames left, still tracked: not judged.
    c = _trace([1] * 6, [0.45] * 4 + [NAN] * 2, [0] * 6, [0.9] * 6, [4])
    s = target_summary([a, b, c])
    assert s["targets"] == 3 and s["target_frames"] == 18 and s["visible_frames"] == 7
    assert s["miou"] == pytest.approx((0.8 + 0.9 + 0.45) / 3)
    assert s["ratio"] == pytest.approx(((0.8 + 0.9 + 0.45) / 3) / 0.9)
    assert s["targets_at_ratio_0_9"] == pytest.approx(1 / 3)  # b only; a is 0.89x
    assert s["wrong_frames"] == 5 and s["wrong_object_rate"] == pytest.approx(5 / 18)
    assert s["targets_ever_wrong"] == 1
    assert s["exits"] == 2 and s["exits_unjudged"] == 1 and s["lost_never"] == 1
    assert s["lost_within_3"] == pytest.approx(0.5) and s["lost_latency_max"] == 1


def test_tracking_settings_from_set_pairs():
    s = tracking_settings(["min_hits=1", "tracking.lost_score=0.25", "use_mask_input=False"])
    assert (s.min_hits, s.lost_score, s.use_mask_input) == (1, 0.25, False)
    with pytest.raises(ValueError, match="KEY=VALUE, e.g. min_hits=1"):
        tracking_settings(["min_hits"])
    with pytest.raises(ValueError, match="bogus"):
        tracking_settings(["bogus=1"])
    with pytest.raises(ValueError, match="min_hits"):
        tracking_settings(["min_hits=0"])


@pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "encoder.int8.onnx").is_file(), reason="demo model not installed"
)
def test_eval_tracking_command_writes_the_report(tmp_path, capsys):
    from segfast_ros.cli import main

    out = tmp_path / "eval.json"
    args = ["eval-tracking", "--sequences", "2", "--frames", "12", "--hw", "120", "160"]
    assert main([*args, "--seed-base", "5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "id_kept" in printed and "target_ratio" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["context"]["seed_base"] == 5 and report["context"]["frames"] == 12
    assert [s["seed"] for s in report["sequences"]] == [5, 6]
    ids, targets = report["segevery_ids"], report["targets"]
    assert ids["pairs"] > 0 and 0 <= ids["id_kept"] <= 1
    assert {"idf1", "mota", "id_switches", "misses", "false_positives"} <= set(ids)
    assert ids["objects"] > 0
    assert targets["targets"] > 0 and targets["target_frames"] == targets["targets"] * 11
    assert 0 < targets["oracle_miou"] <= 1 and 0 <= targets["miou"] <= 1
    # Every step decodes all targets in one decoder call (none once all are lost).
    assert 0 < targets["decoder_calls_per_frame"] <= 1
    assert set(report["goals"]) == {
        "id_kept",
        "target_ratio",
        "wrong_object_rate",
        "lost_within_3",
    }
    for goal in report["goals"].values():
        assert goal["pass"] in (True, False, None) and "value" in goal and "goal" in goal
    assert {"encoder", "segevery", "instances", "targets", "oracle"} <= set(report["timings_ms"])
