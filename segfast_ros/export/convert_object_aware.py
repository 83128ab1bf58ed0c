"""One-off conversion of MobileSAMv2's ``ObjectAwareModel.pt`` to ONNX (optional).

``ObjectAwareModel.pt`` is a pickled ultralytics YOLOv8 model. Only ultralytics' classes can
unpickle it, and ultralytics is licensed **AGPL-3.0**. So this module is the only place in
segfast_ros that imports ultralytics. It imports it inside the function, and ultralytics is
in no requirements file. Run the conversion once, on any machine, with
``pip install ultralytics``; the robot then needs only the ONNX file, which
:class:`segfast_ros.segevery.detector.ObjectDetector` runs with our own decoding.

Why not ``YOLO(...).export(format="onnx")``: MobileSAMv2 trained the detector with a fork of
ultralytics. The fork's ``Segment`` head has no prototype branch (no ``proto`` module; its
forward returns ``(detections, 0)``). Stock ultralytics calls ``self.proto`` and fails on this
pickle. The fork's own export fails too, because an ``int`` cannot be an ONNX output. We give
the head instance a forward that returns detections and mask coefficients, and export the
network with ``torch.onnx.export`` ourselves. The result has one output, ``output0``
``[1, 4 + nc + 32, anchors]``, plus ultralytics-style metadata (``names``, ``stride``,
``imgsz``).

Untested here: ultralytics and the checkpoint are not available in CI. Unpickling runs code
from the file, so convert only files you trust.

Usage::

    python -m segfast_ros.export.convert_object_aware ObjectAwareModel.pt object_aware.onnx
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

#: What to install, said in every error about the missing dependency.
ULTRALYTICS_HINT = (
    "pip install ultralytics (AGPL-3.0); only needed once, to convert ObjectAwareModel.pt to "
    "ONNX; segfast_ros never imports it at runtime"
)


def _segment_forward(head: nn.Module, feats: list[torch.Tensor]) -> torch.Tensor:
    """Export-mode forward for a ``Segment`` head with or without the prototype branch:
    ``[B, 4 + nc, A]`` decoded detections concatenated with ``[B, nm, A]`` coefficients."""
    from ultralytics.nn.modules.head import Detect

    batch = feats[0].shape[0]
    coefficients = torch.cat(
        [head.cv4[i](feats[i]).view(batch, head.nm, -1) for i in range(head.nl)], 2
    )
    detections = Detect.forward(head, feats)
    if isinstance(detections, tuple | list):  # some versions also return the raw maps
        detections = detections[0]
    return torch.cat([detections, coefficients], 1)


class _FirstOutput(nn.Module):
    """The detection network, returning only its first output (the YOLOv8 layout)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        return out[0] if isinstance(out, tuple | list) else out


def convert_object_aware(
    pt_path: str | Path,
    onnx_path: str | Path,
    imgsz: int = 1024,
    *,
    opset: int = 17,
    dynamic: bool = True,
) -> Path:
    """Convert an ultralytics YOLOv8 checkpoint (MobileSAMv2's ``ObjectAwareModel.pt``) to ONNX.

    Args:
        pt_path: the pickled ultralytics model.
        onnx_path: where to write the ONNX file.
        imgsz: the side the detector runs at (MobileSAMv2: 1024); the example input size.
        opset: ONNX opset (17 reads on TensorRT 8.6).
        dynamic: dynamic input height and width. Then the detector letterboxes to a stride
            multiple, as the reference does, instead of to the square ``imgsz``.

    Returns:
        The written path.

    Raises:
        ImportError: ultralytics is not installed (the message says how to get it).
        FileNotFoundError: ``pt_path`` does not exist.
    """
    try:
        from ultralytics import YOLO
        from ultralytics.nn.modules.head import Detect, Segment
    except ImportError as err:
        raise ImportError(f"convert_object_aware needs ultralytics: {ULTRALYTICS_HINT}") from err
    pt_path, onnx_path = Path(pt_path), Path(onnx_path)
    if not pt_path.is_file():
        raise FileNotFoundError(f"detector checkpoint not found: {pt_path}")

    net = YOLO(str(pt_path)).model.float().eval()
    head = net.model[-1]
    for module in net.modules():
        if isinstance(module, Detect):
            # Export mode: the head returns decoded boxes (and recomputes anchors per shape).
            module.export, module.format, module.dynamic = True, "onnx", dynamic
    if isinstance(head, Segment):
        head.forward = types.MethodType(_segment_forward, head)
    stride = int(max(net.stride.tolist())) if hasattr(net, "stride") else 32

    example = torch.zeros(1, 3, imgsz, imgsz)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    axes = {"images": {2: "height", 3: "width"}, "output0": {2: "anchors"}} if dynamic else None
    with torch.no_grad():
        torch.onnx.export(
            _FirstOutput(net),
            (example,),
            str(onnx_path),
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )

    import onnx

    model = onnx.load(str(onnx_path))
    names = dict(enumerate(net.names)) if isinstance(net.names, list) else dict(net.names)
    meta = {
        "description": f"converted from {pt_path.name} by segfast_ros (ultralytics YOLOv8)",
        "task": "segment" if isinstance(head, Segment) else "detect",
        "stride": str(stride),
        "imgsz": str([imgsz, imgsz]),
        "names": str(names),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(onnx_path))
    return onnx_path


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m segfast_ros.export.convert_object_aware PT ONNX [--imgsz 1024]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pt_path", help="ObjectAwareModel.pt (ultralytics pickle)")
    parser.add_argument("onnx_path", help="output .onnx file")
    parser.add_argument("--imgsz", type=int, default=1024)
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--static", action="store_true", help="static 1 x 3 x imgsz x imgsz")
    args = parser.parse_args(argv)
    path = convert_object_aware(
        args.pt_path, args.onnx_path, args.imgsz, opset=args.opset, dynamic=not args.static
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
