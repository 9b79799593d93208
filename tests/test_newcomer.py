"""The quickstart as a newcomer runs it: its commands, in the order the page gives them, from the root of a fresh copy
of the repository (what `git clone` gives: tracked and new files, nothing ignored), with the page's own relative
paths; then the files the page says were written are there.

Commands that need what a newcomer here does not have are left out, and the test says which: the user's own data or
weights (paths under /data or /models), a server that runs until Ctrl-C (`automl ui`), TensorRT, shell set-up
(`make install`, `source`)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_docs import REPO, shell_commands

QUICKSTART = REPO / "docs" / "quickstart.md"
NOT_HERE = (re.compile(r"(^|[\s=])/(data|models)/"), re.compile(r"^(source|make|ssh)\b"),
            re.compile(r"^automl (ui|gen_trt_engine)\b"), re.compile(r"trt_engine="))


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
    return not any(p.search(text) for p in NOT_HERE)


def test_the_quickstart_names_what_it_leaves_to_the_user():
    cmds = [c.text for c in shell_commands(QUICKSTART)]
    run_here = [c for c in cmds if runnable(c)]
    assert any(c.startswith("automl run ") for c in run_here) and any(c.startswith("automl off") for c in run_here)
    assert any(c.startswith("automl export") or c.startswith("automl evaluate") for c in run_here)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_quickstart_runs_as_written_from_a_fresh_clone(tmp_path):
    root = fresh_copy(tmp_path / "depth-automl")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(root)}
    ran = []
    for cmd in shell_commands(QUICKSTART):
        if not runnable(cmd.text):
            continue
        proc = subprocess.run(shlex.split(cmd.text, comments=True), cwd=root, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        ran.append(cmd.text)
    assert len(ran) >= 5
    text = QUICKSTART.read_text()
    named = set(re.findall(r"(results/quick/[\w./-]+\.(?:ckpt|onnx|json|html|db))", text))
    assert named, "the quickstart names no output file"
    missing = [n for n in sorted(named) if not (root / n).is_file()]
    assert not missing, f"the quickstart names files its commands did not write: {missing}"
