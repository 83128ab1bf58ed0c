"""Tuned SegEvery settings for the models the project ships.

Used wherever the shipped demo model runs (``segfast demo``, ``segfast replay`` without a model
option, ``segfast bench-memory``, the demo model's evaluation), so every one of them segments
with the same settings.
"""

from __future__ import annotations

from typing import Any

#: SegEvery settings the demo uses for each strategy (the strategies' defaults otherwise).
#: With SAM's defaults (pred_iou_thresh 0.88, stability 0.95) the demo model keeps almost no
#: mask: its IoU head is trained but its masks are not good enough to be predicted that high.
#: The thresholds and the detector's conf are the picks of
#: :func:`segfast_ros.demo.tune.tune_segevery` on validation scenes
#: (``python -m segfast_ros.demo.evaluate --tune``; MobileSAMv2 uses conf 0.4, at which the demo
#: detector finds too few objects). The detector runs at 256 px instead of 1024, so its border
#: snap (20 letterbox px) is scaled by 256 / 1024.
DEMO_SEGEVERY_PARAMS: dict[str, dict[str, Any]] = {
    "grid": {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9},
    "hierarchical": {"pred_iou_thresh": 0.7, "stability_score_thresh": 0.9},
    "object_aware": {"conf": 0.25, "border_snap_px": 5.0},
}
