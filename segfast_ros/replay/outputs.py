"""What the replay writes besides the bag: COCO results, an overlay video, a contact sheet, and
the progress line. numpy, cv2 and json only.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from ..pipeline.render import InstanceRecord
from ..tracking.states import TRACK_LOST

#: The category of class-agnostic SegEvery instances.
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
#: The category of prompted targets' masks: a COCO evaluation against class-agnostic ground
#: truth (category 1) leaves them out, so they never count twice against SegEvery's.
TARGET_CATEGORY = {"id": 2, "name": "target", "supercategory": "object"}
#: ``source`` of an annotation, by category.
SOURCES = {CATEGORY["id"]: "segevery", TARGET_CATEGORY["id"]: "target"}


class CocoResults:
    """COCO instance-segmentation results, one image per processed frame that has any.

    The file has COCO's dataset layout (``images``, ``annotations``, ``categories``) so that it
    opens as is; ``annotations`` alone is the results list that ``COCO.loadRes`` takes. Masks
    are uncompressed RLE (``{"size": [H, W], "counts": [...]}``, column-major), which
    pycocotools reads. Image ``file_name`` is ``<topic>@<stamp_ns>``: the frame's topic and
    header stamp.

    Two kinds of annotation, told apart by ``category_id`` and ``source``:

    * SegEvery instances: category 1 (``object``), ``source`` ``"segevery"``;
    * prompted targets found on the frame: category 2 (``target``), ``source`` ``"target"``.
      A target lost on a frame has no annotation there (it has no mask); the output bag's
      ``<ns>/tracks`` reports it with ``track_state`` lost.

    Every annotation also carries ``score`` (predicted IoU), ``stability``, the ``prompt``
    that produced it (for a target: the box decoded on that frame), ``track_id`` (the SegEvery
    track or target ID; 0 for a SegEvery instance whose track is not born yet) and
    ``track_state`` (``Instance.TRACK_*``: 1 tentative, 2 tracked).

    With depth (``--depth-topic``), an annotation whose instance has a valid 3D position also
    carries ``position_3d`` (an extra key, not COCO's): ``centroid``, ``min`` and ``max``
    (``[x, y, z]`` metres in the image's ``frame_id``, the colour camera's optical frame),
    ``num_points`` and ``valid_fraction``, as ``Instance.position_3d`` has them.
    """

    def __init__(self, info: dict[str, Any] | None = None) -> None:
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.info = dict(info or {})
        self._image_ids: dict[int, int] = {}

    def image(
        self,
        key: int,
        *,
        topic: str,
        stamp_ns: int,
        bag_time_ns: int,
        frame_id: str,
        hw: tuple[int, int],
    ) -> int:
        """The COCO image id (1-based) of frame ``key`` (its index among the processed
        frames), the image added on the first call."""
        if key in self._image_ids:
            return self._image_ids[key]
        image_id = self._image_ids[key] = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": f"{topic}@{stamp_ns}",
                "height": int(hw[0]),
                "width": int(hw[1]),
                "stamp_ns": int(stamp_ns),
                "bag_time_ns": int(bag_time_ns),
                "frame_id": frame_id,
            }
        )
        return image_id

    def add(self, image_id: int, records: list[InstanceRecord], *, targets: bool = False) -> None:
        """Annotations of ``image_id``: SegEvery instances, or with ``targets`` the prompted
        targets (those lost on the frame are left out)."""
        category = TARGET_CATEGORY["id"] if targets else CATEGORY["id"]
        for rec in records:
            if rec.track_state == TRACK_LOST:
                continue
            x, y, w, h = (float(v) for v in rec.roi)
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "source": SOURCES[category],
                    "segmentation": {
                        "size": [int(v) for v in rec.mask_hw],
                        "counts": [int(c) for c in rec.rle_counts],
                    },
                    "area": int(rec.area),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                    "score": float(rec.score),
                    "stability": float(rec.stability),
                    "prompt": [float(v) for v in np.asarray(rec.prompt).reshape(-1)],
                    "track_id": int(rec.track_id),
                    "track_state": int(rec.track_state),
                    **_position_3d(rec),
                }
            )

    def save(self, path: str | Path) -> None:
        """Write the JSON file (parents created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "info": self.info,
            "images": self.images,
            "annotations": self.annotations,
            "categories": [CATEGORY, TARGET_CATEGORY],
        }
        path.write_text(json.dumps(doc))


def _position_3d(rec: InstanceRecord) -> dict[str, Any]:
    """``{"position_3d": {...}}`` for a record with a valid 3D position, else ``{}``."""
    p = rec.position_fields()
    if not p["valid"]:
        return {}
    return {
        "position_3d": {
            **{k: [float(v) for v in p[k]] for k in ("centroid", "min", "max")},
            "num_points": int(p["num_points"]),
            "valid_fraction": float(p["valid_fraction"]),
        }
    }


class ContactSheet:
    """Up to ``max_tiles`` overlays, evenly spread over the replay, in one PNG.

    Args:
        expected_frames: how many frames the replay expects to process (spreads the tiles).
        max_tiles: most tiles on the sheet.
        tile_width: width of a tile in pixels (height keeps the aspect ratio).
    """

    def __init__(self, expected_frames: int, max_tiles: int = 16, tile_width: int = 320) -> None:
        self.stride = max(1, math.ceil(max(expected_frames, 1) / max_tiles))
        self.max_tiles = max_tiles
        self.tile_width = tile_width
        self.tiles: list[np.ndarray] = []

    def wants(self, index: int) -> bool:
        """Whether processed frame ``index`` (0-based) goes on the sheet."""
        return index % self.stride == 0 and len(self.tiles) < self.max_tiles

    def add(self, rgb: np.ndarray, caption: str) -> None:
        """Add an overlay as the next tile, captioned (top left)."""
        h, w = rgb.shape[:2]
        tw = min(self.tile_width, w)  # never enlarge a small frame
        size = (tw, max(1, round(h * tw / w)))
        tile = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(tile, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thickness)
        self.tiles.append(tile)

    def save(self, path: str | Path) -> bool:
        """Write the sheet as PNG; False (nothing written) when it has no tile."""
        if not self.tiles:
            return False
        cols = math.ceil(math.sqrt(len(self.tiles)))
        rows = math.ceil(len(self.tiles) / cols)
        th = max(t.shape[0] for t in self.tiles)
        tw = max(t.shape[1] for t in self.tiles)
        sheet = np.zeros((rows * th, cols * tw, 3), dtype=np.uint8)
        for i, tile in enumerate(self.tiles):
            r, c = divmod(i, cols)
            sheet[r * th : r * th + tile.shape[0], c * tw : c * tw + tile.shape[1]] = tile
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write the contact sheet {path}")
        return True


class OverlayVideo:
    """Overlays as an MP4 (``mp4v``) video; frames of another size are resized to the first's.

    Raises:
        OSError: (on the first frame) cv2 cannot open a video writer for the path.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        self.fps = float(fps) if fps > 0 else 10.0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def add(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rgb.shape[:2]
            self._size = (w - w % 2, h - h % 2)  # codecs want even sizes
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(
                    f"cannot open an mp4v video writer for {self.path} (this cv2 build has no "
                    "such encoder?); use --contact-sheet instead"
                )
        if (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


class Progress:
    """One self-rewriting status line: frames done of total, rate, ETA (on a terminal).

    Args:
        total: frames expected (an estimate with ``--rate``).
        stream: where to write (default stderr); nothing is written when ``enabled`` is False.
        min_interval_s: least time between redraws.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        min_interval_s: float = 0.2,
    ) -> None:
        self.total = max(int(total), 0)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.min_interval_s = min_interval_s
        self.start = time.monotonic()
        self._last = -math.inf
        self._width = 0

    def line(self, done: int, extra: str = "", now: float | None = None) -> str:
        """The status text for ``done`` frames."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        total = max(self.total, done)
        frac = done / total if total else 1.0
        bar = "=" * int(24 * frac)
        eta = (total - done) / rate if rate > 0 else math.inf
        eta_text = "--:--" if not math.isfinite(eta) else _clock(eta)
        return (
            f"[{bar:<24}] {done}/{total} frames {100 * frac:3.0f}% {rate:5.2f} fps "
            f"elapsed {_clock(elapsed)} ETA {eta_text}{'  ' + extra if extra else ''}"
        )

    def update(self, done: int, extra: str = "", *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        text = self.line(done, extra, now)
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self, done: int, extra: str = "") -> None:
        if self.enabled:
            self.update(done, extra, force=True)
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
