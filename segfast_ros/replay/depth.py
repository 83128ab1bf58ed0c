"""Depth for the replay: which topics carry it, and pairing it with the colour frames in the
reader, on header stamps, with a bounded look-ahead.

A bag holds messages in arrival order. An RGB-D driver publishes the colour image, the depth
image aligned to it and both CameraInfos with (nearly) the same header stamp, but the depth
image often arrives a little later than the colour image it belongs to (alignment takes time),
so at the colour frame the reader may not have read its depth yet. :class:`DepthPairing` holds
each selected colour frame back until its depth can no longer improve, and attaches to it the
depth and CameraInfo messages the caller's :class:`~segfast_ros.pipeline.spatial.Spatial`
must have been given before the frame is lifted. The caller feeds them in that order and lifts
the frame by its stamp, so the pairing (nearest stamp within ``depth.sync_tolerance``, as the
node's) does not depend on how fast any thread runs: the same bag gives the same 3D.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..pipeline.depth import DepthError
from ..pipeline.frames import stamp_to_ns
from ..pipeline.render import InstanceRecord
from ..pipeline.spatial import Spatial
from ..spatial.camera import CameraInfoError
from ..spatial.lift import LiftSettings
from ..topics import camera_info_sibling
from . import bags
from .items import DecodedFrame
from .summary import DepthReport, StageTimes

#: What a depth-side input message is.
DEPTH, COLOUR_INFO, DEPTH_INFO = "depth", "colour_info", "depth_info"

#: Depth messages read after a colour frame before it is released whatever their stamps: with
#: as many read before it, the caller's depth cache (:data:`CACHE_SIZE`) still holds every
#: candidate when the frame is lifted.
LOOKAHEAD_DEPTHS = 8
#: Bag time after a colour frame before it is released whatever came (a depth stream that
#: stopped must not hold the colour frames back any longer).
LOOKAHEAD_NS = 1_000_000_000
#: Colour frames held at most (decoded images: a bound on the reader's memory).
LOOKAHEAD_FRAMES = 16
#: Depth frames the caller's :class:`~segfast_ros.pipeline.spatial.Spatial` keeps.
CACHE_SIZE = 2 * LOOKAHEAD_DEPTHS + 1


@dataclass(frozen=True)
class DepthTopics:
    """The depth-side topics of a replay.

    Attributes:
        depth: the depth image topic (``sensor_msgs/Image``).
        colour_info: the colour image's CameraInfo topic, or None (the bag has none).
        depth_info: the depth image's CameraInfo topic, or None.
        defaults: which of the CameraInfo topics were found as siblings, not given.
    """

    depth: str
    colour_info: str | None = None
    depth_info: str | None = None
    defaults: tuple[str, ...] = ()

    def kinds(self) -> dict[str, str]:
        """Topic -> :data:`DEPTH`, :data:`COLOUR_INFO` or :data:`DEPTH_INFO`. One topic may
        be both CameraInfos (a depth image aligned to colour shares its CameraInfo): then it is
        the colour one."""
        kinds = {self.depth: DEPTH}
        for topic, kind in ((self.depth_info, DEPTH_INFO), (self.colour_info, COLOUR_INFO)):
            if topic is not None:
                kinds[topic] = kind
        return kinds


def _check_topic(reader: Any, topic: str, msgtype: str, flag: str) -> None:
    """Raise a :class:`~.bags.BagError` listing the bag's topics unless ``topic`` is a
    ``msgtype`` topic of the bag."""
    if topic not in reader.topics:
        raise bags.BagError(
            f"{flag} {topic!r} is not in the bag; expected a {msgtype} topic. Topics in the "
            f"bag:\n{bags.describe_topics(reader)}"
        )
    if reader.topics[topic].msgtype != msgtype:
        raise bags.BagError(
            f"{flag} {topic!r} has type {reader.topics[topic].msgtype}; expected {msgtype} "
            f"(a depth image is 16UC1 in millimetres or 32FC1 in metres). Topics in the "
            f"bag:\n{bags.describe_topics(reader)}"
        )


def select_depth_topics(
    reader: Any,
    image_topic: str,
    depth_topic: str,
    colour_info: str | None = None,
    depth_info: str | None = None,
) -> DepthTopics:
    """The depth topic and the CameraInfo topics to read, checked against the bag.

    A CameraInfo topic not given defaults to the sibling ``camera_info`` of its image topic
    when the bag has one of that type; a given one must be in the bag.

    Raises:
        bags.BagError: a given topic missing or of another type, the depth topic the image
            topic, or no CameraInfo at all (3D needs intrinsics); the message lists the bag's
            topics.
    """
    _check_topic(reader, depth_topic, bags.IMAGE, "--depth-topic")
    if depth_topic == image_topic:
        raise bags.BagError(
            f"--depth-topic {depth_topic!r} is the image topic being segmented; expected the "
            f"depth image aligned to it. Topics in the bag:\n{bags.describe_topics(reader)}"
        )
    defaults = []
    chosen = {}
    for key, given, image, flag in (
        ("colour_info", colour_info, image_topic, "--camera-info-topic"),
        ("depth_info", depth_info, depth_topic, "--depth-info-topic"),
    ):
        if given is not None:
            _check_topic(reader, given, bags.CAMERA_INFO, flag)
            chosen[key] = given
            continue
        sibling = camera_info_sibling(image)
        info = reader.topics.get(sibling)
        if info is not None and info.msgtype == bags.CAMERA_INFO:
            chosen[key] = sibling
            defaults.append(key)
    if not chosen:
        raise bags.BagError(
            f"no CameraInfo for 3D: the bag has neither {camera_info_sibling(image_topic)} nor "
            f"{camera_info_sibling(depth_topic)}; pass --camera-info-topic (the colour image's "
            f"{bags.CAMERA_INFO}). Topics in the bag:\n{bags.describe_topics(reader)}"
        )
    return DepthTopics(depth_topic, defaults=tuple(defaults), **chosen)


@dataclass
class DepthInput:
    """A depth image or a CameraInfo message, deserialized, to feed the caller's ``Spatial``.

    Attributes:
        kind: :data:`DEPTH`, :data:`COLOUR_INFO` or :data:`DEPTH_INFO`.
        msg: the message.
        bag_time: its bag time (ns).
    """

    kind: str
    msg: Any
    bag_time: int


@dataclass
class _Held:
    frame: DecodedFrame
    stamp: int
    depths_after: int = 0


class DepthPairing:
    """The reader's side of the depth pairing: colour frames held until their depth is in.

    Each selected colour frame (stamp ``s``) is held until one of:

    * a depth image stamped after ``s + tolerance`` was read (depth stamps rise in arrival
      order, so no later one is nearer) and each CameraInfo topic has given a message;
    * :data:`LOOKAHEAD_DEPTHS` depth images were read after it, or :data:`LOOKAHEAD_NS` of bag
      time went by, or more than :data:`LOOKAHEAD_FRAMES` frames are held (the bound);
    * the bag ends.

    Never an unbounded buffer: a depth stream that stopped, lags by seconds or has stamps from
    another clock would otherwise hold every colour frame (decoded images) until the end of
    the bag. The bounds release it with whatever came; the caller then finds no depth within
    the tolerance and writes that frame 2D only, saying why.

    Frames leave in the order they came. Every depth-side message goes with the frame it must
    precede in the caller: held frames take those read while they wait; with none held, the
    latest :data:`LOOKAHEAD_DEPTHS` depth images and the latest CameraInfo of each kind wait
    for the next frame (older depth images could not be any frame's nearest: dropped, counted).

    Args:
        tolerance_ns: the pairing tolerance (``depth.sync_tolerance``).
        info_kinds: the CameraInfo kinds the bag has (a frame waits for their first message).

    Attributes:
        dropped: depth images never handed on (none of them near a selected frame).
    """

    def __init__(self, tolerance_ns: int, info_kinds: frozenset[str] = frozenset()) -> None:
        self.tolerance_ns, self.info_kinds = tolerance_ns, info_kinds
        self.dropped = 0
        self._held: deque[_Held] = deque()
        self._depths: deque[DepthInput] = deque(maxlen=LOOKAHEAD_DEPTHS)
        self._infos: dict[str, DepthInput] = {}
        self._seen: set[str] = set()
        self._latest_depth: int | None = None

    def add_frame(self, frame: DecodedFrame) -> list[DecodedFrame]:
        """Hold a selected colour frame; returns the frames released (in order)."""
        frame.depth_inputs = [*self._infos.values(), *self._depths]
        self._infos.clear()
        self._depths.clear()
        self._held.append(_Held(frame, stamp_to_ns(frame.msg.header.stamp)))
        return self._release(frame.bag_time)

    def add_input(self, item: DepthInput) -> list[DecodedFrame]:
        """A depth image or CameraInfo read; returns the frames it releases (in order)."""
        self._seen.add(item.kind)
        if item.kind == DEPTH:
            stamp = stamp_to_ns(item.msg.header.stamp)
            self._latest_depth = (
                stamp if self._latest_depth is None else max(stamp, self._latest_depth)
            )
            for held in self._held:
                held.depths_after += 1
        if self._held:
            self._held[0].frame.depth_inputs.append(item)
        elif item.kind == DEPTH:
            self.dropped += len(self._depths) == self._depths.maxlen
            self._depths.append(item)
        else:
            self._infos[item.kind] = item
        return self._release(item.bag_time)

    def advance(self, bag_time: int) -> list[DecodedFrame]:
        """Another message read at ``bag_time``: the frames the look-ahead window lets go."""
        return self._release(bag_time)

    def finish(self) -> list[DecodedFrame]:
        """The bag ended: every frame still held, in order."""
        released = [held.frame for held in self._held]
        self._held.clear()
        self.dropped += len(self._depths)
        self._depths.clear()
        return released

    def _release(self, bag_time: int) -> list[DecodedFrame]:
        released = []
        while self._held and self._done(self._held[0], bag_time):
            released.append(self._held.popleft().frame)
        return released

    def _done(self, held: _Held, bag_time: int) -> bool:
        beyond = (
            self._latest_depth is not None and self._latest_depth > held.stamp + self.tolerance_ns
        )
        return (
            (beyond and self.info_kinds <= self._seen)
            or held.depths_after >= LOOKAHEAD_DEPTHS
            or bag_time > held.frame.bag_time + LOOKAHEAD_NS
            or len(self._held) > LOOKAHEAD_FRAMES
        )


class DepthLift:
    """The caller's side: a :class:`~segfast_ros.pipeline.spatial.Spatial` fed with each
    frame's depth inputs, lifting the frame's records, counting into the summary.

    Bad input never stops the replay: a depth image of another encoding or a CameraInfo with
    K all zero is counted by reason (the previous good CameraInfo stays in use); a frame with
    no depth near its stamp, no CameraInfo or sizes that cannot be matched is written 2D only
    and counted by the reason :meth:`Spatial.lift` gives.

    Args:
        settings: the lift settings.
        tolerance_ns: the pairing tolerance (``depth.sync_tolerance``).
        report: where the counts go.
    """

    def __init__(
        self,
        settings: LiftSettings,
        tolerance_ns: int,
        report: DepthReport,
    ) -> None:
        self.spatial = Spatial(settings, tolerance_ns, CACHE_SIZE)
        self.report = report
        self._counted = -1  # the last frame index counted in frames_3d / frames_2d

    def feed(self, inputs: list[DepthInput]) -> None:
        """Give the spatial state a frame's depth inputs, in order."""
        put = {
            DEPTH: self.spatial.put_depth,
            COLOUR_INFO: self.spatial.set_colour_info,
            DEPTH_INFO: self.spatial.set_depth_info,
        }
        for item in inputs:
            self.report.used += item.kind == DEPTH
            try:
                put[item.kind](item.msg)
            except DepthError as err:
                self.report.bad_depth[str(err)] += 1
            except CameraInfoError as err:
                which = "colour" if item.kind == COLOUR_INFO else "depth"
                self.report.bad_info[f"{which} CameraInfo: {err}"] += 1

    def lift(
        self, frame: DecodedFrame, records: list[InstanceRecord], times: StageTimes
    ) -> list[InstanceRecord]:
        """``records`` of ``frame`` with their 3D (unchanged when the frame has no depth);
        the frame counted once, as lifted or 2D only with the reason; the time as ``lift``."""
        start = time.perf_counter()
        outcome = self.spatial.lift(frame.key, frame.image.shape[:2], records)
        times.add("lift", 1e3 * (time.perf_counter() - start), frame.row)
        report = self.report
        if frame.index > self._counted:
            self._counted = frame.index
            if outcome.ok:
                report.frames_3d += 1
            else:
                report.frames_2d[outcome.reason] += 1
        for lifted in outcome.lifted:
            report.positions_valid += lifted.valid
            report.positions_invalid += not lifted.valid
        return outcome.records
