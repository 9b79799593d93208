"""`--gpus-per-trial auto` (automl.search.packing): the choice from one probe's measurements, with injected
numbers, and the probe itself on the CPU."""

from __future__ import annotations

import pytest

from automl.search.packing import choose_trials_per_gpu, wants_auto

GIB = 2**30


def probe(busy, peak_gib=3.0, total_gib=140.0, cores=1.5, rate=70.0):
    return {"img_per_s": rate, "gpu_busy": busy, "peak_memory_bytes": peak_gib * GIB,
            "total_memory_bytes": total_gib * GIB, "cpu_cores": cores}


def choose(p, cpus_per_gpu=16.0, num_trials=12, gpus=1.0):
    return choose_trials_per_gpu(p, cpus_per_gpu=cpus_per_gpu, num_trials=num_trials, gpus=gpus)


def test_a_host_bound_small_trial_is_packed_until_the_gpu_is_predicted_busy() -> None:
    c = choose(probe(busy=0.25))  # vits batch 4: the GPU idles 75% of a step
    assert c.trials_per_gpu == 4 and c.gpus_per_trial == 0.25
    assert "4 trials per GPU (--gpus-per-trial 0.25)" in c.reason and "25% busy" in c.reason
    row = next(r for r in c.predicted if r["trials_per_gpu"] == 4)
    assert row["predicted_busy"] == pytest.approx(1.0) and row["predicted_img_per_s"] == pytest.approx(280.0)
    assert choose(probe(busy=0.16)).trials_per_gpu == 8  # 4 x 16% = 64% is short of the 90% target


def test_a_trial_that_fills_the_gpu_runs_alone() -> None:
    c = choose(probe(busy=0.95, peak_gib=60))
    assert c.trials_per_gpu == 1 and c.gpus_per_trial == 1.0 and "95% busy" in c.reason


def test_memory_cpus_and_trial_count_cap_the_packing_and_the_reason_says_which() -> None:
    c = choose(probe(busy=0.1, peak_gib=40))  # 3 x 40 GiB > 85% of 140 GiB
    assert c.trials_per_gpu == 2 and "4 do not: memory: 4 x 40.0 GiB > 85% of 140.0 GiB" in c.reason
    c = choose(probe(busy=0.1, cores=5.0), cpus_per_gpu=16.0)
    assert c.trials_per_gpu == 2 and "CPU: 4 x 5.0 cores > 16 per GPU" in c.reason
    c = choose(probe(busy=0.1), num_trials=3, gpus=1.0)
    assert c.trials_per_gpu == 2 and "trials: 4 > the 3 per GPU the search has" in c.reason
    assert choose(probe(busy=0.1, peak_gib=130)).trials_per_gpu == 1  # even one barely fits: alone


def test_without_a_busy_share_or_a_probe_one_trial_per_gpu() -> None:
    c = choose(probe(busy=None))
    assert c.trials_per_gpu == 1 and "busy share not measured" in c.reason and c.probe is not None
    c = choose(None)
    assert c.trials_per_gpu == 1 and "no probe" in c.reason
    d = c.to_dict()
    assert d["trials_per_gpu"] == 1 and d["gpus_per_trial"] == 1.0 and "reason" in d


def test_auto_is_the_default_and_a_number_is_kept() -> None:
    assert wants_auto(None) and wants_auto("auto") and wants_auto(" AUTO ")
    assert not wants_auto(0.25) and not wants_auto(0)


def test_cli_accepts_auto_or_a_number() -> None:
    import argparse

    from automl.cli import _gpus_per_trial

    assert _gpus_per_trial("auto") == "auto" and _gpus_per_trial("0.25") == 0.25
    with pytest.raises(argparse.ArgumentTypeError, match="or auto, found 'half'"):
        _gpus_per_trial("half")


def test_probe_measures_a_few_training_steps_on_the_cpu(tiny_spec, tmp_path) -> None:
    from trainer.probe import measure_training

    spec = tiny_spec()
    m = measure_training(spec, steps=2, warmup=1).to_dict()
    assert m["steps"] == 2 and m["img_per_s"] > 0 and m["step_s"] > 0 and m["cpu_cores"] >= 0
    assert m["gpu_busy"] is None and m["peak_memory_bytes"] is None  # CPU: nothing to pack


def test_auto_on_a_cluster_without_gpus_keeps_cpu_trials_and_with_gpus_follows_the_probe(monkeypatch) -> None:
    import ray
    from types import SimpleNamespace

    from automl.search import packing

    opts = SimpleNamespace(gpus_per_trial="auto", cpus_per_trial=1.0, num_trials=12)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(packing, "probe_on_gpu", lambda *a: pytest.fail("probed a cluster without GPUs"))
    assert packing.resolve_packing(object(), None, opts, "/cache") is None  # CPU trials, as before

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    monkeypatch.setattr(packing, "probe_on_gpu", lambda *a: probe(busy=0.3))
    choice = packing.resolve_packing(object(), None, opts, "/cache")
    assert choice.trials_per_gpu == 4 and choice.to_dict()["probe"]["gpu_busy"] == 0.3
    assert packing.resolve_packing(object(), None, SimpleNamespace(gpus_per_trial=0.5), "/cache") is None
