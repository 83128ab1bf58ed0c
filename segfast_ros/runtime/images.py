"""Image files and folders (export calibration, the CLI). numpy/cv2 only.

The ``sensor_msgs`` image messages are read and written in :mod:`segfast_ros.pipeline.image_msgs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

#: File suffixes taken from an image folder (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")


class CalibrationError(ValueError):
    """Images for calibration, a report or a benchmark are missing, empty or unreadable."""


def list_images(
    images: str | Path | Sequence[str | Path], *, max_images: int | None = None
) -> list[Path]:
    """The image files of a folder (jpg/png, sorted, not recursive) or of an explicit list.

    Args:
        images: a folder or a sequence of image files.
        max_images: keep at most this many, evenly spread over the sorted list.

    Raises:
        CalibrationError: missing folder or file, or no image in the folder.
        ValueError: ``max_images < 1``.
    """
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if not folder.is_dir():
            what = "is a file, not a folder" if folder.is_file() else "does not exist"
            raise CalibrationError(
                f"image folder {folder} {what}; expected a folder of "
                f"{'/'.join(IMAGE_SUFFIXES)} frames like those the robot will see"
            )
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            found = sorted(p.name for p in folder.iterdir())[:8]
            raise CalibrationError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}; it holds "
                f"{found or 'nothing'}"
            )
    else:
        paths = [Path(p) for p in images]
        if not paths:
            raise CalibrationError("the list of images is empty")
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CalibrationError(f"images not found: {missing[:8]}")
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if len(paths) > max_images:
            keep = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
            paths = [paths[i] for i in keep]
    return paths


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB.

    Raises:
        FileNotFoundError: no such file.
        CalibrationError: the file cannot be decoded as an image.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CalibrationError(f"cannot read {path} as an image (corrupt, or not a jpg/png?)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
