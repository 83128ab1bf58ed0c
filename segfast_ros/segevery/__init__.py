"""Segment everything (SegEvery): grid (SAM), hierarchical (TinySAM), object-aware (MobileSAMv2).

Torch-free: every strategy runs on the runtime's Predictor and backends. Pick one by name with
:func:`build_segevery`.
"""

from ..masks import Instance
from .base import SegEvery, SegEveryResult
from .registry import STRATEGIES, build_segevery

__all__ = ["STRATEGIES", "Instance", "SegEvery", "SegEveryResult", "build_segevery"]
