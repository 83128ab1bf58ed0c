"""MobileSAMv2's release files: the prompt-guided decoder and the model built around it.

MobileSAMv2 publishes its decoder as ``Prompt_guided_Mask_Decoder.pt``. The file is a dict of
two flat state_dicts with unprefixed keys. The top-level key names are as published,
``PromtEncoder`` spelling included:

* ``'PromtEncoder'``: SAM's prompt encoder (``pe_layer.*``, ``point_embeddings.*``, ...);
* ``'MaskDecoder'``: SAM's mask decoder (``transformer.*``, ``iou_token.*``, ...).

Both modules have SAM ViT-H's sizes (256 channels, 64x64 embedding, 1024 input). The object-
aware pipeline uses the single-mask output (token 0). The image encoder comes from another
file: EfficientViT-SAM-L2 (``weight/l2.pt``, see :mod:`.efficientvit`), or any SAM encoder
with a 256 x 64 x 64 embedding (MobileSAM's TinyViT in ``mobile_sam.pt``, SAM ViT-H).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .checkpoints import load_state_dict_strict, read_weights
from .registry import build_sam
from .sam import Sam

#: Top-level keys of ``Prompt_guided_Mask_Decoder.pt``, as published ("Promt" sic).
DECODER_FILE_KEYS: dict[str, str] = {
    "PromtEncoder": "prompt_encoder",
    "MaskDecoder": "mask_decoder",
}

#: Registry name of MobileSAMv2 with its EfficientViT-SAM-L2 encoder.
MOBILESAMV2_L2 = "mobilesamv2_efficientvit_l2"


class _PromptGuidedDecoder(nn.Module):
    """A view of a Sam's prompt encoder and mask decoder (shared, not copied), so that the
    file's two entries load in one strict, all-or-nothing step under our names."""

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = sam.mask_decoder
        self.info = sam.info  # names the model in mismatch messages


def decoder_state_from_file(raw: object, source: str) -> dict[str, torch.Tensor]:
    """The two entries of a loaded ``Prompt_guided_Mask_Decoder.pt``, as one flat state_dict
    with our ``prompt_encoder.*`` / ``mask_decoder.*`` prefixes.

    Raises:
        ValueError: not a dict with exactly the published keys, each a flat state_dict.
    """
    expected = sorted(DECODER_FILE_KEYS)
    if not isinstance(raw, Mapping):
        raise ValueError(
            f"{source} is not MobileSAMv2's prompt-guided decoder: expected a dict with keys "
            f"{expected} (the published spelling), found {type(raw).__name__}"
        )
    keys = sorted(str(k) for k in raw)
    if keys != expected:
        hint = ""
        if "PromptEncoder" in raw:
            hint = " (the published file spells it 'PromtEncoder'; a re-saved copy renamed it)"
        raise ValueError(
            f"{source} is not MobileSAMv2's prompt-guided decoder: expected top-level keys "
            f"{expected}, found {keys[:8]}{hint}"
        )
    state: dict[str, torch.Tensor] = {}
    for file_key, prefix in DECODER_FILE_KEYS.items():
        part = raw[file_key]
        if not isinstance(part, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in part.values()
        ):
            found = list(part)[:5] if isinstance(part, Mapping) else type(part).__name__
            raise ValueError(
                f"{source}[{file_key!r}] is not a flat state_dict of tensors (found {found}); "
                "expected unprefixed keys like 'pe_layer.positional_encoding_gaussian_matrix'"
            )
        state.update({f"{prefix}.{k}": v for k, v in part.items()})
    return state


def load_prompt_guided_decoder(sam: Sam, path: str | Path) -> None:
    """Load ``Prompt_guided_Mask_Decoder.pt`` into ``sam``'s prompt encoder and mask decoder.

    Safe (``weights_only=True``) and strict: nothing is loaded unless both entries match.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not the published layout (the message names the expected keys).
        CheckpointMismatchError: keys or shapes do not match; the message lists them with our
            prefixes (``'PromtEncoder'`` -> ``prompt_encoder.``, ``'MaskDecoder'`` ->
            ``mask_decoder.``).
    """
    raw = read_weights(path, "MobileSAMv2's Prompt_guided_Mask_Decoder.pt")
    state = decoder_state_from_file(raw, str(path))
    load_state_dict_strict(
        _PromptGuidedDecoder(sam),
        state,
        f"{path} ('PromtEncoder' as prompt_encoder.*, 'MaskDecoder' as mask_decoder.*)",
    )


def build_mobilesamv2(
    encoder_checkpoint: str | Path | None = None,
    decoder_checkpoint: str | Path | None = None,
    *,
    encoder: str = MOBILESAMV2_L2,
) -> Sam:
    """MobileSAMv2: an image encoder with the prompt-guided decoder, in eval mode.

    Args:
        encoder_checkpoint: the encoder's published file. For ``mobilesamv2_efficientvit_l2``
            that is ``l2.pt`` (EfficientViT-SAM layout). For another registry model
            (``mobile_sam``, ``sam_vit_h``) it is that model's official full checkpoint; its
            prompt encoder and decoder are then replaced. None keeps random weights.
        decoder_checkpoint: ``Prompt_guided_Mask_Decoder.pt``; None keeps the encoder
            checkpoint's decoder (or random weights).
        encoder: a registry name whose model has SAM's decoder sizes (256 channels, 64x64).

    Raises:
        FileNotFoundError, ValueError, CheckpointMismatchError: see the loaders.
    """
    if encoder == MOBILESAMV2_L2:
        from .efficientvit import load_efficientvit_sam_checkpoint

        sam = build_sam(encoder)
        if encoder_checkpoint is not None:
            load_efficientvit_sam_checkpoint(sam.image_encoder, encoder_checkpoint)
    else:
        sam = build_sam(encoder, encoder_checkpoint)
    if decoder_checkpoint is not None:
        load_prompt_guided_decoder(sam, decoder_checkpoint)
    return sam.eval()


def mobilesamv2_state_dict(
    encoder_checkpoint: str | Path, decoder_checkpoint: str | Path
) -> dict[str, torch.Tensor]:
    """The two MobileSAMv2-L2 release files merged into one flat state_dict in our layout.

    ``torch.save`` it once, then ``build_sam("mobilesamv2_efficientvit_l2", merged_path)``
    (and the export) load it like any official checkpoint.
    """
    return build_mobilesamv2(encoder_checkpoint, decoder_checkpoint).state_dict()
