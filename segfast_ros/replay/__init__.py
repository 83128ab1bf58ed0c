"""Offline rosbag replay: the node's perception, frame by frame, from a bag into a bag.

Needs ``rosbags`` (pure Python), not ROS. See :func:`~.pipeline.replay`.
"""

from .bags import BagError
from .pipeline import ReplayOptions, ReplaySummary, replay
from .prompts import PromptFileError, ScriptedPrompt, load_prompts

__all__ = [
    "BagError",
    "PromptFileError",
    "ReplayOptions",
    "ReplaySummary",
    "ScriptedPrompt",
    "load_prompts",
    "replay",
]
