"""The docs stay true: every shell command in a ```bash block of README.md and docs/*.md is checked (automl commands
parse, the specs and search spaces they name load with their overrides, make targets exist, mlflow/ray flags exist),
the cheap ones run for real, relative links resolve, every CLI option has help and every action an example, and
each error message that docs/troubleshooting.md is keyed by still occurs in the code."""

from __future__ import annotations

import argparse
import ast
import functools
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# commands the docs may show besides automl and make (checked for existence of the tool only where installed here)
OTHER_TOOLS = {"source", "cd", "export", "ssh", "nvidia-smi", "optuna-dashboard", "trtexec", "pip", "python3",
               "mlflow", "ray", "apt-get", "sudo", "git"}
SPEC_ACTIONS = {"run": "train", "train": "train", "off": "train", "evaluate": "evaluate", "inference": "inference",
                "export": "export", "gen_trt_engine": "gen_trt_engine"}


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        """The words of the command, without leading VAR=value environment assignments."""
        words = shlex.split(self.text, comments=True)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            words = words[1:]
        return words

    def __str__(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}: {self.text}"


def fenced_blocks(doc: Path, lang: str) -> list[tuple[int, str]]:
    """(first line number, text) of each ```lang block."""
    out, lines = [], doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            out.append((start + 1, "\n".join(body)))
        i += 1
    return out


def shell_commands(doc: Path) -> list[Command]:
    cmds = []
    for first, text in fenced_blocks(doc, "bash"):
        joined, start = "", None
        for k, raw in enumerate(text.splitlines()):
            line = raw.strip()
            if start is None:
                start = first + k
            if line.endswith("\\"):
                joined += line[:-1] + " "
                continue
            joined += line
            if joined.strip() and not joined.strip().startswith("#"):
                cmds.append(Command(doc, start, joined.strip()))
            joined, start = "", None
    return cmds


def named_yaml_blocks(doc: Path) -> dict[str, str]:
    """```yaml blocks whose first line is `# NAME.yaml`: files the doc's commands refer to by that name."""
    out = {}
    for _line, text in fenced_blocks(doc, "yaml"):
        first = text.splitlines()[0].strip() if text.strip() else ""
        m = re.fullmatch(r"#\s*([\w.-]+\.ya?ml)", first)
        if m:
            out[m.group(1)] = text
    return out


ALL_COMMANDS = [c for d in DOCS for c in shell_commands(d)]


def _ids(cmds: list[Command]) -> list[str]:
    return [f"{c.doc.name}:{c.line}" for c in cmds]


def test_the_docs_exist_and_show_commands():
    names = {d.name for d in DOCS}
    assert {"README.md", "quickstart.md", "migrating-from-tao.md", "search-spaces.md", "multinode.md",
            "deployment.md", "troubleshooting.md"} <= names
    automl = [c for c in ALL_COMMANDS if c.argv and c.argv[0] == "automl"]
    assert len(automl) >= 20
    readme = [c.text for c in shell_commands(REPO / "README.md")]
    assert any(t.startswith("make demo") for t in readme) and any(t.startswith("make test") for t in readme)


# --------------------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------------------


def _resolve_file(name: str, doc: Path, tmp_path: Path) -> Optional[Path]:
    """A file a command names: in the repository, or a named ```yaml block of the same doc; None for the user's own
    files (spec.yaml, /data/...), which the docs cannot provide."""
    if (REPO / name).is_file():
        return REPO / name
    blocks = named_yaml_blocks(doc)
    if name in blocks:
        path = tmp_path / name
        path.write_text(blocks[name])
        return path
    return None


def _parse(argv: list[str]) -> argparse.Namespace:
    from automl.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"automl {' '.join(argv)}: the CLI refuses it (exit {exc.code})") from None


@functools.lru_cache(maxsize=None)
def _tool_flags(*command: str) -> frozenset[str]:
    out = subprocess.run([str(Path(sys.executable).parent / command[0]), *command[1:], "--help"],
                         capture_output=True, text=True, timeout=120)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout + out.stderr))


def _check_automl(cmd: Command, tmp_path: Path) -> None:
    from automl.skills import get_skill
    from automl.skills.depth_net_mono import demo_spec_tree
    from trainer.config import build_spec, load_spec
    from trainer.errors import SpecError

    argv = cmd.argv[1:]
    if "--help" in argv or "-h" in argv or not argv:
        return  # run for real below
    args = _parse(argv)
    action = args.action
    if action == "convert":
        from trainer.data.convert import load_convert_spec

        path = _resolve_file(args.spec, cmd.doc, tmp_path)
        if path is not None:
            try:
                load_convert_spec(path, args.overrides)
            except SpecError as exc:  # the data folder of the example need not exist here
                others = [p for p in exc.problems if not (p.path == "data_root" and "not found" in p.message)]
                assert not others, f"{cmd}: {exc}"
        return
    if action not in SPEC_ACTIONS:
        return  # report, ui, synth: the arguments parsed
    spec = None
    if getattr(args, "spec", None):
        path = _resolve_file(args.spec, cmd.doc, tmp_path)
        if path is not None:
            spec = load_spec(path, args.overrides, action=SPEC_ACTIONS[action], check_files=False,
                             notice=lambda _m: None)
    elif action in ("run", "train", "off"):
        results = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("results_dir=")), "results/demo")
        spec = build_spec({}, args.overrides, base=demo_spec_tree(results), action="train", check_files=False,
                          notice=lambda _m: None)
    space = getattr(args, "search_space", None)
    if space and spec is not None:
        from automl.search.space import load_search_space

        path = _resolve_file(space, cmd.doc, tmp_path)
        assert path is not None, f"{cmd}: search space {space} is neither in the repository nor shown in the doc"
        load_search_space(path, skill=get_skill(args.skill), spec=spec, metric=getattr(args, "objective", None))


def _check_python(cmd: Command) -> None:
    """`python SCRIPT --flag ...`: the script is in the repository and defines each flag; `python -m pytest ...`:
    the test files exist and the markers are declared."""
    argv = cmd.argv[1:]
    if argv[:2] == ["-m", "pytest"]:
        rest = argv[2:]
        declared = (REPO / "pyproject.toml").read_text()
        for i, a in enumerate(rest):
            if a.startswith("tests"):
                assert (REPO / a.split("::")[0]).exists(), f"{cmd}: {a} does not exist"
            if a == "-m" and i + 1 < len(rest):
                for mark in re.findall(r"[a-z_]+", rest[i + 1]):
                    assert mark in ("not", "and", "or") or f'"{mark}:' in declared, f"{cmd}: unknown marker {mark}"
        return
    script = REPO / argv[0]
    assert script.is_file(), f"{cmd}: {argv[0]} is not in the repository"
    source = script.read_text()
    for flag in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert f'"{flag}"' in source, f"{cmd}: {argv[0]} defines no option {flag}"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=_ids(ALL_COMMANDS))
def test_every_command_in_the_docs_is_valid(cmd: Command, tmp_path):
    argv = cmd.argv
    assert argv, f"{cmd}: empty command"
    tool = argv[0]
    if tool == "automl":
        _check_automl(cmd, tmp_path)
    elif tool == "make":
        assert set(argv[1:]) <= _make_targets(), f"{cmd}: no such make target"
    elif tool == "mlflow" and argv[1:2] == ["server"]:
        used = {a.split("=")[0] for a in argv if a.startswith("--")}
        assert used <= _tool_flags("mlflow", "server"), f"{cmd}: unknown flags {used - _tool_flags('mlflow', 'server')}"
    elif tool in ("python", "python3") or tool.endswith("/python"):
        _check_python(cmd)
    elif tool == "ray" and argv[1:2] == ["start"]:
        used = {a.split("=")[0] for a in argv if a.startswith("--")}
        assert used <= _tool_flags("ray", "start"), f"{cmd}: unknown flags {used - _tool_flags('ray', 'start')}"
    else:
        assert tool in OTHER_TOOLS, f"{cmd}: '{tool}' is not a command these docs are expected to show"


def test_docs_that_name_specs_load_them():
    """The commands above do load specs: the repository's experiments and the docs' own YAML files."""
    named = [c for c in ALL_COMMANDS if c.argv[:1] == ["automl"] and re.search(r"-e (experiments/|tao_)", c.text)]
    assert len(named) >= 10
    for doc in DOCS:
        for name in named_yaml_blocks(doc):
            assert any(name in c.text for c in shell_commands(doc)), f"{doc.name}: {name} is shown but never used"


def test_the_tao_spec_in_the_migration_guide_loads_unchanged_with_a_notice_per_unused_key(tmp_path):
    from trainer.config import load_spec

    text = named_yaml_blocks(REPO / "docs" / "migrating-from-tao.md")["tao_metric.yaml"]
    path = tmp_path / "tao_metric.yaml"
    path.write_text(text)
    notices: list[str] = []
    spec = load_spec(path, ["automl_policy=off"], action="train", check_files=False, notice=notices.append)
    assert spec.automl.policy == "off" and spec.model.encoder == "vitl"
    guide = (REPO / "docs" / "migrating-from-tao.md").read_text()
    for n in notices:
        key = re.match(r"accepted, not used: ([\w.]+)$", n).group(1)
        assert f"`{key}`" in guide, f"the guide does not list the unused key {key}"
    assert f"notice: {notices[1]}" in " ".join(guide.split())


HELP_COMMANDS = [c for c in ALL_COMMANDS if c.argv[:1] == ["automl"] and ("--help" in c.argv or len(c.argv) == 1)]


@pytest.mark.parametrize("cmd", HELP_COMMANDS, ids=_ids(HELP_COMMANDS))
def test_help_commands_in_the_docs_run(cmd: Command, capsys):
    from automl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(cmd.argv[1:])
    assert exc.value.code == 0
    assert "usage: automl" in capsys.readouterr().out


SYNTH_COMMANDS = [c for c in ALL_COMMANDS if c.argv[:2] == ["automl", "synth"]]


@pytest.mark.parametrize("cmd", SYNTH_COMMANDS, ids=_ids(SYNTH_COMMANDS))
def test_synth_commands_in_the_docs_run(cmd: Command, tmp_path, monkeypatch):
    from automl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(cmd.argv[1:]) == 0
    out = tmp_path / _parse(cmd.argv[1:]).out
    assert (out / "train.txt").is_file() and (out / "val.txt").is_file()


# --------------------------------------------------------------------------------------------------------------
# links, help
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_relative_links_and_images_resolve(doc: Path):
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name}: broken link {target}"


def test_every_option_of_every_action_has_help_and_every_action_an_example():
    from automl.cli import ACTIONS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {a.name for a in ACTIONS}
    for name, p in sub.choices.items():
        assert p.epilog and "examples:" in p.epilog and f"automl {name}" in p.epilog, name
        for opt in p._actions:
            if isinstance(opt, argparse._HelpAction):
                continue
            assert opt.help and opt.help.strip(), f"automl {name}: {opt.option_strings or opt.dest} has no help"


# --------------------------------------------------------------------------------------------------------------
# troubleshooting: keyed by messages the code prints
# --------------------------------------------------------------------------------------------------------------

PREFIXES = ("error: training diverged: ", "error: ", "warning: ", "notice: ")


def _rendered_literals() -> list[str]:
    """Every string literal of automl/ and trainer/, f-strings with their replacement fields as NUL."""
    out = []
    for path in [*(REPO / "automl").rglob("*.py"), *(REPO / "trainer").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                out.append("".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values))
    return out


def troubleshooting_keys() -> list[str]:
    text = (REPO / "docs" / "troubleshooting.md").read_text()
    return re.findall(r"^### `(.+)`\s*$", text, flags=re.M)


def test_troubleshooting_is_keyed_by_messages_the_code_prints():
    keys = troubleshooting_keys()
    assert len(keys) >= 15
    literals = _rendered_literals()
    for key in keys:
        message = key
        for prefix in PREFIXES:  # what the CLI (or the notice/warning printer) puts in front of the message
            if message.startswith(prefix):
                assert any(prefix in lit for lit in literals), f"nothing prints '{prefix}'"
                message = message[len(prefix):]
                break
        fragments = [f.strip() for f in message.split("…") if len(f.strip()) >= 4]
        assert fragments, key
        for fragment in fragments:
            assert any(fragment in lit for lit in literals), \
                f"troubleshooting.md: '{fragment}' (of `{key}`) is no longer in the code's messages"
