"""Search spaces are data, checked against the spec before any trial starts (TAO silently drops bad keys)."""

from __future__ import annotations

import optuna
import pytest

from automl.search.space import infer_mode, load_search_space, parse_search_space
from automl.skills import get_skill
from trainer.config import build_spec
from trainer.errors import SpecError


@pytest.fixture(scope="module")
def skill():
    return get_skill("depth_net_mono")


@pytest.fixture(scope="module")
def spec():
    return build_spec({"dataset": {"min_depth": 0.001, "max_depth": 10}}, check_files=False)


def test_default_space_loads_and_samples_valid_specs(skill, spec):
    space = load_search_space(skill.default_search_space(), skill=skill, spec=spec)
    assert space.metric == "val/loss" and space.mode == "min"
    assert "train.optim.lr" in space.names
    lr = next(p for p in space.params if p.name == "train.optim.lr")
    assert lr.log and lr.low > 0
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        space(trial)
        values = dict(trial.params)
        # the conditional parameter appears exactly when its condition holds
        assert ("train.optim.poly_power" in values) == (values["train.optim.lr_scheduler"] == "LambdaLR")
        skill.with_overrides(spec, values)  # every sample is a valid spec
        study.tell(trial, 1.0)


def test_unknown_key_is_an_error_naming_it(skill, spec):
    raw = {"parameters": {"train.optim.learning_rate": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
                          "train.optim.lr": {"type": "float", "low": 1e-6, "high": 1e-3}}}
    with pytest.raises(SpecError) as exc:
        parse_search_space(raw, skill=skill, spec=spec, source="space.yaml")
    msg = str(exc.value)
    assert "train.optim.learning_rate" in msg and "not a key" in msg and "did you mean 'train.optim.lr'" in msg
    assert "space.yaml" in msg


def test_range_errors_all_reported(skill, spec):
    raw = {"objective": {"metric": "val/accuracy"},
           "parameters": {
               "train.optim.lr": {"type": "float", "low": 1e-3, "high": 1e-6},
               "train.optim.weight_decay": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
               "train.optim.lr_scheduler": {"type": "categorical", "choices": ["LambdaLR", "Cosine"]},
               "train.optim.warmup_steps": {"type": "int", "low": 0.5, "high": 10},
           }}
    with pytest.raises(SpecError) as exc:
        parse_search_space(raw, skill=skill, spec=spec)
    msg = str(exc.value)
    assert "objective.metric" in msg and "val/accuracy" in msg
    assert "low=0.001 >= high=1e-06" in msg
    assert "log scale needs low > 0" in msg
    assert "integer bounds" in msg
    # values that would fail the spec's own validation are caught before any trial (here only once the ranges are
    # fixed, because range problems come first)
    raw2 = {"parameters": {"train.optim.lr_scheduler": {"type": "categorical", "choices": ["LambdaLR", "Cosine"]},
                           "train.optim.lr": {"type": "float", "low": -1.0, "high": 1.0}}}
    with pytest.raises(SpecError) as exc2:
        parse_search_space(raw2, skill=skill, spec=spec)
    msg2 = str(exc2.value)
    assert "'Cosine' is invalid" in msg2 and "CosineAnnealingLR" in msg2
    assert "-1.0 is invalid" in msg2


def test_baseline_is_the_specs_own_values(skill, spec):
    tuned = skill.with_overrides(spec, {"train.optim.lr": 3e-5, "train.optim.lr_scheduler": "LambdaLR"})
    space = load_search_space(skill.default_search_space(), skill=skill, spec=tuned)
    point = space.baseline(tuned)
    assert point["train.optim.lr"] == pytest.approx(3e-5)
    assert point["train.optim.lr_scheduler"] == "LambdaLR"
    assert point["train.optim.poly_power"] == pytest.approx(0.9)


def test_objective_direction_inferred_from_name(skill, spec):
    assert infer_mode("val/d1") == "max" and infer_mode("val/abs_rel") == "min" and infer_mode("val/loss") == "min"
    space = parse_search_space({"objective": {"metric": "val/d1"},
                                "parameters": {"train.optim.lr": {"type": "float", "low": 1e-6, "high": 1e-3}}},
                               skill=skill, spec=spec)
    assert space.mode == "max"


def test_an_objective_given_on_the_command_line_gets_its_own_direction(skill, spec):
    # `automl run --search-space search_spaces/depth_net_mono.yaml --objective val/d1` (docs/search-spaces.md):
    # the file says `val/loss, mode: min`; minimising d1 would pick the worst trial as the winner
    raw = {"objective": {"metric": "val/loss", "mode": "min"},
           "parameters": {"train.optim.lr": {"type": "float", "low": 1e-6, "high": 1e-3}}}
    assert parse_search_space(raw, skill=skill, spec=spec, metric="val/d1").mode == "max"
    assert parse_search_space(raw, skill=skill, spec=spec, metric="val/d1", mode="min").mode == "min"
    assert parse_search_space(raw, skill=skill, spec=spec, metric="val/loss").mode == "min"
    assert parse_search_space({**raw, "objective": {"metric": "val/d1", "mode": "min"}}, skill=skill, spec=spec,
                              metric="val/d1").mode == "min"  # the file's own choice for its own metric stands


def test_conditions_must_refer_to_earlier_parameters(skill, spec):
    raw = {"parameters": {"train.optim.poly_power": {"type": "float", "low": 0.5, "high": 1.5,
                                                     "when": {"train.optim.lr_scheduler": ["LambdaLR"]}}}}
    with pytest.raises(SpecError) as exc:
        parse_search_space(raw, skill=skill, spec=spec)
    assert "not a parameter declared before" in str(exc.value)


def test_grid_sampler_runs_the_whole_grid_and_is_told_every_result(skill, spec, tmp_path):
    """Optuna's grid sampler stops the study after the grid's last point, which it allows only inside optimize();
    our searcher (ask/tell under Ray) must survive that and have stored every result."""
    from automl.search.driver import build_sampler
    from automl.search.guards import GuardedOptunaSearch

    path = tmp_path / "grid.yaml"
    path.write_text("objective: {metric: val/loss, mode: min}\nparameters:\n"
                    "  train.optim.lr: {type: categorical, choices: [1.0e-4, 1.0e-3]}\n"
                    "  train.optim.weight_decay: {type: categorical, choices: [0.0, 0.01]}\n")
    space = load_search_space(str(path), skill=skill, spec=spec)
    searcher = GuardedOptunaSearch(space=space, metric="val/loss", mode="min",
                                   sampler=build_sampler("grid", space, 0), storage=None, study_name="grid")
    seen = []
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        seen.append((config["train.optim.lr"], config["train.optim.weight_decay"]))
        searcher.on_trial_result(f"t{i}", {"val/loss": 1.0 + i, "epoch": 0, "training_iteration": 1})
        searcher.on_trial_complete(f"t{i}", {"val/loss": 1.0 + i, "epoch": 0, "training_iteration": 1})
    assert sorted(seen) == sorted((lr, wd) for lr in (1e-4, 1e-3) for wd in (0.0, 0.01))
    trials = searcher._ot_study.trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.value for t in trials) == [1.0, 2.0, 3.0, 4.0]


def test_a_searcher_restored_from_an_older_snapshot_keeps_the_outcomes_the_study_holds(skill, spec, tmp_path):
    """After a driver crash Tune restores the searcher from its last snapshot, which may predate a trial's end that
    the Optuna database already holds: that trial must be neither reported nor told again (Optuna refuses both, and
    the refusal used to end the resumed search), and its recorded value stays."""
    from automl.search.guards import GuardedOptunaSearch

    path = tmp_path / "space.yaml"
    path.write_text("objective: {metric: val/loss, mode: min}\nparameters:\n"
                    "  train.optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}\n")
    space = load_search_space(str(path), skill=skill, spec=spec)

    def searcher() -> GuardedOptunaSearch:
        return GuardedOptunaSearch(space=space, metric="val/loss", mode="min", sampler=optuna.samplers.TPESampler(
            seed=0), storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}"), study_name="s")

    first = searcher()
    for t in ("done", "pruned", "running"):
        first.suggest(t)
    first.save(str(tmp_path / "snapshot.pkl"))  # the snapshot: all three trials still running
    first.on_trial_result("done", {"val/loss": 0.5, "training_iteration": 1})
    first.on_trial_complete("done", {"val/loss": 0.5, "training_iteration": 1})
    first.on_trial_complete("pruned", {"val/loss": None, "prune_reason": "non_finite_loss"})

    restored = searcher()
    restored.restore(str(tmp_path / "snapshot.pkl"))
    # the finished trials come back from the workers with their last results, or as errors while being stopped
    restored.on_trial_result("done", {"val/loss": 0.7, "training_iteration": 2})
    restored.on_trial_complete("done", {"val/loss": 0.7, "training_iteration": 2})
    restored.on_trial_complete("pruned", error=True)
    restored.on_trial_result("running", {"val/loss": 0.9, "training_iteration": 1})
    restored.on_trial_complete("running", {"val/loss": 0.9, "training_iteration": 1})
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
    assert [(t.state, t.value) for t in trials] == [
        (optuna.trial.TrialState.COMPLETE, 0.5), (optuna.trial.TrialState.PRUNED, None),
        (optuna.trial.TrialState.COMPLETE, 0.9)]
