"""The teacher and the student of a distillation, built and checked against each other.

The teacher is a registered model with its official checkpoint (``sam_vit_h``, ``mobile_sam``,
``tinysam``, ...) or ``demo``: the shipped demo model, rebuilt from its ONNX files
(:func:`~segfast_ros.export.onnx_weights.sam_from_onnx`). The student is any registered model
(a TinyViT configuration, or a CNN encoder with a neck), from random initialisation or a
checkpoint in the official key layout.

The student must give the teacher's image embedding (channels and grid) at the teacher's input
size: the losses compare them element by element. When its prompt encoder and mask decoder
have the teacher's shapes, the student starts from the teacher's (they are fine-tuned with the
rest), which is what lets a small encoder catch up in minutes.
"""

from __future__ import annotations

from pathlib import Path

from ..modeling.registry import MODEL_REGISTRY, build_sam
from ..modeling.sam import Sam
from ..runtime.paths import DEMO_MODEL, model_candidates

#: ``--teacher`` value for the shipped demo model.
DEMO_TEACHER = "demo"


class DistillSetupError(ValueError):
    """A teacher, student or checkpoint that cannot be distilled; the message says why."""


def teacher_names() -> list[str]:
    return [DEMO_TEACHER, *sorted(MODEL_REGISTRY)]


def load_teacher(name: str, checkpoint: str | Path | None) -> Sam:
    """The teacher, in eval mode with gradients off.

    Raises:
        DistillSetupError: an unknown name, a registered teacher without its checkpoint (random
            weights teach nothing), a missing file, or demo graphs that do not rebuild.
    """
    if name == DEMO_TEACHER:
        from ..export.onnx_weights import OnnxWeightsError, sam_from_onnx

        folder = Path(checkpoint) if checkpoint else _demo_dir()
        try:
            teacher = sam_from_onnx("demo_tinyvit", folder)
        except OnnxWeightsError as err:
            raise DistillSetupError(f"--teacher demo: {err}") from None
    elif name in MODEL_REGISTRY:
        if checkpoint is None:
            raise DistillSetupError(
                f"--teacher {name} needs --teacher-checkpoint (its official weights, e.g. "
                f"{MODEL_REGISTRY[name].official_checkpoint}): a random teacher teaches nothing"
            )
        teacher = _build(name, checkpoint, "--teacher-checkpoint")
    else:
        raise DistillSetupError(f"unknown --teacher {name!r}; expected one of {teacher_names()}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def load_student(name: str, checkpoint: str | Path | None, teacher: Sam) -> Sam:
    """The student (train mode), checked against the teacher; its prompt encoder and mask
    decoder start from the teacher's when they have the same shapes (and no checkpoint is
    given).

    Raises:
        DistillSetupError: an unknown name, a bad checkpoint, or an embedding the losses cannot
            compare with the teacher's.
    """
    if name not in MODEL_REGISTRY:
        raise DistillSetupError(
            f"unknown --student {name!r}; expected one of {sorted(MODEL_REGISTRY)}"
        )
    student = _build(name, checkpoint, "--student-checkpoint") if checkpoint else build_sam(name)
    check_pair(teacher, student)
    if checkpoint is None:
        share_decoder(teacher, student)
    return student.train()


def check_pair(teacher: Sam, student: Sam) -> None:
    """Raises DistillSetupError when the student's embedding (channels, grid, input size)
    differs from the teacher's: nothing in between bridges them."""
    t, s = teacher.info, student.info
    if (t.embed_dim, t.embed_size, t.image_size) != (s.embed_dim, s.embed_size, s.image_size):
        raise DistillSetupError(
            f"the student {s.name} gives a {s.embed_dim}x{s.embed_size}x{s.embed_size} "
            f"embedding at {s.image_size} px, the teacher {t.name} a "
            f"{t.embed_dim}x{t.embed_size}x{t.embed_size} one at {t.image_size} px; the "
            "distillation compares them element by element and has no neck to bridge them: "
            "pick a student registered with the teacher's embedding (e.g. demo_tinyvit_half "
            "or demo_resnet18 for the demo teacher, resnet18_sam for SAM/MobileSAM)"
        )


def share_decoder(teacher: Sam, student: Sam) -> bool:
    """Copy the teacher's prompt encoder and mask decoder into the student when their shapes
    match; True when copied."""
    parts = ("prompt_encoder", "mask_decoder")
    t_state = {k: v for k, v in teacher.state_dict().items() if k.startswith(parts)}
    s_state = {k: v for k, v in student.state_dict().items() if k.startswith(parts)}
    if {k: tuple(v.shape) for k, v in t_state.items()} != {
        k: tuple(v.shape) for k, v in s_state.items()
    }:
        return False
    student.load_state_dict({**student.state_dict(), **t_state}, strict=True)
    return True


def _build(name: str, checkpoint: str | Path, flag: str) -> Sam:
    try:
        return build_sam(name, checkpoint)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise DistillSetupError(f"{flag} {checkpoint}: {err}") from None


def _demo_dir() -> Path:
    for folder in model_candidates(DEMO_MODEL):
        if (folder / "encoder.fp32.onnx").is_file():
            return folder
    raise DistillSetupError(
        "--teacher demo: the shipped demo model (models/demo) is not installed; pass its "
        "folder as --teacher-checkpoint"
    )
