"""Offline replay with tracking: SegEvery track IDs and prompted targets in the output bag and
the COCO file, prompts-file ``track`` / ``untrack`` entries, and the same outputs run after run.

Real bags (rosbags), the shipped demo model (models/demo) and generated camera-motion
sequences (``bench.scenes.generate_sequence``), whose ground truth names each object across
frames (``Scene.ids``).
"""

from __future__ import annotations

import inspect
import itertools
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from replay_bags import (
    DT,
    IMAGE,
    REPO,
    T0,
    TOPIC,
    VISION_TOPICS,
    cli_args,
    image_msg,
    read_bag,
    rle,
    stamp,
    write_bag,
)
from rosbags.rosbag2 import Reader

from segfast_ros.bench.scenes import Scene, generate_sequence
from segfast_ros.masks import rle_to_mask
from segfast_ros.replay import PromptFileError, ReplayOptions, replay
from segfast_ros.replay.bags import msg_type, typestore
from segfast_ros.replay.options import split_tracking
from segfast_ros.replay.prompts import SEGMENT, TRACK, UNTRACK, UNTRACK_ALL, parse_prompts
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS
from segfast_ros.segevery.registry import build_segevery
from segfast_ros.tracking.settings import TrackingSettings
from segfast_ros.tracking.states import TRACK_LOST, TRACK_TENTATIVE, TRACK_TRACKED
from segfast_ros.tracking.targets import TargetTracker

FRAMES = 12
TRACKS, TRACKS_LABEL = "/segfast/tracks", "/segfast/tracks/label"
INSTANCES = "/segfast/instances"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The shipped demo model on one ONNX Runtime thread."""
    return Predictor(OnnxRuntimeBackend.from_dir(REPO / "models/demo", "fp32", intra_op_threads=1))


def demo_segevery():
    return build_segevery("grid", points_per_side=12, **DEMO_SEGEVERY_PARAMS["grid"])


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return generate_sequence(3, FRAMES, (240, 320), num_objects=(3, 5), radius=(0.12, 0.2))


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory, scenes: list[Scene]) -> Path:
    """The sequence on TOPIC: bag times T0 + i * DT, header stamps ``stamp(i)`` (not the bag
    times), frame_id ``cam_i``."""
    path = tmp_path_factory.mktemp("tracking") / "in"
    write_bag(path, FRAMES, extra_topics=False, images=[s.image for s in scenes])
    return path


def biggest(scene: Scene) -> int:
    """Index of the largest object of a frame."""
    return int(np.argmax(scene.masks.reshape(len(scene), -1).sum(1)))


def box_of(scene: Scene, k: int) -> list[float]:
    return [float(v) for v in scene.boxes[k]]


def run(bag: Path, out: Path, predictor: Predictor, prompts: list[dict], **kw: Any):
    opts = ReplayOptions(prompts=parse_prompts({"prompts": prompts}), **kw)
    return replay(bag, out, predictor, demo_segevery(), opts)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


# ------------------------------------------------------------------------- prompts file


def test_track_and_untrack_entries_parse() -> None:
    prompts = parse_prompts(
        [
            {"time": 0.0, "boxes": [[1, 2, 30, 40]], "track": True, "name": "cup"},
            {"time": 0.5, "points": [[5, 6]], "track": [1]},
            {"stamp": 7, "untrack": [1, 2]},
            {"time": 1.0, "untrack": "all"},
            {"time": 1.0, "points": [[5, 6]], "track": False},
        ]
    )
    assert [p.action for p in prompts] == [TRACK, TRACK, UNTRACK, UNTRACK_ALL, SEGMENT]
    assert [p.ids for p in prompts] == [(), (1,), (1, 2), (), ()]
    assert prompts[0].name == "cup" and prompts[0].boxes.tolist() == [[1, 2, 30, 40]]
    assert prompts[2].stamp_ns == 7 and prompts[2].points.shape == (0, 2)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"boxes": [[1, 2, 3, 4]], "track": True, "multimask": True}, "takes no multimask"),
        ({"track": True}, "needs points or boxes"),
        ({"labels": [1], "track": True}, "needs points or boxes"),
        ({"boxes": [[1, 2, 3, 4]], "track": []}, "track must be true or a non-empty list"),
        ({"boxes": [[1, 2, 3, 4]], "track": "yes"}, "track must be true or a non-empty list"),
        ({"boxes": [[1, 2, 3, 4]], "track": [0]}, r"target IDs \(integers 1..65535\)"),
        ({"boxes": [[1, 2, 3, 4]], "track": [1, 1]}, "distinct target IDs"),
        ({"untrack": "some"}, "untrack must be a list of target IDs or 'all'"),
        ({"untrack": [2.5]}, "untrack must be a non-empty list"),
        ({"untrack": [1], "boxes": [[1, 2, 3, 4]]}, "untrack entry takes no boxes"),
        ({"untrack": "all", "track": True}, "untrack entry takes no track"),
        ({"boxes": [[1, 2, 3]], "track": True}, "boxes must be a list like"),
    ],
)
def test_bad_target_entries_are_named(entry: dict, match: str) -> None:
    doc = {"prompts": [{"time": 0.0, "points": [[1, 1]]}, {"time": 1.0, **entry}]}
    with pytest.raises(PromptFileError, match=rf"p\.yaml: prompt 1: .*{match}"):
        parse_prompts(doc, "p.yaml")


def test_tracking_settings_from_set_pairs() -> None:
    settings, rest = split_tracking(
        [("points_per_side", 8), ("tracking.max_targets", 2), ("tracking.min_hits", 1)]
    )
    assert settings == TrackingSettings(max_targets=2, min_hits=1)
    assert rest == [("points_per_side", 8)]
    with pytest.raises(ValueError, match=r"tracking\.\*: unknown tracking setting.*max_target"):
        split_tracking([("tracking.max_target", 2)])
    with pytest.raises(ValueError, match=r"tracking\.\*: max_targets must be"):
        split_tracking([("tracking.max_targets", 0)])


# ------------------------------------------------------------------------------ targets


def test_a_box_on_the_first_frame_is_followed_on_every_frame(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    object_id = steady_object(scenes)
    k = list(scenes[0].ids).index(object_id)
    prompts = [{"time": 0.0, "boxes": [box_of(scenes[0], k)], "track": True, "name": "big"}]
    summary = run(
        bag, tmp_path / "out", predictor, prompts, coco=tmp_path / "coco.json", segevery_rate_hz=0
    )
    assert summary.complete and not summary.prompt_errors
    assert summary.targets_added == 1 and summary.tracks_frames == FRAMES
    out = read_bag(tmp_path / "out")
    tracks, labels = out[TRACKS], out[TRACKS_LABEL]
    # One message per processed frame from the one the box was given on (time 0: frame 0).
    assert len(tracks) == len(labels) == FRAMES
    reference = reference_target(predictor, scenes, box_of(scenes[0], k))
    for i, ((t, arr), (t_label, label)) in enumerate(zip(tracks, labels, strict=True)):
        assert t == t_label == T0 + i * DT
        for header in (arr.header, label.header):
            assert (header.stamp.sec, header.stamp.nanosec) == stamp(i)
            assert header.frame_id == f"cam_{i}"
        assert arr.strategy == "targets"
        (inst,) = arr.instances
        assert (inst.id, inst.track_id) == (0, 1)
        # The add decodes its box on frame 0, each step the one target while it is followed.
        assert arr.decoder_prompts == (0 if i and reference[i - 1].state == TRACK_LOST else 1)
        assert label.encoding == "mono16" and (label.height, label.width) == (240, 320)
        pixels = np.frombuffer(label.data, np.uint16).reshape(240, 320)
        mask = rle_to_mask(rle(inst))
        np.testing.assert_array_equal(pixels, mask.astype(np.uint16))  # pixel = target ID
        # What the tracker gives when stepped on the same frames, stamps as frame keys.
        assert inst.track_state == reference[i].state
        want = reference[i].mask
        np.testing.assert_array_equal(mask, np.zeros_like(mask) if want is None else want)
        if inst.track_state == TRACK_LOST:
            assert inst.area == 0 and inst.score == 0
        if i < 4:  # the demo model follows it at least over the first frames
            truth = scenes[i].masks[list(scenes[i].ids).index(object_id)]
            assert iou(mask, truth) > 0.5, f"frame {i}: the target is not on its object"

    coco = json.loads((tmp_path / "coco.json").read_text())
    found = [r for r in reference if r.state == TRACK_TRACKED]
    assert len(coco["annotations"]) == len(found)  # no SegEvery; lost frames have none
    assert {
        (a["source"], a["category_id"], a["track_id"], a["track_state"])
        for a in coco["annotations"]
    } == {("target", 2, 1, TRACK_TRACKED)}
    assert {c["id"]: c["name"] for c in coco["categories"]} == {1: "object", 2: "target"}
    assert len(coco["images"]) == FRAMES  # a frame whose target is lost has no annotation


def steady_object(scenes: list[Scene]) -> int:
    """The object in every frame whose smallest visible area is the largest."""
    areas: dict[int, list[int]] = {}
    for scene in scenes:
        for obj, mask in zip(scene.ids, scene.masks, strict=True):
            areas.setdefault(int(obj), []).append(int(mask.sum()))
    return max((o for o, a in areas.items() if len(a) == len(scenes)), key=lambda o: min(areas[o]))


def reference_target(predictor: Predictor, scenes: list[Scene], box: list[float]) -> list[Any]:
    """A TargetTracker given the box on frame 0 and stepped on every later frame, with each
    frame's pixels (the appearance cue) as the replay gives them."""
    tracker = TargetTracker()
    ref = Predictor(predictor.backend)
    out = []
    for i, scene in enumerate(scenes):
        ref.set_image(scene.image)
        key = stamp(i)[0] * 10**9 + stamp(i)[1]
        if i == 0:
            (result,) = tracker.add(ref, key, boxes=[box], image=scene.image)
        else:
            (result,) = tracker.step(ref, key, scene.image)
        out.append(result)
    return out


def test_segevery_instances_keep_track_ids(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    summary = run(bag, tmp_path / "out", predictor, [], coco=tmp_path / "coco.json")
    assert summary.complete and summary.segevery_frames == FRAMES
    out = read_bag(tmp_path / "out")
    assert TRACKS not in out  # no target was asked for
    best: list[dict[int, int]] = []  # per frame: object -> track ID of its best instance
    for i, (_, arr) in enumerate(out[INSTANCES]):
        found: dict[int, tuple[float, int]] = {}
        for j, inst in enumerate(arr.instances):
            assert inst.id == j  # the index in the array, as before
            assert inst.track_state in (TRACK_TENTATIVE, TRACK_TRACKED)
            assert (inst.track_id == 0) == (inst.track_state == TRACK_TENTATIVE)
            mask = rle_to_mask(rle(inst))
            for obj, truth in zip(scenes[i].ids, scenes[i].masks, strict=True):
                overlap = iou(mask, truth)
                if overlap > 0.5 and overlap > found.get(int(obj), (0.0, 0))[0]:
                    found[int(obj)] = (overlap, inst.track_id)
        best.append({obj: track for obj, (_, track) in found.items() if track})
    # Of the objects found with a track ID on two consecutive frames, most keep it.
    pairs = [(a[o], b[o]) for a, b in itertools.pairwise(best) for o in set(a) & set(b)]
    assert len(pairs) >= FRAMES, best
    kept = sum(x == y for x, y in pairs) / len(pairs)
    assert kept >= 0.9, (kept, best)
    assert summary.segevery_tracks == len(
        {i.track_id for _, a in out[INSTANCES] for i in a.instances if i.track_id}
    )
    coco = json.loads((tmp_path / "coco.json").read_text())
    written = [(i.track_id, i.track_state) for _, a in out[INSTANCES] for i in a.instances]
    assert [(a["track_id"], a["track_state"]) for a in coco["annotations"]] == written
    assert {a["source"] for a in coco["annotations"]} == {"segevery"}


def test_add_remove_and_clear_on_their_frames(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    first = scenes[0]
    order = np.argsort(-first.masks.reshape(len(first), -1).sum(1))
    boxes = [box_of(first, int(k)) for k in order[:2]]
    prompts = [
        {"time": 0.0, "boxes": boxes, "track": True},
        {"time": 0.5, "untrack": [1]},  # frame 5 (bag time T0 + 0.5 s)
        {
            "stamp": 203 * 10**9 + 3007,
            "boxes": [box_of(scenes[3], biggest(scenes[3]))],
            "track": True,
        },
        {"time": 0.9, "untrack": "all"},  # frame 9: no target left
    ]
    summary = run(bag, tmp_path / "out", predictor, prompts)
    assert summary.complete and not summary.prompt_errors, summary.prompt_errors
    assert (summary.targets_added, summary.targets_removed) == (3, 3)
    tracks = read_bag(tmp_path / "out")[TRACKS]
    assert [t for t, _ in tracks] == [T0 + i * DT for i in range(9)]
    ids = [[i.track_id for i in arr.instances] for _, arr in tracks]
    assert ids == [[1, 2]] * 3 + [[1, 2, 3]] * 2 + [[2, 3]] * 4
    # Added on frame 3 from its stamp: one prompt decoded by the add, and by the step the
    # targets followed on frame 2.
    followed = sum(i.track_state == TRACK_TRACKED for i in tracks[2][1].instances)
    assert tracks[3][1].decoder_prompts == followed + 1, [
        i.track_state for i in tracks[2][1].instances
    ]


def test_every_target_call_gets_its_frames_image(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor, monkeypatch
) -> None:
    """The appearance cue's input: the add, each step and SegEvery's re-acquisition get the
    pixels of the frame they work on (spies that call through to the real tracker)."""
    calls: list[tuple[str, int, Any]] = []

    def spy(name: str) -> None:
        real = getattr(TargetTracker, name)

        def call(self: TargetTracker, *args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(real).bind(self, *args, **kwargs)
            calls.append((name, bound.arguments["frame_key"], bound.arguments.get("image")))
            return real(self, *args, **kwargs)

        monkeypatch.setattr(TargetTracker, name, call)

    for name in ("add", "step", "reacquire"):
        spy(name)
    prompts = [{"time": 0.0, "boxes": [box_of(scenes[0], biggest(scenes[0]))], "track": True}]
    summary = run(bag, tmp_path / "out", predictor, prompts)
    assert summary.complete and not summary.prompt_errors, summary.prompt_errors
    frame_of = {sec * 10**9 + nsec: i for i, (sec, nsec) in enumerate(map(stamp, range(FRAMES)))}
    assert {name for name, _, _ in calls} == {"add", "step", "reacquire"}
    assert [k for name, k, _ in calls if name == "step"] == list(frame_of)[1:]
    for name, key, image in calls:
        assert image is not None, (name, key)
        assert np.array_equal(image, scenes[frame_of[key]].image), (name, key)


def test_bad_target_calls_are_reported_and_the_replay_goes_on(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    box = box_of(scenes[0], biggest(scenes[0]))
    prompts = [
        {"time": 0.0, "boxes": [box], "track": True},
        {"time": 0.0, "boxes": [[500, 10, 600, 50]], "track": True, "name": "outside"},
        {"time": 0.0, "boxes": [box, box], "track": True, "name": "too many"},
        {"time": 0.2, "untrack": [7], "name": "unknown"},
        {"time": 0.3, "points": [[10, 10]], "track": [4], "name": "again unknown"},
        {"time": 0.4, "points": [[10.0, float("nan")]], "track": True, "name": "nan"},
    ]
    summary = run(
        bag, tmp_path / "out", predictor, prompts, tracking=TrackingSettings(max_targets=2)
    )
    assert summary.complete and summary.targets_added == 1
    errors = summary.prompt_errors
    assert len(errors) == 5, errors
    assert errors[0].startswith("outside: ") and "outside the image" in errors[0]
    assert errors[1].startswith("too many: ") and "tracking.max_targets is 2" in errors[1]
    assert errors[2] == "unknown: unknown target ids: 7 (targets now: 1)"
    assert errors[3].startswith("again unknown: unknown target ids: 4")
    assert errors[4].startswith("nan: ") and "nan" in errors[4].lower()
    assert "5 failed" in summary.format()
    tracks = read_bag(tmp_path / "out")[TRACKS]
    assert len(tracks) == FRAMES
    assert all([i.track_id for i in arr.instances] == [1] for _, arr in tracks)


def test_targets_follow_frames_whose_stamps_do_not_increase(
    tmp_path: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    """A camera driver that stamps every frame alike: each frame is still a new one."""
    store = typestore()
    same = {
        i: bytes(store.serialize_cdr(image_msg(store, s.image, 0), IMAGE))
        for i, s in enumerate(scenes[:4])
    }
    write_bag(tmp_path / "in", 4, extra_topics=False, raw=same)
    k = list(scenes[0].ids).index(steady_object(scenes))
    prompts = [{"time": 0.0, "boxes": [box_of(scenes[0], k)], "track": True}]
    summary = run(tmp_path / "in", tmp_path / "out", predictor, prompts, segevery_rate_hz=0)
    assert summary.complete and not summary.prompt_errors
    tracks = read_bag(tmp_path / "out")[TRACKS]
    assert [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in tracks] == [stamp(0)] * 4
    assert [m.decoder_prompts for _, m in tracks] == [1, 1, 1, 1]  # stepped on every frame
    reference = reference_target(predictor, scenes[:4], box_of(scenes[0], k))
    for (_, m), want in zip(tracks, reference, strict=True):
        np.testing.assert_array_equal(rle_to_mask(rle(m.instances[0])), want.mask)


# ---------------------------------------------------------------------------- determinism


def raw_messages(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    """Every message's bag time and CDR bytes, by topic; instance arrays with their one
    wall-clock field (``segevery_ms``, a timing) zeroed."""
    store = typestore()
    out: dict[str, list[tuple[int, bytes]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            if conn.msgtype == msg_type("InstanceArray"):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                msg.segevery_ms = 0.0
                raw = store.serialize_cdr(msg, conn.msgtype)
            out.setdefault(conn.topic, []).append((t, bytes(raw)))
    return out


def test_two_runs_write_identical_tracks(
    tmp_path: Path, bag: Path, scenes: list[Scene], predictor: Predictor
) -> None:
    boxes = [box_of(scenes[0], k) for k in range(len(scenes[0]))][:3]
    prompts = [
        {"time": 0.0, "boxes": boxes, "track": True},
        {"time": 0.35, "points": [[160, 120]], "track": True},
    ]
    runs = []
    for name in ("a", "b"):
        coco = tmp_path / f"{name}.json"
        summary = run(bag, tmp_path / name, predictor, prompts, coco=coco)
        assert summary.complete
        runs.append((raw_messages(tmp_path / name), coco.read_text(), summary))
    (a, coco_a, sum_a), (b, coco_b, sum_b) = runs
    assert set(a) == {INSTANCES, "/segfast/instances/label", TRACKS, TRACKS_LABEL, *VISION_TOPICS}
    for topic in a:
        assert a[topic] == b[topic], topic
    assert coco_a == coco_b
    assert (sum_a.segevery_tracks, sum_a.targets_lost, sum_a.targets_reacquired) == (
        sum_b.segevery_tracks,
        sum_b.targets_lost,
        sum_b.targets_reacquired,
    )


# ---------------------------------------------------------------------------------- CLI


def test_cli_tracks_with_prompts_file_and_tracking_settings(
    tmp_path: Path, bag: Path, scenes: list[Scene]
) -> None:
    box = box_of(scenes[0], biggest(scenes[0]))
    (tmp_path / "p.yaml").write_text(
        json.dumps({"prompts": [{"time": 0.0, "boxes": [box, box], "track": True}]})
    )
    args = [*cli_args(str(bag), str(tmp_path / "out")), "--topic", TOPIC]
    args += ["--prompts", str(tmp_path / "p.yaml"), "--json", str(tmp_path / "s.json")]
    args += ["--set", "points_per_side=6", "--set", "tracking.max_targets=1"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tracking.max_targets is 1" in done.stdout
    assert "tracking settings: max_targets=1" in done.stdout
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["tracking"]["settings"] == {"max_targets": 1}
    assert doc["tracking"]["targets_added"] == 0 and len(doc["prompt_errors"]) == 1
    bad = subprocess.run(
        [*args[:-1], "tracking.max_targets=0", "--overwrite"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert bad.returncode != 0
    assert "tracking.*: max_targets must be" in bad.stderr
