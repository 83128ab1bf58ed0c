"""Track IDs for SegEvery instances: the same object keeps its ID from frame to frame.

:class:`InstanceTracker` takes each SegEvery frame's instances and labels each one with a track
ID and state, as a multi-object tracker does with detections:

* **Association.** Every live track keeps the mask of the last instance it was matched to.
  A new frame's instances are matched to the tracks one-to-one by mask IoU, with the optimal
  assignment (:func:`~.associate.match`); a pair below ``match_iou`` is no match. Masks are
  compared exactly (:mod:`~.overlap`). A moving camera or object moves a mask by a few pixels
  between frames, which leaves most of its IoU with itself; what this cannot follow is an
  object that moves more than about its own size between two SegEvery frames.
* **Birth.** An unmatched instance starts a *tentative* track. Matched on ``min_hits``
  SegEvery frames in a row, the track is born: it gets the next ID (1, 2, 3, ...; never
  reused, not even after :meth:`InstanceTracker.reset`). Tracks born on the same frame take
  their IDs in reading order of their boxes (top to bottom, then left to right), so the IDs do
  not depend on the order the strategy lists its instances in. Until then the instances are
  labelled ID 0, state ``TRACK_TENTATIVE``; a tentative track missed once is dropped.
* **Death.** A born track missed on a frame keeps its ID and its last mask; matched again
  within ``max_missed`` frames it continues with the same ID, missed once more it dies.

The tracker is deterministic (the same frames give the same IDs) and log-free. It is not
thread-safe: one caller updates it (the node's SegEvery worker, or the replay).

A frame of another image size than the previous one (the camera was re-configured) cannot be
compared with the tracks' masks: the tracks are dropped, as by :meth:`InstanceTracker.reset`,
and the frame's instances start new tracks (new IDs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..masks import Instance
from .associate import match
from .overlap import Footprints, iou_matrix
from .settings import TrackingSettings
from .states import TRACK_TENTATIVE, TRACK_TRACKED


@dataclass(frozen=True)
class TrackLabel:
    """The track of one SegEvery instance on one frame.

    Attributes:
        track_id: the track's ID (1, 2, ...), or 0 while the track is tentative.
        state: ``TRACK_TENTATIVE`` or ``TRACK_TRACKED`` (:mod:`~.states`).
    """

    track_id: int
    state: int


@dataclass
class _Track:
    track_id: int  # 0 until born
    hits: int  # SegEvery frames in a row it was matched on
    missed: int  # SegEvery frames in a row it was not


class InstanceTracker:
    """Stable track IDs for SegEvery instances (see the module docstring for the rules).

    Example::

        tracker = InstanceTracker(TrackingSettings(min_hits=2, max_missed=3))
        for result in segevery_results:
            labels = tracker.update(result.instances, result.image_hw)
            # labels[i].track_id is instance i's ID (0 while tentative)
    """

    def __init__(self, settings: TrackingSettings | None = None) -> None:
        self._settings = _checked(TrackingSettings() if settings is None else settings)
        self._tracks: list[_Track] = []
        # the mask each track was last matched to, in the order of _tracks
        self._footprints: Footprints | None = None
        self._hw: tuple[int, int] | None = None
        self._next_id = 1

    @property
    def settings(self) -> TrackingSettings:
        return self._settings

    def configure(self, settings: TrackingSettings) -> None:
        """New thresholds from the next :meth:`update` on; the tracks and their IDs are kept.

        A born track already missed more often than a lowered ``max_missed`` dies on its next
        miss; a tentative track already matched ``min_hits`` times is born on its next match.
        """
        self._settings = _checked(settings)

    def reset(self) -> None:
        """Drop every track. IDs keep counting: an ID is never given to a second object."""
        self._tracks = []
        self._footprints = None
        self._hw = None

    def __len__(self) -> int:
        """Live tracks, tentative and born (missed ones included)."""
        return len(self._tracks)

    @property
    def track_ids(self) -> list[int]:
        """IDs of the born tracks alive now (seen or within ``max_missed``), ascending."""
        return sorted(t.track_id for t in self._tracks if t.track_id)

    def update(self, instances: Sequence[Instance], hw: tuple[int, int]) -> list[TrackLabel]:
        """Label one SegEvery frame's instances with their tracks, and advance the tracks.

        Args:
            instances: the frame's instances (any order); an empty frame is a miss for every
                track.
            hw: ``(H, W)`` of the frame (the size of every instance's RLE).

        Returns:
            One :class:`TrackLabel` per instance, in the order of ``instances``.

        Raises:
            ValueError: ``hw`` not two positive sizes, or an instance whose mask is of another
                size (the tracks are left as they were).
        """
        current = Footprints.from_instances(instances, hw)
        previous = self._footprints
        if previous is None or current.hw != self._hw:
            self.reset()  # another image size: the tracks' masks cannot be compared
            self._hw = current.hw
            previous = Footprints.empty(current.hw)
        matches = match(iou_matrix(previous, current), self._settings.match_iou)
        tracks = self._tracks
        seen: list[_Track | None] = [None] * len(instances)  # the track of each instance
        for row, col in matches.pairs:
            track = seen[col] = tracks[row]
            track.hits, track.missed = track.hits + 1, 0
        for row in matches.unmatched_rows:
            tracks[row].hits, tracks[row].missed = 0, tracks[row].missed + 1
        for col in matches.unmatched_cols:
            seen[col] = _Track(0, 1, 0)
        labelled = [t for t in seen if t is not None]  # all of them: each is matched or new
        self._births(labelled, [inst.box for inst in instances])
        # Tracks missed on this frame keep their last mask; the others take this frame's.
        kept = [int(row) for row in matches.unmatched_rows if self._alive(tracks[row])]
        self._tracks = [tracks[row] for row in kept] + labelled
        self._footprints = Footprints.concat([previous.take(kept), current])
        return [_label(track) for track in labelled]

    def _births(self, tracks: list[_Track], boxes: list[np.ndarray]) -> None:
        """Give IDs to this frame's tentative tracks with ``min_hits``, in box reading order."""
        due = [
            (tuple(np.nan_to_num(np.asarray(box, np.float64).reshape(4)[[1, 0, 3, 2]])), i)
            for i, (track, box) in enumerate(zip(tracks, boxes, strict=True))
            if track.track_id == 0 and track.hits >= self._settings.min_hits
        ]
        for _, i in sorted(due):
            tracks[i].track_id = self._next_id
            self._next_id += 1

    def _alive(self, track: _Track) -> bool:
        if track.track_id == 0:
            return track.missed == 0  # tentative: matched on every frame so far
        return track.missed <= self._settings.max_missed


def _label(track: _Track) -> TrackLabel:
    if track.track_id:
        return TrackLabel(track.track_id, TRACK_TRACKED)
    return TrackLabel(0, TRACK_TENTATIVE)


def _checked(settings: TrackingSettings) -> TrackingSettings:
    if not isinstance(settings, TrackingSettings):
        raise TypeError(f"expected TrackingSettings, got {type(settings).__name__}")
    return settings
