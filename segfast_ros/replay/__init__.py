"""Offline rosbag replay: the node's perception, frame by frame, from a bag into a bag.

Needs ``rosbags`` (pure Python), not ROS. See :func:`~.pipeline.replay`.
"""

from .bags import BagError
from .options import ReplayOptions
from .pipeline import replay
from .prompts import PromptFileError, ScriptedPrompt, load_prompts
from .summary import ReplaySummary

__all__ = [
    "BagError",
    "PromptFileError",
    "ReplayOptions",
    "ReplaySummary",
    "ScriptedPrompt",
    "load_prompts",
    "replay",
]
