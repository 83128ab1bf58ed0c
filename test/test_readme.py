"""The README's shell commands: every `segfast` command parses, and the node commands of "Run it
here" point at a model a fresh clone has (they run right after `make setup`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from segfast_ros.cli import build_parser
from segfast_ros.runtime.paths import resolve_model_path

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    """Each command line of the README's ```bash blocks: continuations joined, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _argv(prefix: str) -> list[list[str]]:
    return [shlex.split(c)[1:] for c in _commands() if c.split()[0] == prefix]


def test_the_readme_has_commands() -> None:
    assert len(_argv("segfast")) >= 8 and _argv(".venv/bin/segfast_node")


@pytest.mark.parametrize("argv", _argv("segfast"), ids=lambda a: " ".join(a[:2]))
def test_every_segfast_command_parses(argv: list[str]) -> None:
    build_parser().parse_args(argv)  # an unknown option or a bad value exits


@pytest.mark.parametrize("argv", _argv(".venv/bin/segfast_node"), ids=" ".join)
def test_node_commands_run_on_a_fresh_clone(argv: list[str]) -> None:
    (model_dir,) = [a.split(":=", 1)[1] for a in argv if a.startswith("model_dir:=")]
    folder = resolve_model_path(model_dir)
    assert sorted(folder.glob("encoder.*.onnx")), (
        f"the README's `segfast_node ... model_dir:={model_dir}` needs {folder}, which a fresh "
        "clone does not have"
    )
