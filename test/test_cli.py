"""The `segfast` command end to end on the small model (segment, export, quant-report, bench)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segfast_ros.cli import main
from segfast_ros.modeling import build_sam
from segfast_ros.runtime import Predictor
from segfast_ros.runtime.cpu_features import detect_cpu_features
from segfast_ros.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    ckpt = root / "tiny.pt"
    torch.save(build_sam("tinyvit_s256").state_dict(), ckpt)
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for i in range(3):
        img = cv2.GaussianBlur(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8), (0, 0), 4)
        cv2.imwrite(str(images / f"{i}.png"), img)
    return {"ckpt": ckpt, "image": images / "0.png", "images": images, "root": root}


def _segment(files: dict[str, Path], out: Path, *extra: str) -> dict[str, np.ndarray]:
    argv = ["segment", "--model", "tinyvit_s256", "--checkpoint", str(files["ckpt"])]
    argv += ["--image", str(files["image"]), "--out", str(out), *extra]
    assert main(argv) == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_segment_matches_the_library(files: dict[str, Path], tmp_path: Path) -> None:
    onnx_dir = tmp_path / "onnx"
    res = _segment(
        files,
        tmp_path / "a.npz",
        "--point",
        "50,60",
        "--point",
        "120,80,0",
        "--multimask",
        "--onnx-dir",
        str(onnx_dir),
    )
    assert res["masks"].shape == (3, 150, 200) and res["masks"].dtype == bool
    assert res["scores"].shape == (3,) and res["low_res_logits"].shape == (3, 64, 64)
    assert (onnx_dir / "encoder.fp32.onnx").is_file()  # exported on demand

    image = cv2.cvtColor(cv2.imread(str(files["image"])), cv2.COLOR_BGR2RGB)
    predictor = Predictor(TorchBackend(build_sam("tinyvit_s256", files["ckpt"])))
    predictor.set_image(image)
    ref = predictor.predict([[50, 60], [120, 80]], [1, 0], multimask_output=True)
    np.testing.assert_allclose(res["scores"], ref.scores, atol=1e-4)
    assert (res["masks"] != ref.masks).mean() < 1e-3


def test_several_boxes_lead_the_output(files: dict[str, Path], tmp_path: Path) -> None:
    res = _segment(
        files,
        tmp_path / "b.npz",
        "--box",
        "10,10,90,100",
        "--box",
        "50,20,190,140",
        "--box",
        "0,0,200,150",
        "--logits",
        "--backend",
        "torch",
    )
    assert res["masks"].shape == (3, 1, 150, 200) and res["masks"].dtype == np.float32
    assert res["scores"].shape == (3, 1)


def test_segment_errors_name_the_problem(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["segment", "--model", "tinyvit_s256", "--image", str(files["image"])]
    out = ["--out", str(tmp_path / "x.npz")]
    assert main([*base, "--point", "5,5", "--backend", "torch", *out]) == 2
    assert "no --checkpoint: random weights give meaningless masks" in capsys.readouterr().err
    ckpt = ["--checkpoint", str(files["ckpt"]), "--backend", "torch"]
    assert main([*base, *ckpt, *out]) == 2
    assert "give at least one --point or --box" in capsys.readouterr().err
    assert main([*base, *ckpt, "--point", "500,5", *out]) == 2
    assert "outside the image of 200x150" in capsys.readouterr().err
    assert main([*base, *ckpt, "--box", "90,10,10,100", *out]) == 2
    assert "x1 < x0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, *ckpt, "--box", "1,2,3", *out])
    assert "expected X0,Y0,X1,Y1" in capsys.readouterr().err
    missing = ["segment", "--model", "tinyvit_s256", "--image", str(tmp_path / "none.png")]
    assert main([*missing, *ckpt, "--point", "5,5", *out]) == 2
    assert "image not found" in capsys.readouterr().err


def test_export_quant_report_and_bench(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx_dir = tmp_path / "onnx"
    argv = ["export", "--model", "tinyvit_s256", "--checkpoint", str(files["ckpt"])]
    argv += ["--out-dir", str(onnx_dir), "--precision", "fp32", "int8", "fp16"]
    assert main([*argv, "--calib", str(files["images"])]) == 0
    names = sorted(p.name for p in onnx_dir.glob("*.onnx"))
    assert names == [
        "decoder.fp16.onnx",
        "decoder.fp32.onnx",
        "encoder.fp16.onnx",
        "encoder.fp32.onnx",
        "encoder.int8.onnx",
    ]
    cpu = detect_cpu_features().describe()  # int8 kernels differ per CPU: the gate names it
    out = capsys.readouterr().out
    assert "int8 target cpu: uint8 activations x int8 weights, 7-bit" in out
    assert "embedding cosine vs fp32" in out and f"on {cpu}" in out
    report_json = tmp_path / "q.json"
    argv = ["quant-report", "--onnx-dir", str(onnx_dir), "--images", str(files["images"])]
    assert main([*argv, "--json", str(report_json)]) == 0
    out = capsys.readouterr().out
    assert "emb cos" in out and f"CPU: {cpu}" in out
    assert json.loads(report_json.read_text())["cpu"]["describe"] == cpu

    # Several targets side by side, each quantized into its own file.
    argv += ["--quant-targets", "cpu", "cpu-avx2", "--json", str(report_json)]
    assert main(argv) == 0
    assert "cpu-avx2" in capsys.readouterr().out
    report = json.loads(report_json.read_text())
    assert [e["target"] for e in report["int8"]] == ["cpu", "cpu-avx2"]
    assert (onnx_dir / "encoder.int8.cpu-avx2.onnx").is_file()
    for entry in report["int8"]:
        assert entry["mean"]["embedding_cosine"] > 0.95, (entry["mean"], cpu)

    bench_json = tmp_path / "bench.json"
    argv = ["bench", "--onnx-dir", str(onnx_dir), "--backends", "onnxruntime"]
    argv += ["--precisions", "fp32", "int8", "--image", str(files["image"]), "--runs", "2"]
    assert main([*argv, "--decoder-runs", "3", "--json", str(bench_json)]) == 0
    table = capsys.readouterr().out
    assert "median ms" in table and "int8" in table
    rows = json.loads(bench_json.read_text())["rows"]
    stages = {(r["precision"], r["stage"]) for r in rows}
    assert ("int8", "encoder") in stages and ("fp32", "point->1 mask") in stages
    assert all(r["median_ms"] > 0 for r in rows)


# ------------------------------------------------------- replay and demo pick the demo model


def _camera_bag(path: Path, frames: int = 2) -> Path:
    from segfast_ros.bench.scenes import generate_sequence
    from segfast_ros.replay.bags import write_image_bag

    write_image_bag(path, (f.image for f in generate_sequence(7, frames, (96, 128))))
    return path


def test_replay_without_a_model_option_runs_the_demo_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segfast_ros.segevery.presets import DEMO_SEGEVERY_PARAMS

    bag = _camera_bag(tmp_path / "in")
    argv = ["replay", str(bag), str(tmp_path / "out"), "--no-progress", "--threads", "1"]
    summary_json = tmp_path / "grid.json"
    assert main([*argv, "--set", "points_per_side=4", "--json", str(summary_json)]) == 0
    out = capsys.readouterr().out
    assert "no --model, --checkpoint or --onnx-dir given, so the shipped demo model runs" in out
    doc = json.loads(summary_json.read_text())
    assert doc["processed"] == 2 and doc["strategy"] == "grid"
    assert "models/demo/encoder.fp32.onnx" in doc["model"]
    # The demo's thresholds replace SAM's (which keep almost none of its masks); --set wins.
    assert doc["segevery_settings"] == {**DEMO_SEGEVERY_PARAMS["grid"], "points_per_side": 4}
    assert doc["segevery_settings_source"].startswith("DEMO_SEGEVERY_PARAMS")
    assert "--set points_per_side" in doc["segevery_settings_source"]
    assert "SegEvery grid settings: pred_iou_thresh=0.7" in out

    aware_json = tmp_path / "aware.json"
    argv = [*argv, "--overwrite", "--mode", "object_aware", "--json", str(aware_json)]
    assert main(argv) == 0
    doc = json.loads(aware_json.read_text())
    settings = doc["segevery_settings"]
    assert Path(settings.pop("detector")).parts[-2:] == ("demo", "detector.onnx")
    assert settings == DEMO_SEGEVERY_PARAMS["object_aware"]
    assert "detector: the demo model's" in doc["segevery_settings_source"]
    assert doc["processed"] == 2 and doc["instances"] > 0


def test_a_model_option_keeps_the_strategy_defaults(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag = _camera_bag(tmp_path / "in", frames=1)
    argv = ["replay", str(bag), str(tmp_path / "out"), "--no-progress", "--threads", "1"]
    argv += ["--model", "tinyvit_s256", "--checkpoint", str(files["ckpt"])]
    argv += ["--onnx-dir", str(tmp_path / "onnx"), "--set", "points_per_side=2"]
    assert main([*argv, "--json", str(tmp_path / "s.json")]) == 0
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["segevery_settings"] == {"points_per_side": 2}
    assert "DEMO" not in doc["segevery_settings_source"]
    assert f"--onnx-dir {tmp_path / 'onnx'}" in doc["model"]
    capsys.readouterr()
    # No demo model, so object_aware needs its detector named.
    assert main([*argv, "--overwrite", "--mode", "object_aware"]) == 2
    assert "--mode object_aware needs a detector: pass --detector" in capsys.readouterr().err


def test_the_int8_to_fp32_fallback_says_so_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = Path(__file__).resolve().parents[1] / "models" / "demo"
    # A copy of the demo model without its int8 encoder.
    model = tmp_path / "model"
    model.mkdir()
    for name in ("encoder.fp32.onnx", "decoder.fp32.onnx", "detector.onnx"):
        (model / name).write_bytes((demo / name).read_bytes())
    argv = ["demo", "--out", str(tmp_path / "demo"), "--frames", "2", "--width", "128"]
    argv += ["--height", "96", "--onnx-dir", str(model), "--threads", "1"]
    assert main(argv) == 0  # --precision int8 is the demo's default
    captured = capsys.readouterr()
    assert (
        f"segfast demo: {model / 'encoder.int8.onnx'} not found; running the fp32 graphs "
        "(encoder.fp32.onnx + decoder.fp32.onnx) instead of --precision int8" in captured.err
    )
    assert f"model: {model / 'encoder.fp32.onnx'}" in captured.out
