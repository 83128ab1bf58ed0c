"""PyTorch backend, for development and parity tests: runs a ``modeling.sam.Sam`` directly.

Import this module only when torch is wanted: ``segfast_ros.runtime`` itself never imports it,
so a robot with ONNX Runtime alone does not need torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

try:
    import torch
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "TorchBackend needs torch (pip install -r requirements-dev.txt); on a robot use "
        "OnnxRuntimeBackend with exported ONNX files instead"
    ) from err

from segfast_ros.runtime.backend import ModelInfo

if TYPE_CHECKING:
    from segfast_ros.modeling.sam import Sam


class TorchBackend:
    """A torch ``Sam`` behind the :class:`~segfast_ros.runtime.backend.Backend` interface.

    Args:
        sam: a built ``segfast_ros.modeling.sam.Sam`` (weights loaded); moved to ``device``
            and put in eval mode.
        device: torch device to run on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    """

    name = "torch"

    def __init__(self, sam: Sam, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.sam = sam.to(self.device).eval()
        self.info: ModelInfo = sam.info

    @classmethod
    def from_registry(
        cls,
        name: str,
        checkpoint: str | Path | None = None,
        *,
        device: str | torch.device = "cpu",
    ) -> TorchBackend:
        """Build model ``name`` from the registry, loading ``checkpoint`` if given.

        Without a checkpoint the weights are random: useful for shapes and speed only.
        """
        from segfast_ros.modeling.registry import build_sam

        return cls(build_sam(name, checkpoint), device=device)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not array.flags.writeable:
            # torch cannot wrap read-only memory (the Predictor's cached embedding is); the
            # graphs never write to their inputs, but torch warns, so hand it a copy.
            array = array.copy()
        return torch.from_numpy(array).to(self.device)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``(1, 3, S, S)`` float32 preprocessed image to ``(1, C, h, w)`` float32 embedding."""
        with torch.inference_mode():
            embedding = self.sam.encode(self._tensor(image))
        return embedding.float().cpu().numpy()

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``B`` prompt sets to ``(B, M, L, L)`` logits and ``(B, M)`` IoUs (see Backend)."""
        with torch.inference_mode():
            masks, iou = self.sam.decode(
                self._tensor(image_embeddings),
                self._tensor(point_coords),
                self._tensor(point_labels),
                self._tensor(mask_input),
                self._tensor(has_mask_input),
            )
        return masks.float().cpu().numpy(), iou.float().cpu().numpy()
