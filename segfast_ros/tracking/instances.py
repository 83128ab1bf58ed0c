"""Track IDs for SegEvery instances: the same object keeps its ID from frame to frame.

:class:`InstanceTracker` takes each SegEvery frame's instances and labels each one with a track
ID and state, as a multi-object tracker does with detections:

* **Association, a cascade.** Every live track keeps the mask of the last instance it was
  matched to. A new frame's instances are matched to the tracks one-to-one by mask IoU
  (compared exactly, :mod:`~.overlap`), with the optimal assignment (:func:`~.associate.match`;
  a pair below ``match_iou`` is no match), in three stages, each on the instances the stages
  before it left:

  1. the born tracks seen on the previous frame;
  2. the born tracks missed since (*lost*), each mask first moved by the track's velocity times
     the frames since it was seen (an object goes on moving while it is hidden; between two
     consecutive frames it moves a few pixels, most of a mask's IoU with itself, so the tracks
     of stage 1 are not moved);
  3. the tentative tracks.

  So a lost track, or a tentative one on a second mask of the same object, cannot take an
  instance from a track that was following it.
* **Duplicates.** SegEvery may return one object twice (two masks of IoU
  >= :data:`DUPLICATE_IOU`). The instances are ranked (instances of born tracks, oldest ID
  first; then tentative tracks, most frames first; then the unmatched ones; ties by score, then
  in reading order), and an instance that duplicates one ranked before it does not continue
  its track on this frame (a born track counts a miss: it dies if the duplication lasts) nor
  start one: it is labelled ID 0, ``TRACK_TENTATIVE``. One object, one ID.
* **Birth.** An unmatched instance (not a duplicate) starts a *tentative* track. Matched on
  ``min_hits`` SegEvery frames in a row, the track is born: it gets the next ID (1, 2, 3, ...;
  never reused, not even after :meth:`InstanceTracker.reset`). Tracks born on the same frame
  take their IDs in reading order of their boxes (top to bottom, then left to right), so the
  IDs do not depend on the order the strategy lists its instances in. Until then the instances
  are labelled ID 0, state ``TRACK_TENTATIVE``; a tentative track missed once is dropped.
* **Death.** A born track missed on a frame keeps its ID, its last mask and its velocity (box
  centre, pixels per frame, smoothed over its matches); matched again within ``max_missed``
  frames it continues with the same ID, missed once more it dies.

The tracker is deterministic (the same frames give the same IDs) and log-free. It is not
thread-safe: one caller updates it (the node's SegEvery worker, or the replay).

A frame of another image size than the previous one (the camera was re-configured) cannot be
compared with the tracks' masks: the tracks are dropped, as by :meth:`InstanceTracker.reset`,
and the frame's instances start new tracks (new IDs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..masks import Instance
from .associate import match
from .overlap import Footprints, intersections, iou_matrix
from .settings import TrackingSettings
from .states import TRACK_TENTATIVE, TRACK_TRACKED

#: Two instances of one frame with at least this mask IoU are one object segmented twice.
DUPLICATE_IOU: float = 0.6
#: Weight of the newest observed motion in a track's velocity (exponential smoothing).
VELOCITY_SMOOTHING: float = 0.5


@dataclass(frozen=True)
class TrackLabel:
    """The track of one SegEvery instance on one frame.

    Attributes:
        track_id: the track's ID (1, 2, ...), or 0 while the track is tentative (or the
            instance duplicates another instance's object).
        state: ``TRACK_TENTATIVE`` or ``TRACK_TRACKED`` (:mod:`~.states`).
    """

    track_id: int
    state: int


_TENTATIVE = TrackLabel(0, TRACK_TENTATIVE)


@dataclass
class _Track:
    track_id: int  # 0 until born
    hits: int  # SegEvery frames in a row it was matched on
    missed: int  # SegEvery frames in a row it was not
    x: float  # box centre where it was last matched, pixels
    y: float
    vx: float = 0.0  # velocity of the box centre, pixels per frame
    vy: float = 0.0
    moved: bool = False  # velocity measured (matched twice)
    label: TrackLabel = field(default_factory=lambda: _TENTATIVE)  # what its instance gets

    def observe(self, x: float, y: float) -> None:
        """Matched on this frame with its box centre at ``(x, y)``."""
        frames = self.missed + 1
        vx, vy = (x - self.x) / frames, (y - self.y) / frames
        if self.moved:
            keep = 1.0 - VELOCITY_SMOOTHING
            vx, vy = (
                VELOCITY_SMOOTHING * vx + keep * self.vx,
                VELOCITY_SMOOTHING * vy + keep * self.vy,
            )
        self.x, self.y, self.vx, self.vy, self.moved = x, y, vx, vy, True
        self.hits, self.missed = self.hits + 1, 0

    def offset(self) -> tuple[int, int]:
        """Whole pixels its last mask has moved by now, if it kept its velocity."""
        frames = self.missed + 1
        return round(self.vx * frames), round(self.vy * frames)


class InstanceTracker:
    """Stable track IDs for SegEvery instances (see the module docstring for the rules).

    Example::

        tracker = InstanceTracker(TrackingSettings(min_hits=2, max_missed=6))
        for result in segevery_results:
            labels = tracker.update(result.instances, result.image_hw)
            # labels[i].track_id is instance i's ID (0 while tentative)
    """

    def __init__(self, settings: TrackingSettings | None = None) -> None:
        self._settings = _checked(TrackingSettings() if settings is None else settings)
        # The lost tracks (missed > 0) first, then the ones matched on the last frame.
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
        if self._footprints is None or current.hw != self._hw:
            self.reset()  # another image size: the tracks' masks cannot be compared
            self._hw = current.hw
            self._footprints = Footprints.empty(current.hw)
        boxes = _boxes(instances)
        # current first: its block index is built once, for this and for the duplicates
        iou = iou_matrix(current, self._predicted()).T
        owner = self._associate(iou)
        duplicate = np.zeros(len(instances), bool)
        duplicate[
            _duplicates(iou, owner, current, boxes, lambda: self._rank(owner, instances, boxes))
        ] = True
        owner[duplicate] = -1
        seen, kept = self._advance(owner, duplicate, boxes)
        self._births(seen, boxes)
        labelled = [col for col, track in enumerate(seen) if track is not None]
        self._tracks = [self._tracks[row] for row in kept] + [seen[col] for col in labelled]
        fresh = current if len(labelled) == len(current) else current.take(labelled)
        self._footprints = (
            Footprints.concat([self._footprints.take(kept), fresh]) if kept else fresh
        )
        return [_TENTATIVE if track is None else track.label for track in seen]

    def _advance(
        self, owner: np.ndarray, duplicate: np.ndarray, boxes: np.ndarray
    ) -> tuple[list[_Track | None], list[int]]:
        """Matched tracks take their instance's position, missed ones count the miss, and
        unmatched instances that duplicate nothing start tentative tracks. Returns the track of
        each instance (None: a duplicate) and the missed tracks still alive, in order."""
        tracks = self._tracks
        centres = (0.5 * (boxes[:, :2] + boxes[:, 2:])).tolist()
        seen: list[_Track | None] = [None] * len(owner)
        matched = [False] * len(tracks)
        for col, (row, twin) in enumerate(zip(owner.tolist(), duplicate.tolist(), strict=True)):
            if row >= 0:
                seen[col] = tracks[row]
                tracks[row].observe(*centres[col])
                matched[row] = True
            elif not twin:
                seen[col] = _Track(0, 1, 0, *centres[col])
        kept = []
        for row, track in enumerate(tracks):
            if not matched[row]:
                track.hits, track.missed = 0, track.missed + 1
                if self._alive(track):
                    kept.append(row)
        return seen, kept

    def _predicted(self) -> Footprints:
        """The tracks' masks, the lost ones moved to where their velocity puts them now."""
        footprints = self._footprints
        lost = sum(1 for t in self._tracks if t.missed)  # the first ones
        offsets = np.array([t.offset() for t in self._tracks[:lost]], np.int64).reshape(-1, 2)
        if not offsets.any():
            return footprints
        moved = footprints.take(np.arange(lost)).shifted(offsets[:, 0], offsets[:, 1])
        return Footprints.concat([moved, footprints.take(np.arange(lost, len(footprints)))])

    def _associate(self, iou: np.ndarray) -> np.ndarray:
        """The track (row of ``iou``) each instance (column) is matched to, -1 for none: the
        cascade of the module docstring."""
        # 0: born and seen on the last frame, 1: born and lost, 2: tentative
        stage = np.array([2 if not t.track_id else int(t.missed > 0) for t in self._tracks])
        owner = np.full(iou.shape[1], -1, np.int64)
        for level in range(3):
            rows, free = np.flatnonzero(stage == level), np.flatnonzero(owner < 0)
            if not len(rows) or not len(free):
                continue
            if len(rows) == len(stage) and len(free) == len(owner):
                pairs = match(iou, self._settings.match_iou).pairs  # one stage: all of it
            else:
                pairs = match(iou[np.ix_(rows, free)], self._settings.match_iou).pairs
                pairs = np.stack([rows[pairs[:, 0]], free[pairs[:, 1]]], axis=1)
            owner[pairs[:, 1]] = pairs[:, 0]
        return owner

    def _rank(
        self, owner: np.ndarray, instances: Sequence[Instance], boxes: np.ndarray
    ) -> np.ndarray:
        """The instances in the order they keep their object against a duplicate: born tracks
        by ID (oldest first), then tentative tracks by frames matched, then the unmatched
        ones; ties by score (highest first), then in box reading order."""
        tracks = self._tracks
        ids = np.array([tracks[r].track_id if r >= 0 else 0 for r in owner], np.int64)
        hits = np.array([tracks[r].hits if r >= 0 else 0 for r in owner], np.int64)
        scores = np.nan_to_num(np.array([float(inst.score) for inst in instances]))
        group = np.where(owner < 0, 2, np.where(ids > 0, 0, 1))
        return np.lexsort((boxes[:, 0], boxes[:, 1], -scores, -hits, ids, group))

    def _births(self, tracks: list[_Track | None], boxes: np.ndarray) -> None:
        """Give IDs to this frame's tentative tracks with ``min_hits``, in box reading order."""
        due = [
            (tuple(boxes[i, [1, 0, 3, 2]].tolist()), i)
            for i, track in enumerate(tracks)
            if track is not None and not track.track_id and track.hits >= self._settings.min_hits
        ]
        for _, i in sorted(due):
            track = tracks[i]
            track.track_id, track.label = self._next_id, TrackLabel(self._next_id, TRACK_TRACKED)
            self._next_id += 1

    def _alive(self, track: _Track) -> bool:
        if track.track_id == 0:
            return track.missed == 0  # tentative: matched on every frame so far
        return track.missed <= self._settings.max_missed


def _duplicates(
    iou: np.ndarray, owner: np.ndarray, current: Footprints, boxes: np.ndarray, rank: Callable
) -> np.ndarray:
    """Indices of the instances whose mask has IoU >= :data:`DUPLICATE_IOU` with an instance
    before it in ``rank()`` that is not itself a duplicate.

    Args:
        iou: ``(tracks, instances)`` the association's IoU.
        owner: the track of each instance, -1 for none.
        current: the instances' footprints (their block index built: joined, not rebuilt).
        boxes: ``(N, 4)`` their boxes.
        rank: gives the instances in the order they keep their object (called only when
            there are duplicates to settle).
    """
    pairs = _maybe_duplicates(iou, owner, current.areas, boxes)
    if not len(pairs):
        return np.zeros(0, np.int64)
    who, index = np.unique(pairs, return_inverse=True)
    index = index.reshape(-1, 2)
    inter = intersections(current, current.take(who))[who[index[:, 0]], index[:, 1]]
    areas = current.areas[pairs]
    pairs = pairs[inter >= DUPLICATE_IOU * (areas[:, 0] + areas[:, 1] - inter)]
    twins: dict[int, set[int]] = {}
    for i, j in pairs.tolist():
        twins.setdefault(i, set()).add(j)
        twins.setdefault(j, set()).add(i)
    kept: set[int] = set()
    out = []
    for i in rank().tolist():
        if i in twins:
            (out.append if twins[i] & kept else kept.add)(i)
    return np.array(sorted(out), np.int64)


def _maybe_duplicates(
    iou: np.ndarray, owner: np.ndarray, areas: np.ndarray, boxes: np.ndarray
) -> np.ndarray:
    """``(K, 2)`` the pairs ``i < j`` of instances whose masks may have IoU >=
    :data:`DUPLICATE_IOU`, by two bounds that need no mask:

    * IoU distance (``1 - IoU``) is a metric: an instance's track is no more than
      ``1 - DUPLICATE_IOU`` farther from a duplicate of the instance than from the instance;
    * a pair's intersection ``m`` is at most the smaller area and its boxes' intersection, so
      its IoU is at most ``m / (area_i + area_j - m)``.
    """
    n = len(owner)
    possible = np.ones((n, n), bool)
    matched = np.flatnonzero(owner >= 0)
    if len(matched):
        rows = iou[owner[matched]]
        own = rows[np.arange(len(matched)), matched]
        near = np.abs(rows - own[:, None]) <= 1.0 - DUPLICATE_IOU + 1e-6
        if len(matched) == n:
            possible = near
        else:
            possible[matched] = near
    i, j = np.nonzero(possible & possible.T)
    i, j = i[i < j], j[i < j]
    area_i, area_j = areas[i].astype(np.float64), areas[j].astype(np.float64)
    width = np.minimum(boxes[i, 2], boxes[j, 2]) - np.maximum(boxes[i, 0], boxes[j, 0])
    height = np.minimum(boxes[i, 3], boxes[j, 3]) - np.maximum(boxes[i, 1], boxes[j, 1])
    most = np.minimum(np.clip(width, 0, None) * np.clip(height, 0, None), area_i)
    most = np.minimum(most, area_j)
    keep = (most > 0) & (most >= DUPLICATE_IOU * (area_i + area_j - most))
    return np.stack([i[keep], j[keep]], axis=1)


def _boxes(instances: Sequence[Instance]) -> np.ndarray:
    """``(N, 4)`` float64 XYXY boxes of the instances (NaN as 0)."""
    boxes = np.zeros((len(instances), 4))
    for i, inst in enumerate(instances):
        boxes[i] = inst.box
    return np.nan_to_num(boxes)


def _checked(settings: TrackingSettings) -> TrackingSettings:
    if not isinstance(settings, TrackingSettings):
        raise TypeError(f"expected TrackingSettings, got {type(settings).__name__}")
    return settings
