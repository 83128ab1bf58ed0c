"""Strict, safe loading of the official checkpoint files.

Files are read with ``torch.load(weights_only=True)`` (no pickled code runs) and loaded only
when every key and shape fits the model; otherwise :class:`CheckpointMismatchError` lists what
does not. The model builders (:mod:`~segfast_ros.modeling.registry`) and the loaders of the
release files with their own layout (:mod:`~segfast_ros.modeling.efficientvit`,
:mod:`~segfast_ros.modeling.mobilesamv2`) share these.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model."""


def _listing(title: str, items: list[str], limit: int = 12) -> str:
    if not items:
        return ""
    shown = "\n    ".join(items[:limit])
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    {shown}{more}"


def read_weights(path: str | Path, expected: str) -> object:
    """``torch.load`` a checkpoint safely (``weights_only=True``) on the CPU.

    Args:
        path: the file.
        expected: what the file should be, for the not-found message (e.g. "an official file
            such as mobile_sam.pt").

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint not found: {path} (expected {expected}; see models/README.md for "
            "where to get it)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types on a corrupt file
        raise ValueError(
            f"cannot load {path} as a weights-only PyTorch state_dict: {exc}"
        ) from exc


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load ``state`` into ``model`` strictly, or say exactly what does not fit.

    Nothing is loaded unless every key and shape matches.

    Args:
        model: the module to fill.
        state: a flat state_dict whose keys are ``model``'s.
        source: where ``state`` came from, for the message (a path, or a path and a key).

    Raises:
        CheckpointMismatchError: missing or unexpected keys, or shape mismatches; the message
            lists them.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        name = getattr(getattr(model, "info", None), "name", type(model).__name__)
        raise CheckpointMismatchError(
            f"checkpoint {source} does not match model {name!r}:"
            + _listing("missing keys", missing)
            + _listing("unexpected keys", unexpected)
            + _listing("shape mismatches", shapes)
        )
    model.load_state_dict(state, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a flat state_dict into ``model`` safely (``weights_only=True``) and strictly.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a weights-only state_dict.
        CheckpointMismatchError: missing or unexpected keys, or shape mismatches; the message
            lists them.
    """
    path = Path(path)
    state = read_weights(path, "an official file such as mobile_sam.pt")
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        keys = list(state)[:5] if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(
            f"{path} is not a flat state_dict of tensors (found {keys}); expected keys like "
            "'image_encoder.…', 'prompt_encoder.…', 'mask_decoder.…'"
        )
    load_state_dict_strict(model, state, str(path))
