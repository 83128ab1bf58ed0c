"""The segfast metadata of exported ONNX files, and saving them (onnx only, no torch).

Every file carries :class:`~segfast_ros.spec.ModelInfo` JSON under ``metadata_props``
``"segfast"`` (what the runtime reads), plus ``"segfast.role"`` (``encoder`` / ``decoder``)
and ``"segfast.precision"`` (``fp32`` / ``fp16`` / ``int8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

from ..spec import METADATA_KEY, ModelInfo

Role = Literal["encoder", "decoder"]

#: ``metadata_props`` keys next to :data:`~segfast_ros.spec.METADATA_KEY` (the ModelInfo JSON).
ROLE_KEY = f"{METADATA_KEY}.role"
PRECISION_KEY = f"{METADATA_KEY}.precision"

#: Above this many bytes of weights a graph is saved with its weights in ``<file>.data`` next to
#: it (protobuf cannot serialise a message over 2 GiB; only SAM ViT-H's encoder gets there).
MAX_INLINE_WEIGHT_BYTES: int = 1_800_000_000


@dataclass(frozen=True)
class OnnxMetadata:
    """What :func:`read_metadata` finds in an exported file."""

    info: ModelInfo
    role: str
    precision: str


def set_metadata(model: onnx.ModelProto, info: ModelInfo, role: Role, precision: str) -> None:
    """Write the segfast ``metadata_props`` (ModelInfo JSON, role, precision) in place."""
    values = {METADATA_KEY: info.to_json(), ROLE_KEY: role, PRECISION_KEY: precision}
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def read_metadata(model: str | Path | onnx.ModelProto) -> OnnxMetadata:
    """Read the segfast metadata of an exported file (its weights are not loaded).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file has no segfast metadata (not written by this exporter).
    """
    if not isinstance(model, onnx.ModelProto):
        if not Path(model).is_file():
            raise FileNotFoundError(f"ONNX file not found: {model}")
        model = onnx.load(str(model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    missing = [k for k in (METADATA_KEY, ROLE_KEY, PRECISION_KEY) if k not in props]
    if missing:
        raise ValueError(
            f"ONNX model has no segfast metadata {missing} (found keys {sorted(props)}); "
            "export it with segfast_ros.export"
        )
    return OnnxMetadata(
        ModelInfo.from_json(props[METADATA_KEY]), props[ROLE_KEY], props[PRECISION_KEY]
    )


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_model(
    model: onnx.ModelProto,
    path: str | Path,
    *,
    max_inline_bytes: int = MAX_INLINE_WEIGHT_BYTES,
) -> Path:
    """Check ``model`` with ``onnx.checker`` and save it to ``path``.

    Weights stay inside the file unless they exceed ``max_inline_bytes``; then they go to
    ``<file name>.data`` in the same folder (ONNX external data, which ORT and TensorRT read
    when the two files stay side by side).

    Returns:
        ``path`` as a :class:`Path`. With external data, ``model``'s weights now point into
        the data file (``onnx.save`` moves them there).

    Raises:
        onnx.checker.ValidationError: the model is not valid ONNX.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_file = path.with_name(path.name + ".data")
    if data_file.exists():
        data_file.unlink()  # a stale file from an earlier, larger export
    if _weight_bytes(model) <= max_inline_bytes:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    else:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_file.name,
            size_threshold=1024,
        )
        onnx.checker.check_model(str(path))  # by path: the proto alone may exceed 2 GiB
    return path
