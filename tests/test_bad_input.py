"""Bad input (issue #7): every mistake a user can make gives exit status 2 and a message that names the file / line /
key, what was found and what was expected, before any training (or search) starts.

These tests go through the CLI, the way users meet the messages. The library-level checks behind them are tested
where they live and are not repeated here (docs/reliability.md lists both):
tests/test_config.py (spec), tests/test_search_space.py (search spaces), tests/test_annotations.py,
tests/test_depth_io.py, tests/test_datasets.py (data) and tests/test_checkpoints.py (weights files).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import mounted_tmpfs, status_lines, tiny_spec_tree, write_yaml


def run(argv: list[str], capsys) -> tuple[int, str]:
    """`automl ARGV` in this process: (exit status, stderr). argparse errors exit through SystemExit."""
    from automl.cli import main

    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    run.stdout = captured.out  # type: ignore[attr-defined]
    assert "Traceback" not in captured.err, captured.err
    return rc, captured.err


def problem_line(err: str, key: str) -> str:
    line = next((l for l in err.splitlines() if l.strip().startswith(f"- {key} ")), None)
    assert line is not None, f"{key} not reported in:\n{err}"
    return line


@pytest.fixture
def data(synth_data, tmp_path) -> Path:
    """A private copy of the synthetic scenes, to break."""
    return Path(shutil.copytree(synth_data, tmp_path / "data"))


@pytest.fixture
def spec_file(data, tmp_path):
    def make(**extra: Any) -> Path:
        return write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(data, tmp_path / "results", extra=extra or None))

    return make


def must_not_train(monkeypatch) -> None:
    import pytorch_lightning as pl

    from automl.search import cluster

    def refuse(*_a: Any, **_k: Any) -> None:
        raise AssertionError("training (or Ray) started before the input was refused")

    monkeypatch.setattr(pl.Trainer, "fit", refuse)
    monkeypatch.setattr(cluster, "init_ray", refuse)


# --------------------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------------------


def test_unknown_action_names_the_nearest(capsys):
    rc, err = run(["trian", "-e", "spec.yaml"], capsys)
    assert rc == 2 and "unknown action 'trian'; did you mean 'train'?" in err and "actions: synth" in err


def test_unknown_flag_names_the_nearest_option_of_that_action(capsys):
    rc, err = run(["run", "--num-trails", "4"], capsys)
    assert rc == 2 and "unrecognized arguments: --num-trails" in err
    assert "did you mean --num-trials" in err and "automl run --help" in err


def test_override_without_equals_sign(spec_file, monkeypatch, capsys):
    must_not_train(monkeypatch)
    rc, err = run(["off", "-e", str(spec_file()), "train.optim.lr", "train.num_epochs=1"], capsys)
    assert rc == 2
    assert "train.optim.lr (command-line override): an override must look like key.path=value (found no '=')" in err


def test_override_of_a_key_that_does_not_exist(spec_file, monkeypatch, capsys):
    must_not_train(monkeypatch)
    rc, err = run(["off", "-e", str(spec_file()), "train.optim.learning_rate=1e-4"], capsys)
    assert rc == 2
    line = problem_line(err, "train.optim.learning_rate")
    assert "(command-line override)" in line and "unknown key" in line and "did you mean 'train.optim.lr'" in line


# --------------------------------------------------------------------------------------------------------------
# spec (each mistake also has a loader-level test in tests/test_config.py)
# --------------------------------------------------------------------------------------------------------------


def test_every_spec_mistake_is_reported_at_once(data, tmp_path, monkeypatch, capsys):
    must_not_train(monkeypatch)
    tree = tiny_spec_tree(data, tmp_path / "results", extra={
        "model": {"encoder": "vitt"},
        "dataset": {"min_depth": 10.0, "max_depth": 0.5, "train_dataset": {"augmentation": {"crop_size": [0, 72]}}}})
    tree["dataset"]["val_dataset"]["data_sources"][0]["dataset_name"] = "NYUDV22"
    spec = write_yaml(tmp_path / "spec.yaml", tree)
    rc, err = run(["off", "-e", str(spec), "train.optim.lr=0"], capsys)
    assert rc == 2 and "6 problems" in err and str(spec) in err  # (tiny_spec_tree shares one crop for both splits)
    for key, found, expected in [
        ("model.encoder", "'vitt'", "expected one of: vits, vitb, vitl, vitg"),
        ("dataset.max_depth", "max_depth 0.5 <= min_depth 10.0", "expected max_depth > min_depth"),
        ("dataset.train_dataset.augmentation.crop_size", "[0, 70]", "two positive integers"),
        ("dataset.val_dataset.augmentation.crop_size", "[0, 70]", "two positive integers"),
        ("dataset.val_dataset.data_sources.0.dataset_name", "'NYUDV22'", "did you mean 'NYUDV2'"),
        ("train.optim.lr", "found 0.0", "expected a learning rate > 0"),
    ]:
        line = problem_line(err, key)
        assert found in line and expected in line, line
    assert "(command-line override)" in problem_line(err, "train.optim.lr")


def test_search_space_mistakes_stop_the_search_before_ray_starts(spec_file, tmp_path, monkeypatch, capsys):
    must_not_train(monkeypatch)
    space = tmp_path / "space.yaml"
    space.write_text("parameters:\n"
                     "  train.optim.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}\n"
                     "  train.optim.weight_decay: {type: float, low: 0.1, high: 0.001}\n")
    rc, err = run(["run", "-e", str(spec_file()), "--search-space", str(space)], capsys)
    assert rc == 2 and str(space) in err
    assert "train.optim.learning_rate" in err and "did you mean 'train.optim.lr'" in err
    assert "low=0.1 >= high=0.001" in err
    assert not (tmp_path / "results" / "trials").exists()


# --------------------------------------------------------------------------------------------------------------
# data (library-level tests: test_annotations.py, test_depth_io.py, test_datasets.py)
# --------------------------------------------------------------------------------------------------------------


def first_pair(data: Path, split: str = "train.txt", n: int = 0) -> tuple[Path, Path, int]:
    line = (data / split).read_text().splitlines()[n].split()
    return data / line[0], data / line[1], n + 1


def break_missing_image(data: Path) -> tuple[list[str], str]:
    img, _, line = first_pair(data, n=2)
    img.unlink()
    return [f"train.txt:{line}", "image file not found", img.name], ""


def break_three_columns(data: Path) -> tuple[list[str], str]:
    ann = data / "train.txt"
    lines = ann.read_text().splitlines()
    lines[4] = lines[4].replace(".jpg", ".jpg extra")
    ann.write_text("\n".join(lines) + "\n")
    return ["train.txt:5", "3 columns"], ""


def break_truncated_png_depth(data: Path) -> tuple[list[str], str]:
    _, depth, line = first_pair(data, n=1)
    depth.write_bytes(depth.read_bytes()[:200])
    return [f"train.txt:{line}", depth.name, "cannot read depth PNG"], ""


def break_depth_dtype(data: Path) -> tuple[list[str], str]:
    _, depth, line = first_pair(data, n=3)
    Image.fromarray(np.full((64, 80), 30, np.uint8)).save(depth)  # an 8-bit visualisation, not 16-bit depth
    return [f"train.txt:{line}", depth.name, "8-bit", "16-bit PNG"], ""


def break_depth_shape(data: Path) -> tuple[list[str], str]:
    _, depth, line = first_pair(data, n=0)
    Image.fromarray(np.full((32, 40), 2000, np.uint16)).save(depth)
    return [f"train.txt:{line}", depth.name, "(32, 40)", "64x80"], ""


def break_all_depth_invalid(data: Path) -> tuple[list[str], str]:
    for line in (data / "val.txt").read_text().splitlines():
        Image.fromarray(np.zeros((64, 80), np.uint16)).save(data / line.split()[1])  # 0 = no measurement
    return ["dataset.val_dataset", "none of the", "valid ground-truth pixels", "depth_scale"], ""


@pytest.mark.parametrize("breaker", [break_missing_image, break_three_columns, break_truncated_png_depth,
                                     break_depth_dtype, break_depth_shape, break_all_depth_invalid],
                         ids=lambda f: f.__name__[len("break_"):])
def test_bad_data_is_refused_before_training_naming_file_and_line(data, spec_file, monkeypatch, capsys, breaker):
    must_not_train(monkeypatch)
    wanted, _ = breaker(data)
    rc, err = run(["off", "-e", str(spec_file())], capsys)  # dataset.on_bad_sample defaults to error
    assert rc == 2, err
    for text in wanted:
        assert text in err, f"{text!r} not in:\n{err}"


def test_truncated_jpeg_stops_training_with_its_line_or_is_skipped_and_counted(data, spec_file, tmp_path, capsys):
    img, _, line = first_pair(data, n=6)
    img.write_bytes(img.read_bytes()[: int(img.stat().st_size * 0.6)])  # header intact: found when decoded
    rc, err = run(["off", "-e", str(spec_file())], capsys)
    assert rc == 2 and f"train.txt:{line}" in err and img.name in err and "truncated or corrupt" in err
    status = status_lines(tmp_path / "results")
    assert status[-1]["status"] == "FAILURE" and not any(s["status"] == "SUCCESS" for s in status)

    rc, err = run(["off", "-e", str(spec_file(dataset={"on_bad_sample": "skip"})),
                   f"results_dir={tmp_path / 'skipping'}"], capsys)
    assert rc == 0, err
    assert "skipped samples:  {'unreadable': 1}" in run.stdout  # type: ignore[attr-defined]
    fit = json.loads((tmp_path / "skipping" / "fit.json").read_text())
    assert fit["skipped_samples"] == {"unreadable": 1} and fit["epochs_completed"] == 1


# --------------------------------------------------------------------------------------------------------------
# checkpoints (weights files: tests/test_checkpoints.py; here the checkpoint a run resumes from)
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_checkpoint(synth_data, tmp_path_factory) -> Path:
    from trainer.config import build_spec
    from trainer.fit import fit

    out = tmp_path_factory.mktemp("trained")
    spec = build_spec(tiny_spec_tree(synth_data, out, extra={"train": {"max_steps_per_epoch": 1}}), action="train",
                      notice=lambda _m: None)
    return Path(fit(spec, progress=False, quiet=True).last_checkpoint)


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_resume_checkpoint_truncated_or_of_another_model_or_running_code(trained_checkpoint, spec_file, tmp_path,
                                                                         monkeypatch, capsys):
    must_not_train(monkeypatch)
    key = "train.resume_training_checkpoint_path"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(trained_checkpoint.read_bytes()[:5000])
    rc, err = run(["off", "-e", str(spec_file()), f"{key}={truncated}"], capsys)
    assert rc == 2 and f"{key}: {truncated}: cannot read checkpoint, truncated or corrupt" in err

    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, evil)
    rc, err = run(["off", "-e", str(spec_file()), f"{key}={evil}"], capsys)
    assert rc == 2 and f"{evil}: refused: not a plain weights file" in err and not marker.exists()

    rc, err = run(["off", "-e", str(spec_file()), f"{key}={trained_checkpoint}", "model.custom.embed_dim=64"],
                  capsys)
    assert rc == 2 and f"{key}: {trained_checkpoint}: checkpoint (lightning layout) does not fit the model" in err
    assert "embed_dim 32" in err and "embed_dim 64" in err


# --------------------------------------------------------------------------------------------------------------
# where results cannot be written: a read-only disk, a file in the way, a folder given as a file
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def read_only_disk(tmp_path):
    """An empty tmpfs mounted read-only (needs root / CAP_SYS_ADMIN; skipped where mounting is refused): writes fail
    with EROFS, which no chmod can give a root user."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as mnt:
        yield mnt


def test_a_read_only_results_dir_is_one_message_for_every_action(synth_data, read_only_disk, tmp_path, capsys):
    from tests.test_export import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "model.ckpt")
    spec = write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(synth_data, tmp_path / "unused"))
    out = read_only_disk / "results"
    calls = {
        "synth": ["synth", "--out", str(out), "--num", "2", "--size", "56x70"],
        "off": ["off", "-e", str(spec), f"results_dir={out}"],
        "run": ["run", "-e", str(spec), f"results_dir={out}", "--num-trials", "1"],
        "evaluate": ["evaluate", "-e", str(spec), f"results_dir={out}", f"evaluate.checkpoint={ckpt}",
                     f"dataset.test_dataset.data_sources=[{{data_file: {synth_data / 'val.txt'}, "
                     f"dataset_name: NYUDV2}}]"],
        "inference": ["inference", "-e", str(spec), f"results_dir={out}", f"inference.checkpoint={ckpt}",
                      f"dataset.infer_dataset.data_root={synth_data}"],
        "export": ["export", "-e", str(spec), f"results_dir={out}", f"export.checkpoint={ckpt}", "export.on_cpu=true"],
    }
    for action, argv in calls.items():
        rc, err = run(argv, capsys)
        assert rc == 2, (action, err[-2000:])
        assert "Read-only file system" in err or "not writable" in err, (action, err[-2000:])
        assert str(out) in err, (action, err[-2000:])
        assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1, (action, err)


def test_a_folder_where_a_file_is_expected_and_a_file_where_a_folder_is(synth_data, tmp_path, capsys):
    from tests.test_export import make_checkpoint

    spec = write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(synth_data, tmp_path / "results"))
    rc, err = run(["off", "-e", str(tmp_path)], capsys)  # the spec: a folder
    assert rc == 2 and f"{tmp_path} is a folder; expected a YAML spec file" in err
    resume_dir = tmp_path / "old"
    make_checkpoint(resume_dir / "checkpoints" / "last.ckpt")
    rc, err = run(["off", "-e", str(spec), f"train.resume_training_checkpoint_path={resume_dir}"], capsys)
    assert rc == 2 and f"{resume_dir} is a folder; expected a checkpoint file" in err, err
    assert str(resume_dir / "checkpoints" / "last.ckpt") in err  # the file the user probably meant
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc, err = run(["off", "-e", str(spec), f"results_dir={blocker}"], capsys)
    assert rc == 2 and f"results directory {blocker} is a file, expected a folder" in err, err


def test_a_binary_spec_file_is_named_not_a_traceback(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_bytes(bytes(random_bytes(3000)))
    rc, err = run(["off", "-e", str(spec)], capsys)
    assert rc == 2 and f"invalid spec {spec}" in err and "not a text file" in err and "UTF-8" in err, err


def random_bytes(n: int, seed: int = 17) -> bytes:
    """Bytes that are not UTF-8 (a 0xff at the start, the rest random), like `head -c N /dev/urandom`."""
    rng = np.random.default_rng(seed)
    return b"\xff" + rng.integers(0, 256, n - 1, dtype=np.uint8).tobytes()


def test_random_bytes_as_a_checkpoint_are_called_unreadable_not_code(synth_data, tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(random_bytes(3000, seed=3)[1:] + b"\x00")
    spec = write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(synth_data, tmp_path / "results"))
    rc, err = run(["export", "-e", str(spec), f"export.checkpoint={junk}", "export.on_cpu=true"], capsys)
    assert rc == 2 and str(junk) in err and "not a readable checkpoint" in err, err
    assert "run Python code" not in err and "refused" not in err, err
