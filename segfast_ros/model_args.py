"""The model flags the ``segfast`` commands share, and the backend they give.

``--model``, ``--checkpoint``, ``--backend``, ``--onnx-dir``, ``--providers`` and ``--threads``
become a :class:`~segfast_ros.runtime.backend.Backend`, with the ONNX graphs exported on
demand. The commands that use it live in ``cli.py``, ``bench/`` and ``demo/``; this module sits
just above ``export/`` in the flow, so all of them may import it. Heavy imports (torch,
onnxruntime, the exporter) happen inside the functions, so ``segfast --help`` loads none of them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .runtime.backend import Backend
from .runtime.images import list_images

log = logging.getLogger("segfast")

PRECISIONS = ("fp32", "fp16", "int8")
#: SegEvery strategies the replay commands take (`--mode`).
MODES = ("grid", "hierarchical", "object_aware")
# The registry itself needs torch; an unknown name gets the full list from build_sam.
MODEL_HELP = "registry name: mobile_sam, tinysam, sam_vit_b, sam_vit_l, sam_vit_h, tinyvit_s256"


def add_backend_args(p: argparse.ArgumentParser, *, backend: bool = True) -> None:
    """``--model``, ``--checkpoint``, ``--onnx-dir``, ``--providers``, ``--threads`` (and
    ``--backend`` unless ``backend`` is False)."""
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--checkpoint", help="official checkpoint file (e.g. models/mobile_sam.pt)")
    if backend:
        p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument(
        "--onnx-dir",
        help="folder of exported graphs (exported there if missing; default "
        "out/onnx/MODEL-CHECKPOINT)",
    )
    p.add_argument(
        "--providers", nargs="+", default=None, help="onnxruntime providers: cpu, cuda, tensorrt"
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")


def ensure_onnx(
    onnx_dir: Path,
    precision: str,
    *,
    model: str | None,
    checkpoint: str | None,
    calibration: Sequence[str | Path] = (),
    allow_random: bool = False,
) -> None:
    """Export ``model`` into ``onnx_dir`` if the graphs for ``precision`` are not there yet.

    Needs torch only when an export is actually required. Without a checkpoint the weights are
    random, which only a benchmark may accept (``allow_random``).
    """
    from .runtime.onnx_backend import onnx_file_names

    if all((onnx_dir / f).is_file() for f in onnx_file_names(precision)):
        return
    if model is None:
        raise FileNotFoundError(
            f"no {precision} ONNX graphs in {onnx_dir}; pass --model (and --checkpoint) to export "
            "them, or run `segfast export` first"
        )
    check_weights(checkpoint, allow_random)
    from .export import export_model
    from .modeling import build_sam

    log.info("exporting %s (%s) to %s", model, precision, onnx_dir)
    sam = build_sam(model, checkpoint)
    export_model(
        sam, onnx_dir, precisions=(precision,), calibration_images=list(calibration) or None
    )


def check_weights(checkpoint: str | None, allow_random: bool) -> None:
    """Refuse a missing checkpoint unless random weights are allowed (then only warn)."""
    if checkpoint is None:
        if not allow_random:
            raise ValueError(
                "no --checkpoint: random weights give meaningless masks; pass the official file "
                "(see models/README.md) or --onnx-dir with exported graphs"
            )
        log.warning("no --checkpoint: random weights (timings only)")


def default_onnx_dir(model: str | None, checkpoint: str | None) -> Path:
    """Where graphs exported on demand go: one folder per model and checkpoint, so graphs of
    another checkpoint (or of random weights) are never picked up by mistake."""
    weights = Path(checkpoint).stem if checkpoint else "random"
    return Path("out/onnx") / f"{model or 'model'}-{weights}"


def make_backend(
    args: argparse.Namespace,
    precision: str,
    *,
    allow_random: bool = False,
    model_dir: Path | None = None,
) -> Backend:
    """The backend a subcommand asked for (``--backend``, ``--onnx-dir``, ``--threads``).

    Args:
        args: the command's flags.
        precision: fp32, fp16 or int8.
        allow_random: a missing ``--checkpoint`` only warns (benchmarks: timings only).
        model_dir: a folder the command picked itself (the demo model, say) instead of the
            model flags: ONNX Runtime on it, with nothing exported; when ``precision``'s
            encoder is not there, the fp32 graphs run and stderr says so (the missing file and
            what runs instead).
    """
    kind = "onnxruntime" if model_dir is not None else args.backend
    if kind == "torch":
        if precision != "fp32":
            raise ValueError(f"the torch backend runs fp32 only, not {precision}")
        check_weights(args.checkpoint, allow_random)
        import torch

        from .runtime.torch_backend import TorchBackend

        if args.threads:
            torch.set_num_threads(args.threads)
        return TorchBackend.from_registry(args.model, args.checkpoint)
    if model_dir is None:
        onnx_dir = onnx_dir_for(args, precision, allow_random=allow_random)
    else:
        onnx_dir, precision = Path(model_dir), _precision_in(Path(model_dir), precision, args)
    if kind == "tensorrt":
        from .runtime import load_backend

        # Engines are built (or taken from <onnx_dir>/engines) on the first use.
        return load_backend("tensorrt", onnx_dir, precision=precision)
    from .runtime.onnx_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend.from_dir(
        onnx_dir, precision, providers=args.providers, intra_op_threads=args.threads
    )


def _precision_in(model_dir: Path, precision: str, args: argparse.Namespace) -> str:
    """``precision`` when ``model_dir`` has its encoder, else fp32, said on stderr."""
    from .runtime.onnx_backend import onnx_file_names

    wanted = model_dir / onnx_file_names(precision)[0]
    if precision == "fp32" or wanted.is_file():
        return precision
    fp32 = " + ".join(onnx_file_names("fp32"))
    print(
        f"segfast {args.command}: {wanted} not found; running the fp32 graphs ({fp32}) "
        f"instead of --precision {precision}",
        file=sys.stderr,
    )
    return "fp32"


def onnx_dir_for(args: argparse.Namespace, precision: str, *, allow_random: bool) -> Path:
    """``--onnx-dir`` (or the default folder), with ``precision``'s graphs exported if missing."""
    onnx_dir = Path(args.onnx_dir or default_onnx_dir(args.model, args.checkpoint))
    ensure_onnx(
        onnx_dir,
        precision,
        model=args.model,
        checkpoint=args.checkpoint,
        calibration=image_files(args.calib) if getattr(args, "calib", None) else [],
        allow_random=allow_random,
    )
    return onnx_dir


def image_files(items: Sequence[str]) -> list[Path]:
    """``--images``/``--calib`` values: one folder, or image files."""
    if len(items) == 1 and Path(items[0]).is_dir():
        return list_images(items[0])
    return list_images(items)


def strategy_options(
    items: Sequence[str] | None, example: str = "points_per_side=16"
) -> list[tuple[str, object]]:
    """``--set key=value`` pairs, values parsed as YAML scalars (numbers, booleans); ``example``
    is shown when a pair is malformed."""
    import yaml

    pairs = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
        pairs.append((key.strip(), yaml.safe_load(value)))
    return pairs
