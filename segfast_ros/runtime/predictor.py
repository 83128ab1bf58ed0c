"""Point/box prompting against one cached image embedding, on any :class:`Backend` (no torch).

``set_image`` runs the expensive encoder once; ``predict`` only packs prompts, runs the light
decoder and upscales the chosen masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from segfast_ros.runtime.backend import Backend, ModelInfo
from segfast_ros.runtime.prompt_checks import check_boxes, check_mask_input, check_points
from segfast_ros.runtime.transforms import (
    RESIZE_INTERPOLATIONS,
    Region,
    apply_boxes,
    apply_coords,
    postprocess_masks,
    prepare_image,
    preprocess_shape,
    region_view,
    upscale_group_size,
    upscale_regions,
)
from segfast_ros.spec import LABEL_BOX_BR, LABEL_BOX_TL, LABEL_PAD


@dataclass(frozen=True)
class Prediction:
    """Masks for one prompt set (unbatched call) or ``B`` prompt sets (batched call).

    ``C`` is 3 with ``multimask_output`` else 1; ``H x W`` is the original image; ``L x L`` the
    decoder's low-res grid, covering the padded encoder input.

    Attributes:
        masks: ``([B,] C, H, W)`` bool (logits > threshold), or float32 logits when
            ``return_logits`` was set.
        scores: ``([B,] C)`` float32 predicted IoU of each mask.
        low_res_logits: ``([B,] C, L, L)`` float32 logits, usable as the next ``mask_input``.
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray


class Predictor:
    """SAM-style predictor: encode an image once, then answer many point/box prompts.

    Args:
        backend: any :class:`~segfast_ros.runtime.backend.Backend` (ONNX Runtime, torch, ...).
        interpolation: image resize policy for :meth:`set_image`, a key of
            :data:`RESIZE_INTERPOLATIONS` (``"linear"``, the reference, or ``"area"``, an
            antialiased downscale).
    """

    def __init__(self, backend: Backend, *, interpolation: str = "linear") -> None:
        if interpolation not in RESIZE_INTERPOLATIONS:
            raise ValueError(
                f"unknown interpolation {interpolation!r}; expected one of "
                f"{sorted(RESIZE_INTERPOLATIONS)}"
            )
        self.backend = backend
        self.interpolation = interpolation
        self.info: ModelInfo = backend.info
        lr = self.info.low_res_size
        # Shared, read-only "no mask" input: predict() allocates nothing for it.
        self._no_mask = np.zeros((1, 1, lr, lr), dtype=np.float32)
        self._no_mask.setflags(write=False)
        self._has_mask = np.ones(1, dtype=np.float32)
        self._has_no_mask = np.zeros(1, dtype=np.float32)
        for arr in (self._has_mask, self._has_no_mask):
            arr.setflags(write=False)
        self._embedding: np.ndarray | None = None
        self._original_size: tuple[int, int] | None = None
        self._input_size: tuple[int, int] | None = None

    # ---------------------------------------------------------------- image state

    def set_image(self, image: np.ndarray) -> None:
        """Encode ``image`` and cache its embedding for the following :meth:`predict` calls.

        Args:
            image: ``(H, W, 3)`` uint8 RGB (not BGR).

        Raises:
            ValueError: the image is not ``HxWx3`` uint8, empty or absurdly large.
        """
        # A frame that fails to encode must not leave the previous frame answering prompts.
        self.reset_image()
        x, input_size = prepare_image(
            image, self.info, interpolation=RESIZE_INTERPOLATIONS[self.interpolation]
        )
        embedding = self.backend.encode(x)
        self._store(embedding, image.shape[:2], input_size)

    def set_embedding(self, embedding: np.ndarray, original_hw: tuple[int, int]) -> None:
        """Use an embedding computed earlier (e.g. cached by stamp) instead of encoding again.

        Args:
            embedding: ``(1, C, h, w)`` float32, as returned by :meth:`get_image_embedding`.
            original_hw: ``(H, W)`` of the image the embedding was computed from.

        Raises:
            ValueError: the embedding does not fit this model or the size is not positive.
        """
        info = self.info
        expected = (1, info.embed_dim, info.embed_size, info.embed_size)
        embedding = np.asarray(embedding)
        if embedding.shape != expected:
            raise ValueError(
                f"expected an image embedding of shape {expected} for model {info.name!r}, "
                f"got {embedding.shape}"
            )
        if len(original_hw) != 2 or min(original_hw) <= 0:
            raise ValueError(f"expected original_hw (H, W) > 0, got {tuple(original_hw)}")
        h, w = int(original_hw[0]), int(original_hw[1])
        self._store(embedding, (h, w), preprocess_shape(h, w, info.image_size))

    def _store(
        self, embedding: np.ndarray, original_hw: tuple[int, int], input_hw: tuple[int, int]
    ) -> None:
        # A read-only view: callers (and an embedding cache) may share it without copying, and
        # nobody can change it behind the predictor's back. The caller's own array keeps its
        # flags.
        view = np.ascontiguousarray(embedding, dtype=np.float32).view()
        view.setflags(write=False)
        self._embedding = view
        self._original_size = (int(original_hw[0]), int(original_hw[1]))
        self._input_size = (int(input_hw[0]), int(input_hw[1]))

    def reset_image(self) -> None:
        """Forget the cached embedding."""
        self._embedding = None
        self._original_size = None
        self._input_size = None

    @property
    def is_image_set(self) -> bool:
        """Whether an embedding is cached."""
        return self._embedding is not None

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the current image, None before :meth:`set_image`."""
        return self._original_size

    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of the resized image inside the encoder input, None before set_image."""
        return self._input_size

    def get_image_embedding(self) -> np.ndarray:
        """The cached ``(1, C, h, w)`` float32 embedding (read-only, not a copy)."""
        if self._embedding is None:
            raise ValueError("no image is set: call set_image(image) first")
        return self._embedding

    # ---------------------------------------------------------------- prompting

    def predict(
        self,
        point_coords: npt.ArrayLike | None = None,
        point_labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        *,
        mask_threshold: float = 0.0,
        upscale_budget: int | None = None,
    ) -> Prediction:
        """Predict masks for point and/or box prompts on the current image.

        A call is *batched* when any input has a leading batch axis (``point_coords``
        ``(B, N, 2)``, ``box`` ``(B, 4)``, ``mask_input`` ``(B, 1, L, L)``); all ``B`` prompt
        sets are decoded in one backend call. Unbatched inputs are shared by every prompt set:
        the same points go with each box.

        Args:
            point_coords: ``(N, 2)`` or ``(B, N, 2)``, (X, Y) in original image pixels, inside
                ``[0, W] x [0, H]``.
            point_labels: ``(N,)`` or ``(B, N)``, 1 foreground, 0 background.
            box: ``(4,)`` or ``(B, 4)`` XYXY in original image pixels.
            mask_input: ``(L, L)``, ``(1, L, L)`` or ``(B, 1, L, L)`` low-res logits from a
                previous prediction (its ``low_res_logits``, one mask per prompt set).
            multimask_output: return 3 masks per prompt set (SAM's multimask tokens 1..3)
                instead of 1 (token 0). Three is better for a single ambiguous point.
            return_logits: return float32 logits instead of boolean masks.
            mask_threshold: logit above which a pixel belongs to the mask.
            upscale_budget: boolean masks are upscaled and thresholded
                ``upscale_group_size((H, W), upscale_budget)`` at a time (None:
                :data:`~segfast_ros.runtime.transforms.UPSCALE_BUDGET_PIXELS`), so that only
                the bool output is full-size (float32 logits are 4x larger); ignored with
                ``return_logits``.

        Returns:
            A :class:`Prediction`; its arrays have the leading ``B`` axis only for a batched
            call.

        Raises:
            ValueError: no image set, no prompt, or a malformed / out-of-image prompt.
        """
        low_res, iou, batched = self._decode(
            point_coords, point_labels, box, mask_input, multimask_output
        )
        assert self._input_size is not None and self._original_size is not None
        if return_logits:
            masks = postprocess_masks(
                low_res, self._input_size, self._original_size, self.info.image_size
            )
        else:
            # Each mask is upscaled only where it may exceed the threshold (the rest is False).
            masks = np.zeros((*low_res.shape[:2], *self._original_size), dtype=bool)
            flat_in = low_res.reshape(-1, *low_res.shape[2:])
            flat_out = masks.reshape(-1, *self._original_size)
            group = upscale_group_size(self._original_size, upscale_budget)
            for start in range(0, len(flat_in), group):
                regions = self.upscale_regions(flat_in[start : start + group], mask_threshold)
                for out, region in zip(flat_out[start : start + group], regions, strict=True):
                    if region is not None:
                        np.greater(region.logits, mask_threshold, out=region_view(out, region))
        if not batched:
            return Prediction(masks[0], iou[0], low_res[0])
        return Prediction(masks, iou, low_res)

    def predict_low_res(
        self,
        point_coords: npt.ArrayLike | None = None,
        point_labels: npt.ArrayLike | None = None,
        box: npt.ArrayLike | None = None,
        mask_input: npt.ArrayLike | None = None,
        multimask_output: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode prompts like :meth:`predict`, but stop at the decoder's low-res logits.

        For callers that filter many masks by predicted IoU before paying for the upscale to
        the original frame (SegEvery); upscale the survivors with :meth:`upscale`. Inputs,
        batching rules and errors are those of :meth:`predict`.

        Returns:
            ``([B,] C, L, L)`` float32 low-res logits and ``([B,] C)`` float32 predicted IoUs,
            ``C`` = 3 with ``multimask_output`` else 1; the ``B`` axis only for a batched call.
        """
        low_res, iou, batched = self._decode(
            point_coords, point_labels, box, mask_input, multimask_output
        )
        if not batched:
            return low_res[0], iou[0]
        return low_res, iou

    def upscale(self, low_res: np.ndarray) -> np.ndarray:
        """Upscale low-res logits to the current image's original frame (no threshold).

        Args:
            low_res: ``(..., L, L)`` float32 logits in the low-res frame, e.g. rows of
                :meth:`predict_low_res`'s output.

        Returns:
            ``(..., H, W)`` float32 logits in the original frame; threshold them (``> 0``) for
            boolean masks.

        Raises:
            ValueError: no image set, or ``low_res`` is not ``(..., L, L)`` for this model.
        """
        input_hw, original_hw = self._geometry()  # "no image" is said first, as before
        low_res = self._low_res_masks(low_res)
        lead, lr = low_res.shape[:-2], self.info.low_res_size
        flat = low_res.reshape(1, -1, lr, lr)
        big = postprocess_masks(flat, input_hw, original_hw, self.info.image_size)
        return big.reshape(*lead, *self._original_size)

    def upscale_regions(self, low_res: np.ndarray, above: float) -> list[Region | None]:
        """:meth:`upscale` of ``(..., L, L)`` low-res logits, each mask only where it may exceed
        ``above`` (see :func:`~segfast_ros.runtime.transforms.upscale_regions`): one region or
        None per mask, in row-major order of the leading axes.

        Raises:
            ValueError: no image set, or ``low_res`` is not ``(..., L, L)`` for this model.
        """
        input_hw, original_hw = self._geometry()  # "no image" is said first, as before
        low_res = self._low_res_masks(low_res)
        flat = low_res.reshape(-1, *low_res.shape[-2:])
        return upscale_regions(flat, input_hw, original_hw, self.info.image_size, above)

    def _geometry(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(input_hw, original_hw)`` of the current image; a ValueError without one."""
        if self._input_size is None or self._original_size is None:
            raise ValueError("no image is set: call set_image(image) first")
        return self._input_size, self._original_size

    def _low_res_masks(self, low_res: npt.ArrayLike) -> np.ndarray:
        """``low_res`` as an array, or a ValueError unless it is ``(..., L, L)`` for this model."""
        lr = self.info.low_res_size
        low_res = np.asarray(low_res)
        if low_res.ndim < 2 or low_res.shape[-2:] != (lr, lr):
            raise ValueError(
                f"expected low-res logits of shape (..., {lr}, {lr}), got {low_res.shape}"
            )
        return low_res

    def _decode(
        self,
        point_coords: npt.ArrayLike | None,
        point_labels: npt.ArrayLike | None,
        box: npt.ArrayLike | None,
        mask_input: npt.ArrayLike | None,
        multimask_output: bool,
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Validate and pack the prompts, run the decoder, select the requested masks.

        Returns:
            ``(B, C, L, L)`` float32 low-res logits, ``(B, C)`` predicted IoUs (always with the
            batch axis, ``B = 1`` for an unbatched call) and whether the call was batched.
        """
        if self._embedding is None or self._original_size is None or self._input_size is None:
            raise ValueError("no image is set: call set_image(image) first")
        original_hw = self._original_size
        lr = self.info.low_res_size

        points, labels, batch = check_points(point_coords, point_labels, original_hw)
        boxes, box_batch = check_boxes(box, original_hw)
        masks_in, mask_batch = check_mask_input(mask_input, lr)
        batched = batch is not None or box_batch is not None or mask_batch is not None
        sizes = {n for n in (batch, box_batch, mask_batch) if n is not None}
        if len(sizes) > 1:
            raise ValueError(
                "batched inputs disagree on the number of prompt sets: "
                f"point_coords {batch}, box {box_batch}, mask_input {mask_batch}"
            )
        num_sets = sizes.pop() if sizes else 1
        if (points is None or points.shape[-2] == 0) and boxes is None:
            raise ValueError("no prompt given: pass point_coords with point_labels, or a box")

        coords, tok_labels = self._pack(points, labels, boxes, num_sets)
        if masks_in is None:
            mask_arr, has_mask = self._no_mask, self._has_no_mask
        else:
            mask_arr, has_mask = masks_in, self._has_mask

        if multimask_output and self.info.num_mask_tokens < 2:
            raise ValueError(
                f"model {self.info.name!r} emits a single mask per prompt set; "
                "use multimask_output=False"
            )
        if num_sets == 0:
            # A batch of zero prompt sets: answer with empty arrays, the backend never runs.
            num_out = self.info.num_mask_tokens - 1 if multimask_output else 1
            return (
                np.zeros((0, num_out, lr, lr), dtype=np.float32),
                np.zeros((0, num_out), dtype=np.float32),
                batched,
            )
        low_res, iou = self.backend.decode(self._embedding, coords, tok_labels, mask_arr, has_mask)
        low_res, iou = select_masks(low_res, iou, self.info, multimask_output)
        return low_res, iou, batched

    def _pack(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: np.ndarray | None,
        num_sets: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sparse prompt tokens as SAM's prompt encoder expects them.

        Per prompt set: the points, then either the box corners (labels 2, 3) or one padding
        point (0, 0) with label -1.

        Returns:
            ``(B, N + 2 or N + 1, 2)`` float32 coordinates in the input frame and ``(B, N')``
            float32 labels.
        """
        original_hw, size = self._original_size, self.info.image_size
        assert original_hw is not None
        n = 0 if points is None else points.shape[-2]
        extra = 2 if boxes is not None else 1
        coords = np.zeros((num_sets, n + extra, 2), dtype=np.float32)
        tok_labels = np.empty((num_sets, n + extra), dtype=np.float32)
        if n:
            assert points is not None and labels is not None
            coords[:, :n] = apply_coords(points, original_hw, size)
            tok_labels[:, :n] = labels
        if boxes is not None:
            coords[:, n:] = apply_boxes(boxes, original_hw, size).reshape(-1, 2, 2)
            tok_labels[:, n:] = (LABEL_BOX_TL, LABEL_BOX_BR)
        else:
            tok_labels[:, n] = LABEL_PAD
        return coords, tok_labels


# -------------------------------------------------------------------- output selection


def select_masks(
    low_res: np.ndarray, iou: np.ndarray, info: ModelInfo, multimask_output: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Pick the requested outputs from all ``M`` mask tokens of a decode.

    Token 0 is SAM's single-mask output and tokens 1.. the multimask ones. For models whose
    token 0 is untrained (``info.single_mask_from_multimask``) the single mask is the multimask
    output with the highest predicted IoU.

    Args:
        low_res: ``(B, M, L, L)`` logits; iou: ``(B, M)``.

    Returns:
        ``(B, C, L, L)`` and ``(B, C)`` with ``C = M - 1`` for multimask, else 1.
    """
    if multimask_output:
        return low_res[:, 1:], iou[:, 1:]
    if not info.single_mask_from_multimask:
        return low_res[:, :1], iou[:, :1]
    best = 1 + np.argmax(iou[:, 1:], axis=1)
    rows = np.arange(len(best))
    return low_res[rows, best][:, None], iou[rows, best][:, None]
