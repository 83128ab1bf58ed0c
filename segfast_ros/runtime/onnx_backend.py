"""ONNX Runtime backend: the exported encoder and decoder graphs on CPU, CUDA or TensorRT."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from segfast_ros.runtime.backend import (
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    METADATA_KEY,
    ModelInfo,
    decode_in_runs,
)
from segfast_ros.runtime.cpu_features import (
    CpuFeatures,
    Int8SaturationWarning,
    detect_cpu_features,
    saturates_on,
)
from segfast_ros.spec import QUANTIZATION_KEY

#: Short provider names accepted next to the full ONNX Runtime execution-provider names.
PROVIDER_ALIASES: dict[str, str] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "directml": "DmlExecutionProvider",
}

#: Precision of the decoder file that goes with each encoder precision. INT8 quantises only the
#: encoder: the decoder is small and its accuracy is what the masks' edges depend on.
DECODER_PRECISION: dict[str, str] = {"fp32": "fp32", "fp16": "fp16", "int8": "fp32"}

#: Working memory one decoder run may take on ONNX Runtime's CPU provider, in bytes. A call
#: with more prompt sets than fit is split (:func:`cpu_decoder_max_sets`): 8 sets of full-size
#: MobileSAM. A CPU gains little per prompt from big batches (71 boxes: 2.3 s in one run, 2.5 s
#: in runs of 8), and 320 boxes in one run took 5.3 GB (12 GB with the arena's rounding).
CPU_DECODER_BUDGET_BYTES = 128 * 2**20
#: The decoder's working memory per prompt set, in float32 image embeddings ``(C, h, w)``: its
#: transformer runs on a copy of the embedding per set, and the masks are upsampled from it to
#: ``(C / 8, 4h, 4w)``. Measured without the arena for MobileSAM (4 MiB embedding): 16.6 MB per
#: set for 320 sets, 17.2 MB for 71, so about 4.
DECODER_EMBEDDINGS_PER_SET = 4
#: ONNX Runtime's run option that returns the CPU arena's unused regions after each run.
_SHRINK_CPU_ARENA = ("memory.enable_memory_arena_shrinkage", "cpu:0")

#: A provider as ONNX Runtime takes it: a name, or a name with its options.
ProviderSpec = str | tuple[str, Mapping[str, Any]]

_NUMPY_OF_ORT_TYPE = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def onnx_file_names(precision: str = "fp32") -> tuple[str, str]:
    """File names ``(encoder, decoder)`` of an exported model at ``precision``.

    ``encoder.<precision>.onnx`` and ``decoder.<fp32|fp16>.onnx`` (the decoder stays fp32 for
    int8). The export writes these names and :meth:`OnnxRuntimeBackend.from_dir` reads them.
    """
    if precision not in DECODER_PRECISION:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {sorted(DECODER_PRECISION)}"
        )
    return f"encoder.{precision}.onnx", f"decoder.{DECODER_PRECISION[precision]}.onnx"


def resolve_providers(
    providers: Sequence[ProviderSpec] | None,
    *,
    device_id: int = 0,
    trt_fp16: bool = False,
    trt_engine_cache_dir: str | Path | None = None,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Turn user provider names into ONNX Runtime's ``(name, options)`` list, in order.

    Args:
        providers: short names (``"cpu"``, ``"cuda"``, ``"tensorrt"``), full EP names, or
            ``(name, options)`` pairs; None means CPU only.
        device_id: GPU index for CUDA and TensorRT.
        trt_fp16: let TensorRT build FP16 kernels.
        trt_engine_cache_dir: where TensorRT caches built engines (enables the cache, which
            saves minutes at each start); None disables it.
        provider_options: extra options per full EP name, applied last.

    Raises:
        ValueError: an unknown name, or a provider this onnxruntime build does not have.
    """
    available = ort.get_available_providers()
    resolved: list[tuple[str, dict[str, Any]]] = []
    for spec in providers if providers is not None else ("cpu",):
        name, options = (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if not full.endswith("ExecutionProvider"):
            raise ValueError(
                f"unknown execution provider {name!r}; expected one of "
                f"{sorted(PROVIDER_ALIASES)} or a full name like 'CUDAExecutionProvider'"
            )
        if full not in available:
            raise ValueError(
                f"execution provider {full!r} is not available in this onnxruntime build; "
                f"available: {available}"
            )
        defaults: dict[str, Any] = {}
        if full in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
            defaults["device_id"] = device_id
        if full == "TensorrtExecutionProvider":
            defaults["trt_fp16_enable"] = trt_fp16
            if trt_engine_cache_dir is not None:
                Path(trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
                defaults["trt_engine_cache_enable"] = True
                defaults["trt_engine_cache_path"] = str(trt_engine_cache_dir)
        extra = dict(provider_options.get(full, {})) if provider_options else {}
        resolved.append((full, {**defaults, **options, **extra}))
    return resolved


def _check_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} ONNX file not found: {path} (run `segfast export` first to create it)"
        )
    return path


def _check_io(
    session: ort.InferenceSession, path: Path, inputs: Sequence[str], outputs: Sequence[str]
) -> None:
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    if sorted(got_in) != sorted(inputs) or not set(outputs) <= set(got_out):
        raise ValueError(
            f"{path} does not have the segfast graph interface: expected inputs "
            f"{list(inputs)} and outputs {list(outputs)}, got inputs {got_in} and outputs "
            f"{got_out}"
        )


def _static_dim(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _info_from_graph(
    encoder: ort.InferenceSession, decoder: ort.InferenceSession, path: Path
) -> ModelInfo:
    """ModelInfo for an ONNX file without segfast metadata, from its static shapes."""
    image_shape = encoder.get_inputs()[0].shape
    embed_shape = encoder.get_outputs()[0].shape
    size = _static_dim(image_shape[2]) if len(image_shape) == 4 else None
    dim = _static_dim(embed_shape[1]) if len(embed_shape) == 4 else None
    embed = _static_dim(embed_shape[2]) if len(embed_shape) == 4 else None
    if size is None or dim is None or embed is None:
        raise ValueError(
            f"{path} has no {METADATA_KEY!r} metadata and its shapes are not static "
            f"(image {image_shape}, image_embeddings {embed_shape}); re-export it with "
            "`segfast export`"
        )
    masks_shape = {o.name: o.shape for o in decoder.get_outputs()}[DECODER_OUTPUTS[0]]
    tokens = _static_dim(masks_shape[1]) if len(masks_shape) == 4 else None
    return ModelInfo(
        name="unknown",
        image_size=size,
        embed_dim=dim,
        embed_size=embed,
        num_mask_tokens=tokens if tokens is not None else 4,
    )


def check_int8_cpu(
    path: str | Path, settings: Mapping[str, Any] | None, cpu: CpuFeatures | None = None
) -> str | None:
    """Warn (:class:`Int8SaturationWarning`) when an int8 file saturates on this CPU.

    Args:
        path: the file, for the message.
        settings: its ``segfast.quantization`` metadata (None: not a segfast int8 file,
            nothing to check).
        cpu: the CPU to check against (default: this machine's).

    Returns:
        The warning's text, or None when the file suits the CPU.
    """
    if settings is None:
        return None
    cpu = cpu or detect_cpu_features()
    if not saturates_on(settings, cpu):
        return None
    target = settings.get("target", "cpu")
    built = settings.get("built_on", {}).get("kind", "unrecorded")
    message = (
        f"{path} was quantized with target {target!r} (int8 weights in 8 bits, built on a "
        f"{built} CPU), whose ONNX Runtime kernels saturate on this CPU, "
        f"{cpu.describe()}: x86 without VNNI adds u8 x s8 products in int16, and the embedding "
        "drifts (the test encoder: mean cosine 0.93 instead of 0.999). Re-export "
        "it with `segfast export ... --precision int8 --quant-target cpu` (7-bit weights, "
        "right on every CPU) or `--quant-target cpu-avx2`."
    )
    warnings.warn(message, Int8SaturationWarning, stacklevel=3)
    return message


def _quantization_settings(session: ort.InferenceSession) -> dict[str, Any] | None:
    text = session.get_modelmeta().custom_metadata_map.get(QUANTIZATION_KEY)
    if not text:
        return None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        return None  # unreadable settings disable the check, never the model
    return settings if isinstance(settings, dict) else None


def cpu_decoder_max_sets(info: ModelInfo, budget_bytes: int = CPU_DECODER_BUDGET_BYTES) -> int:
    """Most prompt sets per decoder run on the CPU within ``budget_bytes`` of working memory.

    At least 1; :data:`DECODER_EMBEDDINGS_PER_SET` float32 embeddings ``(C, h, w)`` per set:
    8 for MobileSAM, TinySAM and SAM (256 x 64 x 64) at the default budget, 512 for the demo
    model (64 x 16 x 16).
    """
    per_set = DECODER_EMBEDDINGS_PER_SET * info.embed_dim * info.embed_size**2 * 4
    return max(1, budget_bytes // per_set)


class ProviderUnavailableError(RuntimeError):
    """A requested execution provider could not be activated for a graph."""


def create_session(
    path: str | Path,
    resolved: Sequence[tuple[str, dict[str, Any]]],
    intra_op_threads: int = 0,
    *,
    require_providers: bool = True,
    allow_spinning: bool = False,
) -> ort.InferenceSession:
    """An ONNX Runtime session on the providers :func:`resolve_providers` returned.

    ONNX Runtime falls back to the CPU with only a log line when a GPU provider cannot start
    (missing CUDA libraries); on a robot that means running several times slower unnoticed, so
    with ``require_providers`` that fallback is an error.

    The intra-op threads sleep when they run out of work unless ``allow_spinning``: ONNX
    Runtime's default busy-waits, and a waiting pool takes the cores from everything else in
    the process (the other session, the replay's reader and writer, the node's executor).
    Measured on 2 cores (docs/DESIGN.md, issue 18): with every session spinning, ``make
    demo``'s replay spent 1.3-1.7x longer per frame in inference, and a decoder run right
    after another session's took up to twice as long; a lone single-prompt decoder run is
    about 13 % faster spinning.

    Raises:
        ProviderUnavailableError: a requested provider could not be activated
            (``require_providers``).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    names = [n for n, _ in resolved]
    session = ort.InferenceSession(
        str(path), options, providers=names, provider_options=[o for _, o in resolved]
    )
    missing = [n for n in names if n not in session.get_providers()]
    if require_providers and missing:
        raise ProviderUnavailableError(
            f"onnxruntime could not activate {missing} for {path} (active: "
            f"{session.get_providers()}); check the GPU libraries, or pass "
            "require_providers=False to accept the fallback"
        )
    return session


class OnnxRuntimeBackend:
    """Encoder and decoder ONNX graphs run by ONNX Runtime.

    Args:
        encoder_path: ``encoder.<precision>.onnx``, input ``image`` ``(1, 3, S, S)``.
        decoder_path: ``decoder.<precision>.onnx``, inputs as in
            :data:`~segfast_ros.runtime.backend.DECODER_INPUTS`.
        providers: execution providers in order of preference (see :func:`resolve_providers`);
            None runs on CPU.
        intra_op_threads: threads per graph, 0 lets ONNX Runtime use all cores.
        device_id: GPU index for CUDA and TensorRT.
        trt_fp16: let TensorRT build FP16 kernels.
        trt_engine_cache_dir: TensorRT engine cache folder (enables the cache).
        provider_options: extra options per full EP name.
        require_providers: raise if ONNX Runtime silently fell back from a requested provider
            (e.g. CUDA libraries missing) instead of running slowly on CPU.
        decoder_max_sets: most prompt sets per decoder run; a bigger call is split and its
            outputs joined. None: :func:`cpu_decoder_max_sets` when the decoder runs on the CPU
            provider, else no limit (GPU memory was not measured for this).
        allow_spinning: let idle intra-op threads busy-wait (see :func:`create_session`); off
            by default, for a process that does more than run these two graphs.

    Both sessions keep ONNX Runtime's CPU memory arena, which reuses one run's buffers in the
    next. The encoder's shapes never change; the decoder's batch does, and the arena would keep
    the largest batch's memory for good (71 boxes at 8K: 3.6 GB more, full-size MobileSAM), so
    each :meth:`decode` call ends by returning the arena's unused regions (a run option on its
    last run: the runs of a split call reuse one another's buffers).

    Raises:
        FileNotFoundError: a graph file is missing.
        ValueError: unknown/unavailable provider, or a graph without the expected interface.
        RuntimeError: a requested provider could not be activated.
    """

    name = "onnxruntime"

    def __init__(
        self,
        encoder_path: str | Path,
        decoder_path: str | Path,
        *,
        providers: Sequence[ProviderSpec] | None = None,
        intra_op_threads: int = 0,
        device_id: int = 0,
        trt_fp16: bool = False,
        trt_engine_cache_dir: str | Path | None = None,
        provider_options: Mapping[str, Mapping[str, Any]] | None = None,
        require_providers: bool = True,
        decoder_max_sets: int | None = None,
        allow_spinning: bool = False,
    ) -> None:
        self.encoder_path = _check_file(encoder_path, "encoder")
        self.decoder_path = _check_file(decoder_path, "decoder")
        if intra_op_threads < 0:
            raise ValueError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        if decoder_max_sets is not None and decoder_max_sets < 1:
            raise ValueError(
                f"decoder_max_sets must be >= 1 (or None for the provider's default), got "
                f"{decoder_max_sets}"
            )
        resolved = resolve_providers(
            providers,
            device_id=device_id,
            trt_fp16=trt_fp16,
            trt_engine_cache_dir=trt_engine_cache_dir,
            provider_options=provider_options,
        )
        self.encoder, self.decoder = (
            create_session(
                path,
                resolved,
                intra_op_threads,
                require_providers=require_providers,
                allow_spinning=allow_spinning,
            )
            for path in (self.encoder_path, self.decoder_path)
        )
        self.providers: list[str] = self.encoder.get_providers()
        #: Options of the last decoder run of a call: return the CPU arena's unused regions.
        self.decoder_shrink_options = ort.RunOptions()
        self.decoder_shrink_options.add_run_config_entry(*_SHRINK_CPU_ARENA)
        _check_io(self.encoder, self.encoder_path, ENCODER_INPUTS, ENCODER_OUTPUTS)
        _check_io(self.decoder, self.decoder_path, DECODER_INPUTS, DECODER_OUTPUTS)
        # fp16 graphs may take fp16 inputs; feeds are cast to whatever each graph declares.
        self._encoder_types = {
            i.name: _NUMPY_OF_ORT_TYPE.get(i.type) for i in self.encoder.get_inputs()
        }
        self._decoder_types = {
            i.name: _NUMPY_OF_ORT_TYPE.get(i.type) for i in self.decoder.get_inputs()
        }
        meta = self.encoder.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.info: ModelInfo = (
            ModelInfo.from_json(meta)
            if meta
            else _info_from_graph(self.encoder, self.decoder, self.encoder_path)
        )
        #: The encoder's quantization settings (int8 files written by segfast), else None.
        self.quantization: dict[str, Any] | None = _quantization_settings(self.encoder)
        check_int8_cpu(self.encoder_path, self.quantization)
        on_cpu = self.decoder.get_providers()[0] == "CPUExecutionProvider"
        #: Most prompt sets per decoder run (None: no limit); bigger calls are split.
        self.decoder_max_sets: int | None = (
            decoder_max_sets
            if decoder_max_sets is not None
            else (cpu_decoder_max_sets(self.info) if on_cpu else None)
        )

    @classmethod
    def from_dir(
        cls, onnx_dir: str | Path, precision: str = "fp32", **kwargs: Any
    ) -> OnnxRuntimeBackend:
        """Load the graphs an export wrote to ``onnx_dir`` (see :func:`onnx_file_names`).

        Args:
            onnx_dir: folder holding ``encoder.<precision>.onnx`` and ``decoder.*.onnx``.
            precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
            **kwargs: passed to the constructor (providers, threads, TensorRT options).

        Raises:
            FileNotFoundError: the folder or a file is missing; the message lists what exists.
        """
        onnx_dir = Path(onnx_dir)
        if not onnx_dir.is_dir():
            raise FileNotFoundError(
                f"ONNX folder not found: {onnx_dir} (run `segfast export` first to create it)"
            )
        enc_name, dec_name = onnx_file_names(precision)
        for file_name, what in ((enc_name, "encoder"), (dec_name, "decoder")):
            if not (onnx_dir / file_name).is_file():
                present = sorted(p.name for p in onnx_dir.glob("*.onnx")) or "no .onnx files"
                raise FileNotFoundError(
                    f"{what} for precision {precision!r} not found: {onnx_dir / file_name}; "
                    f"{onnx_dir} holds {present} (run `segfast export` with that precision)"
                )
        return cls(onnx_dir / enc_name, onnx_dir / dec_name, **kwargs)

    def _feed(self, types: Mapping[str, Any], name: str, value: np.ndarray) -> np.ndarray:
        dtype = types.get(name) or np.float32
        return np.ascontiguousarray(value, dtype=dtype)

    def encode(self, image: np.ndarray) -> np.ndarray:
        """``(1, 3, S, S)`` float32 preprocessed image to ``(1, C, h, w)`` float32 embedding."""
        feeds = {"image": self._feed(self._encoder_types, "image", image)}
        (embedding,) = self.encoder.run(list(ENCODER_OUTPUTS), feeds)
        return np.asarray(embedding, dtype=np.float32)

    def decode(
        self,
        image_embeddings: np.ndarray,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray,
        has_mask_input: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``B`` prompt sets to ``(B, M, L, L)`` logits and ``(B, M)`` IoUs (see Backend).

        More than :attr:`decoder_max_sets` sets run as several decoder runs, each written into
        the one output as it comes (no second copy of all the logits for a join). The last run
        of such a split call returns the CPU arena's unused regions. A call that fits one run
        keeps them: the arena then holds at most one run's worth (the budget), and returning
        and taking it back on every call made single-prompt calls about a third slower.
        """
        cap = self.decoder_max_sets
        split = cap is not None and len(point_coords) > cap
        return decode_in_runs(
            lambda values, last: self._run_decoder(*values, shrink=last and split),
            (image_embeddings, point_coords, point_labels, mask_input, has_mask_input),
            cap,
        )

    def _run_decoder(
        self, *values: np.ndarray, shrink: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One decoder run on the five inputs in :data:`DECODER_INPUTS` order.

        ``shrink``: return the CPU arena's unused regions after the run (False between the
        runs of one split call, which reuse the same buffers).
        """
        feeds = {
            name: self._feed(self._decoder_types, name, value)
            for name, value in zip(DECODER_INPUTS, values, strict=True)
        }
        options = self.decoder_shrink_options if shrink else None
        masks, iou = self.decoder.run(list(DECODER_OUTPUTS), feeds, options)
        return np.asarray(masks, dtype=np.float32), np.asarray(iou, dtype=np.float32)
