"""Distillation: building blocks of TinySAM-style hard-mining full-stage knowledge distillation.

A student SAM (a narrower TinyViT or a CNN encoder from :mod:`segfast_ros.modeling`) learns
from a teacher SAM on unlabelled images: no ground truth is used anywhere, only the teacher's
outputs.

* :mod:`.losses`: the full-stage losses (image embedding, the decoder's output tokens, mask
  logits), their weights (:class:`~.losses.DistillWeights`) and hard mask weighting (each mask's
  loss scaled by the teacher-student gap);
* :mod:`.prompts`: prompts without labels (a stratified grid, or points and boxes from the
  teacher's masks) and hard prompt sampling (points where teacher and student disagree, labelled
  by the teacher).

The training loop and the ``segfast distill`` command that drive them come later (issue 19).
"""
