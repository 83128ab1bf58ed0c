"""Bags for the replay tests: written with rosbags (mcap or sqlite3), read back, damaged.

The model is the small ``tinyvit_s256`` with seeded random weights; SegEvery's filters are
off (:data:`SEG`) so that it returns masks.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ros_scenes import synthetic_scene
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin

from segfast_ros.replay.bags import has_vision_msgs, typestore
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
#: The topics a replay writes besides the project's own when vision_msgs is there.
VISION_TOPICS = {"/segfast/detections"} if has_vision_msgs(typestore()) else set()


def tiny_predictor(onnx_dir: Path) -> Predictor:
    """The test model (the ``tiny_onnx_dir`` fixture's export) on one ONNX Runtime thread."""
    return Predictor(OnnxRuntimeBackend.from_dir(onnx_dir, "fp32", intra_op_threads=1))


def segevery():
    return build_segevery("grid", **SEG)


# --------------------------------------------------------------------------- bag writing


def stamp(i: int) -> tuple[int, int]:
    return 200 + i, 1000 * i + 7  # header stamps differ from bag times on purpose


def image_msg(store: Any, rgb: np.ndarray, i: int, encoding: str = "rgb8") -> Any:
    types = store.types
    sec, nsec = stamp(i)
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


def compressed_msg(store: Any, rgb: np.ndarray, i: int) -> Any:
    types = store.types
    sec, nsec = stamp(i)
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
    images: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """A bag with ``frames`` images on TOPIC (and, with ``extra_topics``, a second camera and a
    string topic). ``raw`` replaces the bytes of TOPIC's message ``i`` by ``raw[i]``; ``images``
    are the frames (default: ``synthetic_scene(seed=i)``)."""
    store = typestore()
    source, written = images, []
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else IMAGE
    with Writer(path, version=9, storage_plugin=STORAGE[storage]) as writer:
        cam = writer.add_connection(TOPIC, msgtype, typestore=store)
        if extra_topics:
            other = writer.add_connection("/cam2/image_raw", IMAGE, typestore=store)
            text = writer.add_connection("/status", "std_msgs/msg/String", typestore=store)
        for i in range(frames):
            rgb = synthetic_scene(seed=i) if source is None else source[i]
            written.append(rgb)
            if compressed:
                msg = compressed_msg(store, rgb, i)
            else:
                msg = image_msg(store, rgb, i, (encodings or {}).get(i, "rgb8"))
            data = (raw or {}).get(i, store.serialize_cdr(msg, msgtype))
            writer.write(cam, T0 + i * DT, data)
            if extra_topics:
                status = store.types["std_msgs/msg/String"](data=f"frame {i}")
                t = T0 + i * DT + DT // 2
                writer.write(text, t, store.serialize_cdr(status, "std_msgs/msg/String"))
                img2 = image_msg(store, rgb[:40, :40].copy(), i)
                writer.write(other, t, store.serialize_cdr(img2, IMAGE))
    return written


def read_bag(path: Path) -> dict[str, list[tuple[int, Any]]]:
    """Every message of a bag, deserialized, by topic: [(bag time, msg)]; a fresh Reader."""
    store = typestore()
    out: dict[str, list[tuple[int, Any]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, store.deserialize_cdr(raw, conn.msgtype)))
    return out


def rle(inst_msg: Any) -> dict:
    return {
        "size": [int(inst_msg.mask_height), int(inst_msg.mask_width)],
        "counts": [int(c) for c in inst_msg.rle_counts],
    }


def corrupt_sqlite(path: Path) -> None:
    """Overwrite a stretch in the second half of the database with garbage."""
    (db,) = path.glob("*.db3")
    data = bytearray(db.read_bytes())
    start = len(data) * 2 // 3
    data[start : start + 8192] = os.urandom(8192)
    db.write_bytes(bytes(data))


#: Bytes that are no CDR message: not even the encapsulation header is valid.
GARBAGE = b"\xde\xad\xbe\xef" * 64


def garble_sqlite(path: Path, index: int, data: bytes) -> None:
    """Replace the bytes of TOPIC's message ``index`` (bag order) in a sound sqlite3 bag."""
    (db,) = path.glob("*.db3")
    with closing(sqlite3.connect(db)) as con, con:
        ((row_id,),) = con.execute(
            "SELECT messages.id FROM messages JOIN topics ON topics.id = messages.topic_id "
            "WHERE topics.name = ? ORDER BY messages.timestamp LIMIT 1 OFFSET ?",
            (TOPIC, index),
        ).fetchall()
        con.execute("UPDATE messages SET data = ? WHERE id = ?", (data, row_id))


def truncated_cdr() -> bytes:
    """A valid CDR header, then a string length far beyond the message's end."""
    store = typestore()
    good = store.serialize_cdr(image_msg(store, synthetic_scene(seed=0), 0), IMAGE)
    return bytes(good[:4]) + b"\xff" * 40


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "segfast_ros.cli", "replay", *args, "--no-progress"]
