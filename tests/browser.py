"""Headless Chromium for the report and MLflow UI tests, and the one real search those tests look at.

Chromium is Debian's (`apt-get install chromium chromium-driver`, which `.ci/run` does), driven through its
chromedriver by Selenium. Tests that need it skip with the reason when it is missing. Screenshots go to
`artifacts/` at the repository root (git-ignored), or to $AUTOML_TEST_ARTIFACTS.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("AUTOML_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("AUTOML_TEST_CHROMEDRIVER") or shutil.which("chromedriver") or "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio")


def artifacts_dir() -> Path:
    out = Path(os.environ.get("AUTOML_TEST_ARTIFACTS") or REPO / "artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def chromium_missing() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).is_file():
        return f"headless Chromium not installed ({CHROMIUM}); apt-get install -y chromium chromium-driver " \
               f"(.ci/run does)"
    if not Path(CHROMEDRIVER).is_file():
        return f"chromedriver not installed ({CHROMEDRIVER}); apt-get install -y chromium-driver (.ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing; pip install -e '.[dev]'"
    return None


needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=chromium_missing() or "")


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium (fresh profile, no network of its own besides the pages it is sent to)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, script: str, *args: Any, timeout: float = 90.0, what: str = "") -> Any:
    """Poll a JavaScript expression (`return ...`) until it gives something truthy; fail with `what` after
    `timeout` seconds (the MLflow UI is a React app that renders after its API calls return)."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            last = driver.execute_script(script, *args)
        except Exception as exc:  # noqa: BLE001 - the page may be between renders
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or script!r}; last result: {last!r}")


def screenshot(driver: Any, name: str, full_page: bool = False) -> Path:
    """Save a PNG under artifacts/ and return its path; `full_page` grows the window to the page's height."""
    path = artifacts_dir() / name
    if full_page:
        width = driver.execute_script("return window.innerWidth")
        height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 12000)")
        driver.set_window_size(width, height + 120)
        time.sleep(0.3)
    driver.save_screenshot(str(path))
    return path


# --------------------------------------------------------------------------------------------------------------
# one real search for the end-to-end browser tests (report and MLflow UI), run once per session
# --------------------------------------------------------------------------------------------------------------

SEARCH_SPACE = """
objective: {metric: val/loss, mode: min}
parameters:
  train.optim.lr: {type: float, low: 1.0e-4, high: 1.0e+6, log: true}
  train.optim.weight_decay: {type: float, low: 1.0e-4, high: 0.1, log: true}
initial_points:              # after the baseline (the spec's lr 1e-3): one that diverges, one that trains
  - {train.optim.lr: 1.0e+6}
  - {train.optim.lr: 3.0e-4}
"""


def run_real_search(base: Path, synth_data: Path) -> tuple[Path, str]:
    """`automl run` (a separate process, as a user runs it) of 4 tiny trials, at least two of which train and one
    diverges; returns the
    results folder and what the command printed. Reused when an earlier test of the session already ran it."""
    from tests.conftest import tiny_spec_tree, write_yaml

    results = base / "results"
    log = base / "run.log"
    if (results / "summary.json").is_file() and log.is_file():
        return results, log.read_text()
    base.mkdir(parents=True, exist_ok=True)
    tree = tiny_spec_tree(synth_data, results, epochs=2, lr=1e-3, extra={"train": {"clip_grad_norm": 0.0}})
    # no early stopping: every trial that trains completes, so the Optuna study has >= 2 values to plot
    tree["automl"] = {"num_trials": 4, "max_concurrent": 2, "scheduler": "none", "cpus_per_trial": 1,
                      "export": "none"}
    spec = write_yaml(base / "spec.yaml", tree)
    (base / "space.yaml").write_text(SEARCH_SPACE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "automl.cli", "run", "-e", str(spec), "--search-space",
                           str(base / "space.yaml")], cwd=base, env=env, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    log.write_text(proc.stdout)
    assert proc.returncode == 0, f"automl run failed ({proc.returncode}):\n{proc.stdout[-4000:]}"
    return results, proc.stdout


def summary_of(results: Path) -> dict[str, Any]:
    return json.loads((results / "summary.json").read_text())


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
