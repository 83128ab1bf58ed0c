"""The replay with depth (``--depth-topic``): 3D in every Instance, vision_msgs detections,
bad depth input reported and survived, and the pairing's bounded look-ahead.

RGB-D bags from ``rgbd_bags.py`` (generated scenes with exact depth ground truth): depth
arrives 40 ms after its colour frame in bag order, its stamps jittered by a few ms. 3D accuracy
runs the shipped demo model (real masks); the bad-input cases the small random-weights model
(their masks only need to exist). The pairing's unit tests use stand-in frames and messages
(only header stamps and bag times matter to it).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from replay_bags import REPO, cli_args, read_bag, segevery, tiny_predictor
from rgbd_bags import COLOUR, COLOUR_INFO, DEPTH, DEPTH_INFO, DT, T0, RGBDBag, write_rgbd_bag
from rosbags.rosbag2 import Reader

from segfast_ros.masks import rle_to_mask
from segfast_ros.pipeline.depth import depth_msg_to_metres
from segfast_ros.replay import ReplayOptions, replay
from segfast_ros.replay import bags as replay_bags
from segfast_ros.replay.depth import (
    DEPTH as DEPTH_KIND,
)
from segfast_ros.replay.depth import (
    LOOKAHEAD_DEPTHS,
    LOOKAHEAD_FRAMES,
    LOOKAHEAD_NS,
    DepthInput,
    DepthPairing,
)
from segfast_ros.replay.items import DecodedFrame
from segfast_ros.replay.prompts import parse_prompts
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS
from segfast_ros.segevery.registry import build_segevery
from segfast_ros.spatial.camera import camera_from_info
from segfast_ros.spatial.lift import lift_masks
from segfast_ros.topics import camera_info_sibling

MODEL = REPO / "models" / "demo"
NS = "/segfast"
TOL = 30_000_000


def _stamped(stamp_ns: int) -> SimpleNamespace:
    stamp = SimpleNamespace(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp))


def _frame(stamp_ns: int, bag_time: int) -> DecodedFrame:
    return DecodedFrame(-1, bag_time, _stamped(stamp_ns), np.zeros((2, 2, 3), np.uint8), 0.0)


def _depth(stamp_ns: int, bag_time: int) -> DepthInput:
    return DepthInput(DEPTH_KIND, _stamped(stamp_ns), bag_time)


# ------------------------------------------------------------------- the pairing (no model)


def test_a_frame_waits_for_a_later_depth_and_leaves_once_one_is_beyond_the_tolerance() -> None:
    pairing = DepthPairing(TOL)
    early = _depth(T0 - DT, T0 - DT)
    assert pairing.add_input(early) == []  # no frame yet: waits for the next one
    frame = _frame(T0, T0)
    assert pairing.add_frame(frame) == []  # its own depth has not come
    own = _depth(T0 + 3_000_000, T0 + 40_000_000)
    assert pairing.add_input(own) == []  # within the tolerance: a nearer one may follow
    assert pairing.advance(T0 + 90_000_000) == []
    nxt = _depth(T0 + DT, T0 + DT + 40_000_000)  # beyond s + tolerance: no later one is nearer
    assert pairing.add_input(nxt) == [frame]
    assert frame.depth_inputs == [early, own, nxt]  # fed in this order before it is lifted


def test_a_frame_waits_for_the_first_camera_info() -> None:
    pairing = DepthPairing(TOL, frozenset({"colour_info"}))
    frame = _frame(T0, T0)
    pairing.add_frame(frame)
    assert pairing.add_input(_depth(T0 + DT, T0 + 10)) == []
    info = DepthInput("colour_info", _stamped(T0), T0 + 20)
    assert pairing.add_input(info) == [frame]
    assert frame.depth_inputs[-1] is info


def test_the_look_ahead_is_bounded_in_depth_images_bag_time_and_frames() -> None:
    # Depth images all stamped at the frame (never beyond it): released after the bound.
    pairing = DepthPairing(TOL)
    frame = _frame(T0, T0)
    pairing.add_frame(frame)
    for k in range(LOOKAHEAD_DEPTHS - 1):
        assert pairing.add_input(_depth(T0, T0 + k)) == []
    assert pairing.add_input(_depth(T0, T0 + LOOKAHEAD_DEPTHS)) == [frame]

    # No depth at all (a stream that stopped): released after LOOKAHEAD_NS of bag time.
    pairing = DepthPairing(TOL)
    frame = _frame(T0, T0)
    pairing.add_frame(frame)
    assert pairing.advance(T0 + LOOKAHEAD_NS) == []
    assert pairing.advance(T0 + LOOKAHEAD_NS + 1) == [frame]

    # Many frames within that time: at most LOOKAHEAD_FRAMES held, released in order.
    pairing = DepthPairing(TOL)
    frames = [_frame(T0 + i, T0 + i) for i in range(LOOKAHEAD_FRAMES + 3)]
    released = [f for fr in frames for f in pairing.add_frame(fr)]
    assert released == frames[:3]
    assert pairing.finish() == frames[3:]  # the bag ended: the rest, in order


def test_depth_images_near_no_frame_are_dropped_and_counted() -> None:
    pairing = DepthPairing(TOL)
    old = [_depth(T0 + i, T0 + i) for i in range(LOOKAHEAD_DEPTHS + 5)]
    for item in old:
        pairing.add_input(item)
    frame = _frame(T0 + DT, T0 + DT)
    pairing.add_frame(frame)
    assert frame.depth_inputs == old[5:] and pairing.dropped == 5
    pairing.finish()
    assert pairing.dropped == 5


@pytest.mark.parametrize(
    ("image", "info"),
    [
        ("/cam/color/image_raw", "/cam/color/camera_info"),
        ("/cam/color/image_raw/compressed", "/cam/color/camera_info"),
        ("/depth", "/camera_info"),
    ],
)
def test_the_camera_info_default_is_the_image_topics_sibling(image: str, info: str) -> None:
    assert camera_info_sibling(image) == info


# ---------------------------------------------------------------- the replay, demo model


def _demo_segevery():
    params = DEMO_SEGEVERY_PARAMS["object_aware"]
    return build_segevery("object_aware", detector=str(MODEL / "detector.onnx"), **params)


@pytest.fixture(scope="module")
def demo_replay(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The RGB-D bag replayed once with the demo model, a prompted target on the largest
    object (its ground-truth box) and a SegAny call on frame 1."""
    tmp = tmp_path_factory.mktemp("rgbd")
    spec = write_rgbd_bag(tmp / "in")
    scene = spec.scenes[0]
    big = int(np.argmax(scene.scene.masks.sum(axis=(1, 2))))
    box = scene.scene.boxes[big].tolist()
    prompts = parse_prompts(
        [{"time": 0.0, "boxes": [box], "track": True}, {"time": 0.15, "boxes": [box]}]
    )
    predictor = Predictor(OnnxRuntimeBackend.from_dir(MODEL, "fp32", intra_op_threads=1))
    options = ReplayOptions(
        topic=COLOUR, depth_topic=DEPTH, prompts=prompts, coco=tmp / "coco.json"
    )
    summary = replay(tmp / "in", tmp / "out", predictor, _demo_segevery(), options)
    return SimpleNamespace(
        spec=spec,
        big=big,
        summary=summary,
        out=read_bag(tmp / "out"),
        inputs=read_bag(tmp / "in"),
        coco=json.loads((tmp / "coco.json").read_text()),
        path=tmp / "out",
    )


def _xyz(point) -> np.ndarray:
    return np.array([point.x, point.y, point.z])


def test_every_frame_is_lifted_with_the_depth_of_its_own_stamp(demo_replay) -> None:
    """Depth arrives after its colour frame: each frame still pairs with its own depth image
    (the neighbours' are 100 ms away, beyond the 30 ms tolerance), and the 3D written is the
    lift of the output masks with exactly that image and the CameraInfo."""
    summary, out, inputs = demo_replay.summary, demo_replay.out, demo_replay.inputs
    assert summary.complete and summary.processed == 4
    report = summary.depth
    assert (report.colour_info, report.depth_info) == (COLOUR_INFO, DEPTH_INFO)
    assert report.defaults == ("colour_info", "depth_info")  # the siblings, found
    assert report.frames_3d == 4 and not report.frames_2d and report.used == 4
    assert not report.bad_depth and not report.bad_info
    camera = camera_from_info(inputs[COLOUR_INFO][0][1])
    depths = [depth_msg_to_metres(msg) for _, msg in inputs[DEPTH]]
    differs = False
    for i, (t, arr) in enumerate(out[f"{NS}/instances"]):
        assert t == T0 + i * DT and len(arr.instances) > 0
        counts = [inst.rle_counts for inst in arr.instances]
        rois = [
            (b.x_offset, b.y_offset, b.width, b.height) for b in (x.box for x in arr.instances)
        ]
        want = lift_masks(counts, rois, depths[i], camera)
        other = lift_masks(counts, rois, depths[(i + 1) % 4], camera)
        for inst, ref, wrong in zip(arr.instances, want, other, strict=True):
            assert inst.position_3d.valid == ref.valid
            if ref.valid:
                np.testing.assert_allclose(_xyz(inst.position_3d.centroid), ref.centroid, 1e-6)
                np.testing.assert_allclose(_xyz(inst.position_3d.min), ref.min, 1e-6)
                assert inst.position_3d.num_points == ref.num_points
                differs |= wrong.valid and not np.allclose(ref.centroid, wrong.centroid)
    assert differs  # another frame's depth would have given other centroids


def test_the_3d_is_near_the_ground_truth(demo_replay) -> None:
    """The prompted target (the largest object, a ground-truth box prompt) within 2% of its
    distance on every frame; SegEvery instances that match an object well (IoU >= 0.85, >= 50%
    valid depth) within 3% (the model's masks, not the exact ones)."""
    spec, out, big = demo_replay.spec, demo_replay.out, demo_replay.big
    for i, (_, arr) in enumerate(out[f"{NS}/tracks"]):
        scene = spec.scenes[i]
        (target,) = arr.instances
        assert target.track_id == 1 and target.position_3d.valid
        truth = scene.centroids[big]
        error = np.linalg.norm(_xyz(target.position_3d.centroid) - truth)
        assert error <= 0.02 * np.linalg.norm(truth), (i, error)
    checked = 0
    for i, (_, arr) in enumerate(out[f"{NS}/instances"]):
        scene = spec.scenes[i]
        for inst in arr.instances:
            mask = rle_to_mask(
                {"size": [inst.mask_height, inst.mask_width], "counts": list(inst.rle_counts)}
            )
            ious = [(mask & g).sum() / (mask | g).sum() for g in scene.scene.masks]
            j = int(np.argmax(ious))
            if ious[j] < 0.85 or scene.depth_valid_fraction[j] < 0.5:
                continue
            truth = scene.centroids[j]
            error = np.linalg.norm(_xyz(inst.position_3d.centroid) - truth)
            assert error <= 0.03 * np.linalg.norm(truth), (i, j, ious[j], error)
            checked += 1
    assert checked >= 4


def test_detections_mirror_the_instances_and_3d_ids_are_track_ids(demo_replay) -> None:
    pytest.importorskip("vision_msgs.msg", reason="vision_msgs is not built into this venv")
    out = demo_replay.out
    arrays, d2, d3 = out[f"{NS}/instances"], out[f"{NS}/detections"], out[f"{NS}/detections_3d"]
    assert len(arrays) == len(d2) == len(d3) == 4
    tracked = 0
    for (t, arr), (t2, dets), (t3, dets3) in zip(arrays, d2, d3, strict=True):
        assert t == t2 == t3 and dets.header == arr.header == dets3.header
        assert len(dets.detections) == len(arr.instances)
        for inst, det in zip(arr.instances, dets.detections, strict=True):
            box = inst.box
            assert det.id == (str(inst.track_id) if inst.track_id else "")
            assert det.bbox.center.position.x == box.x_offset + box.width / 2
            assert det.bbox.center.position.y == box.y_offset + box.height / 2
            assert (det.bbox.size_x, det.bbox.size_y) == (box.width, box.height)
            assert det.results[0].hypothesis.score == pytest.approx(inst.score)
        valid = [inst for inst in arr.instances if inst.position_3d.valid]
        assert [d.id for d in dets3.detections] == [
            str(i.track_id) if i.track_id else "" for i in valid
        ]
        for inst, det in zip(valid, dets3.detections, strict=True):
            p = inst.position_3d
            np.testing.assert_allclose(_xyz(det.results[0].pose.pose.position), _xyz(p.centroid))
            lo, hi = _xyz(p.min), _xyz(p.max)
            np.testing.assert_allclose(_xyz(det.bbox.center.position), (lo + hi) / 2)
            np.testing.assert_allclose(_xyz(det.bbox.size), hi - lo)
        tracked += sum(bool(i.track_id) for i in valid)
    assert tracked > 0  # SegEvery's tracks are born after min_hits frames
    tracks_3d = out[f"{NS}/tracks/detections_3d"]
    for (_, tracks), (_, dets3) in zip(out[f"{NS}/tracks"], tracks_3d, strict=True):
        assert [d.id for d in dets3.detections] == ["1"]
        np.testing.assert_allclose(
            _xyz(dets3.detections[0].results[0].pose.pose.position),
            _xyz(tracks.instances[0].position_3d.centroid),
        )


def test_the_segment_answer_and_coco_carry_the_3d(demo_replay) -> None:
    out, coco = demo_replay.out, demo_replay.coco
    ((_, answer),) = out[f"{NS}/segment"]
    assert answer.instances and all(i.position_3d.valid for i in answer.instances)
    instances = [i for _, arr in out[f"{NS}/instances"] for i in arr.instances]
    annotations = [a for a in coco["annotations"] if a["source"] == "segevery"]
    assert len(annotations) == len(instances)
    for ann, inst in zip(annotations, instances, strict=True):
        assert ("position_3d" in ann) == inst.position_3d.valid
        if inst.position_3d.valid:
            np.testing.assert_allclose(
                ann["position_3d"]["centroid"], _xyz(inst.position_3d.centroid)
            )
            assert ann["position_3d"]["num_points"] == inst.position_3d.num_points


def test_vision_types_carry_rosidls_hashes(demo_replay) -> None:
    generated = replay_bags.vision_msgs_dir()
    if generated is None or not (generated / "Detection3DArray.json").is_file():
        pytest.skip("no rosidl-generated vision_msgs (share/vision_msgs/msg/*.json) to compare")
    with Reader(demo_replay.path) as reader:
        conns = {c.topic: c for c in reader.connections}
    for topic, name in (("detections", "Detection2DArray"), ("detections_3d", "Detection3DArray")):
        doc = json.loads((generated / f"{name}.json").read_text())
        rosidl = {h["type_name"]: h["hash_string"] for h in doc["type_hashes"]}
        assert conns[f"{NS}/{topic}"].digest == rosidl[f"vision_msgs/msg/{name}"]


# ------------------------------------------------------- bad input, small random-weights model


@pytest.fixture(scope="module")
def tiny(tiny_onnx_dir: Path) -> Predictor:
    return tiny_predictor(tiny_onnx_dir)


def _replay(tmp_path: Path, predictor: Predictor, spec: RGBDBag, **options):
    write_rgbd_bag(tmp_path / "in", spec)
    opts = ReplayOptions(topic=COLOUR, depth_topic=DEPTH, **options)
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery(), opts)
    assert summary.complete and summary.processed == spec.frames  # bad depth never stops it
    return summary, read_bag(tmp_path / "out")


@pytest.mark.parametrize(
    ("spec", "frames_3d", "reason", "rejected"),
    [
        (RGBDBag(encoding="mono8"), 0, "no depth image received yet", "encoding 'mono8'"),
        (RGBDBag(colour_k_zero=True, depth_k_zero=True), 0, "no CameraInfo", "K is all zero"),
        (RGBDBag(stamp_offset=2 * 10**9), 0, "no depth image within 0.030 s", ""),
        (RGBDBag(depth_scale=0.5, depth_info=False), 0, "no depth CameraInfo to scale it by", ""),
        # Sound inputs, or one CameraInfo bad and the other enough: 3D on every frame.
        (RGBDBag(colour_k_zero=True), 4, "", "colour CameraInfo: CameraInfo K is all zero"),
        (RGBDBag(depth_scale=0.5), 4, "", ""),
        (RGBDBag(encoding="32FC1"), 4, "", ""),
    ],
    ids=["encoding", "k-zero", "stamps-far", "size-no-info", "colour-k-zero", "scaled", "32FC1"],
)
def test_bad_depth_input_is_counted_and_those_frames_stay_2d(
    tmp_path: Path, tiny: Predictor, spec: RGBDBag, frames_3d: int, reason: str, rejected: str
) -> None:
    summary, out = _replay(tmp_path, tiny, spec)
    report = summary.depth
    assert report.frames_3d == frames_3d
    assert sum(report.frames_2d.values()) == spec.frames - frames_3d
    assert all(reason in r for r in report.frames_2d), report.frames_2d
    text = summary.format()
    if reason:
        assert reason in text
    if rejected:
        bad = {**report.bad_depth, **report.bad_info}
        assert bad and all(rejected in r for r in bad), bad
        assert sum(bad.values()) >= spec.frames and rejected in text
    else:
        assert not report.bad_depth and not report.bad_info
    valid = [i.position_3d.valid for _, arr in out[f"{NS}/instances"] for i in arr.instances]
    assert len(valid) > 0 and any(valid) == (frames_3d > 0)
    if frames_3d == 0:
        for _, dets in out.get(f"{NS}/detections_3d", []):
            assert dets.detections == []


@pytest.mark.parametrize(
    ("spec", "options", "error"),
    [
        (RGBDBag(), {"depth_topic": "/nope"}, "--depth-topic '/nope' is not in the bag"),
        (RGBDBag(), {"depth_topic": COLOUR_INFO}, "has type sensor_msgs/msg/CameraInfo"),
        (RGBDBag(), {"depth_topic": COLOUR}, "is the image topic being segmented"),
        (RGBDBag(), {"camera_info_topic": "/x/info"}, "--camera-info-topic '/x/info' is not"),
        (RGBDBag(colour_info=False, depth_info=False), {}, "no CameraInfo for 3D"),
    ],
    ids=["missing", "wrong-type", "colour", "info-missing", "no-info"],
)
def test_depth_topics_that_cannot_work_are_refused_with_the_bags_topics(
    tmp_path: Path, tiny: Predictor, spec: RGBDBag, options: dict, error: str
) -> None:
    write_rgbd_bag(tmp_path / "in", spec)
    opts = ReplayOptions(topic=COLOUR, **{"depth_topic": DEPTH, **options})
    with pytest.raises(replay_bags.BagError) as info:
        replay(tmp_path / "in", tmp_path / "out", tiny, segevery(), opts)
    assert error in str(info.value) and f"{COLOUR} (sensor_msgs/msg/Image" in str(info.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--camera-info-topic need --depth-topic"):
        ReplayOptions(camera_info_topic=COLOUR_INFO).check()


def test_without_vision_msgs_only_the_projects_messages_are_written(
    tmp_path: Path, tiny: Predictor, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """vision_msgs missing is simulated by pointing its lookup (SEGFAST_VISION_MSGS_DIR, which
    alone is searched when set) at an empty folder."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SEGFAST_VISION_MSGS_DIR", str(tmp_path / "empty"))
    replay_bags._typestore.cache_clear()
    with caplog.at_level("WARNING", logger="segfast.replay"):
        store = replay_bags.typestore()
        assert replay_bags.typestore() is store and not replay_bags.has_vision_msgs(store)
    said = [r for r in caplog.records if "vision_msgs not found" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "empty") in said[0].getMessage()  # once
    prompts = parse_prompts([{"time": 0.0, "boxes": [[40, 40, 120, 120]], "track": True}])
    summary, out = _replay(tmp_path, tiny, RGBDBag(frames=2), prompts=prompts)
    assert set(out) == {
        f"{NS}/{t}" for t in ("instances", "instances/label", "tracks", "tracks/label")
    }
    assert "vision_msgs not found" in summary.vision_msgs
    assert summary.vision_msgs in summary.format()
    assert summary.depth.frames_3d == 2
    assert any(i.position_3d.valid for _, arr in out[f"{NS}/instances"] for i in arr.instances)
    found = [i for _, arr in out[f"{NS}/tracks"] for i in arr.instances if i.area]
    assert found and all(i.position_3d.valid for i in found)


def test_cli_depth_flags_and_settings(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    write_rgbd_bag(tmp_path / "in", RGBDBag(frames=2))
    base = ["--onnx-dir", str(tiny_onnx_dir), "--set", "points_per_side=2", "--topic", COLOUR]

    def run(out: str, *extra: str) -> subprocess.CompletedProcess:
        args = cli_args(str(tmp_path / "in"), str(tmp_path / out), *base, *extra)
        return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)

    # A 1 ms tolerance: the jittered depth stamps (2-6 ms away) pair with no frame.
    done = run(
        "out",
        *("--depth-topic", DEPTH, "--set", "depth.sync_tolerance=0.001"),
        *("--set", "depth.erode_px=1", "--json", str(tmp_path / "s.json")),
    )
    assert done.returncode == 0, done.stderr
    depth = json.loads((tmp_path / "s.json").read_text())["depth"]
    assert depth["settings"] == {"erode_px": 1, "sync_tolerance": 0.001}
    assert depth["frames_3d"] == 0 and sum(depth["frames_2d"].values()) == 2
    assert "no depth image within 0.001 s" in done.stdout
    missing = run("out2", "--depth-topic", "/nope")
    assert missing.returncode == 2 and "'/nope' is not in the bag" in missing.stderr
    assert DEPTH in missing.stderr
    unknown = run("out3", "--depth-topic", DEPTH, "--set", "depth.bogus=1")
    assert unknown.returncode == 2 and "depth.*" in unknown.stderr and "bogus" in unknown.stderr


def test_the_depth_replay_is_the_same_run_after_run(tmp_path: Path, tiny: Predictor) -> None:
    """The pairing depends on bag order only, never on how fast the threads run; with
    --every 2 the depth of the frames not taken is passed over."""
    write_rgbd_bag(tmp_path / "in", RGBDBag(frames=6))
    runs = []
    for name in ("a", "b"):
        opts = ReplayOptions(topic=COLOUR, depth_topic=DEPTH, every=2, queue_size=1)
        summary = replay(tmp_path / "in", tmp_path / name, tiny, segevery(), opts)
        assert summary.depth.frames_3d == 3 and not summary.depth.frames_2d
        out = read_bag(tmp_path / name)
        for _, arr in out[f"{NS}/instances"]:
            arr.segevery_ms = 0.0  # wall time: the one field that differs
        store = replay_bags.typestore()
        runs.append(
            {
                t: [bytes(store.serialize_cdr(m, m.__msgtype__)) for _, m in ms]
                for t, ms in out.items()
            }
        )
    assert runs[0] == runs[1] and len(runs[0][f"{NS}/instances"]) == 3
