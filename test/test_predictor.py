"""Predictor against a fake backend that records what it is asked: prompt packing, batching,
mask selection, output shapes and every bad-input message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from segfast_ros.runtime import Backend, ModelInfo, Prediction, Predictor
from segfast_ros.runtime.transforms import preprocess_shape

# A small model keeps the tests fast: 64 px input, 4x4 embedding, 16x16 low-res masks.
INFO = ModelInfo("fake", image_size=64, embed_dim=8, embed_size=4)
L = INFO.low_res_size
H, W = 30, 40  # original image: resized to 48 x 64 (h x w), scale 1.6 both ways
SCALE = 64 / 40


class FakeBackend:
    """Records every call. Mask token m of prompt set b has constant logit ``m - 1.5`` (tokens
    1..3: -0.5, 0.5, 1.5) and IoU ``10 * b + m``, so slicing is visible in the outputs."""

    name = "fake"

    def __init__(self, info: ModelInfo = INFO) -> None:
        self.info = info
        self.encode_calls: list[np.ndarray] = []
        self.decode_calls: list[dict[str, np.ndarray]] = []

    def encode(self, image: np.ndarray) -> np.ndarray:
        self.encode_calls.append(image)
        c, h = self.info.embed_dim, self.info.embed_size
        return np.full((1, c, h, h), float(len(self.encode_calls)), np.float32)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        self.decode_calls.append(
            dict(
                image_embeddings=image_embeddings,
                point_coords=point_coords.copy(),
                point_labels=point_labels.copy(),
                mask_input=mask_input,
                has_mask_input=has_mask_input,
            )
        )
        b, m = point_coords.shape[0], self.info.num_mask_tokens
        tokens = np.arange(m, dtype=np.float32)
        masks = np.broadcast_to((tokens - 1.5)[None, :, None, None], (b, m, L, L)).copy()
        iou = (10 * np.arange(b, dtype=np.float32)[:, None] + tokens).astype(np.float32)
        return masks, iou


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def predictor(backend: FakeBackend) -> Predictor:
    p = Predictor(backend)
    p.set_image(np.zeros((H, W, 3), np.uint8))
    return p


def last_call(backend: FakeBackend) -> dict[str, np.ndarray]:
    return backend.decode_calls[-1]


def test_fake_backend_follows_the_protocol(backend: FakeBackend) -> None:
    assert isinstance(backend, Backend)


# ------------------------------------------------------------------------------ image state


def test_set_image_encodes_once_and_caches(predictor: Predictor, backend: FakeBackend) -> None:
    assert len(backend.encode_calls) == 1
    x = backend.encode_calls[0]
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    assert predictor.is_image_set
    assert predictor.original_size == (H, W)
    assert predictor.input_size == (48, 64)
    for _ in range(3):
        predictor.predict(point_coords=[[5, 5]], point_labels=[1])
    assert len(backend.encode_calls) == 1
    assert all(
        c["image_embeddings"] is predictor.get_image_embedding() for c in backend.decode_calls
    )


def test_embedding_is_read_only(predictor: Predictor) -> None:
    emb = predictor.get_image_embedding()
    assert emb.shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="read-only"):
        emb[0, 0, 0, 0] = 5.0


def test_reset_image(predictor: Predictor) -> None:
    predictor.reset_image()
    assert not predictor.is_image_set
    assert predictor.original_size is None and predictor.input_size is None
    with pytest.raises(ValueError, match=r"call set_image\(image\) first"):
        predictor.get_image_embedding()


def test_set_embedding_answers_without_encoding(backend: FakeBackend) -> None:
    p = Predictor(backend)
    emb = np.full((1, 8, 4, 4), 7.0, np.float32)
    p.set_embedding(emb, (H, W))
    assert backend.encode_calls == []
    assert p.original_size == (H, W) and p.input_size == preprocess_shape(H, W, 64)
    out = p.predict(point_coords=[[1, 2]], point_labels=[1])
    assert out.masks.shape == (3, H, W)
    np.testing.assert_array_equal(last_call(backend)["image_embeddings"], emb)
    assert emb.flags.writeable  # the caller's own array keeps its flags


@pytest.mark.parametrize(
    ("embedding", "hw", "match"),
    [
        (
            np.zeros((1, 8, 8, 8), np.float32),
            (H, W),
            r"shape \(1, 8, 4, 4\) .* got \(1, 8, 8, 8\)",
        ),
        (np.zeros((8, 4, 4), np.float32), (H, W), r"expected an image embedding"),
        (np.zeros((1, 8, 4, 4), np.float32), (0, W), r"original_hw \(H, W\) > 0"),
    ],
)
def test_set_embedding_rejects(
    backend: FakeBackend, embedding: np.ndarray, hw: tuple[int, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        Predictor(backend).set_embedding(embedding, hw)


def test_set_image_rejects_bad_images(backend: FakeBackend) -> None:
    with pytest.raises(ValueError, match="grayscale"):
        Predictor(backend).set_image(np.zeros((H, W), np.uint8))
    assert backend.encode_calls == []


# ---------------------------------------------------------------------------- prompt packing


def test_points_only_get_one_padding_point(predictor: Predictor, backend: FakeBackend) -> None:
    predictor.predict(point_coords=np.array([[10.0, 20.0], [0, 30]]), point_labels=[1, 0])
    call = last_call(backend)
    assert call["point_coords"].dtype == np.float32 and call["point_labels"].dtype == np.float32
    np.testing.assert_allclose(
        call["point_coords"], [[[10 * SCALE, 20 * SCALE], [0, 30 * SCALE], [0, 0]]], rtol=1e-6
    )
    np.testing.assert_array_equal(call["point_labels"], [[1, 0, -1]])
    assert call["mask_input"].shape == (1, 1, L, L) and not call["mask_input"].any()
    np.testing.assert_array_equal(call["has_mask_input"], [0.0])


def test_box_only_has_corner_labels_and_no_padding(
    predictor: Predictor, backend: FakeBackend
) -> None:
    predictor.predict(box=np.array([1, 2, 30, 25]))
    call = last_call(backend)
    np.testing.assert_allclose(
        call["point_coords"], [[[1 * SCALE, 2 * SCALE], [30 * SCALE, 25 * SCALE]]], rtol=1e-6
    )
    np.testing.assert_array_equal(call["point_labels"], [[2, 3]])


def test_points_then_box_corners(predictor: Predictor, backend: FakeBackend) -> None:
    predictor.predict(point_coords=[[5, 6]], point_labels=[0], box=[1, 2, 30, 25])
    call = last_call(backend)
    np.testing.assert_allclose(
        call["point_coords"][0], np.array([[5, 6], [1, 2], [30, 25]]) * SCALE, rtol=1e-6
    )
    np.testing.assert_array_equal(call["point_labels"], [[0, 2, 3]])


def test_coordinate_transform_uses_each_axis_scale(backend: FakeBackend) -> None:
    # 770 x 769 (H x W) -> 1024 x 1023: x and y scale differently.
    info = ModelInfo("fake", image_size=1024, embed_dim=8, embed_size=4)
    p = Predictor(FakeBackend(info))
    p.set_embedding(np.zeros((1, 8, 4, 4), np.float32), (770, 769))
    p.predict(point_coords=[[769, 770]], point_labels=[1], multimask_output=False)
    coords = p.backend.decode_calls[-1]["point_coords"]  # type: ignore[attr-defined]
    np.testing.assert_allclose(coords[0, 0], [1023, 1024])


def test_batch_of_boxes_is_one_decode_call_with_points_broadcast(
    predictor: Predictor, backend: FakeBackend
) -> None:
    boxes = np.array([[0, 0, 10, 10], [5, 5, 40, 30], [1, 2, 3, 4]], np.float32)
    out = predictor.predict(point_coords=[[7, 8], [9, 9]], point_labels=[1, 0], box=boxes)
    assert len(backend.decode_calls) == 1
    call = last_call(backend)
    assert call["point_coords"].shape == (3, 4, 2)
    for b in range(3):
        np.testing.assert_allclose(
            call["point_coords"][b, :2], np.array([[7, 8], [9, 9]]) * SCALE, rtol=1e-6
        )
        np.testing.assert_allclose(call["point_coords"][b, 2:].reshape(4), boxes[b] * SCALE)
    np.testing.assert_array_equal(call["point_labels"], [[1, 0, 2, 3]] * 3)
    assert out.masks.shape == (3, 3, H, W) and out.masks.dtype == np.bool_
    assert out.scores.shape == (3, 3)
    assert out.low_res_logits.shape == (3, 3, L, L)
    np.testing.assert_array_equal(out.scores[:, 0], [1, 11, 21])  # leading axis = box


def test_batched_point_sets_each_get_padding(predictor: Predictor, backend: FakeBackend) -> None:
    coords = np.array([[[1, 1]], [[2, 2]], [[3, 3]], [[4, 4]]], np.float64)  # (4, 1, 2)
    out = predictor.predict(point_coords=coords, point_labels=np.ones((4, 1)))
    call = last_call(backend)
    np.testing.assert_array_equal(call["point_labels"], [[1, -1]] * 4)
    np.testing.assert_allclose(call["point_coords"][:, 0], coords[:, 0] * SCALE, rtol=1e-6)
    assert out.masks.shape == (4, 3, H, W)


def test_batched_points_pair_with_batched_boxes(
    predictor: Predictor, backend: FakeBackend
) -> None:
    coords = np.array([[[1, 1]], [[2, 2]]], np.float64)
    boxes = np.array([[0, 0, 10, 10], [0, 0, 20, 20]])
    predictor.predict(point_coords=coords, point_labels=[[1], [0]], box=boxes)
    call = last_call(backend)
    np.testing.assert_array_equal(call["point_labels"], [[1, 2, 3], [0, 2, 3]])
    np.testing.assert_allclose(
        call["point_coords"][1], np.array([[2, 2], [0, 0], [20, 20]]) * SCALE
    )


def test_empty_batch_of_boxes_returns_empty_arrays(
    predictor: Predictor, backend: FakeBackend
) -> None:
    out = predictor.predict(box=np.zeros((0, 4)))
    assert backend.decode_calls == []
    assert out.masks.shape == (0, 3, H, W) and out.masks.dtype == np.bool_
    assert out.scores.shape == (0, 3) and out.low_res_logits.shape == (0, 3, L, L)


# -------------------------------------------------------------------------- mask selection


def test_multimask_takes_tokens_1_to_3(predictor: Predictor) -> None:
    out = predictor.predict(point_coords=[[5, 5]], point_labels=[1])
    assert out.masks.shape == (3, H, W) and out.masks.dtype == np.bool_
    np.testing.assert_array_equal(out.scores, [1, 2, 3])
    assert out.scores.dtype == np.float32
    # logits -0.5, 0.5, 1.5 -> empty, full, full
    assert not out.masks[0].any() and out.masks[1].all() and out.masks[2].all()
    np.testing.assert_array_equal(out.low_res_logits[:, 0, 0], [-0.5, 0.5, 1.5])


def test_single_mask_takes_token_0(predictor: Predictor) -> None:
    out = predictor.predict(point_coords=[[5, 5]], point_labels=[1], multimask_output=False)
    assert out.masks.shape == (1, H, W)
    assert out.scores.shape == (1,) and out.scores[0] == 0
    assert out.low_res_logits.shape == (1, L, L)
    assert not out.masks.any()  # token 0 logit is -1.5


def test_return_logits_and_threshold(predictor: Predictor) -> None:
    out = predictor.predict(point_coords=[[5, 5]], point_labels=[1], return_logits=True)
    assert out.masks.dtype == np.float32
    np.testing.assert_allclose(out.masks[:, 0, 0], [-0.5, 0.5, 1.5])
    high = predictor.predict(point_coords=[[5, 5]], point_labels=[1], mask_threshold=1.0)
    assert [bool(m.all()) for m in high.masks] == [False, False, True]


def test_prediction_is_frozen(predictor: Predictor) -> None:
    out = predictor.predict(point_coords=[[5, 5]], point_labels=[1])
    assert isinstance(out, Prediction)
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.scores = np.zeros(3)  # type: ignore[misc]


def test_single_token_model_refuses_multimask(backend: FakeBackend) -> None:
    p = Predictor(FakeBackend(dataclasses.replace(INFO, num_mask_tokens=1)))
    p.set_image(np.zeros((H, W, 3), np.uint8))
    with pytest.raises(ValueError, match="use multimask_output=False"):
        p.predict(point_coords=[[5, 5]], point_labels=[1])


# ----------------------------------------------------------------------------- mask input


@pytest.mark.parametrize("shape", [(L, L), (1, L, L)])
def test_mask_input_unbatched(predictor: Predictor, backend: FakeBackend, shape: tuple) -> None:
    mask = np.arange(L * L, dtype=np.float32).reshape(shape)
    predictor.predict(point_coords=[[5, 5]], point_labels=[1], mask_input=mask)
    call = last_call(backend)
    assert call["mask_input"].shape == (1, 1, L, L) and call["mask_input"].dtype == np.float32
    np.testing.assert_array_equal(call["mask_input"].reshape(L, L), mask.reshape(L, L))
    np.testing.assert_array_equal(call["has_mask_input"], [1.0])


def test_mask_input_from_previous_low_res(predictor: Predictor, backend: FakeBackend) -> None:
    first = predictor.predict(point_coords=[[5, 5]], point_labels=[1])
    best = int(np.argmax(first.scores))
    predictor.predict(
        point_coords=[[5, 5]],
        point_labels=[1],
        mask_input=first.low_res_logits[best : best + 1],
        multimask_output=False,
    )
    np.testing.assert_array_equal(
        last_call(backend)["mask_input"][0], first.low_res_logits[best : best + 1]
    )


def test_mask_input_batched_with_boxes(predictor: Predictor, backend: FakeBackend) -> None:
    masks = np.zeros((2, 1, L, L), np.float64)
    out = predictor.predict(box=[[0, 0, 5, 5], [1, 1, 6, 6]], mask_input=masks)
    assert last_call(backend)["mask_input"].shape == (2, 1, L, L)
    assert out.masks.shape == (2, 3, H, W)


# ----------------------------------------------------------------------------- bad inputs


def test_predict_before_set_image(backend: FakeBackend) -> None:
    with pytest.raises(ValueError, match=r"call set_image\(image\) first"):
        Predictor(backend).predict(point_coords=[[1, 1]], point_labels=[1])


def test_points_on_the_image_border_are_accepted(predictor: Predictor) -> None:
    out = predictor.predict(point_coords=[[0, 0], [W, H]], point_labels=[1, 1], box=[0, 0, W, H])
    assert out.masks.shape == (3, H, W)


BAD_INPUTS = [
    ({}, "no prompt given"),
    (dict(point_coords=np.zeros((0, 2)), point_labels=np.zeros(0)), "no prompt given"),
    (dict(point_coords=[[1, 1]]), "point_labels is missing"),
    (dict(point_labels=[1]), "point_coords is missing"),
    (dict(point_coords=[1, 1], point_labels=[1]), r"\(N, 2\) or \(B, N, 2\).*got shape \(2,\)"),
    (dict(point_coords=[[1, 1, 1]], point_labels=[1]), r"got shape \(1, 3\)"),
    (dict(point_coords=[["a", "b"]], point_labels=[1]), "point_coords must be a numeric array"),
    (
        dict(point_coords=[[1, 1], [2, 2]], point_labels=[1]),
        r"shape \(2,\) to match .* got \(1,\)",
    ),
    (dict(point_coords=[[1, 1], [np.nan, 2]], point_labels=[1, 1]), "NaN or inf: point 1"),
    (dict(point_coords=[[np.inf, 1]], point_labels=[1]), "NaN or inf: point 0"),
    (dict(point_coords=[[1, 1]], point_labels=[2]), r"1 \(foreground\) or 0 .*got 2 for point 0"),
    (dict(point_coords=[[1, 1]], point_labels=[0.5]), "got 0.5 for point 0"),
    (dict(point_coords=[[1, 1]], point_labels=[-1]), "got -1 for point 0"),
    (
        dict(point_coords=[[1, 1], [41, 5]], point_labels=[1, 1]),
        r"point 1 at \(X=41, Y=5\) is outside the image of 40x30 \(W x H\)",
    ),
    (dict(point_coords=[[-0.5, 5]], point_labels=[1]), r"point 0 at \(X=-0.5, Y=5\) is outside"),
    (dict(point_coords=[[5, 31]], point_labels=[1]), "outside the image of 40x30"),
    (
        dict(point_coords=[[[1, 1]], [[1, 99]]], point_labels=[[1], [1]]),
        "point 0 of prompt set 1 at",
    ),
    (dict(box=[1, 2, 3]), r"box must be \(4,\) or \(B, 4\).*got shape \(3,\)"),
    (dict(box=np.zeros((1, 2, 4))), r"got shape \(1, 2, 4\)"),
    (dict(box=[1, 2, np.nan, 4]), r"box \[1.0, 2.0, nan, 4.0\] contains NaN or inf"),
    (dict(box=[5, 2, 3, 4]), r"box \[5.0, 2.0, 3.0, 4.0\] has x1 < x0 or y1 < y0"),
    (dict(box=[[0, 0, 5, 5], [1, 9, 3, 4]]), r"box 1 \[1.0, 9.0, 3.0, 4.0\] has x1 < x0"),
    (dict(box=[0, 0, 41, 5]), r"box \[0.0, 0.0, 41.0, 5.0\] is outside the image of 40x30"),
    (dict(box=[-1, 0, 4, 5]), "is outside the image"),
    (dict(box=[[0, 0, 4, 5], [0, 0, 4, 31]]), "box 1 .* is outside the image"),
    (
        dict(box=[0, 0, 4, 5], mask_input=np.zeros((2, L, L))),
        rf"mask_input must be .* \(B, 1, {L}, {L}\), got \(2, {L}, {L}\)",
    ),
    (dict(box=[0, 0, 4, 5], mask_input=np.zeros((1, 1, 8, 8))), r"got \(1, 1, 8, 8\)"),
    (dict(box=[0, 0, 4, 5], mask_input=np.zeros((L, L), np.int32)), "must be float logits"),
    (dict(box=[0, 0, 4, 5], mask_input=np.full((L, L), np.nan)), "mask_input contains NaN"),
    (
        dict(box=np.zeros((2, 4)), mask_input=np.zeros((3, 1, L, L))),
        "disagree on the number of prompt sets: point_coords None, box 2, mask_input 3",
    ),
    (
        dict(point_coords=np.ones((3, 1, 2)), point_labels=np.ones((3, 1)), box=np.zeros((2, 4))),
        "point_coords 3, box 2",
    ),
]


@pytest.mark.parametrize(("kwargs", "match"), BAD_INPUTS)
def test_bad_prompts_raise_clear_errors(
    predictor: Predictor, backend: FakeBackend, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)
    assert backend.decode_calls == []


def test_single_mask_from_multimask_picks_best_iou() -> None:
    """TinySAM-style models: single-mask output is the best multimask output, not token 0."""
    from segfast_ros.runtime.predictor import select_masks

    info = ModelInfo("tinysam", single_mask_from_multimask=True)
    low_res = np.arange(2 * 4, dtype=np.float32).reshape(2, 4, 1, 1)
    iou = np.array([[0.9, 0.1, 0.7, 0.3], [0.0, 0.2, 0.1, 0.8]], dtype=np.float32)
    lr, sc = select_masks(low_res, iou, info, multimask_output=False)
    assert lr.shape == (2, 1, 1, 1) and sc.tolist() == [[np.float32(0.7)], [np.float32(0.8)]]
    assert lr[:, 0, 0, 0].tolist() == [2.0, 7.0]
    lr, sc = select_masks(low_res, iou, ModelInfo("mobile_sam"), multimask_output=False)
    assert lr[:, 0, 0, 0].tolist() == [0.0, 4.0]
    lr, sc = select_masks(low_res, iou, info, multimask_output=True)
    assert sc.shape == (2, 3)


def test_failed_encode_does_not_leave_the_previous_frame() -> None:
    """A frame whose encode fails must not let prompts be answered on the frame before it."""

    class Failing(FakeBackend):
        fail = False

        def encode(self, image: np.ndarray) -> np.ndarray:
            if self.fail:
                raise RuntimeError("encoder crashed")
            return super().encode(image)

    backend = Failing()
    predictor = Predictor(backend)
    predictor.set_image(np.zeros((40, 60, 3), np.uint8))
    backend.fail = True
    with pytest.raises(RuntimeError, match="encoder crashed"):
        predictor.set_image(np.zeros((50, 70, 3), np.uint8))
    assert not predictor.is_image_set
    with pytest.raises(ValueError, match="call set_image"):
        predictor.predict(point_coords=[[1, 1]], point_labels=[1])
