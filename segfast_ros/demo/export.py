"""The trained demo models as the files the project ships, and the INT8 encoder rebuilt alone.

:func:`export_all` writes what a training run leaves in ``out``; :func:`requantize` rebuilds only
``encoder.int8.onnx`` from the fp32 encoder there (``python -m segfast_ros.demo.train
--requantize``), calibrated on the same generated scenes, and :func:`reexport_decoder` only
``decoder.fp32.onnx`` (``--reexport-decoder``), from the weights its old graph holds.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ..bench.scenes import generate_scene
from ..export.quantize import quantization_settings, quantize_encoder
from ..modeling.sam import Sam
from ..runtime.onnx_backend import onnx_file_names
from .detector_model import DemoDetector
from .training_data import DETECTOR_IMGSZ, DETECTOR_STRIDE, TRAIN_SHAPES


def export_detector(detector: DemoDetector, path: str | Path) -> Path:
    """Write the detector as ONNX: input ``images`` (1, 3, 256, 256), output ``output0``.

    The ``names`` metadata (``{0: 'object'}``, ultralytics' format) tells
    :class:`~segfast_ros.segevery.detector.ObjectDetector` there is one class and no mask
    coefficients; ``imgsz`` and ``stride`` are recorded as ultralytics does.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(1, 3, DETECTOR_IMGSZ, DETECTOR_IMGSZ)
    torch.onnx.export(
        detector.eval(),
        (x,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["images"],
        output_names=["output0"],
        do_constant_folding=True,
    )
    model = onnx.load(str(path))
    for key, value in (
        ("names", str({0: "object"})),
        ("imgsz", str([DETECTOR_IMGSZ, DETECTOR_IMGSZ])),
        ("stride", str(DETECTOR_STRIDE)),
        ("description", "segfast_ros demo object detector for synthetic scenes (YOLOv8 layout)"),
    ):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def write_calibration_images(folder: Path, seed: int, count: int = 32) -> Path:
    """Generated scenes as PNG files, for the INT8 calibration (stream (seed, 2))."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2])
    for i in range(count):
        hw = TRAIN_SHAPES[i % len(TRAIN_SHAPES)]
        scene = generate_scene(rng, hw)
        cv2.imwrite(
            str(folder / f"calib_{i:03d}.png"), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        )
    return folder


def quantize_demo_encoder(out: Path, seed: int) -> Path:
    """Write ``out/encoder.int8.onnx`` from ``out/encoder.fp32.onnx``: the default (``cpu``)
    target, calibrated on the 32 scenes of :func:`write_calibration_images` for ``seed``.

    Works on the ONNX file alone, so the training export and ``--requantize`` share it.
    """
    encoder, int8 = onnx_file_names("fp32")[0], onnx_file_names("int8")[0]
    with tempfile.TemporaryDirectory(prefix="segfast_demo_calib_") as tmp:
        calib = write_calibration_images(Path(tmp), seed)
        return quantize_encoder(out / encoder, out / int8, calib)


def export_all(sam: Sam, detector: DemoDetector, out: Path, seed: int) -> dict[str, Path]:
    """Export the segmenter (fp32 + int8 encoder, fp32 decoder) and the detector into ``out``."""
    from ..export.onnx_export import export_model

    written = export_model(sam, out, ("fp32",))
    written["encoder.int8"] = quantize_demo_encoder(out, seed)
    written["detector"] = export_detector(detector, out / "detector.onnx")
    return written


def file_record(path: Path) -> dict[str, object]:
    return {"name": path.name, "bytes": path.stat().st_size}


def requantize(out: Path) -> Path:
    """Rebuild only ``out/encoder.int8.onnx`` from the fp32 encoder there, without training.

    The calibration seed is the training seed in ``out/training.json``; that record's int8 file
    size and ``int8`` entry (the file's quantization settings) are updated.

    Raises:
        FileNotFoundError: ``out`` has no ``training.json``.
    """
    record_path = out / "training.json"
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{record_path} not found: --requantize needs a folder written by this module "
            "(its training.json gives the calibration seed)"
        )
    record = json.loads(record_path.read_text())
    start = time.perf_counter()
    path = quantize_demo_encoder(out, int(record["config"]["seed"]))
    record["files"]["encoder.int8"] = file_record(path)
    record["int8"] = {
        **(quantization_settings(path) or {}),
        "requantized_minutes": (time.perf_counter() - start) / 60,
    }
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def reexport_decoder(out: Path) -> tuple[Path, float]:
    """Write ``out/decoder.fp32.onnx`` anew with today's export, from the weights that the
    fp32 graphs in ``out`` hold (no training): after a change to the decoder graph's form that
    keeps its function (issue 18's factored cross attention).

    Returns:
        The file and the largest difference of its low-res logits from the old file's, on
        seeded prompts (points and boxes, with and without a mask input).

    Raises:
        OnnxWeightsError: ``out`` does not hold the demo model's fp32 graphs.
        ValueError: the new graph's logits differ from the old one's by more than 1e-3.
    """
    import onnxruntime as ort

    from ..export.onnx_export import export_decoder
    from ..export.onnx_weights import sam_from_onnx

    path = out / "decoder.fp32.onnx"
    sam = sam_from_onnx("demo_tinyvit", out)
    old = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    feeds = _decoder_check_feeds(sam.info.embed_dim, sam.info.embed_size)
    before = [old.run(None, f)[0] for f in feeds]
    with tempfile.TemporaryDirectory() as tmp:
        new_path = export_decoder(sam, Path(tmp) / path.name)
        new = ort.InferenceSession(str(new_path), providers=["CPUExecutionProvider"])
        after = [new.run(None, f)[0] for f in feeds]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True))
        if diff > 1e-3:
            raise ValueError(f"the re-exported decoder's logits differ by {diff:.2e} (> 1e-3)")
        path.write_bytes(new_path.read_bytes())
    return path, diff


def _decoder_check_feeds(dim: int, size: int) -> list[dict[str, np.ndarray]]:
    """Decoder inputs for :func:`reexport_decoder`'s comparison: 3 points, 5 boxes, and the
    boxes again with a mask input per set."""
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((1, dim, size, size)).astype(np.float32)
    side = 16 * size  # the encoder's input side
    points = rng.uniform(0, side, (3, 2, 2)).astype(np.float32)
    corners = np.sort(rng.uniform(0, side, (5, 2, 2)), axis=1).astype(np.float32)
    no_mask = np.zeros((1, 1, 4 * size, 4 * size), np.float32)
    masks = rng.standard_normal((5, 1, 4 * size, 4 * size)).astype(np.float32)

    def feed(coords, labels, mask, flag):
        return {
            "image_embeddings": embedding,
            "point_coords": coords,
            "point_labels": np.asarray(labels, np.float32),
            "mask_input": mask,
            "has_mask_input": np.array([flag], np.float32),
        }

    return [
        feed(points, [[1, 0]] * 3, no_mask, 0.0),
        feed(corners, [[2, 3]] * 5, no_mask, 0.0),
        feed(corners, [[2, 3]] * 5, masks, 1.0),
    ]
