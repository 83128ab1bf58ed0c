"""Object-aware SegEvery (MobileSAMv2): detector boxes as batched single-mask box prompts.

A fake backend answers each box prompt with the box itself as the mask, so the pipeline
(filters, NMS, chunking, embedding broadcast, empty frames) is checked exactly. A tiny ONNX
detector emits known boxes. At the bottom, the real (random-weight) small model shows that a
batched object-aware decode equals single-box ``predict`` calls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segfast_ros.bench.synthetic_detector import (
    write_detector_for_image,
    write_fixed_box_detector,
)
from segfast_ros.masks import rle_to_mask
from segfast_ros.runtime import ModelInfo, Predictor
from segfast_ros.segevery import SegEvery
from segfast_ros.segevery.detector import ObjectDetector
from segfast_ros.segevery.object_aware import ObjectAwareSegEvery
from segfast_ros.segevery.registry import build_segevery
from segfast_ros.spec import LABEL_BOX_BR, LABEL_BOX_TL

# 64 px input answered at low-res 64: one low-res pixel per input pixel, and a 48 x 64 image
# is not resized, so a box's mask is exactly its pixels.
INFO = ModelInfo("fake-boxes", image_size=64, embed_dim=4, embed_size=16)
H, W = 48, 64


class BoxBackend:
    """Answers a box prompt with the box: token 0 is +logit inside ``[x1, x2) x [y1, y2)``
    and -10 outside, with predicted IoU ``ious[x1]`` (default 0.9). Tokens 1-3 are empty
    with IoU 0.99, so a wrong token choice shows. Every decode call is logged."""

    name = "fake-boxes"

    def __init__(
        self, ious: dict[int, float] | None = None, logits: dict[int, float] | None = None
    ) -> None:
        self.info = INFO
        self.ious = ious or {}
        self.logits = logits or {}
        self.calls: list[dict[str, np.ndarray]] = []

    def encode(self, image: np.ndarray) -> np.ndarray:
        c, e = self.info.embed_dim, self.info.embed_size
        return np.zeros((1, c, e, e), np.float32)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(dict(embedding=image_embeddings, coords=point_coords.copy()))
        assert (point_labels[:, -2:] == (LABEL_BOX_TL, LABEL_BOX_BR)).all()
        lr = self.info.low_res_size
        b = len(point_coords)
        masks = np.full((b, 4, lr, lr), -10.0, np.float32)
        iou = np.full((b, 4), 0.99, np.float32)
        for i, corners in enumerate(point_coords[:, -2:]):
            x1, y1, x2, y2 = (round(float(v)) for v in corners.reshape(-1))
            masks[i, 0, y1:y2, x1:x2] = self.logits.get(x1, 10.0)
            iou[i, 0] = self.ious.get(x1, 0.9)
        return masks, iou


def detector(
    tmp_path: Path, boxes: list[list[float]], scores: list[float], **kw
) -> ObjectDetector:
    """A detector that finds ``boxes`` (original XYXY pixels of an H x W image)."""
    path = write_detector_for_image(
        tmp_path / f"det{len(list(tmp_path.iterdir()))}.onnx",
        (H, W),
        boxes,
        scores,
        names={0: "object"},
    )
    return ObjectDetector(path, border_snap_px=0, **kw)


def predictor_for(backend: BoxBackend) -> tuple[Predictor, np.ndarray]:
    image = np.full((H, W, 3), 80, np.uint8)
    predictor = Predictor(backend)
    predictor.set_image(image)
    return predictor, image


BOXES = [[2, 3, 20, 30], [25, 10, 40, 20], [42, 30, 60, 45], [5, 35, 15, 46], [30, 25, 38, 33]]
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]


def test_each_box_becomes_one_instance(tmp_path: Path) -> None:
    backend = BoxBackend(ious={25: 0.95, 42: 0.7})
    predictor, image = predictor_for(backend)
    segevery = ObjectAwareSegEvery(detector=detector(tmp_path, BOXES, SCORES))
    result = segevery(predictor, image)
    assert isinstance(segevery, SegEvery)
    assert result.strategy == "object_aware" and result.image_hw == (H, W)
    assert result.decoder_prompts == len(BOXES)
    assert len(backend.calls) == 1  # 5 boxes < prompts_per_batch (64): one decoder call
    assert {"detector", "decoder", "postprocess", "nms", "total"} <= set(result.timings_ms)
    scores = [inst.score for inst in result.instances]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(0.95)
    for inst in result.instances:
        x1, y1, x2, y2 = (round(float(v)) for v in inst.prompt)
        expected = np.zeros((H, W), bool)
        expected[y1:y2, x1:x2] = True
        np.testing.assert_array_equal(rle_to_mask(inst.rle), expected)
        np.testing.assert_array_equal(inst.box, [x1, y1, x2, y2])
        assert inst.area == (x2 - x1) * (y2 - y1) and inst.stability == 1.0
    prompts = sorted(tuple(np.round(i.prompt, 3)) for i in result.instances)
    assert prompts == sorted(tuple(map(float, b)) for b in BOXES)


def test_chunks_decode_once_each_and_broadcast_the_embedding(tmp_path: Path) -> None:
    det = detector(tmp_path, BOXES, SCORES)
    small_backend, big_backend = BoxBackend(), BoxBackend()
    predictor, image = predictor_for(small_backend)
    small = ObjectAwareSegEvery(detector=det, prompts_per_batch=2)(predictor, image)
    assert [len(c["coords"]) for c in small_backend.calls] == [2, 2, 1]
    embedding = predictor.get_image_embedding()
    for call in small_backend.calls:
        # One (1, C, h, w) embedding for the whole chunk: the predictor's own, not a copy.
        assert call["embedding"].shape[0] == 1
        assert np.shares_memory(call["embedding"], embedding)
    big_predictor, _ = predictor_for(big_backend)
    big = ObjectAwareSegEvery(detector=det)(big_predictor, image)
    assert len(big_backend.calls) == 1
    assert small.decoder_prompts == big.decoder_prompts == 5
    assert [i.rle for i in small.instances] == [i.rle for i in big.instances]
    np.testing.assert_array_equal(
        [i.prompt for i in small.instances], [i.prompt for i in big.instances]
    )


def test_filters_are_off_by_default_and_configurable(tmp_path: Path) -> None:
    # Box at x1=25 has predicted IoU 0.6; box at x1=42 has soft logits (0.5): its mask exists
    # but is unstable (nothing above +1), so stability 0.
    backend = BoxBackend(ious={25: 0.6}, logits={42: 0.5})
    predictor, image = predictor_for(backend)
    det = detector(tmp_path, BOXES, SCORES)
    everything = ObjectAwareSegEvery(detector=det)(predictor, image)
    assert len(everything.instances) == 5
    by_iou = ObjectAwareSegEvery(detector=det, pred_iou_thresh=0.8)(predictor, image)
    assert sorted(round(float(i.prompt[0])) for i in by_iou.instances) == [2, 5, 30, 42]
    stable = ObjectAwareSegEvery(detector=det, stability_score_thresh=0.9)(predictor, image)
    assert sorted(round(float(i.prompt[0])) for i in stable.instances) == [2, 5, 25, 30]


def test_box_nms_is_optional(tmp_path: Path) -> None:
    # IoU 0.8 between the two: the detector (0.9) keeps both, mask NMS at 0.7 drops one.
    a, b = [10, 10, 30, 30], [10, 10, 30, 26]
    backend = BoxBackend(ious={10: 0.9})
    predictor, image = predictor_for(backend)
    det = detector(tmp_path, [a, b, [40, 5, 60, 20]], [0.9, 0.8, 0.7])
    kept = ObjectAwareSegEvery(detector=det)(predictor, image)
    assert len(kept.instances) == 3
    nmsed = ObjectAwareSegEvery(detector=det, box_nms_thresh=0.7)(predictor, image)
    assert len(nmsed.instances) == 2


def test_multimask_output_decodes_the_other_tokens(tmp_path: Path) -> None:
    # The fake's tokens 1-3 are empty masks, which are dropped.
    predictor, image = predictor_for(BoxBackend())
    det = detector(tmp_path, BOXES, SCORES)
    result = ObjectAwareSegEvery(detector=det, multimask_output=True)(predictor, image)
    assert result.instances == [] and result.decoder_prompts == 5


def test_empty_frame_never_calls_the_decoder(tmp_path: Path) -> None:
    backend = BoxBackend()
    predictor, image = predictor_for(backend)
    det = detector(tmp_path, BOXES, [0.1] * 5)  # all below conf 0.4
    result = ObjectAwareSegEvery(detector=det)(predictor, image)
    assert result.instances == [] and result.decoder_prompts == 0
    assert backend.calls == []
    assert result.timings_ms["decoder"] == 0.0


def test_empty_round_after_filtering(tmp_path: Path) -> None:
    backend = BoxBackend()
    predictor, image = predictor_for(backend)
    det = detector(tmp_path, BOXES, SCORES)
    result = ObjectAwareSegEvery(detector=det, pred_iou_thresh=0.95, prompts_per_batch=2)(
        predictor, image
    )
    assert result.instances == [] and len(backend.calls) == 3


def test_bad_input(tmp_path: Path) -> None:
    det = detector(tmp_path, BOXES, SCORES)
    segevery = ObjectAwareSegEvery(detector=det)
    predictor, image = predictor_for(BoxBackend())
    with pytest.raises(ValueError, match=r"pass the frame set on the predictor"):
        segevery(predictor)
    with pytest.raises(ValueError, match=r"\(48, 64, 3\).*got \(10, 10, 3\)"):
        segevery(predictor, np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="no image is set"):
        segevery(Predictor(BoxBackend()), image)
    with pytest.raises(ValueError, match="prompts_per_batch must be an integer >= 1"):
        ObjectAwareSegEvery(detector=det, prompts_per_batch=0)
    with pytest.raises(ValueError, match=r"\['conf'\] configure a detector built from a path"):
        ObjectAwareSegEvery(detector=det, conf=0.3)
    with pytest.raises(ValueError, match="ObjectDetector or the path"):
        ObjectAwareSegEvery(detector=42)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match=r"object detector ONNX file not found"):
        ObjectAwareSegEvery(detector=tmp_path / "missing.onnx")


def test_registry_builds_it_from_a_path(tmp_path: Path) -> None:
    path = detector(tmp_path, BOXES, SCORES).path
    segevery = build_segevery("object_aware", detector=str(path), conf=0.55, prompts_per_batch=4)
    assert isinstance(segevery, ObjectAwareSegEvery)
    assert isinstance(segevery.detector, ObjectDetector) and segevery.detector.conf == 0.55
    predictor, image = predictor_for(BoxBackend())
    assert segevery(predictor, image).decoder_prompts == 4  # scores 0.9 ... 0.6 > 0.55
    with pytest.raises(ValueError, match="unknown argument"):
        build_segevery("object_aware", detector=str(path), points_per_side=32)


# ------------------------------------------------------------------ the real small model


@pytest.fixture(scope="module")
def small_predictor() -> tuple[Predictor, np.ndarray]:
    import torch

    from segfast_ros.modeling import build_sam
    from segfast_ros.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    backend = TorchBackend(build_sam("tinyvit_s256"))
    yy, xx = np.mgrid[0:150, 0:200]
    image = np.stack([xx % 256, yy * 1.5, (xx + yy) % 200], axis=-1).astype(np.uint8)
    image[40:100, 50:120] = (220, 30, 30)
    predictor = Predictor(backend)
    predictor.set_image(image)
    return predictor, image


def test_batched_decode_equals_single_box_predicts(
    tmp_path: Path, small_predictor: tuple[Predictor, np.ndarray]
) -> None:
    """N boxes in chunks of 4 give the masks and scores of N single-box predict calls."""
    predictor, image = small_predictor
    boxes = [
        [50, 40, 120, 100],
        [10, 10, 60, 50],
        [100, 20, 190, 140],
        [0, 0, 200, 150],
        [30, 80, 90, 145],
        [140, 5, 180, 45],
    ]
    path = write_detector_for_image(
        tmp_path / "real.onnx", (150, 200), boxes, np.linspace(0.9, 0.5, 6), names={0: "o"}
    )
    det = ObjectDetector(path, border_snap_px=0)
    result = ObjectAwareSegEvery(detector=det, prompts_per_batch=4)(predictor, image)
    assert result.decoder_prompts == 6
    by_prompt = {tuple(np.round(i.prompt, 2)): i for i in result.instances}
    for box in det(image).boxes:
        single = predictor.predict(box=box, multimask_output=False, return_logits=True)
        logits = single.masks[0]
        mask = logits > 0
        inst = by_prompt.get(tuple(np.round(box, 2)))
        if not mask.any():
            assert inst is None  # empty masks are dropped
            continue
        assert inst is not None
        # Batched and single decodes differ by float noise (~1e-7): a pixel may flip only
        # where the logit sits on the threshold.
        flipped = rle_to_mask(inst.rle) != mask
        assert (np.abs(logits[flipped]) < 1e-4).all()
        assert inst.score == pytest.approx(float(single.scores[0]), abs=1e-5)
    assert len(result.instances) == 6  # random weights still give six non-empty masks


def test_end_to_end_on_the_small_model(
    tmp_path: Path, small_predictor: tuple[Predictor, np.ndarray]
) -> None:
    predictor, image = small_predictor
    path = write_fixed_box_detector(
        tmp_path / "e2e.onnx",
        [[600, 400, 300, 250], [200, 200, 150, 150], [900, 600, 200, 200]],
        [[0.9], [0.8], [0.3]],
        nm=32,
        protos=True,
        names={0: "object"},
    )
    segevery = build_segevery(
        "object_aware", detector=str(path), stability_score_thresh=0.0, box_nms_thresh=0.9
    )
    result = segevery(predictor, image)
    assert result.decoder_prompts == 2  # the third box is below conf
    for inst in result.instances:
        mask = rle_to_mask(inst.rle)
        assert mask.shape == (150, 200) and mask.sum() == inst.area > 0
        assert inst.prompt.shape == (4,)
