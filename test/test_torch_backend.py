"""TorchBackend's numpy <-> torch plumbing, with a stand-in module (the real models are covered
by the parity tests)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from segfast_ros.runtime import ModelInfo, Predictor  # noqa: E402
from segfast_ros.runtime.torch_backend import TorchBackend  # noqa: E402

INFO = ModelInfo("stand_in", image_size=64, embed_dim=8, embed_size=4)


class StandIn(torch.nn.Module):
    """Same methods as modeling.sam.Sam; records whether it ran under inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.info = INFO
        self.scale = torch.nn.Parameter(torch.tensor(2.0))
        self.inference_mode: list[bool] = []

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        self.inference_mode.append(torch.is_inference_mode_enabled())
        pooled = torch.nn.functional.avg_pool2d(image, 16)  # (1, 3, 4, 4)
        return pooled.mean(1, keepdim=True).expand(1, 8, 4, 4) * self.scale

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.inference_mode.append(torch.is_inference_mode_enabled())
        b = point_coords.shape[0]
        masks = mask_input * has_mask_input + image_embeddings.mean()
        iou = point_coords.sum((1, 2))[:, None] + point_labels.sum(1, keepdim=True)
        return masks.expand(b, 4, 16, 16).double(), iou.expand(b, 4).double()


def test_encode_decode_convert_numpy_and_torch() -> None:
    model = StandIn().train()
    backend = TorchBackend(model)
    assert backend.info == INFO and backend.name == "torch"
    assert not model.training  # put in eval mode
    emb = backend.encode(np.ones((1, 3, 64, 64), np.float32))
    assert isinstance(emb, np.ndarray) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, 2.0)
    masks, iou = backend.decode(
        emb,
        np.ones((2, 3, 2), np.float32),
        np.ones((2, 3), np.float64),
        np.full((1, 1, 16, 16), 3.0, np.float32),
        np.array([1.0], np.float32),
    )
    assert masks.shape == (2, 4, 16, 16) and masks.dtype == np.float32
    assert iou.shape == (2, 4) and iou.dtype == np.float32
    np.testing.assert_allclose(masks, 5.0)
    np.testing.assert_allclose(iou, 9.0)
    assert model.inference_mode == [True, True]


def test_predictor_on_torch_backend() -> None:
    predictor = Predictor(TorchBackend(StandIn()))
    predictor.set_image(np.zeros((30, 40, 3), np.uint8))
    out = predictor.predict(box=[0, 0, 10, 10], multimask_output=False)
    assert out.masks.shape == (1, 30, 40)


def test_from_registry_calls_build_sam(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_build(name: str, checkpoint: object = None) -> StandIn:
        calls.append((name, checkpoint))
        return StandIn()

    monkeypatch.setattr("segfast_ros.modeling.registry.build_sam", fake_build)
    backend = TorchBackend.from_registry("mobile_sam", "ckpt.pt")
    assert calls == [("mobile_sam", "ckpt.pt")] and backend.info == INFO
