"""Peak memory of the node on one frame of any size: ``segfast bench-memory``.

Each case (frame size x SegEvery strategy) runs in a fresh Python process
(:mod:`.memory_case`), so that its peak RSS is its own: the real node on one frame, stage by
stage (take, frame->embedding, SegEvery, ~/segment, serialize response), with each stage's
wall time, RSS before and after and own peak, and the process peak. This module is the driver:
it makes the frames, runs the cases, prints the table and writes the JSON.

The frame is a generated scene (:mod:`segfast_ros.bench.scenes`, rendered at a quarter of the
size and resized up: rendering 8K directly takes 4 GB), so SegEvery keeps real masks; the
~/segment point is inside the largest object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .memory_case import NAMESPACE, RESULT_PREFIX, STAGE_TIMEOUT_S, CaseResult, Stage
from .report import Column, table_header, table_row, write_json

#: The issue's target for an 8K frame: the whole process, model and frame included.
PEAK_RSS_TARGET_MB = 1500.0
#: Frame sizes measured by default, (H, W): 8K UHD and 1080p.
DEFAULT_SIZES = ((4320, 7680), (1080, 1920))
DEFAULT_STRATEGIES = ("object_aware", "grid")

# ------------------------------------------------------------------------------- frames


def make_frame(hw: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, tuple[float, float]]:
    """A generated scene of ``hw = (H, W)`` and a point inside its largest object.

    Rendered at a quarter of the size and resized up (linear), as rendering 8K directly takes
    4 GB and 15 s.

    Returns:
        ``(H, W, 3)`` uint8 RGB and the point ``(X, Y)`` in pixels.
    """
    import cv2

    from segfast_ros.bench.scenes import generate_scene

    h, w = hw
    small_hw = (max(64, h // 4), max(64, w // 4))
    scene = generate_scene(seed, small_hw, num_objects=(8, 12))
    image = cv2.resize(scene.image, (w, h), interpolation=cv2.INTER_LINEAR)
    if not len(scene.masks):
        return image, (w / 2, h / 2)
    largest = scene.masks[int(np.argmax(scene.masks.sum(axis=(1, 2))))]
    # The pixel farthest from the object's boundary: surely inside at any scale.
    dist = cv2.distanceTransform(largest.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return image, ((x + 0.5) * w / small_hw[1], (y + 0.5) * h / small_hw[0])


def write_frame_cdr(image: np.ndarray, path: Path) -> None:
    """``image`` as a serialized ``sensor_msgs/Image`` (rgb8, stamp 1 s), the bytes DDS carries."""
    from rclpy.serialization import serialize_message

    from segfast_ros.ros.harness import image_msg

    path.write_bytes(serialize_message(image_msg(image, 1_000_000_000, encoding="rgb8")))


# ------------------------------------------------------------------------- driver (parent)


def bench_memory(
    model_dir: str,
    *,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    precision: str = "fp32",
    threads: int = 0,
    detector: str = "",
    overlay_subscriber: bool = True,
    seed: int = 0,
    segment_sets: int = 1,
    segment_images: bool = True,
    over_limit: bool = True,
    params: dict[str, Any] | None = None,
    log_dir: Path | None = None,
) -> list[CaseResult]:
    """Run every (size, strategy) case in its own process; see the module docstring.

    Args:
        model_dir: the node's ``model_dir`` (``demo``: the shipped demo model).
        sizes: frame sizes ``(H, W)``.
        strategies: SegEvery strategies.
        precision: encoder precision the node loads.
        threads: ONNX Runtime intra-op threads (0: its choice).
        detector: object-aware detector ONNX; empty: ``<model_dir>/detector.onnx``.
        overlay_subscriber: subscribe to ``~/overlay`` from this process, so the node renders
            and publishes it as it does for rviz.
        seed: scene seed.
        segment_sets: prompt sets in the ~/segment request (3 masks each).
        segment_images: the request asks for mono8 images of the masks.
        over_limit: also hand the node one frame just above ``MAX_IMAGE_PIXELS`` and record
            its rejection message.
        params: more node parameters, ``{name: value}`` (e.g. the decoder batch,
            ``segevery.object_aware.prompts_per_batch``).
        log_dir: where each case's stderr goes (default: a temporary folder).
    """
    from segfast_ros.runtime.paths import resolve_model_path

    resolved = resolve_model_path(model_dir)
    if not detector and (resolved / "detector.onnx").is_file():
        detector = str(resolved / "detector.onnx")
    results = []
    base = {
        "model_dir": str(resolved),
        "precision": precision,
        "threads": threads,
        "detector": detector,
        "overlay_subscriber": overlay_subscriber,
        "segment_sets": segment_sets,
        "segment_images": segment_images,
        "params": dict(params or {}),
    }
    with tempfile.TemporaryDirectory(prefix="segfast_bench_memory_") as tmp:
        logs = Path(log_dir) if log_dir else Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for hw in sizes:
            image, point = make_frame(hw, seed)
            frame = Path(tmp) / f"frame_{hw[1]}x{hw[0]}.cdr"
            write_frame_cdr(image, frame)
            del image
            for strategy in strategies:
                case = {**base, "hw": list(hw), "strategy": strategy, "point": list(point)}
                results.append(_run_in_process({**case, "frame_cdr": str(frame)}, logs))
        if over_limit:
            from segfast_ros.runtime.transforms import MAX_IMAGE_PIXELS

            # The smallest 8192-wide frame above the limit; its pixels do not matter.
            hw = (MAX_IMAGE_PIXELS // 8192 + 1, 8192)
            frame = Path(tmp) / "frame_over_limit.cdr"
            write_frame_cdr(np.zeros((*hw, 3), np.uint8), frame)
            case = {**base, "hw": list(hw), "strategy": strategies[0], "point": [0.0, 0.0]}
            case.update(frame_cdr=str(frame), over_limit=True, overlay_subscriber=False)
            results.append(_run_in_process(case, logs))
    return results


def _run_in_process(case: dict[str, Any], logs: Path) -> CaseResult:
    """Run one case in a fresh interpreter on an isolated ROS domain."""
    from segfast_ros.ros.harness import Client, free_domain_id, ros_env

    hw, strategy = (case["hw"][0], case["hw"][1]), case["strategy"]
    domain = free_domain_id()
    client = None
    if case["overlay_subscriber"]:
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        # rviz's role: someone watches the overlay (best effort; the frames need not arrive,
        # the node renders and sends them either way).
        client = Client(domain, "segfast_bench_memory_viewer")
        client.node.create_subscription(
            Image, f"{NAMESPACE}/segfast/overlay", lambda _: None, qos_profile_sensor_data
        )
    log = logs / f"case_{hw[1]}x{hw[0]}_{strategy}.log"
    try:
        with open(log, "w") as err:
            proc = subprocess.run(
                [sys.executable, "-m", "segfast_ros.bench.memory_case", json.dumps(case)],
                env=ros_env(domain),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=4 * STAGE_TIMEOUT_S,
            )
    finally:
        if client is not None:
            client.close()
    return _parse_case(proc.stdout, hw, strategy, log)


def _parse_case(stdout: str, hw: tuple[int, int], strategy: str, log: Path) -> CaseResult:
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            data = json.loads(line[len(RESULT_PREFIX) :])
            data["hw"] = tuple(data["hw"])
            data["stages"] = [Stage(**s) for s in data["stages"]]
            return CaseResult(**data)
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
    return CaseResult(hw=hw, strategy=strategy, error=f"the case printed no result:\n{tail}")


@dataclass(frozen=True)
class _Line:
    """One line of the table: a stage of a case, or a case's process peak (blank ms, after)."""

    frame: str
    strategy: str
    stage: str
    ms: float | str
    rss_before_mb: float
    rss_after_mb: float | str
    peak_mb: float


_COLUMNS: list[Column] = [
    ("frame", "frame", ">10"),
    ("strategy", "strategy", "<13"),
    ("stage", "stage", "<34"),
    ("ms", "ms", ">9.0f"),
    ("RSS before", "rss_before_mb", ">10.0f"),
    ("RSS after", "rss_after_mb", ">9.0f"),
    ("peak", "peak_mb", ">7.0f"),
]


def format_table(results: list[CaseResult]) -> str:
    """One row per stage, then each case's peak against the target."""
    lines = table_header(_COLUMNS)
    for r in results:
        frame = f"{r.hw[1]}x{r.hw[0]}"
        rejected = r.rejected or (r.stages and r.stages[-1].name == "frame rejected")
        strategy = "over limit" if rejected else r.strategy
        for s in r.stages:
            line = _Line(frame, strategy, s.name, s.ms, s.rss_before_mb, s.rss_after_mb, s.peak_mb)
            lines.append(table_row(line, _COLUMNS))
        if rejected:
            lines.append(f"{'':>10} rejected: {r.rejected or '(no message)'}")
        else:
            verdict = "met" if r.peak_rss_mb < PEAK_RSS_TARGET_MB else "MISSED"
            peak = _Line(
                frame,
                r.strategy,
                "process peak RSS (VmHWM)",
                "",
                r.startup_rss_mb,
                "",
                r.peak_rss_mb,
            )
            lines.append(
                f"{table_row(peak, _COLUMNS)}  (target < {PEAK_RSS_TARGET_MB:.0f} MB: {verdict})"
            )
            lines.append(
                f"{'':>10} {'':<13} instances published {r.instances}, ~/segment masks "
                f"{r.segment_masks} ({r.response_image_mb:.0f} MB of mono8 images); node's own "
                "ms: " + ", ".join(f"{k} {v:.0f}" for k, v in r.node_ms.items())
            )
        if r.error:
            lines.append(f"{'':>10} ERROR: {r.error}")
    return "\n".join(lines)


NOTES = (
    "MB are MiB of resident memory (VmRSS), the whole process: Python, rclpy, ONNX Runtime, "
    "the model and the frame.",
    "peak: the stage's own VmHWM (reset before each stage via /proc/self/clear_refs), or the "
    "process peak so far where the kernel refuses the reset; the process peak is the largest "
    "VmHWM of the run, from the case process's start (its startup RSS is the RSS before the "
    "first stage).",
    "frames are handed to the node in-process through its subscription callback: an 8K rgb8 "
    "frame does not cross Fast DDS's default UDP transport; the take (CDR -> message) is "
    "measured, the transport's own buffers are not.",
    "the response's serialization stands in for the reply's send; the overlay is published "
    "to a subscriber in the driver process, as to rviz.",
)


# ----------------------------------------------------------------------------------- CLI


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected a frame size WxH (e.g. 7680x4320), got {text!r}"
        ) from err
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return h, w


def _param(text: str) -> tuple[str, Any]:
    """``NAME:=VALUE`` as ROS's ``-p`` takes it; VALUE is read as JSON, else a string."""
    name, sep, value = text.partition(":=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(
            f"expected a node parameter NAME:=VALUE (e.g. segevery.object_aware.conf:=0.1), "
            f"got {text!r}"
        )
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segfast bench-memory`` options (no ROS import: the cases import rclpy)."""
    parser.add_argument(
        "--model-dir",
        default="demo",
        help="the node's model_dir (default: demo, the shipped demo model with its detector); "
        "e.g. a folder of full-size MobileSAM graphs from `segfast export`",
    )
    parser.add_argument("--detector", default="", help="object-aware detector ONNX file")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=_size,
        default=list(DEFAULT_SIZES),
        metavar="WxH",
        help="frame sizes (default: 7680x4320 1920x1080)",
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEFAULT_STRATEGIES),
        choices=("object_aware", "grid", "hierarchical"),
    )
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--no-overlay", action="store_true", help="no ~/overlay subscriber (no overlay is made)"
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed")
    parser.add_argument(
        "--segment-sets", type=int, default=1, help="prompt sets in the ~/segment request"
    )
    parser.add_argument(
        "--no-segment-images", action="store_true", help="~/segment without mono8 images"
    )
    parser.add_argument(
        "-p",
        "--param",
        type=_param,
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="another node parameter, e.g. -p segevery.object_aware.prompts_per_batch:=32",
    )
    parser.add_argument(
        "--no-over-limit",
        action="store_true",
        help="skip the frame just above MAX_IMAGE_PIXELS (its rejection message)",
    )
    parser.add_argument("--json", help="write the results as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """``segfast bench-memory``: run, print the table and notes, write JSON."""
    results = bench_memory(
        args.model_dir,
        sizes=tuple(args.sizes),
        strategies=tuple(args.strategies),
        precision=args.precision,
        threads=args.threads,
        detector=args.detector,
        overlay_subscriber=not args.no_overlay,
        seed=args.seed,
        segment_sets=args.segment_sets,
        segment_images=not args.no_segment_images,
        over_limit=not args.no_over_limit,
        params=dict(args.param),
    )
    extra = "".join(f", {k}:={v}" for k, v in args.param)
    print(f"model_dir {args.model_dir} ({args.precision}){extra}, {os.cpu_count()} CPUs")
    print(format_table(results))
    for note in NOTES:
        print(f"note: {note}")
    if args.json:
        doc = {
            "model_dir": args.model_dir,
            "precision": args.precision,
            "params": dict(args.param),
            "peak_rss_target_mb": PEAK_RSS_TARGET_MB,
            "cpu_count": os.cpu_count(),
            "notes": list(NOTES),
            "cases": results,
        }
        write_json(args.json, doc)
        print(f"wrote {args.json}")
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m segfast_ros.bench.memory``: ``segfast bench-memory`` alone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
