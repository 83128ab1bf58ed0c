"""Shared fixtures. Tests that read ../shared skip with a reason when it is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(
    os.environ.get("SEGFAST_PARITY_DIR", REPO.parent / "shared/fixtures/upstream_parity")
)


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    """The upstream-parity fixture (official MobileSAM layout, reference outputs)."""
    if not (PARITY_DIR / "mobile_sam_random.pt").is_file():
        pytest.skip(
            f"upstream parity fixture not found at {PARITY_DIR} (it lives in the team's "
            "shared/ folder next to the repo; set SEGFAST_PARITY_DIR to point elsewhere)"
        )
    return PARITY_DIR


@pytest.fixture(scope="session")
def parity_reference(parity_dir: Path) -> dict[str, np.ndarray]:
    with np.load(parity_dir / "mobile_sam_reference.npz") as ref:
        return {k: ref[k] for k in ref.files}


@pytest.fixture(scope="session")
def parity_prompts(parity_dir: Path) -> dict[str, dict]:
    return json.loads((parity_dir / "prompts.json").read_text())


@pytest.fixture(scope="session")
def tiny_onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small ``tinyvit_s256`` model (seeded random weights) exported to fp32 ONNX once."""
    torch = pytest.importorskip("torch", reason="exporting the test model needs torch")
    from segfast_ros.export.onnx_export import export_model
    from segfast_ros.modeling.registry import build_sam

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("onnx_s256")
    export_model(build_sam("tinyvit_s256").eval(), out, ("fp32",))
    return out


@pytest.fixture(scope="session", autouse=True)
def _few_threads() -> None:
    """CI machines have 2 cores; oversubscription only slows the suite down."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)
