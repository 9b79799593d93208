"""The layers of ARCHITECTURE.md, read from the source (every import statement, at module level or inside a function):

- `trainer/` knows nothing of the search: it imports neither `automl` nor Ray nor Optuna;
- `automl/` reaches a trainer only through `automl/skills/`: no other module of it imports `trainer` or Lightning, so
  a second model family is a new skill, not an edit of the search.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every absolute import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(folder: str, forbidden: set[str], allowed_under: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(allowed_under):
            continue
        out += [f"{rel}:{line} imports {mod}" for line, mod in imported_modules(path) if mod in forbidden]
    return out


def test_the_trainer_imports_nothing_of_the_search():
    assert violations("trainer", {"automl", "ray", "optuna"}) == []


def test_automl_reaches_the_trainer_only_through_its_skills():
    assert violations("automl", {"trainer", "pytorch_lightning", "lightning"}, ("automl/skills/",)) == []


@pytest.mark.parametrize("source, expected", [
    ("import trainer.fit\n", ["automl/x.py:1 imports trainer"]),
    ("def f():\n    from trainer.errors import UserError\n", ["automl/x.py:2 imports trainer"]),
    ("from . import trainer\nimport trainerlike\n", []),  # relative, or another package whose name starts alike
])
def test_the_check_sees_imports_inside_functions_and_only_the_named_packages(tmp_path, monkeypatch, source,
                                                                            expected):
    (tmp_path / "automl").mkdir()
    (tmp_path / "automl" / "x.py").write_text(source)
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert violations("automl", {"trainer"}) == expected


# the terminal output that belongs to the command line itself: the CLI, `automl ui`'s URLs, the live trial table
PRINTS_ALLOWED = ("automl/cli.py", "automl/ui.py", "automl/search/progress.py")


def print_calls(folder: str) -> list[str]:
    out = []
    for path in sorted((REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in PRINTS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                out.append(f"{rel}:{node.lineno}")
    return out


@pytest.mark.parametrize("folder", ["trainer", "automl"])
def test_library_code_logs_instead_of_printing(folder):
    assert print_calls(folder) == []


def test_the_cli_sends_progress_to_stdout_notices_to_stderr_and_quiet_keeps_only_warnings(capsys):
    import logging

    from automl import logs

    logs.configure(logs.NORMAL)
    logs.configure(logs.NORMAL)  # configuring twice adds no second pair of handlers
    log = logging.getLogger("trainer.some_module")
    log.info("epoch 1/2  loss=0.5")
    log.warning("notice: a key is ignored")
    log.debug("details")
    out, err = capsys.readouterr()
    assert out == "epoch 1/2  loss=0.5\n" and err == "notice: a key is ignored\n"
    logs.configure(logs.QUIET)
    log.info("epoch 2/2  loss=0.4")
    log.warning("warning: disk nearly full")
    out, err = capsys.readouterr()
    assert out == "" and err == "warning: disk nearly full\n"
    logs.configure(logs.VERBOSE)
    log.debug("details")
    assert capsys.readouterr().out == "details\n"
    logs.configure(logs.NORMAL)


def test_quiet_flag_hides_a_plain_runs_progress_but_not_its_result_files(synth_data, tmp_path, capsys):
    from automl.cli import main
    from tests.conftest import tiny_spec_tree, write_yaml

    spec = write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(synth_data, tmp_path / "loud", epochs=1, lr=1e-3))
    assert main(["off", "-e", str(spec), "-q"]) == 0
    quiet = capsys.readouterr().out
    assert main(["off", "-e", str(spec), f"results_dir={tmp_path / 'normal'}"]) == 0
    normal = capsys.readouterr().out
    assert "training finished" in normal and "best checkpoint:" in normal
    assert "training finished" not in quiet and "epoch 1/1" not in quiet
    assert (tmp_path / "loud" / "checkpoints" / "last.ckpt").is_file()


def test_no_function_hides_its_modules_logger():
    """A local name or parameter `log` in a function that also calls `log.info(...)` would call the local one."""
    found = []
    for path in sorted([*(REPO / "trainer").rglob("*.py"), *(REPO / "automl").rglob("*.py")]):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            bound = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
            bound |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            calls = [n for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                     and n.value.id == "log" and n.attr in ("debug", "info", "warning", "error", "exception")]
            if "log" in bound and calls:
                found.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}")
    assert found == []
