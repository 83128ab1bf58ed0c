"""The painted-shapes fake model the SegEvery tests share (grid, candidates, hierarchical).

A fake backend that segments painted shapes stands in for the model: it proves the pipeline
(filters, NMS, chunking, crops, frames), not mask quality.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segfast_ros.masks import masks_to_boxes, rle_area, rle_to_mask
from segfast_ros.runtime import ModelInfo, Predictor
from segfast_ros.segevery import SegEveryResult
from segfast_ros.spec import LABEL_BOX_TL

# The fake model sees a 64 px input and answers at low-res 64: one low-res pixel per input
# pixel, so for a 48 x 64 image no resize happens anywhere and masks are exact.
INFO = ModelInfo("fake-scene", image_size=64, embed_dim=4, embed_size=16)
H, W = 48, 64

# ------------------------------------------------------------------------- the fake scene


@dataclass(frozen=True)
class Shape:
    """How the fake model answers a prompt that lands on pixels painted with ``label``."""

    iou: float = 0.95  # predicted IoU of the right mask (token 1)
    logit: float = 10.0  # its logit inside the shape (-10 outside)


class SceneBackend:
    """Segments painted shapes: a shape is the pixels with R == label and G == 255.

    ``encode`` keeps the (denormalised) label image and returns its index as the embedding.
    ``decode`` looks at the pixel under each prompt point (a box's centre): inside shape ``l``
    token 1 is the shape (``Shape.iou``, ``Shape.logit``), token 2 the same mask with a lower
    IoU (a duplicate to filter), token 3 the whole input (IoU 0.05); on the background only
    token 3. Every call is logged.
    """

    name = "fake-scene"

    def __init__(self, shapes: dict[int, Shape], info: ModelInfo = INFO) -> None:
        self.info = info
        self.shapes = shapes
        self.label_maps: list[np.ndarray] = []
        self.decoded_points: list[np.ndarray] = []  # (B, 2) input-frame points per call

    def encode(self, image: np.ndarray) -> np.ndarray:
        mean = np.array(self.info.pixel_mean)[:, None, None]
        std = np.array(self.info.pixel_std)[:, None, None]
        rgb = np.rint(image[0] * std + mean)
        solid = rgb[1] == 255  # padding and blended edges are not solid
        self.label_maps.append(np.where(solid, rgb[0], 0).astype(np.int64))
        c, e = self.info.embed_dim, self.info.embed_size
        return np.full((1, c, e, e), len(self.label_maps) - 1, np.float32)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = self.label_maps[int(image_embeddings[0, 0, 0, 0])]
        s, lr = self.info.image_size, self.info.low_res_size
        assert lr == s, "the fake answers one low-res pixel per input pixel"
        is_box = point_labels[:, 0] == LABEL_BOX_TL
        points = np.where(is_box[:, None], point_coords[:, :2].mean(axis=1), point_coords[:, 0])
        self.decoded_points.append(points.copy())
        b = len(point_coords)
        masks = np.full((b, 4, lr, lr), -10.0, np.float32)
        iou = np.zeros((b, 4), np.float32)
        masks[:, 3], iou[:, 3] = 10.0, 0.05
        for i, (x, y) in enumerate(points):
            label = int(labels[min(int(y), s - 1), min(int(x), s - 1)])
            shape = self.shapes.get(label)
            if shape is None:
                continue
            inside = labels == label
            for token, score in ((0, shape.iou), (1, shape.iou), (2, shape.iou - 0.3)):
                masks[i, token][inside] = shape.logit
                iou[i, token] = score
        return masks, iou

    @property
    def num_decoded(self) -> int:
        return sum(len(p) for p in self.decoded_points)


def paint(h: int, w: int, regions: dict[int, np.ndarray]) -> np.ndarray:
    """An RGB image with each ``(h, w)`` bool region painted as shape ``label``."""
    image = np.zeros((h, w, 3), np.uint8)
    for label, region in regions.items():
        image[region] = (label, 255, 0)
    return image


def rect(x0: int, y0: int, x1: int, y1: int, h: int = H, w: int = W) -> np.ndarray:
    region = np.zeros((h, w), bool)
    region[y0:y1, x0:x1] = True
    return region


def disc(cx: float, cy: float, r: float, h: int = H, w: int = W) -> np.ndarray:
    ys, xs = np.mgrid[:h, :w] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 < r**2


# The scene both grid and hierarchical tests use (48 x 64). With points_per_side 16 the dense
# points are at x = 2, 6, ..., 62 and y = 1.5, 4.5, ..., 46.5; the sparse 4 x 4 grid at
# x = 8, 24, 40, 56 and y = 6, 18, 30, 42.
A, B, C, D, E = 200, 210, 220, 230, 240
REGIONS = {
    A: rect(0, 0, 30, 24),  # big, confident (logit 10 > 8.5): covers round 2
    B: rect(44, 40, 52, 46),  # small, between the sparse points: only the dense grid hits it
    C: disc(48, 14, 9),  # found by sparse points, but not confident enough to cover
    D: rect(4, 30, 20, 44),  # unstable (all logits inside the +/-1 band): filtered
    E: rect(32, 28, 40, 38),  # low predicted IoU: filtered
}
SHAPES = {
    A: Shape(iou=0.95),
    B: Shape(iou=0.92),
    C: Shape(iou=0.90, logit=5.0),
    D: Shape(iou=0.97, logit=0.5),
    E: Shape(iou=0.50),
}


def make_scene(
    regions: dict[int, np.ndarray] = REGIONS, shapes: dict[int, Shape] = SHAPES
) -> tuple[Predictor, SceneBackend, np.ndarray]:
    image = paint(*next(iter(regions.values())).shape, regions) if regions else None
    if image is None:
        image = np.zeros((H, W, 3), np.uint8)
    backend = SceneBackend(shapes)
    predictor = Predictor(backend)
    predictor.set_image(image)
    return predictor, backend, image


def masks_of(result: SegEveryResult) -> list[np.ndarray]:
    return [rle_to_mask(i.rle) for i in result.instances]


def labels_found(result: SegEveryResult, regions: dict[int, np.ndarray] = REGIONS) -> list[int]:
    """The painted label each instance matches exactly, best instance first."""
    found = []
    for mask in masks_of(result):
        match = [label for label, region in regions.items() if np.array_equal(mask, region)]
        assert len(match) == 1, "every instance is exactly one painted shape"
        found.append(match[0])
    return found


def summary(result: SegEveryResult) -> list[tuple]:
    return [
        (tuple(i.rle["counts"]), i.score, i.stability, i.area, tuple(i.box), tuple(i.prompt))
        for i in result.instances
    ]


def check_instances(result: SegEveryResult, hw: tuple[int, int]) -> None:
    """Every instance is well formed: RLE decodes to its box and area, fields typed."""
    for inst in result.instances:
        assert inst.rle["size"] == list(hw)
        mask = rle_to_mask(inst.rle)
        assert inst.area == rle_area(inst.rle) == mask.sum() > 0
        assert inst.box.shape == (4,) and inst.box.dtype == np.float32
        np.testing.assert_array_equal(inst.box, masks_to_boxes(mask[None])[0])
        assert isinstance(inst.score, float) and isinstance(inst.stability, float)
        assert inst.prompt.shape in ((2,), (4,))
    scores = [i.score for i in result.instances]
    assert scores == sorted(scores, reverse=True)
