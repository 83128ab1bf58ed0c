"""Smoke test of the demo training: the SAM-style and detector steps run and their loss falls."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

from segfast_ros.bench.scenes import generate_scene  # noqa: E402
from segfast_ros.demo.detector_model import DemoDetector, detector_loss  # noqa: E402
from segfast_ros.demo.metrics import DEFAULT_MODEL_DIR  # noqa: E402
from segfast_ros.demo.segmenter_loss import segmenter_loss  # noqa: E402
from segfast_ros.demo.train import main, train  # noqa: E402
from segfast_ros.demo.training_data import (  # noqa: E402
    DEMO_MODEL,
    DETECTOR_IMGSZ,
    TrainConfig,
    make_batch,
)
from segfast_ros.export.quantize import quantization_settings  # noqa: E402
from segfast_ros.modeling import build_sam  # noqa: E402

SHIPPED = Path(DEFAULT_MODEL_DIR)


def test_training_steps_lower_both_losses():
    torch.manual_seed(0)
    cfg = TrainConfig(batch_size=2, prompts_per_image=3, rounds=2, loss_size=64)
    sam = build_sam(DEMO_MODEL).train()
    detector = DemoDetector().train()
    batch = make_batch([generate_scene(s) for s in (1, 2)], sam.info.image_size, cfg.loss_size)
    assert batch.images.shape == (2, 3, 256, 256)
    assert batch.detector_images.shape == (2, 3, DETECTOR_IMGSZ, DETECTOR_IMGSZ)
    opt = torch.optim.AdamW(sam.parameters(), lr=2e-3)
    det_opt = torch.optim.AdamW(detector.parameters(), lr=2e-3)
    seg_losses, det_losses = [], []
    for _ in range(25):
        # The same prompts every step: the loss must fall on a fixed problem.
        loss, stats = segmenter_loss(sam, batch, cfg, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        det, _ = detector_loss(detector, batch)
        det_opt.zero_grad()
        det.backward()
        det_opt.step()
        seg_losses.append(float(loss.detach()))
        det_losses.append(float(det.detach()))
        assert np.isfinite(seg_losses[-1]) and np.isfinite(det_losses[-1])
        assert set(stats) == {"mask", "iou", "miou"}
    assert np.mean(seg_losses[-3:]) < 0.8 * np.mean(seg_losses[:3])
    assert np.mean(det_losses[-3:]) < 0.9 * np.mean(det_losses[:3])


def test_detector_emits_the_yolov8_layout():
    detector = DemoDetector().eval()
    with torch.no_grad():
        out = detector(torch.rand(1, 3, DETECTOR_IMGSZ, DETECTOR_IMGSZ))
    anchors = (DETECTOR_IMGSZ // 8) ** 2
    assert out.shape == (1, 5, anchors)
    assert ((out[0, 4] >= 0) & (out[0, 4] <= 1)).all()  # sigmoid scores
    assert (out[0, 2:4] > 0).all()  # widths and heights


def test_make_batch_rejects_scenes_of_another_size():
    with pytest.raises(ValueError, match="long side of 256"):
        make_batch([generate_scene(0, (200, 200))], 256, 128)


def test_training_is_reproducible_from_its_seed():
    cfg = TrainConfig(steps=2, batch_size=1, prompts_per_image=2, warmup_steps=1)
    runs = [train(cfg, log=lambda line: None) for _ in range(2)]
    (sam_a, det_a, rec_a), (sam_b, det_b, rec_b) = runs
    assert rec_a["history"][-1]["loss"] == rec_b["history"][-1]["loss"]
    for a, b in ((sam_a, sam_b), (det_a, det_b)):
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(pa, pb), name
    other = train(replace(cfg, seed=1), log=lambda line: None)
    assert other[2]["history"][-1]["loss"] != rec_a["history"][-1]["loss"]


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.mark.skipif(
    not (SHIPPED / "encoder.int8.onnx").is_file(), reason=f"no demo model in {SHIPPED}"
)
def test_requantize_rebuilds_the_shipped_int8_encoder(tmp_path: Path, capsys) -> None:
    with pytest.raises(FileNotFoundError, match=r"training.json not found"):
        main(["--out", str(tmp_path), "--requantize"])
    for name in ("encoder.fp32.onnx", "training.json"):
        shutil.copy(SHIPPED / name, tmp_path / name)
    main(["--out", str(tmp_path), "--requantize"])
    assert "target cpu, reduce_range True" in capsys.readouterr().out
    path = tmp_path / "encoder.int8.onnx"
    settings = quantization_settings(path)
    assert settings is not None
    assert (settings["target"], settings["reduce_range"]) == ("cpu", True)
    record = json.loads((tmp_path / "training.json").read_text())
    assert record["files"]["encoder.int8"]["bytes"] == path.stat().st_size
    assert record["int8"]["target"] == "cpu"
    assert record["history"] == json.loads((SHIPPED / "training.json").read_text())["history"]
    # Same calibration scenes and types as the shipped file. Activation ranges come from fp32
    # ORT runs, whose last bits differ per CPU: scales and int32 biases are compared loosely.
    got, want = _initializers(path), _initializers(SHIPPED / "encoder.int8.onnx")
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        if value.dtype == np.int8:  # weights: from the fp32 weights alone
            assert np.array_equal(got[name], value), name
        else:
            atol = 1 if np.issubdtype(value.dtype, np.integer) else 0
            np.testing.assert_allclose(got[name], value, rtol=1e-3, atol=atol, err_msg=name)
