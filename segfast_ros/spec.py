"""The contract between the model builders and exporters (torch) and the runtime (no torch).

It names the two graphs' inputs and outputs, the prompt label convention and the facts about a
model that pre/post-processing needs. It depends on nothing but the standard library, so both
sides import it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

#: Point labels as the decoder graph receives them.
LABEL_PAD, LABEL_BG, LABEL_FG, LABEL_BOX_TL, LABEL_BOX_BR = -1, 0, 1, 2, 3

SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)

#: Key under which exported ONNX files carry :class:`ModelInfo` (``metadata_props``).
METADATA_KEY = "segfast"
#: Key of an int8 file's quantization settings (JSON: target, types, reduce_range, the CPU it
#: was built and checked on); the runtime reads it to warn about a file made for another CPU.
QUANTIZATION_KEY = f"{METADATA_KEY}.quantization"

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")


@dataclass(frozen=True)
class ModelInfo:
    """What the pre/post-processing needs to know about a model.

    Attributes:
        name: registry name of the model (``mobile_sam``, ``sam_vit_b``, ...).
        image_size: side ``S`` of the square encoder input, in pixels (1024 for SAM).
        embed_dim: channels ``C`` of the image embedding (256 for SAM).
        embed_size: side ``h`` of the square image embedding (64 for SAM).
        num_mask_tokens: masks ``M`` the decoder emits per prompt set (4 for SAM).
        pixel_mean: per-channel RGB mean in 0..255 space.
        pixel_std: per-channel RGB std in 0..255 space.
        single_mask_from_multimask: the model's single-mask token (0) was not trained (TinySAM
            distils and uses only the multimask outputs), so a single-mask request returns the
            multimask output with the highest predicted IoU instead.
    """

    name: str
    image_size: int = 1024
    embed_dim: int = 256
    embed_size: int = 64
    num_mask_tokens: int = 4
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    single_mask_from_multimask: bool = False

    @property
    def low_res_size(self) -> int:
        """Side ``L`` of the decoder's low-resolution masks (4x the embedding side)."""
        return 4 * self.embed_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        """Parse :meth:`to_json` output. Keys this version does not know are ignored, so files
        from a newer exporter still load.

        Raises:
            ValueError: not JSON, not an object, or without a model name.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model info is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError(f"model info must be a JSON object with a 'name', got {text[:80]!r}")
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        for key in ("pixel_mean", "pixel_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)
