"""Per-cell study pieces: the pruning reporter, storages, study names, tuning cost, run identity."""

from __future__ import annotations

import optuna
import pytest
from conftest import SETTLED
from transformers import TrainerControl, TrainerState

from harness import budget, records, storage, study
from harness.config import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _evaluate(reporter: budget.TrialReporter, step: int, accuracy: float) -> TrainerControl:
    control = TrainerControl()
    reporter.on_evaluate(None, TrainerState(global_step=step), control, metrics={"eval_accuracy": accuracy})
    return control


def _run_trial(opt_study, values: list[float]) -> budget.TrialReporter:
    reporter = budget.TrialReporter(opt_study.ask(), "accuracy")
    reporter.on_train_begin(None, TrainerState(), TrainerControl())
    for step, value in enumerate(values, start=1):
        if _evaluate(reporter, step * 10, value).should_training_stop:
            break
    return reporter


def test_a_hopeless_trial_is_pruned_and_stops_training():
    opt_study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=2))
    for good in ([0.80, 0.90, 0.95], [0.70, 0.85, 0.90]):
        reporter = _run_trial(opt_study, good)
        assert not reporter.pruned
        opt_study.tell(reporter.trial, good[-1])
    hopeless = _run_trial(opt_study, [0.50, 0.50, 0.50])
    assert hopeless.pruned and hopeless.pruned_at_step == 10
    assert opt_study.trials[-1].intermediate_values == {10: 0.50}


def test_step_zero_and_evaluations_outside_training_are_not_reported():
    opt_study = optuna.create_study(direction="maximize")
    reporter = budget.TrialReporter(opt_study.ask(), "accuracy")
    _evaluate(reporter, 5, 0.9)  # before on_train_begin: a final evaluation of another run phase
    reporter.on_train_begin(None, TrainerState(), TrainerControl())
    _evaluate(reporter, 0, 0.5)  # the untrained model, identical for every trial
    _evaluate(reporter, 10, float("nan"))
    _evaluate(reporter, 20, 0.7)
    reporter.on_train_end(None, TrainerState(), TrainerControl())
    _evaluate(reporter, 20, 0.71)
    assert opt_study.trials[0].intermediate_values == {20: 0.7}


@pytest.mark.parametrize("url", ["results/optuna.db", "", "mysql//x"])
def test_a_bad_storage_url_names_the_key_and_the_forms(url):
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.storage: must be an RDB URL .* journal:<path>"):
        storage.open_storage(url)


def test_sqlite_and_journal_storages_open_and_persist_studies(tmp_path):
    for url in (storage.default_storage(tmp_path / "a"), f"journal:{tmp_path / 'b' / 'optuna.journal'}"):
        optuna.create_study(study_name="cell", storage=storage.open_storage(url)).optimize(lambda t: 1.0, n_trials=2)
        assert len(optuna.load_study(study_name="cell", storage=storage.open_storage(url)).trials) == 2
    assert (tmp_path / "a" / "optuna.db").is_file() and (tmp_path / "b" / "optuna.journal").is_file()


def test_sampler_and_pruner_specs_are_instantiated_with_seed_only_where_accepted():
    sampler = study.instantiate_component({"_target_": "optuna.samplers.TPESampler"}, "hydra.sweeper.sampler", seed=3)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    pruner = study.instantiate_component({"_target_": "optuna.pruners.NopPruner"}, "hydra.sweeper.pruner", seed=3)
    assert isinstance(pruner, optuna.pruners.NopPruner)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.sampler\._target_: cannot import 'optuna.Nope'"):
        study.instantiate_component({"_target_": "optuna.Nope"}, "hydra.sweeper.sampler")


def test_study_name_is_the_cell_plus_a_hash_of_its_fixed_settings(make_cfg):
    cfg = make_cfg("method=lora")
    coordinates = study.cell_coordinates(cfg, {"train.weight_decay": "0.1"})
    name = study.study_name(cfg, coordinates, ["lr", "r", "lora_alpha"])
    assert name.startswith("minilm/toy_sentiment/lora/small,train.weight_decay=0.1#")
    tuned_elsewhere = make_cfg("method=lora", "method.lr=0.1", "method.r=64", "seed=7", "role=final")
    assert study.study_name(tuned_elsewhere, coordinates, ["lr", "r", "lora_alpha"]) == name
    other_fixed = make_cfg("method=lora", "method.lora_dropout=0.0")
    assert study.study_name(other_fixed, coordinates, ["lr", "r", "lora_alpha"]) != name


def test_a_study_resumed_under_another_tuning_seed_or_on_changed_data_is_another_study(make_cfg):
    """Otherwise a rerun after the tuning-seed change would top up the old study: its trials ran on a final's seed."""
    cfg = make_cfg("method=lora")
    coordinates = study.cell_coordinates(cfg, {})
    shared = {"tuning_seed": 1000, "data_sha256": {"train": "a"}}
    name = study.study_name(cfg, coordinates, ["lr"], shared)
    assert study.study_name(cfg, coordinates, ["lr"], {**shared}) == name
    assert study.study_name(cfg, coordinates, ["lr"], {**shared, "tuning_seed": 0}) != name
    assert study.study_name(cfg, coordinates, ["lr"], {**shared, "data_sha256": {"train": "b"}}) != name


def test_search_space_and_storage_are_not_part_of_a_runs_identity_but_role_is(make_cfg):
    def run_id(*overrides):
        return records.run_id(make_cfg("method=lora", *overrides), SETTLED)

    base = run_id()
    assert run_id("method.search.space.r.choices=[2]") == base
    assert run_id("tuning.storage=sqlite:////x.db", "tuning.trial_id=9") == base
    assert run_id("role=final") != base
    assert run_id("tuning.trial=3") != base


def test_tuning_cost_sums_every_trial_including_pruned_and_failed_ones():
    trials = [
        {"time": {"train_seconds": 10.0, "eval_seconds": 1.0}, "compute": {"train_tokens": 100, "steps": 5},
         "memory": {"train_peak_bytes": 7}},
        {"status": "pruned", "time": {"train_seconds": 2.5, "eval_seconds": 0.5},
         "compute": {"train_tokens": 20, "steps": 1}, "memory": {"train_peak_bytes": 9}},
        {"status": "failed", "time": {}, "compute": {}, "memory": {}},
    ]  # fmt: skip
    assert study.tuning_cost(trials) == {
        "trials_recorded": 3,
        "train_seconds": 12.5,
        "eval_seconds": 1.5,
        "train_tokens": 120,
        "steps": 6,
        "train_peak_memory_bytes_max": 9,
    }


def test_a_trial_config_without_its_storage_is_refused(make_cfg):
    from harness.config import validate

    with pytest.raises(ConfigError, match=r"^tuning: a trial needs tuning.storage"):
        validate(make_cfg("role=trial"))
    with pytest.raises(ConfigError, match=r"^role: got 'tuner'; allowed: run, trial, final"):
        validate(make_cfg("role=tuner"))
