"""The images a distillation learns from: no labels, only pictures the teacher segments.

``--images`` names one of:

* a folder of image files (searched recursively: ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``,
  ``.tif``, ``.tiff``);
* a rosbag2 bag (a folder with ``metadata.yaml``, or a ``.mcap`` file) and its image topic
  (``--topic``, or the bag's only image topic), read through the replay's reader, so a robot's
  own recordings become training data;
* ``generated``: the project's procedural scenes (:mod:`segfast_ros.bench.scenes`, the demo
  model's world), of which only the pixels are used.

Every 20th image of a folder or bag (at least one) is held out for the agreement evaluation and
never trained on; generated scenes hold out their own seed stream. Images are kept at the
model's input size (the long side), so memory follows the number of images, not their size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Files a folder source takes.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Every this-many-th image of a folder or bag is held out.
HOLD_OUT_EVERY = 20
#: ``--images`` value for the procedural scenes.
GENERATED = "generated"
#: First seed of the held-out generated scenes (apart from every other seed stream).
HELD_OUT_SEED = 5_000_000


class ImageSourceError(ValueError):
    """``--images`` names nothing usable; the message says what was found and expected."""


@dataclass
class ImageSource:
    """Training images (cycled in a seeded order) and held-out ones.

    Attributes:
        describe: what the images are, for the record.
        train: training images (RGB uint8, long side at most the model's size); empty for
            generated scenes, which are drawn as needed.
        held_out: evaluation images, never trained on.
    """

    describe: str
    train: list[np.ndarray]
    held_out: list[np.ndarray]
    seed: int = 0

    def stream(self) -> Iterator[np.ndarray]:
        """Training images for ever: a new seeded order each pass (or new scenes)."""
        if not self.train:
            from ..demo.training_data import scene_stream

            for scene in scene_stream(self.seed):
                yield scene.image
        rng = np.random.default_rng([self.seed, 7])
        while True:
            for i in rng.permutation(len(self.train)):
                yield self.train[int(i)]


def open_images(
    source: str, size: int, *, topic: str | None = None, seed: int = 0, held_out: int = 16
) -> ImageSource:
    """The images ``source`` names, at most ``size`` px on the long side.

    Raises:
        ImageSourceError: a missing path, a folder with no readable image, a bag without the
            topic or without images (the message says which).
    """
    if source == GENERATED:
        from ..bench.scenes import generate_scene

        scenes = [generate_scene(HELD_OUT_SEED + i, (size, size)).image for i in range(held_out)]
        return ImageSource(f"generated scenes (seed {seed})", [], scenes, seed)
    path = Path(source)
    if not path.exists():
        raise ImageSourceError(
            f"--images {source}: does not exist; expected a folder of images, a rosbag2 bag "
            f"(with --topic), or '{GENERATED}'"
        )
    if (path / "metadata.yaml").is_file() or path.suffix == ".mcap":
        images, what = _bag_images(path, topic, size), f"bag {path}"
    elif path.is_dir():
        images, what = _folder_images(path, size), f"folder {path}"
    else:
        raise ImageSourceError(
            f"--images {source}: a file that is not a bag; expected a folder of images, a "
            f"rosbag2 bag or '{GENERATED}'"
        )
    if len(images) < 2:
        raise ImageSourceError(
            f"--images {source}: {len(images)} usable image(s) in the {what}; distillation "
            "needs at least 2 (one is held out for evaluation)"
        )
    held = [im for i, im in enumerate(images) if i % HOLD_OUT_EVERY == 0]
    train = [im for i, im in enumerate(images) if i % HOLD_OUT_EVERY != 0]
    return ImageSource(f"{len(images)} images from the {what}", train, held[:held_out], seed)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """An RGB image with its long side at most ``size`` (shrunk with area averaging)."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale >= 1:
        return image
    hw = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, hw, interpolation=cv2.INTER_AREA)


def _folder_images(folder: Path, size: int) -> list[np.ndarray]:
    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not files:
        raise ImageSourceError(
            f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder "
            "or below"
        )
    images = []
    for f in files:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is not None and bgr.size:
            images.append(_fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), size))
    if not images:
        raise ImageSourceError(
            f"--images {folder}: none of its {len(files)} image files could be read (e.g. "
            f"{files[0]}); expected PNG, JPEG, BMP or TIFF"
        )
    return images


def _bag_images(bag: Path, topic: str | None, size: int) -> list[np.ndarray]:
    """Every usable frame of the bag's image topic (frames that do not decode are skipped)."""
    from ..pipeline.image_msgs import ImageError
    from ..replay import bags

    try:
        reader = bags.open_reader(bag)
    except bags.BagError as err:
        raise ImageSourceError(f"--images {bag}: {err}") from None
    try:
        name = bags.select_topic(reader, topic)
        store = bags.typestore()
        conns = [c for c in reader.connections if c.topic == name]
        images = []
        for i, (conn, t, raw) in enumerate(reader.messages(connections=conns)):
            msg = bags.deserialize(store, conn, raw, bag=bag, index=i, bag_time=t)
            try:
                images.append(_fit(bags.rgb_of(conn.msgtype, msg), size))
            except ImageError:
                continue
        return images
    except bags.BagError as err:
        raise ImageSourceError(f"--images {bag}: {err}") from None
    finally:
        reader.close()
