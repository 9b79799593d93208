"""The guides as a newcomer reads them: quickstart, then search spaces, then deployment, their commands in the
order the pages give them, in one fresh copy of the repository (what `git clone` gives: tracked and new files,
nothing ignored), with the pages' own relative paths; then the files the pages say were written are there.

Commands that need what a newcomer here does not have are left out, and `not_here` says which and why: the user's
own data, weights or photos (paths under /data, /models or photos/; a spec file whose /data or /models paths the
command does not override; files under the results folder of such a spec, written by a run on the user's data), a
server that runs until Ctrl-C (`automl ui`), TensorRT, shell set-up (`make install`, `source`), and the ViT-L
measurement the deployment page took on a GPU machine."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from tests.test_docs import REPO, named_yaml_blocks, shell_commands

QUICKSTART = REPO / "docs" / "quickstart.md"
CHAIN = (QUICKSTART, REPO / "docs" / "search-spaces.md", REPO / "docs" / "deployment.md")
NOT_HERE = (
    (re.compile(r"(^|[\s=])/(data|models)/"), "the user's own data or weights"),
    (re.compile(r"(^|[\s=])photos/"), "the user's own photos"),
    (re.compile(r"^(source|make|ssh)\b"), "shell set-up"),
    (re.compile(r"^automl ui\b"), "a server that runs until Ctrl-C"),
    (re.compile(r"^automl gen_trt_engine\b|trt_engine="), "TensorRT"),
    (re.compile(r"bf16_fidelity\.py --encoder vitl\b"), "a ViT-L measurement the page took on a GPU machine"),
)
SPECS = REPO / "experiments" / "depth_net_mono"


def _user_paths(tree: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of a spec tree whose value is a path under /data or /models (the user's own files)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _user_paths(sub, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _user_paths(sub, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree} if isinstance(tree, str) and re.match(r"/(data|models)/", tree) else {}


def _spec_tree(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def user_data_results() -> list[str]:
    """Relative results_dir of every shipped spec that reads the user's data or weights: what only such a run
    writes (an absolute one is under /data already)."""
    trees = [_spec_tree(p) for p in SPECS.glob("*.yaml")]
    return sorted({str(t["results_dir"]).rstrip("/") + "/" for t in trees
                   if _user_paths(t) and t.get("results_dir") and not str(t["results_dir"]).startswith("/")})


def not_here(text: str) -> Optional[str]:
    """Why a documented command cannot run for a newcomer here, or None when it can."""
    for pattern, why in NOT_HERE:
        if pattern.search(text):
            return why
    words = shlex.split(text, comments=True)
    if "-e" in words and words.index("-e") + 1 < len(words):
        spec = REPO / words[words.index("-e") + 1]
        overridden = {w.split("=", 1)[0] for w in words if "=" in w}
        kept = sorted(set(_user_paths(_spec_tree(spec))) - overridden) if spec.is_file() else []
        if kept:
            return f"the user's own data or weights ({spec.name}: {', '.join(kept)})"
    for folder in user_data_results():
        if re.search(rf"(^|[\s=]){re.escape(folder)}", text):
            return f"files a run on the user's data writes ({folder})"
    return None


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone of this working tree would hold them (tracked + untracked, not
    ignored), copied to `dest`."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


def runnable(text: str) -> bool:
    return not_here(text) is None


def test_the_guides_name_what_they_leave_to_the_user():
    cmds = {page.stem: [c.text for c in shell_commands(page)] for page in CHAIN}
    run_here = {page: [c for c in texts if runnable(c)] for page, texts in cmds.items()}
    quick = run_here["quickstart"]
    assert any(c.startswith("automl run ") for c in quick) and any(c.startswith("automl off") for c in quick)
    assert any(c.startswith("automl export") or c.startswith("automl evaluate") for c in quick)
    assert any(c.startswith("automl run ") for c in run_here["search-spaces"]), cmds["search-spaces"]
    assert any("pytest" in c for c in run_here["deployment"]) and any("--smoke" in c for c in run_here["deployment"])
    # what is left out is left out for a reason a reader can check
    assert "train_metric.yaml" in not_here("automl run -e experiments/depth_net_mono/train_metric.yaml")
    assert not_here("automl export export.checkpoint=results/metric_vits/checkpoints/best.ckpt") \
        == "files a run on the user's data writes (results/metric_vits/)"
    assert not_here("automl run results_dir=results/d1 --num-trials 8") is None


def _run_page(page: Path, root: Path, env: dict[str, str]) -> list[str]:
    """Save the page's named YAML blocks (`# my_space.yaml`) as a reader would, then run its runnable commands in
    order in `root`; return them."""
    for name, text in named_yaml_blocks(page).items():
        (root / name).write_text(text)
    ran = []
    for cmd in shell_commands(page):
        if not runnable(cmd.text):
            continue
        proc = subprocess.run(shlex.split(cmd.text, comments=True), cwd=root, env=env, capture_output=True,
                              text=True, timeout=3600)
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        ran.append(cmd.text)
    return ran


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_quickstart_then_search_spaces_then_deployment_run_as_written_from_a_fresh_clone(tmp_path):
    root = fresh_copy(tmp_path / "depth-automl")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(root)}
    ran = {page.stem: _run_page(page, root, env) for page in CHAIN}
    assert len(ran["quickstart"]) >= 5 and ran["search-spaces"] and len(ran["deployment"]) >= 2
    text = QUICKSTART.read_text()
    named = set(re.findall(r"(results/quick/[\w./-]+\.(?:ckpt|onnx|json|html|db))", text))
    assert named, "the quickstart names no output file"
    missing = [n for n in sorted(named) if not (root / n).is_file()]
    assert not missing, f"the quickstart names files its commands did not write: {missing}"
    # search spaces: the val/d1 search it runs wrote what the page points at, optimising what it asked for
    summary = json.loads((root / "results/d1/summary.json").read_text())
    assert summary["objective"] == {"metric": "val/d1", "mode": "max"}
    assert (root / "results/d1/report/report.html").is_file() and (root / "results/d1/optuna.db").is_file()
