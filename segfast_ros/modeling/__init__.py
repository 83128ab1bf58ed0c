"""SAM-family models in PyTorch: building and checkpoint loading (the runtime needs no torch)."""

from .registry import MODEL_REGISTRY, CheckpointMismatchError, build_sam, load_checkpoint
from .sam import Sam

__all__ = ["MODEL_REGISTRY", "CheckpointMismatchError", "Sam", "build_sam", "load_checkpoint"]
