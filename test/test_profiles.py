"""Platform profiles and the launch files around them, without ``launch`` installed.

The YAML checks (declared parameters, values in range) run for every file under config/ in
test_launch_config.py; here: the auto mapping, the layering arguments, what each profile must
set, and that the launch files name only files that exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from segfast_ros.profiles import (
    FALLBACK,
    PROFILES,
    detect_profile,
    parse_cameras,
    profile_for_model,
    resolve_profile,
)
from segfast_ros.ros.launch_args import ARGUMENTS, shared_arguments

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "config" / "profiles"
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
LAUNCH_ARGS = REPO / "segfast_ros" / "ros" / "launch_args.py"


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("NVIDIA Jetson AGX Orin Developer Kit\0", "orin_agx"),
        ("NVIDIA Jetson AGX Orin", "orin_agx"),
        ("Jetson AGX Orin 64GB", "orin_agx"),
        ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\0", "orin_nx"),
        ("NVIDIA Jetson Orin NX 16GB", "orin_nx"),
        ("NVIDIA Jetson Orin Nano Developer Kit\0", "orin_nano"),
        ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super", "orin_nano"),
        ("NVIDIA Jetson Xavier NX Developer Kit", "cpu"),
        ("NVIDIA Jetson AGX Xavier", "cpu"),
        ("Raspberry Pi 5 Model B Rev 1.0\0", "cpu"),
        ("", "cpu"),
    ],
)
def test_device_tree_model_to_profile(model: str, profile: str) -> None:
    assert profile_for_model(model) == profile


def test_detect_reads_the_device_tree_and_falls_back(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    assert detect_profile(model) == "orin_nano"
    assert detect_profile(tmp_path / "missing") == FALLBACK == "cpu"


def test_resolve_profile_names_auto_paths_and_none(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_text("NVIDIA Jetson AGX Orin Developer Kit")
    assert resolve_profile("auto", PROFILE_DIR, model) == PROFILE_DIR / "orin_agx.yaml"
    assert resolve_profile("auto", PROFILE_DIR, tmp_path / "none") == PROFILE_DIR / "cpu.yaml"
    assert resolve_profile("orin_nx", PROFILE_DIR) == PROFILE_DIR / "orin_nx.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("/**: {ros__parameters: {}}")
    assert resolve_profile(str(own), PROFILE_DIR) == own
    assert resolve_profile("", PROFILE_DIR) is None
    assert resolve_profile("none", PROFILE_DIR) is None
    with pytest.raises(ValueError, match="unknown profile 'orin_tx2'.*orin_nano"):
        resolve_profile("orin_tx2", PROFILE_DIR)


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_sets_the_platform_choices(name: str) -> None:
    path = PROFILE_DIR / f"{name}.yaml"
    text = path.read_text()
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    for key in (
        "backend",
        "precision",
        "max_prompt_sets",
        "cache_size",
        "resize_interpolation",
        "intra_op_threads",
    ):
        assert key in params, f"{name}: {key} missing"
    segevery = params["segevery"]
    assert {"strategy", "rate"} <= set(segevery)
    assert segevery["strategy"] in segevery, f"{name}: settings of its own strategy missing"
    if params["backend"] == "tensorrt":
        trt = params["tensorrt"]
        assert 1 <= trt["decoder_opt_sets"] <= trt["decoder_max_sets"]
        assert params["max_prompt_sets"] <= trt["decoder_max_sets"]
    # The reasoning is in the file, with the public figures it rests on.
    assert "Why these numbers" in text and ("NanoSAM" in text or "quantize.py" in text)


def test_profiles_on_disk_are_the_known_ones() -> None:
    assert sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")) == sorted(PROFILES)


def test_parse_cameras() -> None:
    assert parse_cameras("front:/front/image_raw, rear:/rear/image_raw") == [
        ("front", "/front/image_raw"),
        ("rear", "/rear/image_raw"),
    ]
    for bad, match in [
        ("", "no cameras"),
        ("front", "expected name:topic"),
        ("1cam:/x", "namespace"),
        ("a-b:/x", "namespace"),
        ("a:/x,a:/y", "repeat"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_cameras(bad)


def _share_paths(tree: ast.AST) -> list[tuple[str, ...]]:
    """Every ``share / "a" / "b"`` chain, as ("a", "b")."""
    chains = []
    for node in ast.walk(tree):
        parts: list[str] = []
        cur = node
        while isinstance(cur, ast.BinOp) and isinstance(cur.op, ast.Div):
            if not isinstance(cur.right, ast.Constant):
                break
            parts.insert(0, cur.right.value)
            cur = cur.left
        if parts and isinstance(cur, ast.Name | ast.Call):
            chains.append(tuple(parts))
    # Keep the longest chain of each nest (the outer BinOp).
    return [c for c in chains if not any(o != c and o[: len(c)] == c for o in chains)]


def test_launch_files_reference_only_files_that_exist() -> None:
    # The launch files and their argument table (segfast_ros/ros/launch_args.py) name files in
    # the package's share folder as `share / "a" / "b"` chains and "{share}/a/b" defaults.
    sources = [*LAUNCH_FILES, LAUNCH_ARGS]
    chains = [c for path in sources for c in _share_paths(ast.parse(path.read_text()))]
    chains += [
        tuple(a.default.removeprefix("{share}/").split("/"))
        for a in ARGUMENTS
        if a.default.startswith("{share}/")
    ]
    assert chains, "expected paths under the package share folder"
    for parts in chains:
        assert (REPO.joinpath(*parts)).exists(), f"the launch files name missing {'/'.join(parts)}"
    # The installed share folder has what the launch files read: launch/ and config/.
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY launch config" in cmake


def test_multi_camera_forwards_to_the_single_node_launch() -> None:
    text = (REPO / "launch" / "multi_camera.launch.py").read_text()
    forwarded = {a.name for a in shared_arguments()}
    for name in ("model_dir", "profile", "profile_file", "params_file", "use_sim_time"):
        assert name in forwarded and name in {a.name for a in ARGUMENTS}
    assert "shared_arguments()" in text
    assert '"namespace": name' in text and '"camera_topic": topic' in text
