"""``segfast bench-ops``: where ONNX graphs spend their time, per operator type, side by side.

Issue 18 asks why an INT8 encoder gains little over its fp32 graph on an x86 CPU without VNNI.
A single wall-time ratio cannot answer that; this command can. It opens one ONNX Runtime CPU
session per graph with its profiler on, and runs the graphs in alternating rounds on the same
random input (the input's values do not change the kernels' work). Each kernel is then added to
its operator type and to one of four kinds: integer matmul/conv, (de)quantization, float
matmul/conv, and everything else (element-wise, norms, softmax, layout).

Per graph it reports the median wall time of a run and each operator type's median time per
run. The profiler costs time per node, which matters for small graphs, so each graph is also
timed in a second session without it, in alternating rounds of their own: the speed ratios
come from those plain runs. For an integer graph it also gives an Amdahl bound: the run time
with every integer matmul/conv at zero cost, which caps what faster int8 kernels could ever
give.

Only graphs whose inputs all have static shapes (the encoders) can be fed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .report import Column, format_columns, write_rows_json
from .timing import time_ms

#: Operator types by kind; any other type is ``other``.
OP_KINDS: dict[str, frozenset[str]] = {
    "int8 mm/conv": frozenset(
        {
            "MatMulInteger",
            "ConvInteger",
            "QLinearConv",
            "QLinearMatMul",
            "MatMulIntegerToFloat",
            "DynamicQuantizeMatMul",
            "QGemm",
            "QAttention",
        }
    ),
    "(de)quantize": frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}),
    "fp32 mm/conv": frozenset(
        {"MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "FusedGemm", "ConvTranspose"}
    ),
}
KINDS = (*OP_KINDS, "other")


def op_kind(op: str) -> str:
    """The kind of operator type ``op`` (:data:`KINDS`)."""
    return next((kind for kind, ops in OP_KINDS.items() if op in ops), "other")


@dataclass
class GraphProfile:
    """One graph's profile: medians over the timed runs.

    Attributes:
        label: the graph's name in the table (its file name, or its folder's if equal).
        path: the ONNX file.
        run_ms: median wall time of a profiled run (ONNX Runtime's ``model_run`` event).
        plain_ms: median wall time of a run without the profiler.
        op_ms: median milliseconds per run of each operator type's kernels.
        op_nodes: nodes of each operator type that ran.
        runs: timed runs.
    """

    label: str
    path: str
    run_ms: float
    plain_ms: float
    op_ms: dict[str, float]
    op_nodes: dict[str, int]
    runs: int

    def kind_ms(self, kind: str) -> float:
        return sum(ms for op, ms in self.op_ms.items() if op_kind(op) == kind)

    @property
    def kernel_ms(self) -> float:
        return sum(self.op_ms.values())

    @property
    def int8_free_ms(self) -> float | None:
        """The run time with its integer matmul/conv at zero cost; None without any."""
        int8 = self.kind_ms("int8 mm/conv")
        return self.run_ms - int8 if int8 > 0 else None


@dataclass
class OpRow:
    """One operator type across the graphs: ``ms[label]`` per run (0 where it does not run)."""

    op: str
    kind: str
    ms: dict[str, float] = field(default_factory=dict)


def _feeds(session: Any, seed: int) -> dict[str, np.ndarray]:
    """Random inputs of every graph input, which must all have static shapes."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in session.get_inputs():
        if not all(isinstance(d, int) and d > 0 for d in inp.shape):
            raise ValueError(
                f"input {inp.name!r} has shape {inp.shape}: bench-ops feeds graphs whose "
                "inputs all have static shapes (the encoders)"
            )
        if inp.type != "tensor(float)":
            raise ValueError(f"input {inp.name!r} is {inp.type}; bench-ops feeds float inputs")
        feeds[inp.name] = rng.standard_normal(inp.shape).astype(np.float32)
    return feeds


def _read_profile(path: str, warmup: int) -> tuple[list[float], list[dict[str, float]], dict]:
    """Run wall times, per-run milliseconds per operator type and node counts per type from
    ONNX Runtime's profile file, the first ``warmup`` runs left out."""
    events = json.loads(Path(path).read_text())
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )[warmup:]
    kernels = [
        e
        for e in events
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")
    ]
    per_run: list[dict[str, float]] = []
    nodes: dict[str, set[str]] = {}
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        ops: dict[str, float] = {}
        for e in kernels:
            if start <= e["ts"] <= end:
                op = e["args"]["op_name"]
                ops[op] = ops.get(op, 0.0) + e["dur"] / 1000.0
                nodes.setdefault(op, set()).add(e["name"])
        per_run.append(ops)
    return [r["dur"] / 1000.0 for r in runs], per_run, {k: len(v) for k, v in nodes.items()}


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]


def profile_graphs(
    paths: Sequence[str | Path], *, runs: int = 5, warmup: int = 1, threads: int = 0, seed: int = 0
) -> list[GraphProfile]:
    """Profile ``paths`` on ONNX Runtime's CPU provider in alternating rounds: ``warmup`` untimed
    and ``runs`` timed runs of each graph, round by round.

    Raises:
        FileNotFoundError: a graph is missing.
        ValueError: fewer than one timed run, or a graph input that cannot be fed (named).
    """
    import onnxruntime as ort

    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got {runs} and {warmup}")
    files = [Path(p) for p in paths]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"no ONNX graph at {f}")

    def session(f: Path, profile_prefix: str | None) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"])

    plain = [session(f, None) for f in files]
    feeds = [_feeds(s, seed) for s in plain]
    plain_ms: list[list[float]] = [[] for _ in files]
    for r in range(warmup + runs):
        for i, (s, feed) in enumerate(zip(plain, feeds, strict=True)):
            _, ms = time_ms(lambda s=s, feed=feed: s.run(None, feed))
            if r >= warmup:
                plain_ms[i].append(ms)
    del plain
    with tempfile.TemporaryDirectory(prefix="segfast_ops_") as tmp:
        profiled = [session(f, os.path.join(tmp, f"graph{i}")) for i, f in enumerate(files)]
        for _ in range(warmup + runs):
            for s, feed in zip(profiled, feeds, strict=True):
                s.run(None, feed)
        profiles = []
        for i, (label, f, s) in enumerate(zip(_labels(files), files, profiled, strict=True)):
            walls, per_run, nodes = _read_profile(s.end_profiling(), warmup)
            ops = sorted({op for r in per_run for op in r})
            op_ms = {op: statistics.median(r.get(op, 0.0) for r in per_run) for op in ops}
            run_ms, plain_median = statistics.median(walls), statistics.median(plain_ms[i])
            profiles.append(
                GraphProfile(label, str(f), run_ms, plain_median, op_ms, nodes, len(walls))
            )
    return profiles


def op_rows(profiles: Sequence[GraphProfile]) -> list[OpRow]:
    """One row per operator type, the most expensive (in any graph) first."""
    ops = {op for p in profiles for op in p.op_ms}
    rows = [
        OpRow(op, op_kind(op), {p.label: p.op_ms.get(op, 0.0) for p in profiles}) for op in ops
    ]
    return sorted(rows, key=lambda r: -max(r.ms.values()))


def format_report(profiles: Sequence[GraphProfile], top: int = 15) -> str:
    """The operator table (``top`` types), then per kind and per graph the totals."""
    labels = [p.label for p in profiles]
    columns: list[Column] = [("operator", "op", "<22s"), ("kind", "kind", "<13s")]
    for label in labels:
        columns.append(
            (f"{label} ms", lambda r, k=label: r.ms[k], f">{max(10, len(label) + 3)}.2f")
        )
    lines = [format_columns(op_rows(profiles)[:top], columns), ""]
    width = max(len(k) for k in (*KINDS, "kernels", "run (profiled)", "run (no profiler)"))
    for kind in KINDS:
        cells = "  ".join(f"{p.kind_ms(kind):9.1f}" for p in profiles)
        lines.append(f"{kind:<{width}}  {cells}")
    lines.append(f"{'kernels':<{width}}  " + "  ".join(f"{p.kernel_ms:9.1f}" for p in profiles))
    for name, attr in (("run (profiled)", "run_ms"), ("run (no profiler)", "plain_ms")):
        cells = "  ".join(f"{getattr(p, attr):9.1f}" for p in profiles)
        lines.append(f"{name:<{width}}  {cells}")
    base = profiles[0]
    for p in profiles[1:]:
        lines.append(
            f"{base.label} / {p.label} run time: {base.plain_ms / p.plain_ms:.2f}x without the "
            f"profiler, {base.run_ms / p.run_ms:.2f}x with it"
        )
        if p.int8_free_ms is not None:
            lines.append(
                f"{p.label}: with its int8 matmul/conv at zero cost a profiled run would take "
                f"{p.int8_free_ms:.1f} ms, at most {base.run_ms / p.int8_free_ms:.2f}x "
                f"faster than {base.label}'s"
            )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("graphs", nargs="+", help="ONNX files with static input shapes (encoders)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per graph (medians)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--top", type=int, default=15, help="operator types in the table")
    p.add_argument("--json", help="write the profiles as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Exit 0, or 2 with a message naming a graph that cannot be profiled."""
    import sys

    from ..runtime.cpu_features import detect_cpu_features

    try:
        profiles = profile_graphs(
            args.graphs, runs=args.runs, warmup=args.warmup, threads=args.threads
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"segfast bench-ops: error: {err}", file=sys.stderr)
        return 2
    print(format_report(profiles, args.top))
    print(f"cpu: {detect_cpu_features().describe()}, {args.threads or 'all'} threads")
    if args.json:
        write_rows_json(
            profiles,
            args.json,
            threads=args.threads,
            runs=args.runs,
            warmup=args.warmup,
            cpu=detect_cpu_features().to_dict(),
            cpu_count=os.cpu_count(),
        )
        print(f"wrote {args.json}")
    return 0
