"""rosbag2 in and out with the ``rosbags`` library: no ROS installation needed.

The project's messages are registered from the ``msg/*.msg`` files the package ships (the same
files rosidl builds the node's interfaces from), so the output bag carries their definitions
and any rosbag2 tool can read it. vision_msgs (Detection2DArray, Detection3DArray) is not in
rosbags' Jazzy typestore: its types are registered the same way from the installed
``share/vision_msgs/msg/*.msg`` when found (:func:`vision_msgs_dir`); without them the replay
writes the project's own messages only. Input bags may be mcap or sqlite3, any rosbag2 version that
rosbags reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from ..pipeline.image_msgs import compressed_msg_to_rgb, image_fields, image_msg_to_rgb
from .mcap_salvage import SalvageReader

log = logging.getLogger("segfast.replay")

#: Our package's interface name, as in ``package.xml``.
PACKAGE = "segfast_ros"

#: The message files the replay writes, in dependency order.
MESSAGES: tuple[str, ...] = ("Position3D", "Instance", "SegmentResult", "InstanceArray")

#: vision_msgs' package name, and the files its Detection2DArray / Detection3DArray need.
VISION_PACKAGE = "vision_msgs"
VISION_MESSAGES: tuple[str, ...] = (
    "Point2D",
    "Pose2D",
    "BoundingBox2D",
    "BoundingBox3D",
    "ObjectHypothesis",
    "ObjectHypothesisWithPose",
    "Detection2D",
    "Detection2DArray",
    "Detection3D",
    "Detection3DArray",
)

IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
#: Input message types the replay can segment.
IMAGE_TYPES: tuple[str, ...] = (IMAGE, COMPRESSED)

#: ``--storage`` names and the rosbags plugins.
STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}

# Files rosbag2 writes into a bag folder: what --overwrite may delete.
_BAG_SUFFIXES = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".yaml", ".zstd")


class BagError(RuntimeError):
    """A bag that cannot be opened, read or written; the message says which and why."""


def msg_type(name: str) -> str:
    """The full type name of one of our messages: ``segfast_ros/msg/<name>``."""
    return f"{PACKAGE}/msg/{name}"


def msg_dirs() -> list[Path]:
    """Where the ``.msg`` files may be, in search order.

    ``$SEGFAST_MSG_DIR``; the source tree (``msg/`` next to the package); the install prefix
    (``share/segfast_ros/msg``, from pip or colcon); every ``$AMENT_PREFIX_PATH`` entry.
    """
    dirs = []
    if os.environ.get("SEGFAST_MSG_DIR"):
        dirs.append(Path(os.environ["SEGFAST_MSG_DIR"]))
    dirs.append(Path(__file__).resolve().parents[2] / "msg")
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "msg")
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        dirs.append(Path(prefix) / "share" / PACKAGE / "msg")
    return dirs


def vision_msgs_dirs() -> list[Path]:
    """Where vision_msgs' ``.msg`` files may be, in search order.

    ``$SEGFAST_VISION_MSGS_DIR`` alone when set (a folder without them turns the vision_msgs
    outputs off); else the install prefix (``share/vision_msgs/msg``, where the Makefile or
    colcon puts them) and every ``$AMENT_PREFIX_PATH`` entry, as a sourced ROS has them.
    """
    override = os.environ.get("SEGFAST_VISION_MSGS_DIR")
    if override:
        return [Path(override)]
    prefixes = [
        sys.prefix,
        *filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)),
    ]
    return [Path(p) / "share" / VISION_PACKAGE / "msg" for p in prefixes]


def vision_msgs_dir() -> Path | None:
    """The first of :func:`vision_msgs_dirs` holding every file of :data:`VISION_MESSAGES`."""
    for folder in vision_msgs_dirs():
        if all((folder / f"{name}.msg").is_file() for name in VISION_MESSAGES):
            return folder
    return None


def vision_msgs_missing() -> str:
    """Why the vision_msgs types are not there: the folders searched, and what to do."""
    searched = ", ".join(str(d) for d in vision_msgs_dirs())
    return (
        f"vision_msgs not found (no Detection2DArray.msg and its dependencies in {searched}; "
        "install ros-jazzy-vision-msgs and source it, or set SEGFAST_VISION_MSGS_DIR to its "
        "share/vision_msgs/msg): only the segfast_ros messages are written"
    )


def typestore() -> Any:
    """A Jazzy typestore with the project's messages registered from their ``.msg`` files, and
    vision_msgs' when :func:`vision_msgs_dir` finds them (:func:`has_vision_msgs` says).

    Raises:
        BagError: no folder holds all of :data:`MESSAGES`.
    """
    return _typestore(vision_msgs_dir())


def has_vision_msgs(store: Any) -> bool:
    """Whether ``store`` can write Detection2DArray and Detection3DArray."""
    return all(vision_type(n) in store.types for n in VISION_MESSAGES)


def vision_type(name: str) -> str:
    """The full type name of a vision_msgs message: ``vision_msgs/msg/<name>``."""
    return f"{VISION_PACKAGE}/msg/{name}"


@lru_cache(maxsize=4)
def _typestore(vision_dir: Path | None) -> Any:
    """The typestore, built once per vision_msgs folder (None: without vision_msgs); the log
    says once that vision_msgs is missing or unusable."""
    for folder in msg_dirs():
        files = [folder / f"{name}.msg" for name in MESSAGES]
        if all(f.is_file() for f in files):
            break
    else:
        searched = ", ".join(str(d) for d in msg_dirs())
        raise BagError(
            f"cannot find the segfast_ros message definitions ({', '.join(MESSAGES)}.msg); "
            f"searched {searched}. Set SEGFAST_MSG_DIR to the package's msg/ folder"
        )
    store = get_typestore(Stores.ROS2_JAZZY)
    types: dict[str, Any] = {}
    for name, path in zip(MESSAGES, files, strict=True):
        types.update(get_types_from_msg(path.read_text(), msg_type(name)))
    store.register(types)
    if vision_dir is None:
        log.warning("%s", vision_msgs_missing())
        return store
    try:
        vision: dict[str, Any] = {}
        for name in VISION_MESSAGES:
            text = (vision_dir / f"{name}.msg").read_text()
            vision.update(get_types_from_msg(text, vision_type(name)))
        store.register(vision)
    except Exception as err:  # rosbags' parse and registration errors: those outputs go
        log.warning(
            "vision_msgs in %s is not usable (%s: %s): only the segfast_ros messages are written",
            vision_dir,
            type(err).__name__,
            err,
        )
    return store


# ----------------------------------------------------------------------------------- input


def open_reader(path: Path) -> Reader:
    """Open a rosbag2 bag (a folder with ``metadata.yaml``, or its single ``.mcap`` file).

    A cut-off mcap recording (no footer, which rosbags refuses) is read up to the cut with
    :class:`~.mcap_salvage.SalvageReader`; the replay then reports it as an error after
    processing what was readable.

    Raises:
        BagError: a missing path, a folder that is not a bag, or a bag that cannot be opened
            (corrupt or truncated: the message says what rosbags reported).
    """
    path = Path(path)
    if not path.exists():
        raise BagError(f"input bag {path} does not exist; expected a rosbag2 folder")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        found = sorted(p.name for p in path.iterdir())[:8]
        raise BagError(
            f"input {path} is not a rosbag2 folder: no metadata.yaml (it holds "
            f"{found or 'nothing'}); expected the folder `ros2 bag record` writes"
        )
    reader = Reader(path)
    try:
        reader.open()
    except Exception as err:  # rosbags raises ReaderError, sqlite3 and OS errors
        salvaged = _salvage(path)
        if salvaged is not None:
            log.warning("%s", salvaged.describe())
            return salvaged
        raise BagError(
            f"cannot open input bag {path}: {err}. The bag is corrupt or truncated (nothing "
            "before the damage could be read either; `ros2 bag reindex` rebuilds a missing "
            "metadata.yaml)"
        ) from err
    return reader


def _salvage(path: Path) -> SalvageReader | None:
    """The readable part of a cut-off mcap bag, or None (not mcap, or nothing readable)."""
    is_mcap = path.suffix == ".mcap" or (path.is_dir() and len(list(path.glob("*.mcap"))) == 1)
    if not is_mcap:
        return None
    try:
        reader = SalvageReader(path)
    except (ValueError, OSError):
        return None
    return reader if reader.message_count else None


def image_topics(reader: Reader) -> dict[str, str]:
    """Topics of the bag whose type the replay segments: topic -> message type."""
    return {c.topic: c.msgtype for c in reader.connections if c.msgtype in IMAGE_TYPES}


def describe_topics(reader: Reader) -> str:
    """All topics of a bag, one per line: ``topic (type, count)``."""
    lines = [
        f"  {topic} ({info.msgtype}, {info.msgcount} messages)"
        for topic, info in sorted(reader.topics.items())
    ]
    return "\n".join(lines) or "  (none: the bag is empty)"


def select_topic(reader: Reader, topic: str | None) -> str:
    """The image topic to segment: ``topic``, or the bag's only image topic.

    Raises:
        BagError: the topic is not in the bag or not an image type, or ``topic`` is None and
            the bag has zero or several image topics; the message lists the bag's topics.
    """
    images = image_topics(reader)
    expected = f"expected one of type {' or '.join(IMAGE_TYPES)}"
    if topic is None:
        if len(images) == 1:
            return next(iter(images))
        what = "no image topic" if not images else f"{len(images)} image topics"
        raise BagError(
            f"the bag has {what}; pass --topic ({expected}). Topics in the bag:\n"
            f"{describe_topics(reader)}"
        )
    if topic not in reader.topics:
        raise BagError(
            f"topic {topic!r} is not in the bag; {expected}. Topics in the bag:\n"
            f"{describe_topics(reader)}"
        )
    if topic not in images:
        raise BagError(
            f"topic {topic!r} has type {reader.topics[topic].msgtype}; {expected}. Topics in "
            f"the bag:\n{describe_topics(reader)}"
        )
    return topic


def read_messages(
    reader: Reader, connections: list[Connection]
) -> Iterator[tuple[Connection, int, bytes]]:
    """The bag's messages on ``connections`` in bag-time order, errors named as bag errors.

    Raises:
        BagError: the storage failed part-way (a corrupt page or chunk); earlier messages have
            been yielded.
    """
    count = 0
    try:
        for item in reader.messages(connections=connections):
            yield item
            count += 1
    except GeneratorExit:
        raise
    except Exception as err:
        raise BagError(
            f"input bag {reader.path} is corrupt after {count} readable messages: "
            f"{type(err).__name__}: {err}"
        ) from err


def rgb_of(msgtype: str, msg: Any) -> np.ndarray:
    """A deserialized ``sensor_msgs/Image`` or ``CompressedImage`` (``msgtype``) as RGB.

    Raises:
        ImageError: an encoding or payload that is not a usable image (the message says why).
    """
    return (image_msg_to_rgb if msgtype == IMAGE else compressed_msg_to_rgb)(msg)


def deserialize(
    store: Any, conn: Connection, raw: bytes, *, bag: Path, index: int, bag_time: int
) -> Any:
    """``raw`` (CDR bytes of one message on ``conn``) as a message of ``conn.msgtype``.

    ``index`` is the message's 0-based position among its topic's messages in bag order and
    ``bag_time`` its bag timestamp in ns; both only name the message in the error.

    Raises:
        BagError: the bytes are not a CDR message of that type; the message names the bag, the
            topic, the index and the bag time.
    """
    try:
        return store.deserialize_cdr(raw, conn.msgtype)
    except Exception as err:  # rosbags raises its SerdeError, struct, index and decode errors
        sec, nsec = divmod(bag_time, 10**9)
        raise BagError(
            f"input bag {bag}: cannot decode message {index} of topic {conn.topic} (0-based, "
            f"counting that topic's messages in bag order; bag time {sec}.{nsec:09d} s = "
            f"{bag_time} ns): expected a CDR-serialized {conn.msgtype}, got {len(raw)} bytes "
            f"that fail with {type(err).__name__}: {err}"
        ) from err


# ---------------------------------------------------------------------------------- output


def prepare_output(path: Path, *, overwrite: bool) -> None:
    """Make room for a new bag at ``path``.

    An existing path is refused, unless ``overwrite`` and it is a bag folder (only rosbag2
    files inside), which is then deleted. A folder with other files is never deleted.

    Raises:
        BagError: the path exists (without ``overwrite``), or is not a bag folder.
    """
    path = Path(path)
    if not path.exists():
        if not path.parent.is_dir():
            raise BagError(f"cannot write {path}: folder {path.parent} does not exist")
        return
    if not overwrite:
        raise BagError(f"output {path} exists already; pass --overwrite to replace it")
    if not path.is_dir():
        raise BagError(f"output {path} is a file, not a bag folder; not deleting it")
    other = [p.name for p in path.iterdir() if p.suffix not in _BAG_SUFFIXES or p.is_dir()]
    if other:
        raise BagError(
            f"output {path} holds files that are not rosbag2's ({', '.join(sorted(other)[:5])}); "
            "not deleting it, choose another output path"
        )
    shutil.rmtree(path)


def open_writer(path: Path, storage: str) -> Writer:
    """A rosbag2 writer (version 9) at ``path`` in ``storage`` (``mcap`` or ``sqlite3``)."""
    if storage not in STORAGES:
        raise BagError(f"unknown storage {storage!r}; expected one of {sorted(STORAGES)}")
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
    writer.open()
    return writer


def copy_connection(writer: Writer, conn: Connection) -> Connection:
    """A connection in ``writer`` for ``conn``'s messages as they are (type, definition, QoS)."""
    ext = conn.ext
    kwargs: dict[str, Any] = {
        "serialization_format": getattr(ext, "serialization_format", "cdr"),
        "offered_qos_profiles": getattr(ext, "offered_qos_profiles", ()),
    }
    if conn.msgdef.data and conn.digest:
        kwargs.update(msgdef=conn.msgdef.data, rihs01=conn.digest)
    else:  # an older bag without definitions: take them from the typestore
        kwargs["typestore"] = typestore()
    return writer.add_connection(conn.topic, conn.msgtype, **kwargs)


def write_image_bag(
    path: Path,
    images: Iterable[np.ndarray],
    *,
    jpeg: bool = False,
    rate_hz: float = 10.0,
    frame_id: str = "camera",
    storage: str = "mcap",
) -> str:
    """Write a camera bag: ``images`` on ``/camera/image_raw`` (rgb8) or
    ``/camera/image_raw/compressed`` (JPEG, quality 90), at ``rate_hz`` of bag time from 1 s,
    header stamps equal to the bag times. Returns the topic.
    """
    store = typestore()
    types = store.types
    topic = "/camera/image_raw/compressed" if jpeg else "/camera/image_raw"
    msgtype = COMPRESSED if jpeg else IMAGE
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage]) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=store)
        for i, rgb in enumerate(images):
            t = 1_000_000_000 + round(i * 1e9 / rate_hz)
            header = types["std_msgs/msg/Header"](
                stamp=types["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=t % 10**9),
                frame_id=frame_id,
            )
            if jpeg:
                ok, data = cv2.imencode(
                    ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
                )
                if not ok:
                    raise ValueError(f"cannot JPEG-encode frame {i} of shape {rgb.shape}")
                msg = types[msgtype](header=header, format="jpeg", data=data.reshape(-1))
            else:
                msg = types[msgtype](header=header, **image_fields(rgb, "rgb8"))
            writer.write(conn, t, store.serialize_cdr(msg, msgtype))
    return topic
