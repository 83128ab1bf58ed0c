"""How much an INT8 encoder changes the masks, and how much faster it is (no torch).

Runs the fp32 and the int8 encoder through the runtime's :class:`OnnxRuntimeBackend` and
:class:`Predictor`, with the same fp32 decoder, and compares per image:

* the image embeddings (cosine similarity);
* the binary masks of a few deterministic point prompts (all three multimask outputs) and box
  prompts (the single-mask output), as IoU of int8 vs fp32;
* the encoder latency (median of ``repeats`` runs each, fp32 and int8 interleaved).

The report names the CPU it ran on (int8 kernels differ per CPU, see
:mod:`segfast_ros.runtime.cpu_features`) and each int8 file's quantization target; several
int8 files (one per target) are compared side by side in one run.

``python -m segfast_ros.export.report --onnx-dir DIR --images DIR --json report.json``
(or ``--fp32 ... --int8 ... --decoder ...``) prints the table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.cpu_features import (
    CpuFeatures,
    Int8SaturationWarning,
    detect_cpu_features,
    saturates_on,
)
from ..runtime.images import list_images, read_rgb
from ..runtime.onnx_backend import OnnxRuntimeBackend, onnx_file_names
from ..runtime.predictor import Predictor
from ..runtime.transforms import prepare_image
from .embedding_cosine import cosine_similarity


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
    int8_encoders: str | Path | Sequence[str | Path],
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
    """Compare one or several INT8 encoders with their fp32 original on real images.

    Several int8 files (e.g. one per quantization target) are timed interleaved with the fp32
    encoder, so a busy machine slows them all alike and their ratios compare.

    Args:
        fp32_encoder: ``encoder.fp32.onnx``.
        int8_encoders: ``encoder.int8.onnx``, or several int8 files of the same model.
        decoder: the decoder all use (``decoder.fp32.onnx``).
        images: a folder of jpg/png images or a list of files (RGB is read from them).
        point_prompts: point prompts, fractions of (W, H).
        box_prompts: XYXY box prompts, fractions of (W, H).
        threads: ONNX Runtime intra-op threads of every encoder.
        repeats: timed encoder runs per image and file (>= 1; one untimed warm-up run per
            session comes first).
        max_images: use at most this many images.
        mask_threshold: logit threshold of the binary masks.
        json_path: also write the report there as JSON (see :func:`write_report_json`).

    Returns:
        ``{"model", "threads", "repeats", "cpu", "files", "int8": [per int8 file]}``. ``cpu``
        is this machine's :class:`~segfast_ros.runtime.cpu_features.CpuFeatures` (a dict plus
        ``"describe"``). Each int8 entry holds ``file``, ``target`` and ``quantization`` (its
        metadata, None if it has none), ``saturates_here`` (its kernels saturate on this CPU),
        ``images`` (per image: ``embedding_cosine``, ``point_iou``, ``box_iou`` as means over
        prompts and masks, ``fp32_ms`` and ``int8_ms`` medians), their ``mean`` and
        ``speedup`` (mean ``fp32_ms`` / mean ``int8_ms``).

    Raises:
        CalibrationError: missing/empty image folder or unreadable image.
        ValueError: ``repeats < 1``, no int8 file, or files of different models.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    files = [int8_encoders] if isinstance(int8_encoders, str | Path) else list(int8_encoders)
    if not files:
        raise ValueError("int8_report needs at least one int8 encoder")
    paths = list_images(images, max_images=max_images)
    cpu = detect_cpu_features()
    ref, q8s = _backends(fp32_encoder, files, decoder, threads)
    prompts = _Prompts(point_prompts, box_prompts, mask_threshold)
    rows = _image_rows(paths, ref, q8s, prompts, repeats)
    report = {
        "model": ref.info.name,
        "threads": threads,
        "repeats": repeats,
        "cpu": {**cpu.to_dict(), "describe": cpu.describe()},
        "files": {"fp32_encoder": str(fp32_encoder), "decoder": str(decoder)},
        "int8": [
            _file_entry(path, q8, file_rows, cpu)
            for path, q8, file_rows in zip(files, q8s, rows, strict=True)
        ],
    }
    if json_path is not None:
        write_report_json(report, json_path)
    return report


def _backends(
    fp32_encoder: str | Path, files: Sequence[str | Path], decoder: str | Path, threads: int
) -> tuple[OnnxRuntimeBackend, list[OnnxRuntimeBackend]]:
    """The fp32 backend and one per int8 file, all with ``decoder``.

    Raises:
        ValueError: an int8 file is of another model than the fp32 encoder.
    """
    ref = OnnxRuntimeBackend(fp32_encoder, decoder, intra_op_threads=threads)
    with warnings.catch_warnings():
        # A file that saturates here is what the report is for: it says so in its column.
        warnings.simplefilter("ignore", Int8SaturationWarning)
        q8s = [OnnxRuntimeBackend(f, decoder, intra_op_threads=threads) for f in files]
    for path, q8 in zip(files, q8s, strict=True):
        if ref.info.image_size != q8.info.image_size or ref.info.embed_dim != q8.info.embed_dim:
            raise ValueError(
                f"{fp32_encoder} ({ref.info}) and {path} ({q8.info}) are different models"
            )
    return ref, q8s


@dataclass(frozen=True)
class _Prompts:
    """The report's prompts (fractions of the image) and mask threshold."""

    points: Sequence[PointPrompt]
    boxes: Sequence[tuple[float, float, float, float]]
    mask_threshold: float

    def kwargs(self, h: int, w: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """:meth:`Predictor.predict` keyword arguments of the point and the box prompts."""
        scale = np.array([w, h], dtype=np.float64)
        point_kwargs = [
            {
                "point_coords": np.array(prompt.points) * scale,
                "point_labels": np.array(prompt.labels),
                "multimask_output": True,
                "mask_threshold": self.mask_threshold,
            }
            for prompt in self.points
        ]
        box_kwargs = [
            {
                "box": np.array(box) * np.tile(scale, 2),
                "multimask_output": False,
                "mask_threshold": self.mask_threshold,
            }
            for box in self.boxes
        ]
        return point_kwargs, box_kwargs


def _timed_encodes(
    ref: OnnxRuntimeBackend, q8s: Sequence[OnnxRuntimeBackend], x: np.ndarray, repeats: int
) -> tuple[np.ndarray, list[float], list[np.ndarray], list[list[float]]]:
    """Embeddings and per-run milliseconds of the fp32 encoder and of every int8 one."""
    ms_ref: list[float] = []
    ms_q8: list[list[float]] = [[] for _ in q8s]
    emb_q8: list[np.ndarray] = [np.empty(0)] * len(q8s)
    emb_ref = np.empty(0)
    for _ in range(repeats):  # interleaved, so a busy machine hurts all alike
        emb_ref, t = _timed_encode(ref, x)
        ms_ref.append(t)
        for i, q8 in enumerate(q8s):
            emb_q8[i], t = _timed_encode(q8, x)
            ms_q8[i].append(t)
    return emb_ref, ms_ref, emb_q8, ms_q8


def _image_rows(
    paths: Sequence[Path],
    ref: OnnxRuntimeBackend,
    q8s: Sequence[OnnxRuntimeBackend],
    prompts: _Prompts,
    repeats: int,
) -> list[list[dict[str, Any]]]:
    """Per int8 file, one row per image: embedding cosine, mask IoUs, encoder times."""
    pred_ref, pred_q8s = Predictor(ref), [Predictor(q8) for q8 in q8s]
    rows: list[list[dict[str, Any]]] = [[] for _ in q8s]
    warmed = False
    for path in paths:
        image = read_rgb(path)
        h, w = image.shape[:2]
        x, _ = prepare_image(image, ref.info)
        if not warmed:  # first runs allocate and pre-pack weights
            for backend in (ref, *q8s):
                backend.encode(x)
            warmed = True
        emb_ref, ms_ref, emb_q8, ms_q8 = _timed_encodes(ref, q8s, x, repeats)
        pred_ref.set_embedding(emb_ref, (h, w))
        point_kwargs, box_kwargs = prompts.kwargs(h, w)
        ref_points = [pred_ref.predict(**kw).masks for kw in point_kwargs]
        ref_boxes = [pred_ref.predict(**kw).masks[0] for kw in box_kwargs]
        for i, pred_q8 in enumerate(pred_q8s):
            pred_q8.set_embedding(emb_q8[i], (h, w))
            point_ious = [
                mask_iou(ma, mb)
                for kw, masks in zip(point_kwargs, ref_points, strict=True)
                for ma, mb in zip(masks, pred_q8.predict(**kw).masks, strict=True)
            ]
            box_ious = [
                mask_iou(ma, pred_q8.predict(**kw).masks[0])
                for kw, ma in zip(box_kwargs, ref_boxes, strict=True)
            ]
            rows[i].append(
                {
                    "image": path.name,
                    "height": h,
                    "width": w,
                    "embedding_cosine": cosine_similarity(emb_ref, emb_q8[i]),
                    "point_iou": float(np.mean(point_ious)) if point_ious else float("nan"),
                    "box_iou": float(np.mean(box_ious)) if box_ious else float("nan"),
                    "fp32_ms": float(np.median(ms_ref)),
                    "int8_ms": float(np.median(ms_q8[i])),
                }
            )
    return rows


def _file_entry(
    path: str | Path, q8: OnnxRuntimeBackend, file_rows: list[dict[str, Any]], cpu: CpuFeatures
) -> dict[str, Any]:
    """One int8 file's part of the report: its settings, rows, means and speedup."""
    mean = {k: float(np.mean([r[k] for r in file_rows])) for k in _METRICS}
    settings = q8.quantization
    return {
        "file": str(path),
        "target": settings.get("target", "unknown") if settings else "unknown",
        "quantization": settings,
        "saturates_here": bool(settings) and saturates_on(settings, cpu),
        "images": file_rows,
        "mean": mean,
        "speedup": mean["fp32_ms"] / mean["int8_ms"],
    }


def int8_report_from_dir(
    onnx_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    int8_files: Sequence[str] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`int8_report` on the files an export wrote to ``onnx_dir``.

    Uses ``encoder.fp32.onnx``, the int8 encoders (``int8_files``, names in ``onnx_dir``;
    default ``encoder.int8.onnx``) and the decoder the runtime pairs with int8
    (``decoder.fp32.onnx``); ``kwargs`` go to :func:`int8_report`.

    Raises:
        FileNotFoundError: one of the files is missing.
    """
    onnx_dir = Path(onnx_dir)
    fp32_encoder, _ = onnx_file_names("fp32")
    int8_encoder, decoder = onnx_file_names("int8")
    int8_names = list(int8_files) or [int8_encoder]
    paths = [onnx_dir / name for name in (fp32_encoder, decoder, *int8_names)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"int8 report needs {missing} (export with precisions fp32 and int8 first)"
        )
    return int8_report(paths[0], paths[2:], paths[1], images, **kwargs)


def format_int8_report(report: dict[str, Any]) -> str:
    """The report as fixed-width text: the CPU, then per int8 file one row per image and the
    mean, then a summary row per file."""
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
        f"CPU: {report['cpu']['describe']}",
    ]
    for entry in report["int8"]:
        lines += [
            "",
            f"{entry['file']} (target {entry['target']}"
            + (", SATURATES on this CPU)" if entry["saturates_here"] else ")"),
            header,
            "-" * len(header),
            *(row(r["image"], r) for r in entry["images"]),
            "-" * len(header),
            row("mean", entry["mean"]),
            f"int8 speedup over fp32 (ONNX Runtime): {entry['speedup']:.2f}x",
        ]
    if len(report["int8"]) > 1:
        lines += [
            "",
            f"{'target':12s} {'emb cos':>8s} {'pt IoU':>7s} {'box IoU':>7s} "
            f"{'int8 ms':>8s} {'speedup':>8s}",
        ]
        for entry in report["int8"]:
            m = entry["mean"]
            lines.append(
                f"{entry['target'][:12]:12s} {m['embedding_cosine']:8.4f} {m['point_iou']:7.3f} "
                f"{m['box_iou']:7.3f} {m['int8_ms']:8.1f} {entry['speedup']:7.2f}x"
            )
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
    parser.add_argument("--int8", nargs="+", help="encoder.int8.onnx (or several int8 files)")
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
