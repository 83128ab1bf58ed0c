"""The documentation's shell commands: every `segfast` command in the README and in docs/*.md
parses with the CLI's parser, the README's node commands point at a model a fresh clone has
(they run right after `make setup`), and its `ros2` lines name launch files, launch arguments
and parameters that exist. test_ros2_launch_cli.py runs those `ros2` lines for real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from segfast_ros.cli import build_parser
from segfast_ros.ros.launch_args import ARGUMENTS, shared_arguments
from segfast_ros.ros.params import all_params
from segfast_ros.runtime.paths import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = (README, *sorted((ROOT / "docs").glob("*.md")))


def bash_commands(doc: Path) -> list[str]:
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
        for c in bash_commands(doc)
        if c.split()[0] == prefix
    ]


def _id(value: str | list[str]) -> str:
    """Test id part: the document's name, or the command's subcommand."""
    return value if isinstance(value, str) else value[0]


@pytest.mark.parametrize(("doc", "argv"), _argv("segfast", DOCS), ids=_id)
def test_every_segfast_command_parses(doc: str, argv: list[str]) -> None:
    build_parser().parse_args(argv)  # an unknown option or a bad value exits


def ros2_argv(line: str) -> list[str]:
    """The words after ``ros2`` of a command line (after its ``NAME=value`` assignments), or []
    when the line runs something else."""
    words = shlex.split(line)
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):
        words.pop(0)
    return words[1:] if words[:1] == ["ros2"] else []


def ros2_lines(doc: Path = README) -> list[str]:
    """The ``ros2 ...`` command lines of a document's bash blocks, as written."""
    return [c for c in bash_commands(doc) if ros2_argv(c)]


#: What each launch file declares: segfast.launch.py the whole table, multi_camera.launch.py
#: the shared arguments and its camera list.
LAUNCH_ARGUMENTS = {
    "segfast.launch.py": {a.name for a in ARGUMENTS},
    "multi_camera.launch.py": {a.name for a in shared_arguments()} | {"cameras"},
}


def _node_model_dirs() -> list[tuple[str, list[str]]]:
    """(document, arguments) of every README line that starts the node."""
    started = [
        ("README.md", argv[1:])
        for argv in map(ros2_argv, ros2_lines())
        if argv[0] in ("launch", "run")
    ]
    return _argv(".venv/bin/segfast_node") + started


def test_the_readme_has_commands() -> None:
    assert len(_argv("segfast")) >= 8 and _argv(".venv/bin/segfast_node")
    verbs = {tuple(ros2_argv(line)[:2]) for line in ros2_lines()}
    assert {("launch", "segfast_ros"), ("param", "describe")} <= verbs


@pytest.mark.parametrize(("doc", "argv"), _node_model_dirs(), ids=_id)
def test_node_commands_run_on_a_fresh_clone(doc: str, argv: list[str]) -> None:
    (model_dir,) = [a.split(":=", 1)[1] for a in argv if a.startswith("model_dir:=")]
    folder = resolve_model_path(model_dir)
    assert sorted(folder.glob("encoder.*.onnx")), (
        f"{doc}'s `segfast_node ... model_dir:={model_dir}` needs {folder}, which a fresh "
        "clone does not have"
    )


@pytest.mark.parametrize("line", ros2_lines())
def test_readme_ros2_lines_name_what_exists(line: str) -> None:
    verb, *rest = ros2_argv(line)
    if verb == "launch":
        package, launch_file, *args = rest
        assert package == "segfast_ros" and (ROOT / "launch" / launch_file).is_file(), line
        names = {a.split(":=", 1)[0] for a in args}
        assert names <= LAUNCH_ARGUMENTS[launch_file], (
            f"undeclared: {names - LAUNCH_ARGUMENTS[launch_file]}"
        )
    elif verb == "param":
        action, node, *names = rest
        assert action in ("describe", "get", "set") and node.startswith("/"), line
        declared = {p.name for p in all_params()} | {"autostart", "use_sim_time"}
        assert set(names[:1] if action == "set" else names) <= declared, line
    else:  # test_ros2_launch_cli.py runs launch, run and param lines; teach it any other verb
        assert rest[:2] == ["segfast_ros", "segfast_node"] and verb == "run", line
