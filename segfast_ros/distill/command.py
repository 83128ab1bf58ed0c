"""``segfast distill``: its flags and the command (see :mod:`.train` for what a run does).

Writes to ``--out``: ``student.pt`` (the student's state_dict in the official key layout:
``segfast export --model STUDENT --checkpoint OUT/student.pt`` and the node take it),
``checkpoint.pt`` (to ``--resume``), ``distill.json`` (settings, loss history, agreement
evaluations, wall time) and, with ``--export``, the student's ``encoder.fp32.onnx`` +
``decoder.fp32.onnx`` (``segfast replay --onnx-dir OUT``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_distill_parser(sub: Any) -> None:
    from ..modeling.registry import MODEL_REGISTRY
    from .models import teacher_names

    p = sub.add_parser(
        "distill",
        help="distill a teacher SAM into a smaller or camera-tuned student on unlabelled images "
        "(TinySAM's hard-mining full-stage distillation)",
        description="Full-stage distillation (image embedding, decoder tokens, mask logits) "
        "with hard prompt sampling and hard mask weighting, on images without labels: a folder, "
        "a bag's image topic, or 'generated' scenes. Seeded, resumable, evaluated against the "
        "teacher on held-out images.",
    )
    p.add_argument("--teacher", required=True, choices=teacher_names())
    p.add_argument(
        "--teacher-checkpoint",
        help="the teacher's official checkpoint (for demo: the model folder, default models/demo)",
    )
    p.add_argument("--student", required=True, choices=sorted(MODEL_REGISTRY))
    p.add_argument("--student-checkpoint", help="start the student from these weights")
    p.add_argument("--images", required=True, help="a folder of images, a bag, or 'generated'")
    p.add_argument("--topic", help="the bag's image topic (default: its only one)")
    p.add_argument("--out", default="out/distill", help="output folder (default out/distill)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--minutes", type=float, help="stop after this much training time")
    p.add_argument("--batch", type=int, default=4, help="images per step (default 4)")
    p.add_argument("--prompts", type=int, default=8, help="prompt sets per image (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="prompt rounds per set (default 3)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--loss-weights",
        default="1,1,1",
        metavar="E,T,L",
        help="weights of the embedding, token and logit terms (default 1,1,1)",
    )
    p.add_argument("--no-hard-prompts", action="store_true", help="uniform later-round points")
    p.add_argument("--no-hard-weighting", action="store_true", help="every mask weighted 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the models train: cpu (default), cuda or cuda:N; prompts are drawn on the "
        "CPU, so a seed gives the same prompts on any device",
    )
    p.add_argument("--export", action="store_true", help="also write the student's fp32 ONNX")
    p.set_defaults(func=distill_command)


def distill_command(args: argparse.Namespace) -> int:
    """Exit 0 when trained, 2 on bad input (the message says what was wrong)."""
    import torch

    from .images import ImageSourceError, open_images
    from .losses import DistillWeights
    from .models import DistillSetupError, load_student, load_teacher
    from .train import DistillConfig, Distiller, check_device

    out = Path(args.out)
    try:
        weights = DistillWeights(*_floats(args.loss_weights))
        cfg = DistillConfig(
            teacher=args.teacher,
            student=args.student,
            images=args.images,
            steps=args.steps,
            batch=args.batch,
            prompts=args.prompts,
            rounds=args.rounds,
            lr=args.lr,
            weights=weights,
            hard_prompts=not args.no_hard_prompts,
            hard_weighting=not args.no_hard_weighting,
            seed=args.seed,
            eval_every=args.eval_every,
            save_every=args.save_every,
            minutes=args.minutes,
        )
        cfg.check()
        if args.resume and not (out / "checkpoint.pt").is_file():
            raise ValueError(f"--resume: no {out / 'checkpoint.pt'} to continue")
        device = check_device(args.device)  # before minutes of loading a teacher
        torch.set_num_threads(args.threads)
        teacher = load_teacher(args.teacher, args.teacher_checkpoint)
        torch.manual_seed(args.seed)  # the student's random initialisation is the seed's
        student = load_student(args.student, args.student_checkpoint, teacher)
        source = open_images(
            args.images, teacher.info.image_size, topic=args.topic, seed=args.seed
        )
        run = Distiller(teacher, student, source, cfg, device)
        if args.resume:
            run.resume(out / "checkpoint.pt")
    except (DistillSetupError, ImageSourceError, ValueError, FileNotFoundError) as err:
        print(f"segfast distill: error: {err}", file=sys.stderr)
        return 2
    print(f"distilling {args.teacher} into {args.student} on {source.describe}", flush=True)
    record = run.run(out, log=lambda line: print(line, flush=True))
    if args.export:
        from ..export.onnx_export import export_model

        export_model(student.cpu().eval(), out, ("fp32",))  # traced on the CPU
        record["exported"] = ["encoder.fp32.onnx", "decoder.fp32.onnx"]
    (out / "distill.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out / 'student.pt'} and {out / 'distill.json'}")
    return 0


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ValueError(f"--loss-weights must be three numbers E,T,L, got {text!r}")
    return values
