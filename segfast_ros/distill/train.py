"""The distillation loop: a student pulled toward a teacher on unlabelled images, full-stage,
with hard prompt sampling and hard mask weighting (TinySAM), seeded, resumable, evaluated.

Each step takes ``batch`` images and:

1. encodes them with the teacher (no gradients) and the student;
2. draws ``prompts`` prompt sets per image without labels: the teacher's masks of a point grid
   give points inside, and boxes around, what the teacher sees as objects
   (:func:`~.prompts.initial_prompts`);
3. for ``rounds`` rounds, decodes every set with both models (the decoder's output tokens and
   all mask logits) and adds the full-stage loss (:func:`~.losses.full_stage_loss`: embedding,
   tokens, logits; each mask weighted by its teacher-student gap unless ``hard_weighting`` is
   off); between rounds one more point joins each set, drawn where the two masks disagree
   (:func:`~.prompts.hard_points`; with ``hard_prompts`` off, uniformly over the image), the
   teacher's label on it, and each model's previous logits as its mask input.

Every ``eval_every`` steps the student's masks are compared with the teacher's on held-out
images (mIoU, point and box prompts); every ``save_every`` steps ``checkpoint.pt`` is written
(student, optimizer, random states, the images used), so ``--resume`` continues the same run.
``minutes`` stops a run on wall time (for ablations at equal time).

``device`` (``cpu``, ``cuda``, ``cuda:1``) holds both models, the batches, the losses and the
optimizer; the prompts are drawn on the CPU from the run's generator (:mod:`.prompts`), so a
seed draws the same prompts on any device. ``student.pt`` and the checkpoint's student hold
CPU tensors; a checkpoint is read onto the CPU and resumes on any device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..demo.training_data import lr_factor
from ..modeling.sam import Sam
from ..runtime.transforms import prepare_image
from ..spec import LABEL_BG, LABEL_FG, LABEL_PAD
from .images import ImageSource
from .losses import DistillWeights, StageOutputs, decode_stages, full_stage_loss
from .prompts import PromptSets, grid_points, hard_points, initial_prompts


@dataclass(frozen=True)
class DistillConfig:
    """Everything that decides a distillation's result (recorded, and checked on resume)."""

    teacher: str
    student: str
    images: str
    steps: int = 2000
    batch: int = 4
    prompts: int = 8
    rounds: int = 3
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    weights: DistillWeights = field(default_factory=DistillWeights)
    hard_prompts: bool = True
    hard_weighting: bool = True
    box_rate: float = 0.5
    seed: int = 0
    eval_every: int = 100
    save_every: int = 100
    minutes: float | None = None

    def check(self) -> None:
        for name in ("steps", "batch", "prompts", "rounds", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be > 0, got {self.lr}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"--minutes must be > 0, got {self.minutes}")


class Distiller:
    """One distillation run (see the module docstring).

    Args:
        teacher: eval mode, gradients off (:func:`~.models.load_teacher`).
        student: train mode (:func:`~.models.load_student`).
        source: the images.
        cfg: the settings.
        device: where both models train (:func:`check_device`); they are moved there.
    """

    def __init__(
        self,
        teacher: Sam,
        student: Sam,
        source: ImageSource,
        cfg: DistillConfig,
        device: str | torch.device = "cpu",
    ):
        cfg.check()
        self.device = check_device(device)
        teacher.to(self.device)
        student.to(self.device)
        self.teacher, self.student, self.source, self.cfg = teacher, student, source, cfg
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.opt = torch.optim.AdamW(
            student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.step = 0
        self.used = 0  # training images consumed (to resume the stream where it was)
        self.history: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.train_s = 0.0
        self._stream = source.stream()

    # ------------------------------------------------------------------ one step

    def batch(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The next ``batch`` images as the encoder input, and each one's valid (H, W)."""
        info = self.student.info
        inputs, valid = [], []
        for _ in range(self.cfg.batch):
            tensor, hw = prepare_image(next(self._stream), info)
            inputs.append(tensor[0])
            valid.append(hw)
            self.used += 1
        return torch.from_numpy(np.stack(inputs)).to(self.device), valid

    def loss(
        self, images: torch.Tensor, valid: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The full-stage loss of one batch over its prompt rounds, and its terms."""
        cfg, size = self.cfg, self.student.info.image_size
        with torch.no_grad():
            t_emb = self.teacher.encode(images)
        s_emb = self.student.encode(images)
        sets = self._first_prompts(t_emb, valid)
        t_in = s_in = None
        total, stats = torch.zeros((), device=self.device), {}
        power = 1.0 if cfg.hard_weighting else 0.0
        for r in range(cfg.rounds):
            with torch.no_grad():
                t = decode_stages(self.teacher, t_emb, sets.coords, sets.labels, t_in)
            s = decode_stages(self.student, s_emb, sets.coords, sets.labels, s_in)
            loss, terms = full_stage_loss(s, t, cfg.weights, hard_mask_power=power)
            total = total + loss / cfg.rounds
            for k, v in terms.items():
                stats[k] = stats.get(k, 0.0) + v / cfg.rounds
            if r + 1 < cfg.rounds:
                sets, t_in, s_in = self._next_round(sets, s, t, size)
        return total, stats

    def _first_prompts(self, t_emb: torch.Tensor, valid: list[tuple[int, int]]) -> PromptSets:
        """Each image's prompt sets from the teacher's masks of a point grid (no labels)."""
        cfg, size = self.cfg, self.student.info.image_size
        sets = []
        for i, hw in enumerate(valid):
            grid = grid_points(2 * cfg.prompts, size, self.gen, hw)
            probe = _point_sets(grid).to(self.device)
            with torch.no_grad():
                out = decode_stages(self.teacher, t_emb[i : i + 1], probe.coords, probe.labels)
            masks = (out.logits[:, 0] > 0).cpu()
            sets.append(
                initial_prompts(
                    cfg.prompts,
                    size,
                    self.gen,
                    teacher_masks=masks,
                    box_rate=cfg.box_rate,
                    valid_hw=hw,
                )
            )
        coords, labels = torch.cat([s.coords for s in sets]), torch.cat([s.labels for s in sets])
        return PromptSets(coords, labels).to(self.device)

    def _next_round(
        self, sets: PromptSets, s: StageOutputs, t: StageOutputs, size: int
    ) -> tuple[PromptSets, torch.Tensor, torch.Tensor]:
        """One more point per set (hard, or uniform), and the previous logits as mask input."""
        s_best, t_best = s.logits[:, 0].detach(), t.logits[:, 0]
        if self.cfg.hard_prompts:
            points, labels = hard_points(s_best.cpu(), t_best.cpu(), self.gen, image_size=size)
        else:
            points, labels = _uniform_points(t_best.cpu(), self.gen, size)
        return sets.with_points(points, labels), t_best[:, None], s_best[:, None]

    def train_step(self) -> dict[str, float]:
        images, valid = self.batch()
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.step, self.cfg.steps, self.cfg.warmup)
        total, stats = self.loss(images, valid)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        self.opt.step()
        self.step += 1
        return stats

    # ---------------------------------------------------------------- evaluation

    def evaluate(self) -> dict[str, float]:
        """Agreement with the teacher on the held-out images: mIoU of the student's masks
        against the teacher's, for a grid of point prompts and the boxes of the teacher's
        masks (single-mask outputs, low resolution)."""
        from ..demo.segmenter_loss import mask_iou

        self.student.eval()
        gen = torch.Generator().manual_seed(12345)  # the same prompts at every evaluation
        ious: dict[str, list[float]] = {"point": [], "box": []}
        size = self.student.info.image_size
        try:
            with torch.no_grad():
                for image in self.source.held_out:
                    tensor, hw = prepare_image(image, self.student.info)
                    x = torch.from_numpy(tensor).to(self.device)
                    t_emb, s_emb = self.teacher.encode(x), self.student.encode(x)
                    for kind, rate in (("point", 0.0), ("box", 1.0)):
                        probe = grid_points(8, size, gen, hw)
                        sets = _point_sets(probe).to(self.device)
                        t = decode_stages(self.teacher, t_emb, sets.coords, sets.labels)
                        if kind == "box":
                            sets = initial_prompts(
                                8,
                                size,
                                gen,
                                teacher_masks=(t.logits[:, 0] > 0).cpu(),
                                box_rate=rate,
                                valid_hw=hw,
                            ).to(self.device)
                            t = decode_stages(self.teacher, t_emb, sets.coords, sets.labels)
                        s = decode_stages(self.student, s_emb, sets.coords, sets.labels)
                        iou = mask_iou(s.logits[:, 0] > 0, t.logits[:, 0] > 0)
                        ious[kind].extend(iou.tolist())
        finally:
            self.student.train()
        return {f"{k}_miou": float(np.mean(v)) if v else math.nan for k, v in ious.items()}

    # ---------------------------------------------------------------- checkpoints

    def state(self) -> dict[str, Any]:
        return {
            "config": _config_json(self.cfg),
            "step": self.step,
            "used": self.used,
            "train_s": self.train_s,
            "student": _cpu_state(self.student),
            "optimizer": self.opt.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "generator": self.gen.get_state(),
            "history": self.history,
            "evals": self.evals,
        }

    def resume(self, checkpoint: Path) -> None:
        """Continue the run saved in ``checkpoint``.

        Raises:
            ValueError: the checkpoint is not a distillation checkpoint, or another run's
                (teacher, student, images or settings differ; named).
        """
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        except Exception as err:
            raise ValueError(f"--resume: cannot read {checkpoint}: {err}") from None
        if not isinstance(saved, dict) or "config" not in saved or "student" not in saved:
            raise ValueError(f"--resume: {checkpoint} is not a segfast distill checkpoint")
        mine = _config_json(self.cfg)
        differ = {
            k: (saved["config"].get(k), mine[k])
            for k in mine
            if k not in ("steps", "minutes", "eval_every", "save_every")
            and saved["config"].get(k) != mine[k]
        }
        if differ:
            said = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in differ.items())
            raise ValueError(f"--resume: {checkpoint} is from another distillation ({said})")
        try:
            self.student.load_state_dict(saved["student"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"--resume: {checkpoint} does not fit the student: {err}") from None
        self.opt.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        self.gen.set_state(saved["generator"])
        self.step, self.train_s = saved["step"], saved["train_s"]
        self.history, self.evals = saved["history"], saved["evals"]
        for _ in range(saved["used"]):  # the stream where the saved run left it
            next(self._stream)
        self.used = saved["used"]

    # ---------------------------------------------------------------- the loop

    def run(self, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
        """Train to ``steps`` (or ``minutes``), saving and evaluating as configured; write
        ``student.pt`` (official key layout) and return the record."""
        cfg = self.cfg
        out.mkdir(parents=True, exist_ok=True)
        if not self.evals:
            self.evals.append({"step": self.step, **self.evaluate()})
        window: list[dict[str, float]] = []
        while self.step < cfg.steps:
            started = time.perf_counter()
            window.append(self.train_step())
            self.train_s += time.perf_counter() - started  # training only, not evaluations
            done = self.step >= cfg.steps or (
                cfg.minutes is not None and self.train_s >= 60 * cfg.minutes
            )
            if self.step % cfg.eval_every == 0 or done:
                mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                self.history.append({"step": self.step, "minutes": self.train_s / 60, **mean})
                self.evals.append({"step": self.step, **self.evaluate()})
                log(_progress_line(self, mean))
                window = []
            if self.step % cfg.save_every == 0 or done:
                torch.save(self.state(), out / "checkpoint.pt")
            if done:
                break
        torch.save(_cpu_state(self.student), out / "student.pt")
        return {
            "config": _config_json(cfg),
            "images": self.source.describe,
            "steps": self.step,
            "train_minutes": self.train_s / 60,
            "torch_threads": torch.get_num_threads(),
            "device": _device_name(self.device),
            "history": self.history,
            "evals": self.evals,
        }


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device the run can use.

    Raises:
        ValueError: not a device name, or a CUDA device this machine does not have (named,
            with what it has).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r}: {err}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ValueError(
            f"--device {device!r}: torch sees no CUDA device on this machine (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); use --device cpu"
        )
    if (dev.index or 0) >= count:
        raise ValueError(f"--device {device!r}: this machine has {count} CUDA device(s)")
    return dev


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict on the CPU (checkpoints that load on any device)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _point_sets(points: torch.Tensor) -> PromptSets:
    """One prompt set per ``(k, 2)`` point: the point (foreground) and a pad token."""
    k = len(points)
    labels = torch.tensor([[float(LABEL_FG), float(LABEL_PAD)]]).expand(k, 2).clone()
    return PromptSets(torch.cat([points[:, None], torch.zeros(k, 1, 2)], dim=1), labels)


def _uniform_points(
    teacher_logits: torch.Tensor, gen: torch.Generator, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per set uniformly over the input, labelled by the teacher (the ablation
    without hard prompt sampling)."""
    k, side = teacher_logits.shape[0], teacher_logits.shape[-1]
    xy = torch.rand(k, 1, 2, generator=gen) * size
    px = (xy / (size / side)).long().clamp(0, side - 1)
    on = teacher_logits[torch.arange(k), px[:, 0, 1], px[:, 0, 0]] > 0
    labels = torch.where(on, float(LABEL_FG), float(LABEL_BG))[:, None]
    return xy, labels


def _config_json(cfg: DistillConfig) -> dict[str, Any]:
    data = asdict(cfg)
    data["weights"] = asdict(cfg.weights)
    return data


def _progress_line(run: Distiller, mean: dict[str, float]) -> str:
    cfg, ev = run.cfg, run.evals[-1]
    per_step = run.train_s / max(run.step, 1)
    left = (cfg.steps - run.step) * per_step
    if cfg.minutes is not None:
        left = min(left, max(0.0, 60 * cfg.minutes - run.train_s))
    terms = " ".join(f"{k} {mean[k]:.4f}" for k in ("embedding", "tokens", "logits", "total"))
    return (
        f"step {run.step}/{cfg.steps} ({100 * run.step / cfg.steps:.0f}%) {terms} | "
        f"agreement point {ev['point_miou']:.3f} box {ev['box_miou']:.3f} | "
        f"{1 / per_step:.2f} steps/s, {run.train_s / 60:.1f} min, ETA {left / 60:.1f} min"
    )
