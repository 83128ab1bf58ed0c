"""Offline replay: real bags written with rosbags (mcap and sqlite3), replayed, read back.

The model is the small ``tinyvit_s256`` with seeded random weights; SegEvery's filters are
off so that it returns masks, which must match the library's on the same decoded frame.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from ros_scenes import synthetic_scene
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin

from segfast_ros.masks import rle_to_mask
from segfast_ros.pipeline.render import instances_to_label_image
from segfast_ros.replay import (
    BagError,
    PromptFileError,
    ReplayOptions,
    load_prompts,
    replay,
)
from segfast_ros.replay.bags import msg_type, typestore
from segfast_ros.replay.prompts import parse_prompts
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor
from segfast_ros.segevery.registry import build_segevery

REPO = Path(__file__).resolve().parents[1]
TOPIC = "/cam/image_raw"
SEG = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
STORAGE = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
IMAGE = "sensor_msgs/msg/Image"
T0 = 1_700_000_000_000_000_000  # bag time of the first message (ns)
DT = 100_000_000  # 10 Hz


@pytest.fixture(scope="module")
def predictor(tiny_onnx_dir: Path) -> Predictor:
    return Predictor(OnnxRuntimeBackend.from_dir(tiny_onnx_dir, "fp32", intra_op_threads=1))


def _segevery():
    return build_segevery("grid", **SEG)


# --------------------------------------------------------------------------- bag writing


def _stamp(i: int) -> tuple[int, int]:
    return 200 + i, 1000 * i + 7  # header stamps differ from bag times on purpose


def _image_msg(store: Any, rgb: np.ndarray, i: int, encoding: str = "rgb8") -> Any:
    types = store.types
    sec, nsec = _stamp(i)
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=f"cam_{i}"
    )
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if encoding == "bgr8" else rgb
    if encoding == "16UC1":
        pixels = rgb[..., 0].astype(np.uint16)
    return types["sensor_msgs/msg/Image"](
        header=header,
        height=pixels.shape[0],
        width=pixels.shape[1],
        encoding=encoding,
        is_bigendian=0,
        step=pixels.strides[0],
        data=np.ascontiguousarray(pixels).view(np.uint8).reshape(-1),
    )


def _compressed_msg(store: Any, rgb: np.ndarray, i: int) -> Any:
    types = store.types
    sec, nsec = _stamp(i)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return types["sensor_msgs/msg/CompressedImage"](
        header=types["std_msgs/msg/Header"](
            stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=f"cam_{i}"
        ),
        format="png",
        data=png.reshape(-1),
    )


def write_bag(
    path: Path,
    frames: int,
    *,
    storage: str = "mcap",
    compressed: bool = False,
    encodings: dict[int, str] | None = None,
    extra_topics: bool = True,
    raw: dict[int, bytes] | None = None,
) -> list[np.ndarray]:
    """A bag with ``frames`` images on TOPIC (and, with ``extra_topics``, a second camera and a
    string topic). ``raw`` replaces the bytes of TOPIC's message ``i`` by ``raw[i]``."""
    store = typestore()
    images = []
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else IMAGE
    with Writer(path, version=9, storage_plugin=STORAGE[storage]) as writer:
        cam = writer.add_connection(TOPIC, msgtype, typestore=store)
        if extra_topics:
            other = writer.add_connection("/cam2/image_raw", IMAGE, typestore=store)
            text = writer.add_connection("/status", "std_msgs/msg/String", typestore=store)
        for i in range(frames):
            rgb = synthetic_scene(seed=i)
            images.append(rgb)
            if compressed:
                msg = _compressed_msg(store, rgb, i)
            else:
                msg = _image_msg(store, rgb, i, (encodings or {}).get(i, "rgb8"))
            data = (raw or {}).get(i, store.serialize_cdr(msg, msgtype))
            writer.write(cam, T0 + i * DT, data)
            if extra_topics:
                status = store.types["std_msgs/msg/String"](data=f"frame {i}")
                t = T0 + i * DT + DT // 2
                writer.write(text, t, store.serialize_cdr(status, "std_msgs/msg/String"))
                img2 = _image_msg(store, rgb[:40, :40].copy(), i)
                writer.write(other, t, store.serialize_cdr(img2, IMAGE))
    return images


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """Every message of a bag, deserialized, by topic: [(bag time, msg)]; a fresh Reader."""
    store = typestore()
    out: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def _rle(inst_msg: Any) -> dict:
    return {
        "size": [int(inst_msg.mask_height), int(inst_msg.mask_width)],
        "counts": [int(c) for c in inst_msg.rle_counts],
    }


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
        _segevery(),
        ReplayOptions(topic=TOPIC, storage=storage),
    )
    assert summary.complete and summary.processed == summary.selected == 4
    out = read_bag(tmp_path / "out")
    assert set(out) == {"/segfast/instances", "/segfast/instances/label"}
    arrays, labels = out["/segfast/instances"], out["/segfast/instances/label"]
    assert len(arrays) == len(labels) == 4

    reference = Predictor(predictor.backend)
    for i, ((t, arr), (t_label, label)) in enumerate(zip(arrays, labels, strict=True)):
        assert t == t_label == T0 + i * DT  # the source message's bag time
        for header in (arr.header, label.header):
            assert (header.stamp.sec, header.stamp.nanosec) == _stamp(i)
            assert header.frame_id == f"cam_{i}"
        assert arr.strategy == "grid" and arr.decoder_prompts == 9

        reference.set_image(images[i])
        expected = _segevery()(reference, images[i]).instances
        assert len(arr.instances) == len(expected) > 0
        for j, (got, want) in enumerate(zip(arr.instances, expected, strict=True)):
            assert got.id == j
            np.testing.assert_array_equal(rle_to_mask(_rle(got)), rle_to_mask(want.rle))
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
        replay(tmp_path / "in", tmp_path / name, predictor, _segevery(), ReplayOptions())
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
    assert len(raw["a"]) == 6 and raw["a"] == raw["b"]
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
    summary = replay(tmp_path / "one", tmp_path / "out1", predictor, _segevery())
    assert summary.processed == 1
    assert len(read_bag(tmp_path / "out1")["/segfast/instances"]) == 1

    write_bag(tmp_path / "zero", 0)
    summary = replay(
        tmp_path / "zero", tmp_path / "out0", predictor, _segevery(), ReplayOptions(topic=TOPIC)
    )
    assert summary.complete and summary.processed == 0
    assert read_bag(tmp_path / "out0") == {}  # a valid, empty bag
    with Reader(tmp_path / "out0") as reader:
        assert {c.topic for c in reader.connections} >= {"/segfast/instances"}


def test_every_and_rate_select_on_bag_time(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 7, extra_topics=False)
    every = replay(
        tmp_path / "in", tmp_path / "e3", predictor, _segevery(), ReplayOptions(every=3)
    )
    assert every.processed == 3  # frames 0, 3, 6
    times = [t for t, _ in read_bag(tmp_path / "e3")["/segfast/instances"]]
    assert times == [T0, T0 + 3 * DT, T0 + 6 * DT]
    # 10 Hz frames at 4 Hz: one per 250 ms slot of bag time (frames 0, 3, 5).
    rate = replay(
        tmp_path / "in", tmp_path / "r4", predictor, _segevery(), ReplayOptions(rate_hz=4.0)
    )
    times = [t for t, _ in read_bag(tmp_path / "r4")["/segfast/instances"]]
    assert times == [T0, T0 + 3 * DT, T0 + 5 * DT] and rate.processed == 3
    # SegEvery at 2 Hz of bag time on every encoded frame: frames 0 and 5.
    seg = replay(
        tmp_path / "in",
        tmp_path / "s2",
        predictor,
        _segevery(),
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
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, _segevery(), opts)
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
        rle_to_mask(first["segmentation"]), rle_to_mask(_rle(arrays[0][1].instances[0]))
    )
    assert coco["images"][0]["file_name"] == f"{TOPIC}@{200 * 10**9 + 7}"
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    video = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


# ------------------------------------------------------------------------------- prompts


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
        _segevery(),
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
        np.testing.assert_array_equal(rle_to_mask(_rle(got)), want)
    reference.set_image(images[2])
    points = np.array([[30, 30], [90, 60]], float)
    pred = reference.predict(points, np.array([1, 0]), multimask_output=False)
    np.testing.assert_array_equal(rle_to_mask(_rle(answers[2][1].instances[0])), pred.masks[0])


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


# ----------------------------------------------------------------------------- bad input


def test_missing_topic_lists_the_topics(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 1)
    with pytest.raises(BagError) as err:
        replay(tmp_path / "in", tmp_path / "out", predictor, _segevery(), ReplayOptions("/nope"))
    text = str(err.value)
    assert "'/nope' is not in the bag" in text
    assert "/cam/image_raw (sensor_msgs/msg/Image, 1 messages)" in text and "/status" in text
    with pytest.raises(BagError, match="2 image topics; pass --topic"):
        replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    with pytest.raises(BagError, match="'/status' has type std_msgs/msg/String"):
        replay(tmp_path / "in", tmp_path / "out", predictor, _segevery(), ReplayOptions("/status"))
    assert not (tmp_path / "out").exists()


def test_unsupported_encodings_are_skipped_and_counted(
    tmp_path: Path, predictor: Predictor
) -> None:
    write_bag(tmp_path / "in", 4, encodings={1: "16UC1", 2: "bgr8"}, extra_topics=False)
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    assert summary.complete and summary.processed == 3 and summary.selected == 4
    ((reason, count),) = summary.skipped.items()
    assert count == 1 and "unsupported image encoding '16UC1'" in reason
    assert "skipped 1 frame(s): unsupported image encoding '16UC1'" in summary.format()
    frames = [m.header.frame_id for _, m in read_bag(tmp_path / "out")["/segfast/instances"]]
    assert frames == ["cam_0", "cam_2", "cam_3"]


def test_existing_output_needs_overwrite(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 1, extra_topics=False)
    replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    with pytest.raises(BagError, match="exists already; pass --overwrite"):
        replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    summary = replay(
        tmp_path / "in", tmp_path / "out", predictor, _segevery(), ReplayOptions(overwrite=True)
    )
    assert summary.processed == 1
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BagError, match="not rosbag2's .*notes.txt.*not deleting"):
        replay(tmp_path / "in", precious, predictor, _segevery(), ReplayOptions(overwrite=True))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_unreadable_input_bags_are_named(tmp_path: Path, predictor: Predictor) -> None:
    with pytest.raises(BagError, match="does not exist"):
        replay(tmp_path / "nope", tmp_path / "out", predictor, _segevery())
    (tmp_path / "folder").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        replay(tmp_path / "folder", tmp_path / "out", predictor, _segevery())
    write_bag(tmp_path / "cut", 3, extra_topics=False)
    (mcap,) = (tmp_path / "cut").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match="cannot open input bag .*corrupt or truncated"):
        replay(tmp_path / "cut", tmp_path / "out", predictor, _segevery())


def test_a_cut_off_mcap_is_replayed_up_to_the_cut(tmp_path: Path, predictor: Predictor) -> None:
    from segfast_ros.replay.mcap_salvage import SalvageReader

    write_bag(tmp_path / "in", 60, extra_topics=False)  # two 1 MiB chunks and a bit
    with Reader(tmp_path / "in") as reader:
        intact = [(t, bytes(d)) for _, t, d in reader.messages()]
    salvage = SalvageReader(tmp_path / "in")
    assert [(t, d) for _, t, d in salvage.messages()] == intact  # same as rosbags when whole
    (mcap,) = (tmp_path / "in").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.7)])  # power lost
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    assert summary.error is not None and "is cut off" in summary.error
    assert 0 < summary.processed < 60
    out = read_bag(tmp_path / "out")["/segfast/instances"]
    assert [t for t, _ in out] == [t for t, _ in intact[: summary.processed]]


def _corrupt_sqlite(path: Path) -> None:
    """Overwrite a stretch in the second half of the database with garbage."""
    (db,) = path.glob("*.db3")
    data = bytearray(db.read_bytes())
    start = len(data) * 2 // 3
    data[start : start + 8192] = os.urandom(8192)
    db.write_bytes(bytes(data))


def test_a_corrupt_input_keeps_what_was_processed(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 12, storage="sqlite3", extra_topics=False)
    _corrupt_sqlite(tmp_path / "in")
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    assert summary.error is not None and "corrupt after" in summary.error
    assert 0 < summary.processed < 12
    out = read_bag(tmp_path / "out")  # closed properly: a fresh reader opens it
    assert len(out["/segfast/instances"]) == summary.processed
    assert "ERROR" in summary.format()


#: Bytes that are no CDR message: not even the encapsulation header is valid.
GARBAGE = b"\xde\xad\xbe\xef" * 64


def _garble_sqlite(path: Path, index: int, data: bytes) -> None:
    """Replace the bytes of TOPIC's message ``index`` (bag order) in a sound sqlite3 bag."""
    (db,) = path.glob("*.db3")
    with closing(sqlite3.connect(db)) as con, con:
        ((row_id,),) = con.execute(
            "SELECT messages.id FROM messages JOIN topics ON topics.id = messages.topic_id "
            "WHERE topics.name = ? ORDER BY messages.timestamp LIMIT 1 OFFSET ?",
            (TOPIC, index),
        ).fetchall()
        con.execute("UPDATE messages SET data = ? WHERE id = ?", (data, row_id))


def _truncated_cdr() -> bytes:
    """A valid CDR header, then a string length far beyond the message's end."""
    store = typestore()
    good = store.serialize_cdr(_image_msg(store, synthetic_scene(seed=0), 0), IMAGE)
    return bytes(good[:4]) + b"\xff" * 40


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("payload", ["garbage", "truncated"])
def test_an_undecodable_message_is_named(
    tmp_path: Path, predictor: Predictor, storage: str, payload: str
) -> None:
    data = GARBAGE if payload == "garbage" else _truncated_cdr()
    if storage == "sqlite3":  # a sound bag whose database row then gets garbage bytes
        write_bag(tmp_path / "in", 8, storage=storage)
        _garble_sqlite(tmp_path / "in", 5, data)
    else:  # a sound mcap whose record holds garbage bytes
        write_bag(tmp_path / "in", 8, storage=storage, raw={5: data})
    summary = replay(
        tmp_path / "in", tmp_path / "out", predictor, _segevery(), ReplayOptions(TOPIC)
    )
    assert summary.error is not None and not summary.complete
    # The bag, the topic, the message's index within the topic (the bag also holds two other
    # topics, so its bag-wide position differs) and its bag time.
    assert f"input bag {tmp_path / 'in'}: cannot decode message 5 of topic {TOPIC}" in (
        summary.error
    )
    assert "0-based, counting that topic's messages" in summary.error
    assert f"bag time 1700000000.500000000 s = {T0 + 5 * DT} ns" in summary.error
    assert "sensor_msgs/msg/Image" in summary.error and "SerdeError" in summary.error
    assert summary.processed == 5
    out = read_bag(tmp_path / "out")  # closed properly, with the frames before the bad one
    assert len(out["/segfast/instances"]) == 5
    assert f"ERROR: {summary.error}" in summary.format()


def test_an_image_with_too_little_data_is_skipped_and_counted(
    tmp_path: Path, predictor: Predictor
) -> None:
    """A message that deserializes but whose pixels are short is skipped, not fatal."""
    store = typestore()
    short = _image_msg(store, synthetic_scene(seed=2), 2)
    short.data = short.data[:100]
    write_bag(tmp_path / "in", 4, extra_topics=False, raw={2: store.serialize_cdr(short, IMAGE)})
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, _segevery())
    assert summary.complete and summary.processed == 3 and summary.selected == 4
    ((reason, count),) = summary.skipped.items()
    assert count == 1 and "needs step * height" in reason and "got 100" in reason


def test_an_interrupt_keeps_what_was_processed(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 8, extra_topics=False)

    def interrupt(summary: Any) -> None:
        if summary.processed == 3:
            raise KeyboardInterrupt

    summary = replay(
        tmp_path / "in",
        tmp_path / "out",
        predictor,
        _segevery(),
        ReplayOptions(coco=tmp_path / "coco.json"),
        on_frame=interrupt,
    )
    assert summary.interrupted and summary.processed == 3
    assert len(read_bag(tmp_path / "out")["/segfast/instances"]) == 3
    assert len(json.loads((tmp_path / "coco.json").read_text())["images"]) == 3


# ------------------------------------------------------------------------------------ CLI


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "segfast_ros.cli", "replay", *args, "--no-progress"]


def test_cli_ctrl_c_leaves_a_readable_bag(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    write_bag(tmp_path / "in", 300, extra_topics=False)
    proc = subprocess.Popen(
        [
            *_cli(str(tmp_path / "in"), str(tmp_path / "out"), "--onnx-dir", str(tiny_onnx_dir)),
            "--set",
            "points_per_side=8",
            "--threads",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while not list((tmp_path / "out").glob("*.mcap")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "INTERRUPTED" in output
    processed = len(read_bag(tmp_path / "out").get("/segfast/instances", []))
    assert 0 < processed < 300
    assert f"{processed} processed" in output


def test_cli_reports_a_corrupt_bag_and_a_missing_topic(
    tmp_path: Path, tiny_onnx_dir: Path
) -> None:
    write_bag(tmp_path / "in", 12, storage="sqlite3", extra_topics=False)
    shutil.copytree(tmp_path / "in", tmp_path / "bad")
    _corrupt_sqlite(tmp_path / "bad")
    model = ["--onnx-dir", str(tiny_onnx_dir), "--set", "points_per_side=2"]
    run = subprocess.run(
        [*_cli(str(tmp_path / "bad"), str(tmp_path / "out"), *model)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    assert "ERROR: input bag" in run.stdout and "corrupt after" in run.stdout
    read_bag(tmp_path / "out")
    run = subprocess.run(
        [*_cli(str(tmp_path / "in"), str(tmp_path / "out2"), *model, "--topic", "/x")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2
    assert "topic '/x' is not in the bag" in run.stderr and TOPIC in run.stderr


def test_cli_names_an_undecodable_message(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    write_bag(tmp_path / "in", 6, storage="sqlite3", extra_topics=False)
    _garble_sqlite(tmp_path / "in", 3, GARBAGE)
    run = subprocess.run(
        [
            *_cli(str(tmp_path / "in"), str(tmp_path / "out"), "--onnx-dir", str(tiny_onnx_dir)),
            *("--set", "points_per_side=2"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 3, run.stderr
    facts = [
        f"input bag {tmp_path / 'in'}",
        f"message 3 of topic {TOPIC}",
        f"bag time 1700000000.300000000 s = {T0 + 3 * DT} ns",
    ]
    error = next(line for line in run.stderr.splitlines() if "segfast replay: error:" in line)
    assert all(fact in error for fact in facts), run.stderr
    assert "3 processed" in run.stdout and "ERROR: input bag" in run.stdout
    assert len(read_bag(tmp_path / "out")["/segfast/instances"]) == 3


def test_bench_replay_prints_a_table_and_writes_json(
    tmp_path: Path, tiny_onnx_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    pytest.importorskip("onnx", reason="the synthetic detector graph is written with onnx")
    from segfast_ros.cli import main

    out = tmp_path / "bench.json"
    args = ["--onnx-dir", str(tiny_onnx_dir), "--precision", "fp32", "--threads", "1"]
    size = ["--frames", "3", "--width", "64", "--height", "48", "--boxes", "2"]
    assert main(["bench-replay", *args, *size, "--json", str(out)]) == 0
    assert "jpeg, SegEvery object_aware" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == [
        "rgb8, encoder only",
        "rgb8, SegEvery object_aware",
        "jpeg, encoder only",
        "jpeg, SegEvery object_aware",
    ]
    for row in rows:
        assert row["frames"] == 3
        assert row["ratio"] == pytest.approx(row["fps"] / row["encoder_bound_fps"])
    assert rows[0]["instances"] == 0 and rows[1]["instances"] == 6  # 2 boxes x 3 frames


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
