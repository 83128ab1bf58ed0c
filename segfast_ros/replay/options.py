"""What a replay is asked to do: the frames to take, the outputs to write, the settings to report.

Plain values, checked once (:meth:`ReplayOptions.check`) before any bag is opened.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spatial.lift import LiftSettings
from ..tracking.settings import TrackingSettings
from .prompts import ScriptedPrompt

#: ``--set`` keys with this prefix are tracking settings, as the node's ``tracking.*``.
TRACKING_PREFIX = "tracking."
#: ``--set`` keys with this prefix are depth settings, as the node's ``depth.*``: the lift
#: settings' fields and ``depth.sync_tolerance`` (seconds).
DEPTH_PREFIX = "depth."
#: The node's ``depth.sync_tolerance`` default: a depth frame pairs with a colour frame whose
#: header stamp is at most this far (s).
SYNC_TOLERANCE_S = 0.03


@dataclass
class ReplayOptions:
    """What to replay and what to write.

    Attributes:
        topic: image topic to segment (None: the bag's only image topic).
        every: process every N-th message of the topic (1: all).
        rate_hz: instead, process at most this many frames per second of bag time: the first
            frame in each ``1 / rate_hz`` slot after the topic's first frame.
        segevery_rate_hz: run SegEvery on at most this many processed frames per second of bag
            time (as the node's ``segevery.rate``); None, on every processed frame; 0, never
            (only the encoder and the scripted prompts run).
        namespace: prefix of the output topics (the node's namespace and name).
        copy_input: copy every input topic into the output bag, unchanged.
        overlay_topic: also write overlays to ``<namespace>/overlay``.
        storage: output storage, ``mcap`` or ``sqlite3``.
        overwrite: replace an existing output bag.
        prompts: scripted SegAny calls and prompted targets.
        tracking: SegEvery track IDs' and prompted targets' thresholds (as the node's
            ``tracking.*`` parameters).
        coco: write COCO results JSON here.
        overlay_video: write an mp4 of the overlays here.
        contact_sheet: write a PNG contact sheet of overlays here.
        progress: draw a progress line on stderr.
        queue_size: frames buffered between the threads.
        model: what runs the encoder and decoder, and why it was chosen (for the summary).
        segevery_settings: the SegEvery settings given to the strategy, those that differ
            from its defaults (for the summary).
        segevery_settings_source: where those settings come from (for the summary).
        depth_topic: depth image topic (``sensor_msgs/Image``, 16UC1 mm or 32FC1 m, aligned
            to the colour image); None, 2D only.
        camera_info_topic: the colour image's ``sensor_msgs/CameraInfo`` (None: the image
            topic's sibling ``camera_info`` when the bag has it).
        depth_info_topic: the depth image's CameraInfo (None: the depth topic's sibling
            ``camera_info`` when the bag has it).
        depth: how masks are lifted to 3D (as the node's ``depth.*`` parameters).
        sync_tolerance_s: a depth frame pairs with the colour frame whose header stamp is at
            most this far (as the node's ``depth.sync_tolerance``).
    """

    topic: str | None = None
    every: int = 1
    rate_hz: float | None = None
    segevery_rate_hz: float | None = None
    namespace: str = "/segfast"
    copy_input: bool = False
    overlay_topic: bool = False
    storage: str = "mcap"
    overwrite: bool = False
    prompts: Sequence[ScriptedPrompt] = ()
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    coco: Path | None = None
    overlay_video: Path | None = None
    contact_sheet: Path | None = None
    progress: bool = False
    queue_size: int = 4
    model: str = ""
    segevery_settings: Mapping[str, Any] = field(default_factory=dict)
    segevery_settings_source: str = ""
    depth_topic: str | None = None
    camera_info_topic: str | None = None
    depth_info_topic: str | None = None
    depth: LiftSettings = field(default_factory=LiftSettings)
    sync_tolerance_s: float = SYNC_TOLERANCE_S

    def tracking_changes(self) -> dict[str, Any]:
        """The tracking settings that differ from the defaults (for the summary)."""
        return _changes(self.tracking, TrackingSettings())

    def depth_changes(self) -> dict[str, Any]:
        """The depth settings that differ from the defaults (for the summary)."""
        changes = _changes(self.depth, LiftSettings())
        if self.sync_tolerance_s != SYNC_TOLERANCE_S:
            changes["sync_tolerance"] = self.sync_tolerance_s
        return changes

    def check(self) -> None:
        if self.every < 1:
            raise ValueError(f"--every must be >= 1, got {self.every}")
        if self.rate_hz is not None and not (math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"--rate must be a positive number of Hz, got {self.rate_hz}")
        rate = self.segevery_rate_hz
        if rate is not None and not (math.isfinite(rate) and rate >= 0):
            raise ValueError(f"--segevery-rate must be >= 0 Hz, got {rate}")
        if self.rate_hz is not None and self.every != 1:
            raise ValueError("give --every or --rate, not both")
        if not self.namespace.startswith("/"):
            raise ValueError(f"the output namespace must start with '/', got {self.namespace!r}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        tolerance = self.sync_tolerance_s
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"depth.sync_tolerance must be >= 0 s, got {tolerance}")
        if self.depth_topic is None:
            given = [
                flag
                for flag, value in (
                    ("--camera-info-topic", self.camera_info_topic),
                    ("--depth-info-topic", self.depth_info_topic),
                )
                if value is not None
            ]
            if given:
                raise ValueError(f"{' and '.join(given)} need --depth-topic (3D needs depth)")


def _changes(settings: Any, default: Any) -> dict[str, Any]:
    """The fields of a settings dataclass that differ from ``default``'s."""
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if getattr(settings, f.name) != getattr(default, f.name)
    }


def split_tracking(
    pairs: Sequence[tuple[str, object]],
) -> tuple[TrackingSettings, list[tuple[str, object]]]:
    """``--set`` pairs split: the ``tracking.<field>`` ones as settings, the rest (SegEvery's).

    Raises:
        ValueError: an unknown tracking field (the accepted ones listed) or a value out of its
            range, named with the ``tracking.`` prefix as given.
    """
    given, rest = _prefixed(pairs, TRACKING_PREFIX)
    try:
        settings = TrackingSettings.from_dict(given)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--set {TRACKING_PREFIX}*: {err}") from None
    return settings, rest


def split_depth(
    pairs: Sequence[tuple[str, object]],
) -> tuple[LiftSettings, float, list[tuple[str, object]]]:
    """``--set`` pairs split: the ``depth.<field>`` ones as lift settings, ``depth.sync_tolerance``
    (seconds; default :data:`SYNC_TOLERANCE_S`), and the rest.

    Raises:
        ValueError: an unknown depth field (the accepted ones listed), a value out of its
            range, or a tolerance that is not a number; named with the ``depth.`` prefix.
    """
    given, rest = _prefixed(pairs, DEPTH_PREFIX)
    tolerance = given.pop("sync_tolerance", SYNC_TOLERANCE_S)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise ValueError(
            f"--set {DEPTH_PREFIX}sync_tolerance: expected seconds (a number), got {tolerance!r}"
        )
    try:
        settings = LiftSettings.from_dict(given)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"--set {DEPTH_PREFIX}*: {err} (also accepted: {DEPTH_PREFIX}sync_tolerance)"
        ) from None
    return settings, float(tolerance), rest


def _prefixed(
    pairs: Sequence[tuple[str, object]], prefix: str
) -> tuple[dict[str, object], list[tuple[str, object]]]:
    """The pairs whose key starts with ``prefix`` (as ``{key without it: value}``), and the
    others in order."""
    given = {k.removeprefix(prefix): v for k, v in pairs if k.startswith(prefix)}
    return given, [(k, v) for k, v in pairs if not k.startswith(prefix)]
