"""Train the demo segmenter and the demo object detector on generated scenes, then export both.

One command, one seed, fixed step counts (the wall time is measured, never used to stop)::

    python -m segfast_ros.demo.train --out models/demo --seed 0

**Segmenter** (``demo_tinyvit`` in :data:`~segfast_ros.modeling.registry.MODEL_REGISTRY`: the
same TinyViT, prompt encoder and mask decoder code as MobileSAM, at 256 px with narrow dims),
trained from scratch SAM-style. Every image gets ``prompts_per_image`` prompt sets; each is a
jittered ground-truth box (SAM: noise of 10% of the box side, at most 20 px) or one point drawn
uniformly inside the object, and a fraction of them a point on the background, whose target is
the whole background (the "stuff" region SAM also segments; it is what lets hierarchical
SegEvery skip the dense points of large, confidently segmented areas). ``rounds - 1``
correction rounds follow: one more point drawn uniformly from the error region of the previous
mask (foreground where the mask missed the object, background where it spilled), with the
previous low-res logits as ``mask_input``. Losses: focal + dice on the masks (SAM weights the
focal term 20x; see :attr:`~segfast_ros.demo.training_data.TrainConfig.focal_weight` for why
not here), on the best of the three multimask outputs for a single point (plus the single-mask
output), on the single-mask output otherwise; MSE between the IoU head and each output's actual
IoU.

**Detector**: a small anchor-free CNN whose ONNX output has the YOLOv8 layout
``[1, 4 + 1, 1024]`` (cx, cy, w, h in letterbox pixels, one sigmoid "object" score per stride-8
cell), trained in the same loop on the same scenes, letterboxed exactly as
:class:`~segfast_ros.segevery.detector.ObjectDetector` does at run time. The cell holding a
box's centre must score 1 (focal loss), every other cell 0; the box is regressed (GIoU) from
that cell and its neighbours inside the box.

Exports (``out``): ``encoder.fp32.onnx``, ``encoder.int8.onnx`` (the project's QDQ
quantization, default target, calibrated on generated scenes), ``decoder.fp32.onnx``,
``detector.onnx`` and ``training.json`` (seed, steps, wall time, loss curve, int8 settings).
``--requantize`` rebuilds only ``encoder.int8.onnx`` from the fp32 encoder already in ``out``
(after a change of the quantizer's default target; no training)::

    python -m segfast_ros.demo.train --out models/demo --requantize

``--reexport-decoder`` rewrites only ``decoder.fp32.onnx`` with today's export, from the weights
the folder's fp32 graphs hold (after a change to the graph's form, not its function)::

    python -m segfast_ros.demo.train --out models/demo --reexport-decoder

This module is the loop and the command; the pieces it drives: :mod:`.training_data` (the
settings and the batches), :mod:`.segmenter_loss`, :mod:`.detector_model` (the detector and its
loss) and :mod:`.export` (the files, and the INT8 rebuild).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..export.quantize import quantization_settings
from ..modeling.registry import build_sam
from ..modeling.sam import Sam
from .detector_model import DemoDetector, detector_loss
from .export import export_all, file_record, reexport_decoder, requantize
from .segmenter_loss import segmenter_loss
from .training_data import DEMO_MODEL, TrainConfig, lr_factor, make_batch, scene_stream


def train(
    cfg: TrainConfig,
    *,
    log_every: int = 50,
    log=print,
    snapshot_dir: Path | None = None,
) -> tuple[Sam, DemoDetector, dict]:
    """Train both demo models; returns them (eval mode) and the training record.

    With ``snapshot_dir``, both models' weights are saved there at every log line
    (``snapshot.pt``), so that a run stopped early still leaves weights to inspect.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    sam = build_sam(DEMO_MODEL).train()
    detector = DemoDetector().train()
    opt = torch.optim.AdamW(sam.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    det_opt = torch.optim.AdamW(detector.parameters(), lr=cfg.detector_lr, weight_decay=1e-4)
    scenes = scene_stream(cfg.seed)
    history: list[dict] = []
    start = time.perf_counter()
    window: list[dict] = []
    for step in range(cfg.steps):
        batch = make_batch(
            [next(scenes) for _ in range(cfg.batch_size)], sam.info.image_size, cfg.loss_size
        )
        factor = lr_factor(step, cfg.steps, cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * factor
        for group in det_opt.param_groups:
            group["lr"] = cfg.detector_lr * factor
        loss, stats = segmenter_loss(sam, batch, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(sam.parameters(), 1.0)
        opt.step()
        det, det_stats = detector_loss(detector, batch)
        det_opt.zero_grad(set_to_none=True)
        det.backward()
        nn.utils.clip_grad_norm_(detector.parameters(), 5.0)
        det_opt.step()
        window.append(
            {"loss": float(loss.detach()), "det_loss": float(det.detach()), **stats, **det_stats}
        )
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            record = {"step": step + 1, "minutes": (time.perf_counter() - start) / 60, **mean}
            history.append(record)
            log(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
            window = []
            if snapshot_dir is not None:
                snapshot_dir.mkdir(parents=True, exist_ok=True)
                state = {
                    "step": step + 1,
                    "sam": sam.state_dict(),
                    "detector": detector.state_dict(),
                }
                torch.save(state, snapshot_dir / "snapshot.pt")
    record = {
        "config": asdict(cfg),
        "model": DEMO_MODEL,
        "train_minutes": (time.perf_counter() - start) / 60,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "history": history,
    }
    return sam.eval(), detector.eval(), record


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/demo"), help="output folder")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (the result may depend on it)"
    )
    parser.add_argument("--checkpoint", action="store_true", help="also save the torch weights")
    parser.add_argument(
        "--reexport-decoder",
        action="store_true",
        help="no training: rewrite --out's decoder.fp32.onnx with today's export, from the "
        "weights its fp32 graphs hold (same outputs)",
    )
    parser.add_argument(
        "--requantize",
        action="store_true",
        help="no training: rebuild --out's encoder.int8.onnx from its encoder.fp32.onnx "
        "(current default int8 target, the training seed's calibration scenes)",
    )
    args = parser.parse_args(argv)
    if args.reexport_decoder:
        path, diff = reexport_decoder(args.out)
        print(f"wrote {path}: its logits differ from the old file's by at most {diff:.2e}")
        return
    if args.requantize:
        path = requantize(args.out)
        settings = quantization_settings(path) or {}
        print(
            f"wrote {path} (target {settings.get('target')}, reduce_range "
            f"{settings.get('reduce_range')}, {path.stat().st_size} bytes) and updated "
            f"{args.out / 'training.json'}"
        )
        return
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(seed=args.seed, steps=args.steps, batch_size=args.batch_size)
    sam, detector, record = train(
        cfg,
        log=lambda line: print(line, flush=True),
        snapshot_dir=args.out if args.checkpoint else None,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        torch.save(sam.state_dict(), args.out / f"{DEMO_MODEL}.pt")
        torch.save(detector.state_dict(), args.out / "detector.pt")
    start = time.perf_counter()
    written = export_all(sam, detector, args.out, args.seed)
    record["export_minutes"] = (time.perf_counter() - start) / 60
    record["files"] = {k: file_record(p) for k, p in written.items()}
    record["int8"] = quantization_settings(written["encoder.int8"])
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {', '.join(p.name for p in written.values())} and training.json to {args.out}")


if __name__ == "__main__":
    main()
