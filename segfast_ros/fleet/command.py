"""``segfast replay-many``: its flags and the command.

The flags are ``segfast replay``'s (:func:`~segfast_ros.demo.replay_args.add_replay_options`:
the model, SegEvery, 3D, prompts, output topics), less where one bag's results go, plus the
fleet's own: the inputs, ``--out``, where to run (``--address``), workers and what each
reserves, ``--resume``, the table format and the retries.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..demo.replay_args import add_replay_options


def add_replay_many_parser(sub: Any) -> None:
    p = sub.add_parser(
        "replay-many",
        help="replay a whole archive of bags on Ray (or in this process), resumable, into "
        "one results table",
        description="Replay every input bag as `segfast replay` would (the same flags, the "
        "same output bag for a bag), on Ray workers that each keep the model loaded, largest "
        "bags first. DIR gets bags/<name>/ (the output bags), coco/<name>.json, "
        "summaries/<name>.json, the fleet table fleet.parquet (or fleet.csv without pyarrow) "
        "with a row per frame, manifest.json and summary.json. Ray is an optional extra: "
        "pip install 'segfast_ros[fleet]'; --address local runs without it.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a bag (rosbag2 folder or .mcap file), a folder of bags (searched recursively), "
        "or a text file listing them (one per line, # comments)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--address",
        help="local: in this process, without Ray; auto: the running Ray cluster; "
        "ray://HOST:PORT: a cluster through Ray Client; default: a new local Ray instance "
        "(or the cluster RAY_ADDRESS names)",
    )
    p.add_argument("--workers", type=int, help="Ray workers (default: as many as fit)")
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs each worker reserves (default 1); it runs ONNX Runtime on one thread fewer "
        "(at least 1), the replay's reader and writer take the rest; --threads overrides",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        help="GPUs each worker reserves (fractions share a GPU); >0 runs ONNX Runtime on CUDA "
        "unless --providers says otherwise (default 0)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a run in DIR: skip the bags whose outputs are complete (same input, "
        "settings and model), redo the rest",
    )
    p.add_argument(
        "--table",
        choices=("auto", "parquet", "csv"),
        default="auto",
        help="fleet table format (auto: Parquet when pyarrow is installed, else CSV)",
    )
    p.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="times Ray restarts a worker that died and retries its bag (default 2)",
    )
    add_replay_options(p)
    # One bag's side files are per bag here: DIR/coco/<name>.json; no video or contact sheet.
    p.set_defaults(
        func=replay_many_command,
        backend="onnxruntime",
        coco=None,
        overlay_video=None,
        contact_sheet=None,
        overwrite=True,
    )


def replay_many_command(args: argparse.Namespace) -> int:
    """Exit 0 when every bag is complete, 3 when some failed, 130 on Ctrl-C, 2 when the run
    cannot start (the message says why)."""
    from .inputs import InputError
    from .manifest import ManifestError
    from .pool import FleetError
    from .run import FleetSettings, run_fleet
    from .table import TableError

    settings = FleetSettings(
        out_dir=Path(args.out),
        address=args.address,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        resume=args.resume,
        table=args.table,
        max_retries=args.max_retries,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    try:
        summary = run_fleet(args, args.inputs, settings)
    except (FleetError, InputError, ManifestError, TableError, ValueError, OSError) as err:
        print(f"segfast replay-many: error: {err}", file=sys.stderr)
        return 2
    print(summary.format())
    if summary.interrupted:
        return 130
    return 0 if summary.complete else 3
