"""OnnxRuntimeBackend on tiny hand-built graphs with the exported interface (no real model):
file lookup, metadata, fallbacks, provider handling, and a Predictor run end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from segfast_ros.runtime import ModelInfo, Predictor  # noqa: E402
from segfast_ros.runtime import onnx_backend as ob  # noqa: E402
from segfast_ros.runtime.backend import METADATA_KEY  # noqa: E402
from segfast_ros.runtime.onnx_backend import (  # noqa: E402
    OnnxRuntimeBackend,
    onnx_file_names,
    resolve_providers,
)

INFO = ModelInfo("tiny", image_size=64, embed_dim=8, embed_size=4)
S, C, E, L = 64, 8, 4, 16


def _save(graph: onnx.GraphProto, path: Path, info: ModelInfo | None) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if info is not None:
        helper.set_model_props(model, {METADATA_KEY: info.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_encoder(
    path: Path, info: ModelInfo | None = INFO, *, dynamic: bool = False, fp16: bool = False
) -> Path:
    """image (1,3,S,S) -> 16x16 average pool -> 1x1 conv to C channels: (1,C,E,E)."""
    side: int | str = "S" if dynamic else S
    in_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    weight = np.arange(C * 3, dtype=np.float32).reshape(C, 3, 1, 1) / 10
    nodes = [
        helper.make_node("Cast", ["image"], ["image32"], to=TensorProto.FLOAT),
        helper.make_node("AveragePool", ["image32"], ["pooled"], kernel_shape=[16, 16],
                         strides=[16, 16]),
        helper.make_node("Conv", ["pooled", "w"], ["image_embeddings"]),
    ]  # fmt: skip
    embed: int | str = "e" if dynamic else E
    graph = helper.make_graph(
        nodes,
        "encoder",
        [helper.make_tensor_value_info("image", in_type, [1, 3, side, side])],
        [
            helper.make_tensor_value_info(
                "image_embeddings", TensorProto.FLOAT, [1, C, embed, embed]
            )
        ],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())],
    )
    return _save(graph, path, info)


def make_decoder(path: Path) -> Path:
    """low_res_masks[b, m] = has_mask * mask_input + mean(embedding) + m;
    iou[b, m] = sum(point_coords[b]) + sum(point_labels[b]) + m."""
    tokens = np.arange(4, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["image_embeddings"], ["emb_mean"], keepdims=0),
        helper.make_node("Mul", ["mask_input", "has_mask_input"], ["mask_used"]),
        helper.make_node("Add", ["mask_used", "emb_mean"], ["mask_plus"]),
        helper.make_node("Add", ["mask_plus", "tokens4d"], ["mask_tok"]),  # (1|B, 4, L, L)
        helper.make_node("Shape", ["point_coords"], ["pc_shape"]),
        helper.make_node("Slice", ["pc_shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "mask_tail"], ["mask_shape"], axis=0),
        helper.make_node("Expand", ["mask_tok", "mask_shape"], ["low_res_masks"]),
        helper.make_node("ReduceSum", ["point_coords", "axes12"], ["pc_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["point_labels", "axes1"], ["pl_sum"], keepdims=1),
        helper.make_node("Unsqueeze", ["pc_sum", "axes1"], ["pc_sum2"]),
        helper.make_node("Add", ["pc_sum2", "pl_sum"], ["prompt_sum"]),
        helper.make_node("Add", ["prompt_sum", "tokens"], ["iou_predictions"]),
    ]
    consts = [
        helper.make_tensor("tokens", TensorProto.FLOAT, [4], tokens),
        helper.make_tensor("tokens4d", TensorProto.FLOAT, [1, 4, 1, 1], tokens),
        helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("mask_tail", TensorProto.INT64, [3], [4, L, L]),
        helper.make_tensor("axes12", TensorProto.INT64, [2], [1, 2]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "decoder",
        [
            helper.make_tensor_value_info("image_embeddings", f, [1, C, E, E]),
            helper.make_tensor_value_info("point_coords", f, ["B", "N", 2]),
            helper.make_tensor_value_info("point_labels", f, ["B", "N"]),
            helper.make_tensor_value_info("mask_input", f, ["Bm", 1, L, L]),
            helper.make_tensor_value_info("has_mask_input", f, [1]),
        ],
        [
            helper.make_tensor_value_info("low_res_masks", f, ["B", 4, L, L]),
            helper.make_tensor_value_info("iou_predictions", f, ["B", 4]),
        ],
        initializer=consts,
    )
    return _save(graph, path, None)


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("onnx")
    make_encoder(d / "encoder.fp32.onnx")
    make_encoder(d / "encoder.int8.onnx")
    make_decoder(d / "decoder.fp32.onnx")
    return d


@pytest.fixture(scope="module")
def backend(onnx_dir: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=1)


def test_reads_model_info_from_metadata(backend: OnnxRuntimeBackend) -> None:
    assert backend.info == INFO
    assert backend.name == "onnxruntime"
    assert backend.providers[0] == "CPUExecutionProvider"


def test_encode_and_decode_run_the_graphs(backend: OnnxRuntimeBackend) -> None:
    image = np.ones((1, 3, S, S), np.float32)
    emb = backend.encode(image)
    assert emb.shape == (1, C, E, E) and emb.dtype == np.float32
    # 1x1 conv of an all-ones image: channel c is the sum of its three weights.
    np.testing.assert_allclose(emb[0, :, 0, 0], np.arange(C * 3).reshape(C, 3).sum(1) / 10)

    coords = np.ones((3, 2, 2), np.float32)
    labels = np.array([[1, -1]] * 3, np.float32)
    mask = np.full((1, 1, L, L), 5.0, np.float32)
    masks, iou = backend.decode(emb, coords, labels, mask, np.array([1.0], np.float32))
    assert masks.shape == (3, 4, L, L) and iou.shape == (3, 4)
    np.testing.assert_allclose(iou[0], [4.0, 5.0, 6.0, 7.0])  # 4 coords + 0 labels + token
    np.testing.assert_allclose(masks[2, :, 0, 0], 5.0 + emb.mean() + np.arange(4), rtol=1e-5)
    masks, _ = backend.decode(emb, coords, labels, mask, np.array([0.0], np.float32))
    np.testing.assert_allclose(masks[0, 0, 0, 0], emb.mean(), rtol=1e-5)


def test_predictor_end_to_end(backend: OnnxRuntimeBackend) -> None:
    predictor = Predictor(backend)
    predictor.set_image(np.full((30, 40, 3), 128, np.uint8))
    out = predictor.predict(point_coords=[[10, 10]], point_labels=[1])
    assert out.masks.shape == (3, 30, 40) and out.scores.shape == (3,)
    boxes = predictor.predict(box=np.array([[0, 0, 10, 10], [5, 5, 20, 20]]))
    assert boxes.masks.shape == (2, 3, 30, 40)


def test_info_from_graph_shapes_without_metadata(tmp_path: Path) -> None:
    enc = make_encoder(tmp_path / "enc.onnx", info=None)
    dec = make_decoder(tmp_path / "dec.onnx")
    info = OnnxRuntimeBackend(enc, dec).info
    assert info == ModelInfo("unknown", image_size=S, embed_dim=C, embed_size=E)


def test_dynamic_shapes_without_metadata_are_refused(tmp_path: Path) -> None:
    enc = make_encoder(tmp_path / "enc.onnx", info=None, dynamic=True)
    dec = make_decoder(tmp_path / "dec.onnx")
    with pytest.raises(ValueError, match="no 'segfast' metadata and its shapes are not static"):
        OnnxRuntimeBackend(enc, dec)


def test_fp16_inputs_are_cast(tmp_path: Path) -> None:
    enc = make_encoder(tmp_path / "encoder.fp16.onnx", fp16=True)
    dec = make_decoder(tmp_path / "decoder.fp16.onnx")
    backend = OnnxRuntimeBackend.from_dir(tmp_path, "fp16")
    emb = backend.encode(np.ones((1, 3, S, S), np.float32))
    assert emb.dtype == np.float32 and emb.shape == (1, C, E, E)
    assert backend.encoder_path == enc and backend.decoder_path == dec


def test_wrong_graph_interface(onnx_dir: Path) -> None:
    enc = onnx_dir / "encoder.fp32.onnx"
    with pytest.raises(
        ValueError, match=r"does not have the segfast graph interface.*point_coords"
    ):
        OnnxRuntimeBackend(enc, enc)


# ---------------------------------------------------------------------- decoder memory


class _RecordingSession:
    """The real decoder session, recording each run's prompt-set count and run options."""

    def __init__(self, session: object) -> None:
        self.session = session
        self.batches: list[int] = []
        self.shrink: list[str | None] = []

    def run(
        self, outputs: list[str], feeds: dict[str, np.ndarray], run_options: object = None
    ) -> list[np.ndarray]:
        self.batches.append(len(feeds["point_coords"]))
        key = "memory.enable_memory_arena_shrinkage"
        self.shrink.append(run_options.get_run_config_entry(key) if run_options else None)
        return self.session.run(outputs, feeds, run_options)  # type: ignore[attr-defined]


def test_only_split_decoder_calls_return_the_cpu_arena(onnx_dir: Path) -> None:
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=1)
    # Both sessions have the arena (ONNX Runtime shrinks only an enabled arena) ...
    assert backend.encoder.get_session_options().enable_cpu_mem_arena is True
    assert backend.decoder.get_session_options().enable_cpu_mem_arena is True
    # ... and a call within one run keeps it (at most the budget): shrinking and growing it
    # again on every single-prompt call cost a third of the call's time. Split calls return
    # it (test_cpu_decoder_splits_big_batches_without_changing_outputs).
    recorder = _RecordingSession(backend.decoder)
    backend.decoder = recorder  # type: ignore[assignment]
    emb = backend.encode(np.ones((1, 3, S, S), np.float32))
    no_mask = np.zeros((1, 1, L, L), np.float32)
    backend.decode(emb, np.ones((1, 1, 2), np.float32), np.ones((1, 1), np.float32), no_mask,
                   np.zeros(1, np.float32))  # fmt: skip
    assert recorder.shrink == [None]


@pytest.mark.parametrize("spinning", [False, True])
def test_idle_threads_sleep_unless_spinning_is_asked_for(onnx_dir: Path, spinning: bool) -> None:
    # A busy-waiting pool takes the cores from the process's other threads (issue 18).
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=2, allow_spinning=spinning)
    key = "session.intra_op.allow_spinning"
    for session in (backend.encoder, backend.decoder):
        assert session.get_session_options().get_session_config_entry(key) == str(int(spinning))


@pytest.mark.parametrize("per_set_mask", [False, True])
def test_cpu_decoder_splits_big_batches_without_changing_outputs(
    onnx_dir: Path, per_set_mask: bool
) -> None:
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=1, decoder_max_sets=4)
    whole = OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=1, decoder_max_sets=10_000)
    recorder = _RecordingSession(backend.decoder)
    backend.decoder = recorder  # type: ignore[assignment]

    n = 11
    rng = np.random.default_rng(0)
    emb = backend.encode(np.ones((1, 3, S, S), np.float32))
    coords = rng.uniform(0, S, (n, 2, 2)).astype(np.float32)
    labels = np.tile(np.array([[2, 3]], np.float32), (n, 1))
    masks_in = rng.normal(size=(n if per_set_mask else 1, 1, L, L)).astype(np.float32)
    has_mask = np.array([1.0], np.float32)
    masks, iou = backend.decode(emb, coords, labels, masks_in, has_mask)
    assert recorder.batches == [4, 4, 3]
    assert recorder.shrink == [None, None, "cpu:0"]  # the runs of one call share the arena
    ref_masks, ref_iou = whole.decode(emb, coords, labels, masks_in, has_mask)
    np.testing.assert_array_equal(masks, ref_masks)
    np.testing.assert_array_equal(iou, ref_iou)

    recorder.batches.clear()
    backend.decode(emb, coords[:4], labels[:4], masks_in[:4], has_mask)
    assert recorder.batches == [4]  # at the cap: one run


def test_cpu_decoder_cap_follows_the_memory_budget(onnx_dir: Path) -> None:
    # Full-size MobileSAM/SAM (256 x 64 x 64 embedding: 16 MiB of working memory per set).
    sam = ModelInfo("mobile_sam", image_size=1024, embed_dim=256, embed_size=64)
    assert ob.cpu_decoder_max_sets(sam) == 8
    assert ob.cpu_decoder_max_sets(sam, budget_bytes=2**20) == 1  # never below one set
    assert ob.cpu_decoder_max_sets(INFO) == ob.CPU_DECODER_BUDGET_BYTES // (4 * C * E * E * 4)
    # The CPU provider's default is the budget's cap for the model.
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=1)
    assert backend.decoder_max_sets == ob.cpu_decoder_max_sets(INFO)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_decoder_max_sets_is_checked_and_a_gpu_decoder_has_no_cap(
    onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="decoder_max_sets must be >= 1 .*got 0"):
        OnnxRuntimeBackend.from_dir(onnx_dir, decoder_max_sets=0)

    real = ob.ort.InferenceSession

    class OnGpu(real):  # type: ignore[misc, valid-type]
        def get_providers(self) -> list[str]:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(ob.ort, "InferenceSession", OnGpu)
    monkeypatch.setattr(
        ob,
        "resolve_providers",
        lambda providers, **kw: [("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})],
    )
    assert OnnxRuntimeBackend.from_dir(onnx_dir, providers=["cuda"]).decoder_max_sets is None


# ------------------------------------------------------------------------------ files


def test_file_names_per_precision() -> None:
    assert onnx_file_names("fp32") == ("encoder.fp32.onnx", "decoder.fp32.onnx")
    assert onnx_file_names("fp16") == ("encoder.fp16.onnx", "decoder.fp16.onnx")
    assert onnx_file_names("int8") == ("encoder.int8.onnx", "decoder.fp32.onnx")
    with pytest.raises(ValueError, match=r"unknown precision 'bf16'; expected one of"):
        onnx_file_names("bf16")


def test_int8_uses_the_fp32_decoder(onnx_dir: Path) -> None:
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, "int8")
    assert backend.encoder_path.name == "encoder.int8.onnx"
    assert backend.decoder_path.name == "decoder.fp32.onnx"


def test_missing_files_name_the_path_and_the_fix(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"encoder ONNX file not found: .*nope.onnx.*"
                       r"segfast export"):  # fmt: skip
        OnnxRuntimeBackend(tmp_path / "nope.onnx", onnx_dir / "decoder.fp32.onnx")
    with pytest.raises(FileNotFoundError, match=r"decoder ONNX file not found"):
        OnnxRuntimeBackend(onnx_dir / "encoder.fp32.onnx", tmp_path / "nope.onnx")
    with pytest.raises(
        FileNotFoundError,
        match=r"encoder for precision 'fp16' not found: .*encoder.fp16.onnx; .* holds "
        r"\['decoder.fp32.onnx', 'encoder.fp32.onnx', 'encoder.int8.onnx'\]",
    ):
        OnnxRuntimeBackend.from_dir(onnx_dir, "fp16")
    with pytest.raises(FileNotFoundError, match="holds no .onnx files"):
        OnnxRuntimeBackend.from_dir(tmp_path, "fp32")
    with pytest.raises(FileNotFoundError, match=r"ONNX folder not found: .*missing_dir"):
        OnnxRuntimeBackend.from_dir(tmp_path / "missing_dir")


# -------------------------------------------------------------------------- providers


def test_provider_short_and_full_names(onnx_dir: Path) -> None:
    assert resolve_providers(None) == [("CPUExecutionProvider", {})]
    assert resolve_providers(["cpu"]) == resolve_providers(["CPUExecutionProvider"])
    backend = OnnxRuntimeBackend.from_dir(onnx_dir, providers=["CPU"])
    assert backend.providers == ["CPUExecutionProvider"]


def test_unavailable_provider_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"'CUDAExecutionProvider' is not available.*"
                       r"available: \[.*'CPUExecutionProvider'"):  # fmt: skip
        resolve_providers(["cuda"])


def test_unknown_provider_name() -> None:
    with pytest.raises(ValueError, match=r"unknown execution provider 'gpu'; expected one of"):
        resolve_providers(["gpu"])


def test_tensorrt_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ob.ort, "get_available_providers", lambda: available)
    cache = tmp_path / "trt_cache"
    resolved = resolve_providers(
        ["tensorrt", ("cuda", {"arena_extend_strategy": "kSameAsRequested"}), "cpu"],
        device_id=1,
        trt_fp16=True,
        trt_engine_cache_dir=cache,
        provider_options={"TensorrtExecutionProvider": {"trt_max_workspace_size": 1 << 30}},
    )
    assert resolved == [
        (
            "TensorrtExecutionProvider",
            {
                "device_id": 1,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_max_workspace_size": 1 << 30,
            },
        ),
        ("CUDAExecutionProvider", {"device_id": 1, "arena_extend_strategy": "kSameAsRequested"}),
        ("CPUExecutionProvider", {}),
    ]
    assert cache.is_dir()
    assert resolve_providers(["trt"])[0][1] == {"device_id": 0, "trt_fp16_enable": False}


def test_negative_threads(onnx_dir: Path) -> None:
    with pytest.raises(ValueError, match="intra_op_threads must be >= 0, got -1"):
        OnnxRuntimeBackend.from_dir(onnx_dir, intra_op_threads=-1)


def test_load_backend_onnxruntime(onnx_dir: Path) -> None:
    from segfast_ros.runtime import load_backend

    backend = load_backend("onnxruntime", onnx_dir, precision="int8", providers=["cpu"])
    assert isinstance(backend, OnnxRuntimeBackend) and backend.info == INFO


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_silent_fallback_to_cpu_is_an_error(
    onnx_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime falls back to CPU with only a log line when a GPU provider fails to load.
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ob.ort, "get_available_providers", lambda: available)
    with pytest.raises(RuntimeError, match=r"could not activate \['CUDAExecutionProvider'\]"):
        OnnxRuntimeBackend.from_dir(onnx_dir, providers=["cuda", "cpu"])
    backend = OnnxRuntimeBackend.from_dir(
        onnx_dir, providers=["cuda", "cpu"], require_providers=False
    )
    assert backend.providers == ["CPUExecutionProvider"]


def test_detector_refuses_a_silent_cpu_fallback(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The object-aware detector shares the backend's session creation and its provider check."""
    import onnxruntime as ort

    from segfast_ros.bench.synthetic_detector import write_detector_for_image
    from segfast_ros.runtime import onnx_backend
    from segfast_ros.segevery.detector import ObjectDetector

    path = write_detector_for_image(
        tmp_path / "det.onnx", (100, 120), [[10.0, 10.0, 60.0, 80.0]], [0.9]
    )
    real = ort.InferenceSession

    class CpuOnly(real):  # type: ignore[misc, valid-type]
        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(onnx_backend.ort, "InferenceSession", CpuOnly)
    monkeypatch.setattr(
        onnx_backend,
        "resolve_providers",
        lambda providers, **kw: [("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})],
    )
    with pytest.raises(onnx_backend.ProviderUnavailableError, match="could not activate"):
        ObjectDetector(path, providers=["cuda"])
