"""The documentation's shell commands: every `segfast` command in the README and in docs/*.md
parses with the CLI's parser, and the README's node commands point at a model a fresh clone has
(they run right after `make setup`)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from segfast_ros.cli import build_parser
from segfast_ros.runtime.paths import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").glob("*.md")))


def _commands(doc: Path) -> list[str]:
    """Each command line of a document's ```bash blocks: continuations joined, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _argv(prefix: str, docs: tuple[Path, ...] = (README,)) -> list[tuple[str, list[str]]]:
    """(document name, arguments after the program) of every command run as ``prefix``."""
    return [
        (doc.relative_to(ROOT).as_posix(), shlex.split(c)[1:])
        for doc in docs
        for c in _commands(doc)
        if c.split()[0] == prefix
    ]


def _id(value: str | list[str]) -> str:
    """Test id part: the document's name, or the command's subcommand."""
    return value if isinstance(value, str) else value[0]


def test_the_readme_has_commands() -> None:
    assert len(_argv("segfast")) >= 8 and _argv(".venv/bin/segfast_node")


@pytest.mark.parametrize(("doc", "argv"), _argv("segfast", DOCS), ids=_id)
def test_every_segfast_command_parses(doc: str, argv: list[str]) -> None:
    build_parser().parse_args(argv)  # an unknown option or a bad value exits


@pytest.mark.parametrize(("doc", "argv"), _argv(".venv/bin/segfast_node"), ids=_id)
def test_node_commands_run_on_a_fresh_clone(doc: str, argv: list[str]) -> None:
    (model_dir,) = [a.split(":=", 1)[1] for a in argv if a.startswith("model_dir:=")]
    folder = resolve_model_path(model_dir)
    assert sorted(folder.glob("encoder.*.onnx")), (
        f"{doc}'s `segfast_node ... model_dir:={model_dir}` needs {folder}, which a fresh "
        "clone does not have"
    )
