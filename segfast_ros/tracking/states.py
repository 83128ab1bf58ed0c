"""Track states, the values of ``Instance.track_state`` (``msg/Instance.msg``'s constants)."""

from __future__ import annotations

#: Not tracked: SegAny answers, and SegEvery with tracking off.
TRACK_NONE: int = 0
#: A SegEvery instance whose track is not born yet (``track_id`` 0).
TRACK_TENTATIVE: int = 1
#: A SegEvery instance continuing its track, or a prompted target found on this frame.
TRACK_TRACKED: int = 2
#: A prompted target not found on this frame: no mask, box where it was last seen.
TRACK_LOST: int = 3

#: State names for logs and reports.
STATE_NAMES: dict[int, str] = {
    TRACK_NONE: "none",
    TRACK_TENTATIVE: "tentative",
    TRACK_TRACKED: "tracked",
    TRACK_LOST: "lost",
}
