"""tools/tune.py on the tiny model: two trials in two sessions of one SQLite study, each trial's settings
reaching train_lora.py, the score read from its metrics.json, evaluations reported for pruning, a pruned
trial stopped at its first evaluation, the best settings written as a preset train_lora.py parses, and
every flag or space problem refused before a trial starts."""

import json

import optuna
import pandas as pd
import pytest
import yaml

from tools import tune

SPACE = tune.DEFAULT_SPACE


def training_flags(model, data):
    return ["--model_name_or_path", str(model), "--data_dir", str(data), "--n_folds", "2", "--max_steps", "2",
            "--min_pixels", "3136", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--max_eval_samples", "16", "--disable_tqdm", "true", "--report_to", "none", "--logging_steps", "50",
            "--seed", "0"]


def load(out):
    return optuna.load_study(study_name="mcvqa", storage=f"sqlite:///{(out / 'optuna.db').resolve()}")


def find(obj, key):
    """A key's value anywhere in a nested JSON record (the run record's layout is train_lora.py's business)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for v in obj:
            found = find(v, key)
            if found is not None:
                return found
    return None


@pytest.fixture(scope="module")
def study(tiny_model, easy_vqa_dir, tmp_path_factory):
    """Session 1 runs one trial; session 2 (the same command with --n_trials 2) continues the study."""
    out = tmp_path_factory.mktemp("tune")
    own = ["--output_dir", str(out), "--space", str(SPACE), "--trial_minutes", "5"]
    first = tune.main([*own, "--n_trials", "1", "--", *training_flags(tiny_model, easy_vqa_dir)])
    second = tune.main([*own, "--n_trials", "2", "--", *training_flags(tiny_model, easy_vqa_dir)])
    return out, first, second


def test_the_study_resumes_from_sqlite(study):
    out, first, second = study
    assert first["trials"] == 1 and second["trials"] == 2
    trials = load(out).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert trials[0].params != trials[1].params  # the second session did not replay the first one's sample
    assert (out / "trial000" / "fold1").is_dir() and (out / "trial001" / "fold1").is_dir()


def test_each_trial_trains_its_settings_and_is_scored_by_its_oof_log_loss(study):
    out, _, second = study
    trials = load(out).trials
    held_out = []
    for t in trials:
        fold = out / f"trial{t.number:03d}" / "fold1"
        metrics = json.loads((fold / "metrics.json").read_text())
        assert t.value == pytest.approx(metrics["oof_log_loss"])
        assert t.user_attrs["oof_accuracy"] == pytest.approx(metrics["oof_accuracy"])
        adapter = json.loads((fold / "adapter_config.json").read_text())
        assert adapter["r"] == t.params["lora_r"] and adapter["lora_alpha"] == t.params["lora_alpha"]
        record = json.loads((fold / "train_config.json").read_text())
        assert find(record, "learning_rate") == pytest.approx(t.params["learning_rate"])
        assert find(record, "max_pixels") == t.params["max_pixels"]
        assert find(record, "shuffle_choices") == t.params["shuffle_choices"]
        assert not (fold / "checkpoints").exists()  # --keep_checkpoints false
        held_out.append(set(pd.read_csv(fold / "oof.csv", dtype=str)["id"]))
        # The pruning hook saw the evaluation: Optuna holds the same log-loss the Trainer logged, at epoch x 100.
        state = json.loads((fold / "trainer_state.json").read_text())
        evals = [h for h in state["log_history"] if "eval_log_loss" in h]
        assert t.intermediate_values == {round(evals[0]["epoch"] * tune.EPOCH_STEPS): pytest.approx(
            evals[0]["eval_log_loss"])}
    assert held_out[0] == held_out[1]  # every trial is scored on the same rows
    assert second["best_value"] == pytest.approx(min(t.value for t in trials))


def test_the_best_settings_are_a_preset_train_lora_parses(study, tiny_model):
    out, _, second = study
    preset = out / "best.yaml"
    assert second["preset"] == str(preset)
    values = yaml.safe_load(preset.read_text())
    best = load(out).best_trial
    assert {k: values[k] for k in best.params} == best.params
    assert values["model_name_or_path"] == str(tiny_model) and values["n_folds"] == 2
    # Trial-only flags stay out: they shortened the trials, they are not the settings found.
    assert not set(values) & {"output_dir", "fold", "time_budget_minutes", "max_steps", "max_eval_samples"}
    assert set(values) <= tune.flag_names()
    *instances, given = tune.parse_train(["--config", str(preset)], "preset")
    assert set(values) <= given
    for key, value in best.params.items():
        owner = next(i for i in instances if hasattr(i, key))
        assert getattr(owner, key) == pytest.approx(value)


def test_a_pruned_trial_stops_at_its_first_evaluation(tiny_model, easy_vqa_dir, tmp_path, capsys):
    # Any log-loss is above 0: the pruner stops the trial at its first evaluation, before the OOF pass.
    with pytest.raises(SystemExit):
        tune.main(["--output_dir", str(tmp_path), "--n_trials", "1", "--pruner", "threshold", "--prune_above", "0",
                   "--", *training_flags(tiny_model, easy_vqa_dir)])
    assert "no trial completed" in capsys.readouterr().err
    (trial,) = load(tmp_path).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert len(trial.intermediate_values) == 1 and trial.user_attrs["pruned_at_epoch"] > 0
    assert not (tmp_path / "trial000" / "fold1" / "metrics.json").exists()
    assert not (tmp_path / "best.yaml").exists()


def test_a_changed_setup_is_refused_on_resume(study, tiny_model, easy_vqa_dir, capsys):
    out, _, _ = study
    with pytest.raises(SystemExit):
        tune.main(["--output_dir", str(out), "--space", str(SPACE), "--trial_minutes", "9", "--n_trials", "3", "--",
                   *training_flags(tiny_model, easy_vqa_dir)])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "time_budget_minutes: 5.0 -> 9.0" in err
    assert len(load(out).trials) == 2


@pytest.mark.parametrize("space, flags, expected", [
    ({"lora_rank": {"choices": [8]}}, [], "'lora_rank' is not a train_lora.py flag"),
    ({"seed": {"choices": [1, 2]}}, [], "'seed' cannot be searched"),
    ({"learning_rate": {"low": 1e-3, "high": 1e-4}}, [], "low 0.001 must be below high 0.0001"),
    ({"learning_rate": {"low": 0, "high": 1e-4, "log": True}}, [], "a log range needs low > 0"),
    ({"lora_r": {"choices": ["eight"]}}, [], "lora_r='eight'"),
    ({"lora_r": {"choices": [8, 16]}}, ["--lora_r", "8"], "--lora_r: given after `--` and searched"),
    ({"lora_r": {"choices": [8]}}, ["--output_dir", "x"], "--output_dir after `--`"),
    ({"lora_r": {"choices": [8]}}, ["--no_such_flag", "1"], "no_such_flag"),
])
def test_flag_and_space_problems_stop_before_any_trial(tmp_path, capsys, tiny_model, easy_vqa_dir, space, flags,
                                                       expected):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--output_dir", str(tmp_path / "out"), "--space", str(path), "--",
                   "--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir), *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
