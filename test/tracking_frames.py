"""Shared helpers of the prompted-target tests: the demo model, a generated sequence with its
embeddings, and ground-truth look-ups (not a test module).

Real ONNX Runtime sessions of models/demo; frames from bench.scenes.generate_sequence (camera
pan and zoom, exact masks with object identities). Each frame is encoded once by the test
module's fixture and the tests set its embedding. Decoder calls are counted at the backend (a
thin wrapper), not taken from the tracker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segfast_ros.bench.scenes import generate_sequence
from segfast_ros.bench.tracking import CountingBackend
from segfast_ros.masks import Instance, mask_to_rle
from segfast_ros.runtime.onnx_backend import OnnxRuntimeBackend
from segfast_ros.runtime.predictor import Predictor

MODEL_DIR = Path(__file__).resolve().parents[1] / "models" / "demo"
HW = (240, 320)
# generate_sequence(4, ...): object 9 (the largest on frame 0) stays in view on frames 0-6,
# is cut by the frame edge from frame 5 and is gone from the ground truth from frame 7.
SEED, OBJECT, FRAMES = 4, 9, 10


def demo_backend() -> CountingBackend:
    """The shipped demo model (fp32, one thread), counting decoder calls."""
    return CountingBackend(OnnxRuntimeBackend.from_dir(MODEL_DIR, "fp32", intra_op_threads=1))


def encoded_sequence(backend: CountingBackend) -> list:
    """The test sequence, each frame with its embedding (encoded once)."""
    seq = generate_sequence(SEED, FRAMES, HW)
    predictor = Predictor(backend)
    for scene in seq:
        predictor.set_image(scene.image)
        scene.embedding = predictor.get_image_embedding()
    return seq


def on(backend: CountingBackend, scene) -> Predictor:
    """A predictor on ``scene``'s embedding."""
    predictor = Predictor(backend)
    predictor.set_embedding(scene.embedding, HW)
    return predictor


def encoded(backend: CountingBackend, image: np.ndarray) -> Predictor:
    """A predictor on a new image (encoded now)."""
    predictor = Predictor(backend)
    predictor.set_image(image)
    return predictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def gt_mask(scene, obj: int) -> np.ndarray | None:
    hits = np.flatnonzero(scene.ids == obj)
    return scene.masks[hits[0]] if len(hits) else None


def box_of(scene, obj: int) -> np.ndarray:
    return scene.boxes[np.flatnonzero(scene.ids == obj)[0]]


def as_instances(masks: np.ndarray, boxes: np.ndarray) -> list[Instance]:
    """Masks ``(N, H, W)`` and their boxes as SegEvery instances."""
    rles = mask_to_rle(masks)
    return [
        Instance(rle, box, 0.9, 0.95, int(m.sum()), np.zeros(0, np.float32))
        for rle, box, m in zip(rles, boxes, masks, strict=True)
    ]


def instances_of(scene) -> list[Instance]:
    """The scene's ground-truth objects as SegEvery instances."""
    return as_instances(scene.masks, scene.boxes)
