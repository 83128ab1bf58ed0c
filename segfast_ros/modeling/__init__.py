"""SAM-family models in PyTorch: building and checkpoint loading (the runtime needs no torch)."""

from .checkpoints import CheckpointMismatchError, load_checkpoint
from .registry import MODEL_REGISTRY, build_sam
from .sam import Sam

__all__ = ["MODEL_REGISTRY", "CheckpointMismatchError", "Sam", "build_sam", "load_checkpoint"]
