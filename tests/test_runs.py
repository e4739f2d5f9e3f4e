"""The run-folder contract (mcvqa.runs): fold folders found the same way by every script at any depth,
the typed run record, provenance (stale artefacts refused), --resume only from a run with the same settings,
and predict.py reproducing a fold's own OOF probabilities.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SMALL_TRAINING, train_fold
from mcvqa import runs
from mcvqa.args import DataArguments, ModelArguments, RunArguments
from mcvqa.errors import UserError

LETTERS = list("abcd")


def read(path):
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def exit_message(fn, argv, capsys):
    with pytest.raises(SystemExit) as info:
        fn(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def copy_run(trained_run, dest):
    _, out, _ = trained_run
    shutil.copytree(out, dest)
    return dest


# ----------------------------------------------------------------------------------------- names and discovery


def fake_fold(path, name="fold1"):
    fold = Path(path) / name
    fold.mkdir(parents=True)
    (fold / runs.RECORD).write_text("{}")
    return fold


def test_fold_names_and_discovery_at_any_depth(tmp_path):
    assert runs.fold_name(3) == "fold3" and runs.fold_name(-1) == "full"
    assert runs.fold_number("fold12") == 12 and runs.fold_number("full") == -1
    assert runs.fold_number("fold_full") is None and runs.fold_number("foldfull") is None
    deep = fake_fold(tmp_path / "checkpoints" / "a" / "b" / "model", "fold2")
    full = fake_fold(tmp_path / "checkpoints" / "a" / "b" / "model", "full")
    # The Trainer's own checkpoints inside a fold folder are never searched.
    fake_fold(deep / "checkpoints" / "checkpoint-5", "fold1")
    # A folder named like a fold but without a run record is not a fold.
    (tmp_path / "x" / "fold1").mkdir(parents=True)
    assert runs.find_folds(tmp_path) == [deep, full]
    assert runs.find_folds(tmp_path, only=["2"]) == [deep]
    assert runs.find_folds(deep) == [deep]


def test_oof_file_prefers_the_rescored_rows(tmp_path):
    fold = fake_fold(tmp_path)
    assert runs.oof_file(fold) is None
    (fold / "oof.csv").write_text("x")
    assert runs.oof_file(fold).name == "oof.csv"
    (fold / "oof_tta.csv").write_text("x")
    assert runs.oof_file(fold).name == "oof_tta.csv"


# ----------------------------------------------------------------------------------------- the run record


def test_run_record_round_trips_and_reads_version_1(tmp_path):
    record = runs.RunRecord(ModelArguments(model_name_or_path="m", lora_r=4), DataArguments(fold=2),
                            RunArguments(ema_decay=0.9, blank_images=True), training={"seed": 7}, weights="weights:x")
    record.save(tmp_path)
    back = runs.RunRecord.load(tmp_path)
    assert back == record and back.seed == 7
    # Version 1 kept run control under "data" and had no schema_version.
    v1 = {"model": {"model_name_or_path": "m"}, "data": {"fold": 3, "resume": True, "ema_decay": 0.5,
                                                         "blank_images": True, "gone_flag": 1},
          "training": {"seed": 1}, "fold_dir": "x"}
    (tmp_path / runs.RECORD).write_text(json.dumps(v1))
    old = runs.RunRecord.load(tmp_path)
    assert old.schema_version == 1 and old.data.fold == 3 and old.run.resume and old.run.ema_decay == 0.5
    assert old.run.blank_images and old.weights is None


def test_truncated_run_record_is_one_clear_error(tmp_path):
    (tmp_path / runs.RECORD).write_text('{"model": {"model_name_or_')
    with pytest.raises(UserError, match="unreadable or truncated"):
        runs.RunRecord.load(tmp_path)


def test_safetensors_problem_finds_truncated_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(64, 64)}, str(path))
    assert runs.safetensors_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    assert "truncated" in runs.safetensors_problem(path)
    path.write_bytes(b"")
    assert "truncated" in runs.safetensors_problem(path)


def test_large_files_are_fingerprinted_from_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "FULL_HASH_LIMIT", 4 * 2 ** 20)
    monkeypatch.setattr(runs, "_BLOCK", 2 ** 16)
    path = tmp_path / "big.bin"
    rng = np.random.default_rng(0)
    path.write_bytes(rng.bytes(5 * 2 ** 20))
    first = runs.file_fingerprint(path)
    assert first.startswith("sampled-sha256:") and runs.file_fingerprint(path) == first
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # the head (a safetensors header) is always sampled
    data[-1] ^= 0xFF  # and so is the tail
    path.write_bytes(bytes(data))
    assert runs.file_fingerprint(path) != first


# ----------------------------------------------------------------------------------------- trained folds


def test_predict_without_tta_reproduces_the_folds_oof(trained_run, easy_vqa_dir, tmp_path):
    import predict

    run = copy_run(trained_run, tmp_path / "tiny")
    predict.main(["--output_dir", str(run), "--data_dir", str(easy_vqa_dir), "--score_oof", "true",
                  "--progress", "false"])
    for k in (1, 2):
        oof, again = read(run / f"fold{k}" / "oof.csv"), read(run / f"fold{k}" / "oof_tta.csv")
        again = again.set_index("id").loc[oof["id"]]
        assert np.abs(oof[LETTERS].to_numpy() - again[LETTERS].to_numpy()).max() <= 1e-5
        entry = runs.check_artefact(run / f"fold{k}", "oof_tta.csv", easy_vqa_dir)
        assert entry["views"] == ["identity"] and entry["data_file"] == "train.csv"


def test_nested_layout_and_a_checkpoints_parent_are_found_by_predict_and_ensemble(trained_run, easy_vqa_dir,
                                                                                   tmp_path):
    import ensemble
    import predict
    from mcvqa import ensemble as ens

    root = tmp_path / "checkpoints" / "kaggle"
    run = copy_run(trained_run, root / "a" / "b" / "tiny")
    from_predict = predict.find_folds(root)
    assert from_predict == [run / "fold1", run / "fold2"]
    models = ens.discover_models(root, data_dir=easy_vqa_dir)
    assert [m.name for m in models] == ["a/b/tiny"]
    assert [p.parent for p in models[0].test_files] == from_predict
    assert [p.name for p in models[0].oof_files] == ["oof_tta.csv", "oof_tta.csv"]
    result = ensemble.cli(["--output_dir", str(root), "--data_dir", str(easy_vqa_dir)])
    assert len(result.submission) == len(read(easy_vqa_dir / "sample_submission.csv"))


def test_a_retrained_fold_makes_its_old_predictions_stale(trained_run, tiny_model, easy_vqa_dir, tmp_path, capsys):
    import ensemble
    import predict

    run = copy_run(trained_run, tmp_path / "runs" / "tiny")
    argv = ["--output_dir", str(tmp_path / "runs"), "--data_dir", str(easy_vqa_dir)]
    train_fold(tiny_model, easy_vqa_dir, run, 2, "--learning_rate", "3e-4")
    err = exit_message(ensemble.cli, argv, capsys)
    assert "fold2/test_probs.csv: stale, made from other weights" in err
    assert f"python predict.py --output_dir {run} --folds 2" in err
    assert not (tmp_path / "runs" / "submission.csv").exists()
    # Refreshing the test probabilities alone still leaves the stale re-scored OOF rows to refuse.
    predict.main(["--output_dir", str(run), "--folds", "2", "--data_dir", str(easy_vqa_dir), "--progress", "false",
                  "--tta", "--tta_scales", "1.0", "--score_oof", "false"])
    assert "fold2/oof_tta.csv: stale" in exit_message(ensemble.cli, argv, capsys)
    predict.main(["--output_dir", str(run), "--folds", "2", "--data_dir", str(easy_vqa_dir), "--progress", "false",
                  "--tta", "--tta_scales", "1.0"])
    ensemble.cli(argv)
    assert (tmp_path / "runs" / "submission.csv").is_file()


def test_changed_data_and_edited_files_are_refused(trained_run, easy_vqa_dir, tmp_path, capsys):
    import ensemble

    run = copy_run(trained_run, tmp_path / "runs" / "tiny")
    data = tmp_path / "data"
    shutil.copytree(easy_vqa_dir, data)
    argv = ["--output_dir", str(tmp_path / "runs"), "--data_dir", str(data)]
    test = read(data / "test.csv")
    test.loc[0, "question"] = test.loc[0, "question"] + " "
    test.to_csv(data / "test.csv", index=False)
    assert "made from another test.csv" in exit_message(ensemble.cli, argv, capsys)
    shutil.copyfile(easy_vqa_dir / "test.csv", data / "test.csv")
    probs = read(run / "fold1" / "test_probs.csv")
    probs.to_csv(run / "fold1" / "test_probs.csv", index=False, float_format="%.3f")
    assert "changed since it was written" in exit_message(ensemble.cli, argv, capsys)


def test_resume_refuses_a_checkpoint_of_a_run_with_other_settings(trained_run, tiny_model, easy_vqa_dir, tmp_path,
                                                                  capsys):
    import train_lora

    run = copy_run(trained_run, tmp_path / "tiny")
    (checkpoint,) = sorted((run / "fold2" / "checkpoints").glob("checkpoint-*"))
    assert (checkpoint / runs.CHECKPOINT_RECORD).is_file()
    before = (run / "fold2" / "train_config.json").read_text()
    argv = ["--model_name_or_path", str(tiny_model), "--data_dir", str(easy_vqa_dir), "--output_dir", str(run),
            "--fold", "2", "--resume", *SMALL_TRAINING, "--learning_rate", "0.01"]
    err = exit_message(train_lora.main, argv, capsys)
    assert f"--resume: {checkpoint} was written by a run with other settings (learning_rate" in err
    assert (run / "fold2" / "train_config.json").read_text() == before  # nothing rewritten
    # A damaged newest checkpoint is skipped, naming why; with none left the run starts over.
    (checkpoint / "trainer_state.json").write_text('{"global_')
    from mcvqa.trainer import last_complete_checkpoint

    skipped = []
    assert last_complete_checkpoint(checkpoint.parent, skipped) is None
    assert skipped == [f"{checkpoint.name}: trainer_state.json is truncated or unreadable"]


def test_score_oof_finds_the_held_out_rows_when_training_stopped_before_oof_csv(trained_run, easy_vqa_dir, tmp_path):
    import predict

    run = copy_run(trained_run, tmp_path / "tiny")
    (run / "fold2" / "oof.csv").unlink()  # as when OOF scoring failed after the weights were saved
    predict.main(["--output_dir", str(run), "--folds", "2", "--data_dir", str(easy_vqa_dir), "--score_oof", "true",
                  "--progress", "false"])
    folds = read(run / "folds.csv")
    assert set(read(run / "fold2" / "oof_tta.csv")["id"]) == set(folds.loc[folds["fold"].astype(str) == "2", "id"])


def test_the_run_record_is_in_a_checkpoint_before_the_file_that_marks_it_complete(tiny_model, easy_vqa_dir,
                                                                                   tmp_path, monkeypatch):
    """A kill between the two used to leave a complete-looking checkpoint that --resume refused (no record)."""
    from transformers.trainer_callback import TrainerState

    seen = []
    save_to_json = TrainerState.save_to_json

    def checked(self, path):
        if Path(path).parent.name.startswith("checkpoint-"):
            seen.append((Path(path).parent / runs.CHECKPOINT_RECORD).is_file())
        return save_to_json(self, path)

    monkeypatch.setattr(TrainerState, "save_to_json", checked)
    train_fold(tiny_model, easy_vqa_dir, tmp_path / "run", 1)
    assert seen and all(seen)
