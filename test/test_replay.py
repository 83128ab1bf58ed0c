"""Offline replay outputs: real bags replayed, read back, compared with the library.

The model is the small ``tinyvit_s256`` with seeded random weights; SegEvery's filters are
off so that it returns masks, which must match the library's on the same decoded frame.
Prompts, bad input and the CLI are in ``test_replay_prompts.py``, ``test_replay_bad_input.py``
and ``test_replay_cli.py``; the bags come from ``replay_bags.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from replay_bags import (
    DT,
    T0,
    TOPIC,
    VISION_TOPICS,
    read_bag,
    rle,
    segevery,
    stamp,
    tiny_predictor,
    write_bag,
)
from rosbags.rosbag2 import Reader

from segfast_ros.masks import rle_to_mask
from segfast_ros.pipeline.render import instances_to_label_image
from segfast_ros.replay import ReplayOptions, replay
from segfast_ros.replay.bags import msg_type, typestore
from segfast_ros.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_onnx_dir: Path) -> Predictor:
    return tiny_predictor(tiny_onnx_dir)


# ------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    ("storage", "compressed"), [("mcap", False), ("sqlite3", False), ("mcap", True)]
)
def test_every_frame_gives_outputs_that_match_the_library(
    tmp_path: Path, predictor: Predictor, storage: str, compressed: bool
) -> None:
    images = write_bag(tmp_path / "in", 4, storage=storage, compressed=compressed)
    summary = replay(
        tmp_path / "in",
        tmp_path / "out",
        predictor,
        segevery(),
        ReplayOptions(topic=TOPIC, storage=storage),
    )
    assert summary.complete and summary.processed == summary.selected == 4
    out = read_bag(tmp_path / "out")
    assert set(out) == {"/segfast/instances", "/segfast/instances/label", *VISION_TOPICS}
    arrays, labels = out["/segfast/instances"], out["/segfast/instances/label"]
    assert len(arrays) == len(labels) == 4

    reference = Predictor(predictor.backend)
    for i, ((t, arr), (t_label, label)) in enumerate(zip(arrays, labels, strict=True)):
        assert t == t_label == T0 + i * DT  # the source message's bag time
        for header in (arr.header, label.header):
            assert (header.stamp.sec, header.stamp.nanosec) == stamp(i)
            assert header.frame_id == f"cam_{i}"
        assert arr.strategy == "grid" and arr.decoder_prompts == 9

        reference.set_image(images[i])
        expected = segevery()(reference, images[i]).instances
        assert len(arr.instances) == len(expected) > 0
        for j, (got, want) in enumerate(zip(arr.instances, expected, strict=True)):
            assert got.id == j
            np.testing.assert_array_equal(rle_to_mask(rle(got)), rle_to_mask(want.rle))
            assert got.score == pytest.approx(want.score, abs=1e-6)
            assert got.area == want.area
        assert label.encoding == "mono16" and (label.height, label.width) == images[i].shape[:2]
        painted = label.data.view(np.uint16).reshape(label.height, label.width)
        np.testing.assert_array_equal(
            painted, instances_to_label_image(expected, images[i].shape[:2])
        )


def test_output_is_deterministic_and_types_match_rosidl(
    tmp_path: Path, predictor: Predictor
) -> None:
    write_bag(tmp_path / "in", 3, extra_topics=False)
    for name in ("a", "b"):
        replay(tmp_path / "in", tmp_path / name, predictor, segevery(), ReplayOptions())
    store = typestore()
    raw = {}
    for name in ("a", "b"):
        with Reader(tmp_path / name) as reader:
            raw[name] = []
            for c, t, data in reader.messages():
                if c.msgtype == msg_type("InstanceArray"):
                    # Everything but the measured wall time (segevery_ms) is deterministic.
                    msg = store.deserialize_cdr(data, c.msgtype)
                    msg.segevery_ms = 0.0
                    data = store.serialize_cdr(msg, c.msgtype)
                raw[name].append((c.topic, t, bytes(data)))
            conns = {c.topic: c for c in reader.connections}
    assert len(raw["a"]) == 3 * (2 + len(VISION_TOPICS)) and raw["a"] == raw["b"]
    # The definition travels with the bag, under the hash rosidl gives the same .msg file.
    conn = conns["/segfast/instances"]
    assert conn.msgtype == msg_type("InstanceArray")
    assert "segfast_ros/Instance[] instances" in conn.msgdef.data
    generated = Path(sys.prefix) / "share/segfast_ros/msg/InstanceArray.json"
    if generated.is_file():
        hashes = json.loads(generated.read_text())["type_hashes"]
        rosidl = {h["type_name"]: h["hash_string"] for h in hashes}
        assert conn.digest == rosidl[msg_type("InstanceArray")]


def test_one_and_zero_matching_frames(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "one", 1, storage="sqlite3", extra_topics=False)
    summary = replay(tmp_path / "one", tmp_path / "out1", predictor, segevery())
    assert summary.processed == 1
    assert len(read_bag(tmp_path / "out1")["/segfast/instances"]) == 1

    write_bag(tmp_path / "zero", 0)
    summary = replay(
        tmp_path / "zero", tmp_path / "out0", predictor, segevery(), ReplayOptions(topic=TOPIC)
    )
    assert summary.complete and summary.processed == 0
    assert read_bag(tmp_path / "out0") == {}  # a valid, empty bag
    with Reader(tmp_path / "out0") as reader:
        assert {c.topic for c in reader.connections} >= {"/segfast/instances"}


def test_every_and_rate_select_on_bag_time(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 7, extra_topics=False)
    every = replay(tmp_path / "in", tmp_path / "e3", predictor, segevery(), ReplayOptions(every=3))
    assert every.processed == 3  # frames 0, 3, 6
    times = [t for t, _ in read_bag(tmp_path / "e3")["/segfast/instances"]]
    assert times == [T0, T0 + 3 * DT, T0 + 6 * DT]
    # 10 Hz frames at 4 Hz: one per 250 ms slot of bag time (frames 0, 3, 5).
    rate = replay(
        tmp_path / "in", tmp_path / "r4", predictor, segevery(), ReplayOptions(rate_hz=4.0)
    )
    times = [t for t, _ in read_bag(tmp_path / "r4")["/segfast/instances"]]
    assert times == [T0, T0 + 3 * DT, T0 + 5 * DT] and rate.processed == 3
    # SegEvery at 2 Hz of bag time on every encoded frame: frames 0 and 5.
    seg = replay(
        tmp_path / "in",
        tmp_path / "s2",
        predictor,
        segevery(),
        ReplayOptions(segevery_rate_hz=2.0),
    )
    assert seg.processed == 7 and seg.segevery_frames == 2
    times = [t for t, _ in read_bag(tmp_path / "s2")["/segfast/instances"]]
    assert times == [T0, T0 + 5 * DT]


def test_copy_input_coco_overlay_and_sheet(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 3)
    opts = ReplayOptions(
        topic=TOPIC,
        copy_input=True,
        overlay_topic=True,
        coco=tmp_path / "coco.json",
        overlay_video=tmp_path / "overlay.mp4",
        contact_sheet=tmp_path / "sheet.png",
    )
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery(), opts)
    out = read_bag(tmp_path / "out")
    source = read_bag(tmp_path / "in")
    for topic in (TOPIC, "/cam2/image_raw", "/status"):
        assert [t for t, _ in out[topic]] == [t for t, _ in source[topic]]
    assert [m.data for _, m in out["/status"]] == ["frame 0", "frame 1", "frame 2"]
    assert summary.copied == 9
    overlays = out["/segfast/overlay"]
    assert len(overlays) == 3 and overlays[0][1].encoding == "rgb8"

    coco = json.loads((tmp_path / "coco.json").read_text())
    assert len(coco["images"]) == 3
    assert len(coco["annotations"]) == summary.instances
    first = coco["annotations"][0]
    arrays = out["/segfast/instances"]
    np.testing.assert_array_equal(
        rle_to_mask(first["segmentation"]), rle_to_mask(rle(arrays[0][1].instances[0]))
    )
    assert coco["images"][0]["file_name"] == f"{TOPIC}@{200 * 10**9 + 7}"
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    video = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


# ------------------------------------------------------------------------ side outputs


def test_progress_line_shows_rate_and_eta() -> None:
    import io

    from segfast_ros.replay.outputs import Progress

    stream = io.StringIO()
    progress = Progress(40, stream=stream)
    line = progress.line(10, "7 instances", now=progress.start + 5.0)
    assert "10/40 frames  25%" in line and " 2.00 fps" in line
    assert "elapsed 0:05 ETA 0:15" in line and line.endswith("7 instances")
    progress.close(40)
    assert stream.getvalue().startswith("\r[========================] 40/40")
    silent = io.StringIO()
    Progress(5, stream=silent, enabled=False).close(5)
    assert silent.getvalue() == ""


def test_contact_sheet_spreads_its_tiles() -> None:
    from segfast_ros.replay.outputs import ContactSheet

    sheet = ContactSheet(expected_frames=100, max_tiles=16)
    taken = []
    for i in range(100):
        if sheet.wants(i):
            sheet.add(np.zeros((48, 640, 3), np.uint8), str(i))
            taken.append(i)
    assert taken == list(range(0, 100, 7))[:15]  # 100 frames / 16 tiles: every 7th
    assert sheet.tiles[0].shape == (24, 320, 3)  # shrunk to the tile width, never enlarged
