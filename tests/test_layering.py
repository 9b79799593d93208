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
