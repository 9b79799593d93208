"""A search's start-up (automl.search.warmup, automl.search.preload): Ray starts while the inputs are checked, Ray's
worker processes import the trainer stack before the first trial, the trials share one decoded-frame cache."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.search.warmup import overlap_checks_with_ray, preload_config, with_frame_cache


def test_checks_run_while_ray_starts_and_a_failed_check_wins(monkeypatch) -> None:
    import ray

    started = time.time()
    lines = overlap_checks_with_ray(lambda: (time.sleep(0.5), ["data ok"])[1], lambda: time.sleep(0.5))
    assert lines[0] == "data ok" and time.time() - started < 0.9  # side by side, not one after the other
    assert lines[1].startswith("Ray started in 0.5 s beside these checks (0.5 s)")

    def bad_data() -> list[str]:
        raise ValueError("dataset.train_dataset: annotation file not found")

    def bad_ray() -> None:
        raise RuntimeError("ray.init failed")

    shut = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: shut.append(1))
    with pytest.raises(ValueError, match="annotation file"):
        overlap_checks_with_ray(bad_data, lambda: None)
    assert shut == [1]  # Ray, started for nothing, is shut down again
    with pytest.raises(ValueError, match="annotation file"):
        overlap_checks_with_ray(bad_data, bad_ray)  # the user's input error first
    with pytest.raises(RuntimeError, match="ray.init failed"):
        overlap_checks_with_ray(lambda: [], bad_ray)


def test_preload_config_and_its_switch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("AUTOML_PRELOAD_SLOTS_DIR", raising=False)
    monkeypatch.delenv("AUTOML_PRELOAD_SLOTS", raising=False)
    monkeypatch.delenv("AUTOML_PRELOAD_SKILL", raising=False)
    monkeypatch.delenv("PL_DISABLE_FORK", raising=False)  # preload_config moves Tune's actor default here
    from ray.tune.execution import class_cache

    monkeypatch.setattr(class_cache, "DEFAULT_ENV_VARS", dict(class_cache.DEFAULT_ENV_VARS))
    monkeypatch.setenv("AUTOML_PRELOAD_WORKERS", "0")
    assert preload_config(str(tmp_path), "depth_net_mono") == {}
    monkeypatch.setenv("AUTOML_PRELOAD_WORKERS", "1")
    assert preload_config(str(tmp_path), "depth_net_mono")["preload_python_modules"] == ["automl.search.preload"]
    import os
    assert os.environ["AUTOML_PRELOAD_SLOTS_DIR"] == str(tmp_path)  # inherited by the local Ray's workers
    assert os.environ["AUTOML_PRELOAD_SKILL"] == "depth_net_mono"
    from automl.search.warmup import preload_slots
    # CPU-only nodes: 2 (at most one per CPU); GPU nodes: 4 trials per GPU and the probe, at most one per CPU
    assert [preload_slots(n) for n in (1, 2, 16, 128)] == [1, 2, 2, 2]
    assert [preload_slots(16, 1), preload_slots(32, 2), preload_slots(8, 2), preload_slots(128, 8)] == [5, 9, 8, 33]
    assert preload_config(str(tmp_path), "depth_net_mono", local=False) == {}  # a cluster's workers are its own


def test_visible_gpus_reads_cuda_visible_devices_without_touching_cuda(monkeypatch) -> None:
    from automl.search.warmup import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,3")
    assert visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == 0


def test_tune_trial_actors_start_on_the_preloaded_processes_of_a_local_ray(tmp_path: Path) -> None:
    """The path Tune takes to create trial actors (placement groups that reserve every CPU, then its actor-class
    cache) lands them on the processes that preloaded the trainer, with PL_DISABLE_FORK=1 as Tune's own runtime
    environment would have given them; also when the placement groups were reserved a while before the actors
    (Ray's idle-worker killer then finds idle workers it has no free CPU for)."""
    code = f"""
import os, sys, time, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
os.environ.pop("PL_DISABLE_FORK", None)
from automl.search.warmup import preload_config
from ray.tune.execution.class_cache import _ActorClassCache
config = preload_config({str(tmp_path / "slots")!r}, "depth_net_mono")
print("shared", os.environ.get("PL_DISABLE_FORK"))
ray.init(address="local", num_cpus=2, include_dashboard=False, _system_config=config)
time.sleep(2.0)  # the workers idle longer than Ray's default keep-alive (1 s)
groups = [placement_group([{{"CPU": 1}}]) for _ in range(2)]
ray.get([g.ready() for g in groups])
time.sleep(1.5)  # Ray's idle-worker killer runs every 200 ms
class Trial:
    def where(self):
        preload = sys.modules.get("automl.search.preload")
        return bool(preload and preload._held), os.environ.get("PL_DISABLE_FORK")
actors = [_ActorClassCache().get(Trial).options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(g))
          .remote() for g in groups]
found = ray.get([a.where.remote() for a in actors])
print("landed", [held for held, _ in found], [fork for _, fork in found])
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("shared", "landed"))]
    assert lines == ["shared 1", "landed [True, True] ['1', '1']"], out.stdout + out.stderr[-3000:]


def test_only_the_first_processes_of_a_node_claim_a_preload_slot(tmp_path: Path) -> None:
    from automl.search.preload import claim_slot

    assert [claim_slot(str(tmp_path), slots=2) for _ in range(3)] == [0, 1, None]
    # another process finds both slots held by this one
    code = f"from automl.search.preload import claim_slot; print(claim_slot({str(tmp_path)!r}, slots=2))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None"


def test_preloading_imports_the_trainer_without_touching_the_gpu(tmp_path: Path) -> None:
    code = ("import os, sys, automl.search.preload as p; import torch; "
            "print('trainer.fit' in sys.modules, torch.cuda.is_initialized(), "
            "os.environ.get('TORCHINDUCTOR_CACHE_DIR'))")
    env = {**__import__("os").environ, "AUTOML_PRELOAD_SLOTS_DIR": str(tmp_path),
           "AUTOML_PRELOAD_SKILL": "depth_net_mono"}  # as the driver sets it (preload_config)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["True", "False", "None"]


def test_preloaded_imports_ask_nvml_not_cuda_whether_a_gpu_exists(tmp_path: Path) -> None:
    """A module that asks torch.cuda.is_available() while it is preloaded must not initialise CUDA (which would fix
    the process's GPUs before Ray chooses one for its trial): torch answers from NVML then; the variable is gone
    after."""
    (tmp_path / "asks_cuda.py").write_text("import os\nSEEN = os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK')\n")
    code = ("import os, sys; sys.path.insert(0, %r); import automl.search.preload as p; "
            "p.preload(('asks_cuda',)); print(sys.modules['asks_cuda'].SEEN, "
            "os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK'))" % str(tmp_path))
    env = {**__import__("os").environ, "AUTOML_PRELOAD_SLOTS_DIR": str(tmp_path / "slots"), "AUTOML_PRELOAD_SLOTS": "0"}
    env.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["1", "None"]


def test_search_spec_gets_the_shared_frame_cache_unless_it_names_one(tmp_path: Path) -> None:
    from automl.skills import get_skill
    from trainer.config import build_spec

    skill = get_skill("depth_net_mono")
    spec = build_spec({"dataset": {"min_depth": 0.1, "max_depth": 10}}, notice=lambda _m: None, check_files=False)
    assert with_frame_cache(skill, spec, tmp_path / "fc").dataset.frame_cache_dir == str(tmp_path / "fc")
    spec.dataset.frame_cache_dir = str(tmp_path / "mine")
    assert with_frame_cache(skill, spec, tmp_path / "fc").dataset.frame_cache_dir == str(tmp_path / "mine")


def test_a_search_checks_its_inputs_and_search_space_without_importing_lightning(synth_data, tmp_path: Path) -> None:
    """What the driver runs before its trials (search space, tracking store, room for checkpoints, the data's
    pre-flight) leaves Lightning unimported: its import cost the driver 5.6-7.8 s before Ray could start."""
    from tests.conftest import tiny_spec_tree, write_yaml

    spec_file = write_yaml(tmp_path / "spec.yaml", tiny_spec_tree(synth_data, tmp_path / "res"))
    code = f"""
import sys
from automl.skills import get_skill
from automl.search.driver import SearchOptions, _checks_beside_ray
from automl.search.space import load_search_space
from pathlib import Path
skill = get_skill("depth_net_mono")
spec = skill.load_spec({str(spec_file)!r}, [], "train")
space = load_search_space(skill.default_search_space(), skill=skill, spec=spec)
lines = _checks_beside_ray(skill, spec, SearchOptions.from_spec(spec), Path({str(tmp_path)!r}),
                           "sqlite:///{tmp_path / 'mlflow.db'}")
print(len(space.params) > 0, any("samples" in ln for ln in lines), "pytorch_lightning" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split()[-3:] == ["True", "True", "False"], out.stdout + out.stderr
