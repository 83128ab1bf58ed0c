"""``segfast build-engine``: build the TensorRT engines ahead of time, on the robot.

Builds (or finds up to date in the cache) the encoder and decoder engines the ``tensorrt``
backend would build on its first start, and prints each build's time and per-layer precision
summary: the layers our FP32 plan pinned, by op type, and (when TensorRT's engine inspector
answers) the precision TensorRT actually chose per layer. The engines land in the same cache
the node reads, so the node starts in seconds.

Written against the documented TensorRT 8.6 / 10.x Python API and type-checked against its
10.x stubs (``make lint``); not yet run on hardware.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segfast_ros.runtime.tensorrt.backend import (
    TRT_DECODER_PRECISION,
    TRT_INT8_ENCODER,
    read_model_info,
    trt_source_files,
)
from segfast_ros.runtime.tensorrt.build import (
    DEFAULT_WORKSPACE_MB,
    TRT_PRECISIONS,
    BuiltEngine,
    engine_key,
    load_or_build,
)
from segfast_ros.runtime.tensorrt.cache import EngineCache
from segfast_ros.runtime.tensorrt.cuda import check_tensorrt, cuda_device, import_cudart
from segfast_ros.runtime.tensorrt.plan import (
    DecoderProfile,
    decoder_profile_shapes,
    describe_plan,
    plan_summary,
)

if TYPE_CHECKING:  # NVIDIA's stubs, for the type checker; at run time imported where used
    import tensorrt as trt


def format_plan_summary(built: BuiltEngine) -> str:
    """A table: op type, layers pinned to FP32, layers left to the builder."""
    free = "INT8/FP16" if built.precision == "int8" else built.precision.upper()
    rows = plan_summary(built.ops, built.plan)
    width = max([len("layer type"), *(len(t) for t, _, _ in rows)])
    lines = [f"  {'layer type':<{width}}  {'FP32 (pinned)':>13}  {free + ' allowed':>17}"]
    lines += [f"  {t:<{width}}  {a:>13}  {b:>17}" for t, a, b in rows]
    return "\n".join(lines)


def engine_layer_precisions(inspector_json: str) -> Counter[str]:
    """Layers per output data type from TensorRT's engine inspector (JSON format).

    The inspector lists ``Layers``, each with ``Outputs`` whose ``Format/Datatype`` names the
    type (e.g. ``"Row major linear FP16 format"``); layers without that detail count as
    ``"unknown"``.
    """
    data = json.loads(inspector_json)
    counts: Counter[str] = Counter()
    for layer in data.get("Layers", []):
        if not isinstance(layer, dict):
            counts["unknown"] += 1
            continue
        outputs = layer.get("Outputs") or []
        fmt = " ".join(str(o.get("Format/Datatype", "")) for o in outputs if isinstance(o, dict))
        upper = fmt.upper()
        kind = next(
            (name for key, name in (("INT8", "INT8"), ("FP16", "FP16"), ("HALF", "FP16"),
                                    ("FP32", "FP32"), ("FLOAT", "FP32")) if key in upper),
            "unknown",
        )  # fmt: skip
        counts[kind] += 1
    return counts


def _inspect(engine: trt.ICudaEngine) -> str:
    import tensorrt as trt

    try:
        inspector = engine.create_engine_inspector()
        text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        counts = engine_layer_precisions(text)
    except Exception as err:  # an optional report: the engine itself is fine
        return f"  (TensorRT's engine inspector gave no per-layer detail: {err})"
    return "  engine layers by output type: " + ", ".join(
        f"{k} {v}" for k, v in counts.most_common()
    )


def profile_build_settings(path: str | Path) -> dict[str, Any]:
    """``precision``, ``opt_sets`` and ``max_sets`` a platform profile YAML gives the node, so
    ahead-of-time engines carry the same cache key as the ones the node would build."""
    import yaml

    params = yaml.safe_load(Path(path).read_text())["/**"]["ros__parameters"]
    trt_params = params.get("tensorrt", {})
    out = {
        "precision": params.get("precision"),
        "opt_sets": trt_params.get("decoder_opt_sets"),
        "max_sets": trt_params.get("decoder_max_sets"),
    }
    return {k: v for k, v in out.items() if v is not None}


def _profiles_dir() -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("segfast_ros")) / "config" / "profiles"
    except (ImportError, LookupError, ValueError, OSError):  # no ROS: the source tree
        return Path(__file__).resolve().parents[2] / "config" / "profiles"


def cmd_build_engine(args: argparse.Namespace) -> int:
    """Build the encoder and decoder engines of ``args.onnx_dir`` into the engine cache."""
    onnx_dir = Path(args.onnx_dir)
    _settings_from_profile(args)
    if args.precision == "int8" and not (onnx_dir / TRT_INT8_ENCODER).is_file():
        _quantize_for_tensorrt(onnx_dir, args.calib)
    encoder_onnx, decoder_onnx = trt_source_files(onnx_dir, args.precision)
    version = check_tensorrt()
    import tensorrt as trt

    device = cuda_device(import_cudart(), args.device_id)
    print(f"TensorRT {version} on {device.name} (compute {device.compute_capability})")

    info = read_model_info(decoder_onnx)
    profile = DecoderProfile(
        min_sets=1, opt_sets=args.opt_sets, max_sets=args.max_sets, max_points=args.max_points
    )
    print(
        f"decoder profile: {profile.min_sets}/{profile.opt_sets}/{profile.max_sets} prompt "
        f"sets, up to {profile.max_points} points each"
    )
    cache = EngineCache(args.engine_cache_dir or onnx_dir / "engines", print)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    jobs = [
        ("encoder", encoder_onnx, args.precision, None, None),
        (
            "decoder",
            decoder_onnx,
            TRT_DECODER_PRECISION[args.precision],
            profile,
            decoder_profile_shapes(info, profile),
        ),
    ]
    for role, onnx_path, precision, job_profile, shapes in jobs:
        name = f"{role}.{precision}"
        key = engine_key(onnx_path, device, precision, job_profile)
        if args.force:
            cache.invalidate(name, f"--force: rebuilding {name}")
        engine, built = load_or_build(
            cache,
            name,
            key,
            onnx_path,
            profile_shapes=shapes,
            workspace_mb=args.workspace_mb,
            deserialize=runtime.deserialize_cuda_engine,
        )
        if built is None:
            print(f"{name}: up to date in {cache.cache_dir} (use --force to rebuild)")
            continue
        print(f"{name}: built in {built.seconds:.1f} s from {onnx_path.name}")
        print(format_plan_summary(built))
        if args.layers:
            print("\n".join(f"    {line}" for line in describe_plan(built.ops, built.plan)))
        print(_inspect(engine))
    return 0


def _settings_from_profile(args: argparse.Namespace) -> None:
    """Fill ``precision``, ``opt_sets`` and ``max_sets`` the flags left unset: from the
    ``--profile`` (explicit flags win), else the defaults fp16, 16 and 320."""
    if args.profile:
        from segfast_ros.profiles import resolve_profile

        path = resolve_profile(args.profile, _profiles_dir())
        if path is not None:
            settings = profile_build_settings(path)
            print(f"profile {path}: {settings}")
            for key, value in settings.items():
                if getattr(args, key) is None:  # explicit flags win over the profile
                    setattr(args, key, value)
    for key, default in (("precision", "fp16"), ("opt_sets", 16), ("max_sets", 320)):
        if getattr(args, key) is None:
            setattr(args, key, default)


def _quantize_for_tensorrt(onnx_dir: Path, calib: list[str] | None) -> None:
    """Write the TensorRT int8 encoder from ``encoder.fp32.onnx`` and the ``--calib`` images.

    Raises:
        FileNotFoundError: no ``--calib`` images were given.
    """
    if not calib:
        raise FileNotFoundError(
            f"{onnx_dir / TRT_INT8_ENCODER} not found: pass --calib IMAGES to quantize "
            "encoder.fp32.onnx for TensorRT (symmetric int8, checked on CPU first)"
        )
    from segfast_ros.export.quantize import quantize_encoder

    print(f"quantizing {onnx_dir / 'encoder.fp32.onnx'} for TensorRT ...")
    quantize_encoder(
        onnx_dir / "encoder.fp32.onnx",
        onnx_dir / TRT_INT8_ENCODER,
        calib,
        target="tensorrt",
    )


def add_build_engine_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``build-engine`` to the ``segfast`` subcommands (``sub``: add_subparsers' result)."""
    p = sub.add_parser(
        "build-engine",
        help="build the TensorRT engines ahead of time (on the robot, into the engine cache)",
    )
    p.add_argument("onnx_dir", help="folder written by `segfast export` (encoder/decoder ONNX)")
    p.add_argument(
        "--profile",
        help="platform profile (auto, orin_nano, orin_nx, orin_agx, ... or a YAML path) whose "
        "precision and decoder profile to build, so the node finds the engines valid",
    )
    p.add_argument(
        "--precision", choices=TRT_PRECISIONS, default=None, help="default: profile's, or fp16"
    )
    p.add_argument(
        "--engine-cache-dir",
        help="engine cache (the node's engine_cache_dir); default ONNX_DIR/engines",
    )
    p.add_argument("--device-id", type=int, default=0, help="CUDA device")
    p.add_argument(
        "--opt-sets", type=int, help="decoder prompt sets to tune for (default: profile's, 16)"
    )
    p.add_argument(
        "--max-sets", type=int, help="most decoder prompt sets per call (default: profile's, 320)"
    )
    p.add_argument("--max-points", type=int, default=16, help="most points per prompt set")
    p.add_argument("--workspace-mb", type=int, default=DEFAULT_WORKSPACE_MB)
    p.add_argument(
        "--calib", nargs="+", help=f"int8: calibration images to create {TRT_INT8_ENCODER}"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    p.add_argument("--layers", action="store_true", help="list every layer pinned to FP32")
    p.set_defaults(func=cmd_build_engine)
    return p
