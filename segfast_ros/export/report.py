"""How much an INT8 encoder changes the masks, and how much faster it is (no torch).

Runs the fp32 and the int8 encoder through the runtime's :class:`OnnxRuntimeBackend` and
:class:`Predictor`, with the same fp32 decoder, and compares per image:

* the image embeddings (cosine similarity);
* the binary masks of a few deterministic point prompts (all three multimask outputs) and box
  prompts (the single-mask output), as IoU of int8 vs fp32;
* the encoder latency (median of ``repeats`` runs each, fp32 and int8 interleaved).

``python -m segfast_ros.export.report --onnx-dir DIR --images DIR --json report.json``
(or ``--fp32 ... --int8 ... --decoder ...``) prints the table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.images import list_images, read_rgb
from ..runtime.onnx_backend import OnnxRuntimeBackend, onnx_file_names
from ..runtime.predictor import Predictor
from ..runtime.transforms import prepare_image
from .quantize import cosine_similarity


@dataclass(frozen=True)
class PointPrompt:
    """Points as fractions of the image width/height ``(x, y)``, labels 1 fg / 0 bg."""

    points: tuple[tuple[float, float], ...]
    labels: tuple[int, ...]


#: Point prompts of the report (multimask output), fractions of (W, H).
DEFAULT_POINT_PROMPTS: tuple[PointPrompt, ...] = (
    PointPrompt(((0.5, 0.5),), (1,)),
    PointPrompt(((0.25, 0.35),), (1,)),
    PointPrompt(((0.7, 0.6),), (1,)),
    PointPrompt(((0.4, 0.45), (0.7, 0.3)), (1, 0)),
)
#: Box prompts of the report (single-mask output), XYXY fractions of (W, H).
DEFAULT_BOX_PROMPTS: tuple[tuple[float, float, float, float], ...] = (
    (0.2, 0.25, 0.65, 0.8),
    (0.05, 0.1, 0.45, 0.55),
    (0.5, 0.4, 0.95, 0.9),
)

_METRICS = ("embedding_cosine", "point_iou", "box_iou", "fp32_ms", "int8_ms")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks of the same shape; 1.0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _timed_encode(backend: OnnxRuntimeBackend, x: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    embedding = backend.encode(x)
    return embedding, (time.perf_counter() - start) * 1000.0


def int8_report(
    fp32_encoder: str | Path,
    int8_encoder: str | Path,
    decoder: str | Path,
    images: str | Path | Sequence[str | Path],
    *,
    point_prompts: Sequence[PointPrompt] = DEFAULT_POINT_PROMPTS,
    box_prompts: Sequence[tuple[float, float, float, float]] = DEFAULT_BOX_PROMPTS,
    threads: int = 2,
    repeats: int = 3,
    max_images: int | None = None,
    mask_threshold: float = 0.0,
    json_path: str | Path | None = None,
) -> dict[str, Any]:
    """Compare an INT8 encoder with its fp32 original on real images.

    Args:
        fp32_encoder: ``encoder.fp32.onnx``.
        int8_encoder: ``encoder.int8.onnx``.
        decoder: the decoder both use (``decoder.fp32.onnx``).
        images: a folder of jpg/png images or a list of files (RGB is read from them).
        point_prompts: point prompts, fractions of (W, H).
        box_prompts: XYXY box prompts, fractions of (W, H).
        threads: ONNX Runtime intra-op threads of both encoders.
        repeats: timed encoder runs per image and precision (>= 1; one untimed warm-up
            run per session comes first).
        max_images: use at most this many images.
        mask_threshold: logit threshold of the binary masks.
        json_path: also write the report there as JSON (see :func:`write_report_json`).

    Returns:
        ``{"model", "threads", "repeats", "files", "images": [per image], "mean", "speedup"}``
        where each per-image entry (and ``"mean"``) holds ``embedding_cosine``,
        ``point_iou``, ``box_iou`` (means over prompts and masks), ``fp32_ms`` and ``int8_ms``
        (medians), and ``speedup`` is mean ``fp32_ms`` / mean ``int8_ms``.

    Raises:
        CalibrationError: missing/empty image folder or unreadable image.
        ValueError: ``repeats < 1``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    paths = list_images(images, max_images=max_images)
    ref = OnnxRuntimeBackend(fp32_encoder, decoder, intra_op_threads=threads)
    q8 = OnnxRuntimeBackend(int8_encoder, decoder, intra_op_threads=threads)
    if ref.info.image_size != q8.info.image_size or ref.info.embed_dim != q8.info.embed_dim:
        raise ValueError(
            f"{fp32_encoder} ({ref.info}) and {int8_encoder} ({q8.info}) are different models"
        )
    pred_ref, pred_q8 = Predictor(ref), Predictor(q8)
    rows: list[dict[str, Any]] = []
    warmed = False
    for path in paths:
        image = read_rgb(path)
        h, w = image.shape[:2]
        x, _ = prepare_image(image, ref.info)
        if not warmed:  # first runs allocate and pre-pack weights
            ref.encode(x)
            q8.encode(x)
            warmed = True
        ms_ref, ms_q8 = [], []
        for _ in range(repeats):  # interleaved, so a busy machine hurts both alike
            emb_ref, t = _timed_encode(ref, x)
            ms_ref.append(t)
            emb_q8, t = _timed_encode(q8, x)
            ms_q8.append(t)
        pred_ref.set_embedding(emb_ref, (h, w))
        pred_q8.set_embedding(emb_q8, (h, w))
        scale = np.array([w, h], dtype=np.float64)

        point_ious = []
        for prompt in point_prompts:
            kwargs = {
                "point_coords": np.array(prompt.points) * scale,
                "point_labels": np.array(prompt.labels),
                "multimask_output": True,
                "mask_threshold": mask_threshold,
            }
            a, b = pred_ref.predict(**kwargs), pred_q8.predict(**kwargs)
            point_ious += [mask_iou(ma, mb) for ma, mb in zip(a.masks, b.masks, strict=True)]
        box_ious = []
        for box in box_prompts:
            kwargs = {
                "box": np.array(box) * np.tile(scale, 2),
                "multimask_output": False,
                "mask_threshold": mask_threshold,
            }
            a, b = pred_ref.predict(**kwargs), pred_q8.predict(**kwargs)
            box_ious.append(mask_iou(a.masks[0], b.masks[0]))
        rows.append(
            {
                "image": path.name,
                "height": h,
                "width": w,
                "embedding_cosine": cosine_similarity(emb_ref, emb_q8),
                "point_iou": float(np.mean(point_ious)) if point_ious else float("nan"),
                "box_iou": float(np.mean(box_ious)) if box_ious else float("nan"),
                "fp32_ms": float(np.median(ms_ref)),
                "int8_ms": float(np.median(ms_q8)),
            }
        )
    mean = {k: float(np.mean([r[k] for r in rows])) for k in _METRICS}
    report = {
        "model": ref.info.name,
        "threads": threads,
        "repeats": repeats,
        "files": {
            "fp32_encoder": str(fp32_encoder),
            "int8_encoder": str(int8_encoder),
            "decoder": str(decoder),
        },
        "images": rows,
        "mean": mean,
        "speedup": mean["fp32_ms"] / mean["int8_ms"],
    }
    if json_path is not None:
        write_report_json(report, json_path)
    return report


def int8_report_from_dir(
    onnx_dir: str | Path, images: str | Path | Sequence[str | Path], **kwargs: Any
) -> dict[str, Any]:
    """:func:`int8_report` on the files an export wrote to ``onnx_dir``.

    Uses ``encoder.fp32.onnx``, ``encoder.int8.onnx`` and the decoder the runtime pairs with
    int8 (``decoder.fp32.onnx``); ``kwargs`` go to :func:`int8_report`.

    Raises:
        FileNotFoundError: one of the three files is missing.
    """
    onnx_dir = Path(onnx_dir)
    fp32_encoder, _ = onnx_file_names("fp32")
    int8_encoder, decoder = onnx_file_names("int8")
    paths = [onnx_dir / name for name in (fp32_encoder, int8_encoder, decoder)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"int8 report needs {missing} (export with precisions fp32 and int8 first)"
        )
    return int8_report(*paths, images, **kwargs)


def format_int8_report(report: dict[str, Any]) -> str:
    """The report as a fixed-width text table (one row per image, then the mean)."""
    header = (
        f"{'image':24s} {'emb cos':>8s} {'pt IoU':>7s} {'box IoU':>7s} "
        f"{'fp32 ms':>8s} {'int8 ms':>8s}"
    )

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"{name[:24]:24s} {r['embedding_cosine']:8.4f} {r['point_iou']:7.3f} "
            f"{r['box_iou']:7.3f} {r['fp32_ms']:8.1f} {r['int8_ms']:8.1f}"
        )

    lines = [
        f"INT8 vs fp32 encoder, model {report['model']}, {report['threads']} threads, "
        f"median of {report['repeats']} runs",
        header,
        "-" * len(header),
        *(row(r["image"], r) for r in report["images"]),
        "-" * len(header),
        row("mean", report["mean"]),
        f"int8 speedup over fp32 (ONNX Runtime): {report['speedup']:.2f}x",
    ]
    return "\n".join(lines)


def write_report_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the INT8 report table and optionally write its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx-dir", help="export folder (instead of the three files)")
    parser.add_argument("--fp32", help="encoder.fp32.onnx")
    parser.add_argument("--int8", help="encoder.int8.onnx")
    parser.add_argument("--decoder", help="decoder.fp32.onnx")
    parser.add_argument("--images", required=True, help="folder of jpg/png images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    options = {
        "threads": args.threads,
        "repeats": args.repeats,
        "max_images": args.max_images,
        "json_path": args.json,
    }
    if args.onnx_dir:
        report = int8_report_from_dir(args.onnx_dir, args.images, **options)
    elif args.fp32 and args.int8 and args.decoder:
        report = int8_report(args.fp32, args.int8, args.decoder, args.images, **options)
    else:
        parser.error("pass --onnx-dir, or all of --fp32, --int8 and --decoder")
    print(format_int8_report(report))
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
