"""Offline replay of bad input: missing topics, unusable images, existing outputs, unreadable,
cut-off, corrupt and undecodable bags, and Ctrl-C. What was processed is always kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from replay_bags import (
    DT,
    GARBAGE,
    IMAGE,
    T0,
    TOPIC,
    corrupt_sqlite,
    garble_sqlite,
    image_msg,
    read_bag,
    segevery,
    tiny_predictor,
    truncated_cdr,
    write_bag,
)
from ros_scenes import synthetic_scene
from rosbags.rosbag2 import Reader

from segfast_ros.replay import BagError, ReplayOptions, replay
from segfast_ros.replay.bags import typestore
from segfast_ros.runtime.predictor import Predictor


@pytest.fixture(scope="module")
def predictor(tiny_onnx_dir: Path) -> Predictor:
    return tiny_predictor(tiny_onnx_dir)


def test_missing_topic_lists_the_topics(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 1)
    with pytest.raises(BagError) as err:
        replay(tmp_path / "in", tmp_path / "out", predictor, segevery(), ReplayOptions("/nope"))
    text = str(err.value)
    assert "'/nope' is not in the bag" in text
    assert "/cam/image_raw (sensor_msgs/msg/Image, 1 messages)" in text and "/status" in text
    with pytest.raises(BagError, match="2 image topics; pass --topic"):
        replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    with pytest.raises(BagError, match="'/status' has type std_msgs/msg/String"):
        replay(tmp_path / "in", tmp_path / "out", predictor, segevery(), ReplayOptions("/status"))
    assert not (tmp_path / "out").exists()


def test_unsupported_encodings_are_skipped_and_counted(
    tmp_path: Path, predictor: Predictor
) -> None:
    write_bag(tmp_path / "in", 4, encodings={1: "16UC1", 2: "bgr8"}, extra_topics=False)
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    assert summary.complete and summary.processed == 3 and summary.selected == 4
    ((reason, count),) = summary.skipped.items()
    assert count == 1 and "unsupported image encoding '16UC1'" in reason
    assert "skipped 1 frame(s): unsupported image encoding '16UC1'" in summary.format()
    frames = [m.header.frame_id for _, m in read_bag(tmp_path / "out")["/segfast/instances"]]
    assert frames == ["cam_0", "cam_2", "cam_3"]


def test_existing_output_needs_overwrite(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 1, extra_topics=False)
    replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    with pytest.raises(BagError, match="exists already; pass --overwrite"):
        replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    summary = replay(
        tmp_path / "in", tmp_path / "out", predictor, segevery(), ReplayOptions(overwrite=True)
    )
    assert summary.processed == 1
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BagError, match="not rosbag2's .*notes.txt.*not deleting"):
        replay(tmp_path / "in", precious, predictor, segevery(), ReplayOptions(overwrite=True))
    assert (precious / "notes.txt").read_text() == "keep me"


def test_unreadable_input_bags_are_named(tmp_path: Path, predictor: Predictor) -> None:
    with pytest.raises(BagError, match="does not exist"):
        replay(tmp_path / "nope", tmp_path / "out", predictor, segevery())
    (tmp_path / "folder").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        replay(tmp_path / "folder", tmp_path / "out", predictor, segevery())
    write_bag(tmp_path / "cut", 3, extra_topics=False)
    (mcap,) = (tmp_path / "cut").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match="cannot open input bag .*corrupt or truncated"):
        replay(tmp_path / "cut", tmp_path / "out", predictor, segevery())


def test_a_cut_off_mcap_is_replayed_up_to_the_cut(tmp_path: Path, predictor: Predictor) -> None:
    from segfast_ros.replay.mcap_salvage import SalvageReader

    write_bag(tmp_path / "in", 60, extra_topics=False)  # two 1 MiB chunks and a bit
    with Reader(tmp_path / "in") as reader:
        intact = [(t, bytes(d)) for _, t, d in reader.messages()]
    salvage = SalvageReader(tmp_path / "in")
    assert [(t, d) for _, t, d in salvage.messages()] == intact  # same as rosbags when whole
    (mcap,) = (tmp_path / "in").glob("*.mcap")
    mcap.write_bytes(mcap.read_bytes()[: int(mcap.stat().st_size * 0.7)])  # power lost
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    assert summary.error is not None and "is cut off" in summary.error
    assert 0 < summary.processed < 60
    out = read_bag(tmp_path / "out")["/segfast/instances"]
    assert [t for t, _ in out] == [t for t, _ in intact[: summary.processed]]


def test_a_corrupt_input_keeps_what_was_processed(tmp_path: Path, predictor: Predictor) -> None:
    write_bag(tmp_path / "in", 12, storage="sqlite3", extra_topics=False)
    corrupt_sqlite(tmp_path / "in")
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
    assert summary.error is not None and "corrupt after" in summary.error
    assert 0 < summary.processed < 12
    out = read_bag(tmp_path / "out")  # closed properly: a fresh reader opens it
    assert len(out["/segfast/instances"]) == summary.processed
    assert "ERROR" in summary.format()


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("payload", ["garbage", "truncated"])
def test_an_undecodable_message_is_named(
    tmp_path: Path, predictor: Predictor, storage: str, payload: str
) -> None:
    data = GARBAGE if payload == "garbage" else truncated_cdr()
    if storage == "sqlite3":  # a sound bag whose database row then gets garbage bytes
        write_bag(tmp_path / "in", 8, storage=storage)
        garble_sqlite(tmp_path / "in", 5, data)
    else:  # a sound mcap whose record holds garbage bytes
        write_bag(tmp_path / "in", 8, storage=storage, raw={5: data})
    summary = replay(
        tmp_path / "in", tmp_path / "out", predictor, segevery(), ReplayOptions(TOPIC)
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
    short = image_msg(store, synthetic_scene(seed=2), 2)
    short.data = short.data[:100]
    write_bag(tmp_path / "in", 4, extra_topics=False, raw={2: store.serialize_cdr(short, IMAGE)})
    summary = replay(tmp_path / "in", tmp_path / "out", predictor, segevery())
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
        segevery(),
        ReplayOptions(coco=tmp_path / "coco.json"),
        on_frame=interrupt,
    )
    assert summary.interrupted and summary.processed == 3
    assert len(read_bag(tmp_path / "out")["/segfast/instances"]) == 3
    assert len(json.loads((tmp_path / "coco.json").read_text())["images"]) == 3


def test_a_failure_after_the_output_bag_opened_still_closes_it(
    tmp_path: Path, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the output works, adding a connection to it fails: the error reaches the caller
    and the bag is closed (a reader opens it), not left half-written."""
    write_bag(tmp_path / "in", 2)

    def refuse(writer: Any, conn: Any) -> Any:
        raise RuntimeError(f"cannot copy {conn.topic}")

    monkeypatch.setattr("segfast_ros.replay.writer.bags.copy_connection", refuse)
    with pytest.raises(RuntimeError, match="cannot copy"):
        replay(
            tmp_path / "in",
            tmp_path / "out",
            predictor,
            segevery(),
            ReplayOptions(TOPIC, copy_input=True),
        )
    with Reader(tmp_path / "out") as reader:  # closed: its metadata is written
        assert reader.message_count == 0
