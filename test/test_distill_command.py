"""``segfast distill`` end to end on a tiny run (a few steps; the training itself is not run in
CI): the files it writes, the student loading strictly, ``--resume`` continuing the same run,
and each bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="distillation needs torch")

from segfast_ros.cli import main  # noqa: E402
from segfast_ros.modeling.registry import build_sam  # noqa: E402

TINY = ["--batch", "1", "--prompts", "2", "--rounds", "2", "--threads", "1"]


def distill(out: Path, *extra: str) -> int:
    argv = ["distill", "--teacher", "demo", "--student", "demo_tinyvit_half"]
    return main([*argv, "--images", "generated", "--out", str(out), *TINY, *extra])


def test_a_short_run_writes_a_student_that_loads_and_resume_continues_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert distill(out, "--steps", "2", "--eval-every", "1", "--save-every", "1") == 0
    record = json.loads((out / "distill.json").read_text())
    assert record["steps"] == 2 and len(record["history"]) == 2
    assert record["config"]["hard_prompts"] and record["config"]["hard_weighting"]
    assert {"point_miou", "box_miou"} <= set(record["evals"][-1])
    build_sam("demo_tinyvit_half", out / "student.pt")  # strict key check
    first = torch.load(out / "student.pt")
    assert distill(out, "--steps", "3", "--eval-every", "1", "--resume") == 0
    again = json.loads((out / "distill.json").read_text())
    assert again["steps"] == 3 and len(again["history"]) == 3  # continued, not restarted
    assert again["history"][:2] == record["history"]
    changed = torch.load(out / "student.pt")
    assert any(not torch.equal(first[k], changed[k]) for k in first)


def test_one_seed_gives_one_run(tmp_path: Path) -> None:
    # The student's random initialisation included: it once came from an unseeded state.
    steps = ["--steps", "1", "--eval-every", "1"]
    assert distill(tmp_path / "a", *steps) == 0
    assert distill(tmp_path / "b", *steps) == 0
    a, b = (json.loads((tmp_path / d / "distill.json").read_text()) for d in ("a", "b"))
    assert a["evals"] == b["evals"]
    for row in (*a["history"], *b["history"]):
        del row["minutes"]  # wall time
    assert a["history"] == b["history"]


def test_bad_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def error(*argv: str) -> str:
        assert main(["distill", *argv, "--out", str(tmp_path / "o"), *TINY]) == 2
        return capsys.readouterr().err

    # Different embedding shapes and nothing to bridge them.
    text = error("--teacher", "demo", "--student", "mobile_sam", "--images", "generated")
    assert "no neck to bridge them" in text and "64x16x16" in text and "256x64x64" in text
    (tmp_path / "empty").mkdir()
    base = ["--teacher", "demo", "--student", "demo_tinyvit_half", "--images"]
    assert "no image files" in error(*base, str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    (tmp_path / "junk" / "b.jpg").write_bytes(b"nor a jpeg")
    assert "none of its 2 image files could be read" in error(*base, str(tmp_path / "junk"))
    assert "does not exist" in error(*base, str(tmp_path / "nope"))
    assert "needs --teacher-checkpoint" in error(
        "--teacher", "mobile_sam", "--student", "resnet18_sam", "--images", "generated"
    )
    assert "--resume: no " in error(*base, "generated", "--resume")
    assert "expected cpu, cuda or cuda:N" in error(*base, "generated", "--device", "mps")
    assert "expected cpu, cuda or cuda:N" in error(*base, "generated", "--device", "gpu0")
    text = error(*base, "generated", "--device", "cuda:7")
    assert "--device 'cuda:7'" in text
    assert "no CUDA device" in text or "CUDA device(s)" in text  # without a GPU / with fewer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_a_run_on_cuda_follows_the_cpu_runs_losses(tmp_path: Path) -> None:
    steps = ["--steps", "2", "--eval-every", "1", "--save-every", "1"]
    assert distill(tmp_path / "cpu", *steps) == 0
    assert distill(tmp_path / "gpu", *steps, "--device", "cuda") == 0
    cpu, gpu = (json.loads((tmp_path / d / "distill.json").read_text()) for d in ("cpu", "gpu"))
    assert gpu["device"].startswith("cuda")
    for a, b in zip(cpu["history"], gpu["history"], strict=True):
        for term in ("embedding", "tokens", "logits"):  # TF32 convolutions: not bit-equal
            assert b[term] == pytest.approx(a[term], rel=0.05), term
    build_sam("demo_tinyvit_half", tmp_path / "gpu" / "student.pt")  # CPU tensors, strict


def test_resume_from_another_runs_checkpoint_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        pixels = rng.integers(0, 255, (64, 80, 3), np.uint8)
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), pixels)
    assert distill(out, "--steps", "1", "--save-every", "1") == 0
    argv = ["distill", "--teacher", "demo", "--student", "demo_tinyvit_half"]
    code = main([*argv, "--images", str(tmp_path / "imgs"), "--out", str(out), *TINY, "--resume"])
    assert code == 2
    assert "is from another distillation (images: 'generated' there" in capsys.readouterr().err
