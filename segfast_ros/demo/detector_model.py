"""The demo object detector: a small anchor-free CNN with the YOLOv8 output layout, and its loss.

Its ONNX export (:func:`segfast_ros.demo.export.export_detector`) is what
:class:`~segfast_ros.segevery.detector.ObjectDetector` runs for object-aware SegEvery with the
demo model.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .training_data import DETECTOR_IMGSZ, DETECTOR_STRIDE, Batch


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
    )


class DemoDetector(nn.Module):
    """A small anchor-free object detector with the YOLOv8 output layout.

    ``forward``: ``(1, 3, D, D)`` RGB in 0..1 -> ``(1, 5, (D / 8)**2)``: cx, cy, w, h in input
    pixels and the sigmoid object score of every stride-8 cell (rows by Y, X fastest).
    :meth:`raw` gives the training outputs.
    """

    def __init__(self, imgsz: int = DETECTOR_IMGSZ, width: int = 16) -> None:
        super().__init__()
        w = width
        self.c2 = nn.Sequential(_conv(3, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.c3 = nn.Sequential(_conv(2 * w, 4 * w, 2), _conv(4 * w, 4 * w))  # stride 8
        self.c4 = nn.Sequential(_conv(4 * w, 6 * w, 2), _conv(6 * w, 6 * w))  # stride 16
        self.c5 = nn.Sequential(_conv(6 * w, 8 * w, 2), _conv(8 * w, 8 * w))  # stride 32
        self.l3 = nn.Conv2d(4 * w, 4 * w, 1)
        self.l4 = nn.Conv2d(6 * w, 4 * w, 1)
        self.l5 = nn.Conv2d(8 * w, 4 * w, 1)
        self.head = nn.Sequential(_conv(4 * w, 4 * w), _conv(4 * w, 4 * w))
        self.out = nn.Conv2d(4 * w, 5, 1)
        nn.init.constant_(self.out.bias, 0.0)
        nn.init.constant_(self.out.bias[4:], -4.0)  # start with few positives (focal loss)
        side = imgsz // DETECTOR_STRIDE
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()]).float().add(0.5) * DETECTOR_STRIDE
        self.register_buffer("centres", centres, persistent=False)  # (2, A)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, A, 4)`` XYXY boxes in input pixels and ``(B, A)`` score logits."""
        c3 = self.c3(self.c2(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p = (
            self.l3(c3)
            + F.interpolate(self.l4(c4), scale_factor=2.0, mode="nearest")
            + F.interpolate(self.l5(c5), scale_factor=4.0, mode="nearest")
        )
        out = self.out(self.head(p)).flatten(2)  # (B, 5, A)
        ltrb = out[:, :4].clamp(max=6.0).exp() * DETECTOR_STRIDE
        cx, cy = self.centres[0], self.centres[1]
        boxes = torch.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]])
        return boxes.permute(1, 2, 0), out[:, 4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        boxes, logits = self.raw(x)
        cxcywh = torch.stack(
            [
                (boxes[..., 0] + boxes[..., 2]) / 2,
                (boxes[..., 1] + boxes[..., 3]) / 2,
                boxes[..., 2] - boxes[..., 0],
                boxes[..., 3] - boxes[..., 1],
            ],
            dim=1,
        )
        return torch.cat([cxcywh, logits.sigmoid()[:, None]], dim=1)


def _giou_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - GIoU`` of paired XYXY boxes ``(N, 4)``."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(dim=1)
    return 1 - inter / union.clamp(min=1e-6) + (hull - union) / hull.clamp(min=1e-6)


def detector_loss(detector: DemoDetector, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal loss on the centre-cell scores plus GIoU on the boxes around each centre."""
    boxes, logits = detector.raw(batch.detector_images)
    side = DETECTOR_IMGSZ // DETECTOR_STRIDE
    score_target = torch.zeros_like(logits)
    pred_rows, gt_rows = [], []
    centres = detector.centres.T  # (A, 2)
    for i, gt in enumerate(batch.detector_boxes):
        if not len(gt):
            continue
        c = (gt[:, :2] + gt[:, 2:]) / 2
        cell = (c / DETECTOR_STRIDE).long().clamp(0, side - 1)
        score_target[i, cell[:, 1] * side + cell[:, 0]] = 1.0
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                x = (cell[:, 0] + dx).clamp(0, side - 1)
                y = (cell[:, 1] + dy).clamp(0, side - 1)
                idx = y * side + x
                inside = (
                    (centres[idx, 0] > gt[:, 0])
                    & (centres[idx, 0] < gt[:, 2])
                    & (centres[idx, 1] > gt[:, 1])
                    & (centres[idx, 1] < gt[:, 3])
                ) | ((dx == 0) & (dy == 0))
                pred_rows.append(boxes[i, idx[inside]])
                gt_rows.append(gt[inside])
    positives = max(1.0, float(score_target.sum()))
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, score_target, reduction="none")
    p_t = p * score_target + (1 - p) * (1 - score_target)
    alpha = 0.25 * score_target + 0.75 * (1 - score_target)
    score_loss = (alpha * ce * (1 - p_t) ** 2).sum() / positives
    box_loss = _giou_loss(torch.cat(pred_rows), torch.cat(gt_rows)).mean()
    loss = score_loss + 2.0 * box_loss
    return loss, {"det_score": float(score_loss.detach()), "det_box": float(box_loss.detach())}
