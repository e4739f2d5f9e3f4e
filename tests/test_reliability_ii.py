"""Reliability II (issue 16), as a user meets it: images refused up front with their row named, every argument
checked before a file is written, damaged runs and full or read-only disks as one `error:` line (previous
outputs intact), --resume past damaged checkpoints, an explicit --report_to honoured, test.csv checked at
training start, and the known-harmless library warnings silenced at their source.

Everything runs in-process on the tiny Qwen2.5-VL model and the session's trained run (tests/conftest.py),
copied before it is damaged.
"""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import SMALL_TRAINING, snapshot, train_fold

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------- helpers


def one_error_line(fn, argv, capsys):
    """Run a script's main; it must exit 2 with one `error:` line (continuations indented) and no traceback."""
    with pytest.raises(SystemExit) as info:
        fn(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    at = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert sum(line.startswith("error:") for line in lines) == 1, err
    assert all(line[:1] in (" ", "\t") for line in lines[at + 1:]), err
    return "\n".join(lines[at:])


def train_argv(model, data, out, fold=1, *extra):
    return ["--model_name_or_path", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--fold", str(fold), *SMALL_TRAINING, *extra]


def copy_data(src, dst):
    dst = Path(dst)
    dst.mkdir(parents=True)
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy(Path(src) / name, dst / name)
    return dst


def edit_column(path, column, row, value):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's trained run (fold1 full fine-tune, fold2 LoRA, both predicted with --tta)."""
    _, out, _ = trained_run
    return Path(shutil.copytree(out, tmp_path / "tiny"))


# ----------------------------------------------------------------------------------------- images


def test_extreme_aspect_ratio_is_refused_up_front_naming_the_row(tiny_model, easy_vqa_dir, trained_run, tmp_path,
                                                                  capsys):
    import predict
    import train_lora

    strip = tmp_path / "strip.png"
    Image.new("RGB", (4200, 20), "white").save(strip)  # 210:1, over the 200:1 Qwen-VL's resize accepts
    data = copy_data(easy_vqa_dir, tmp_path / "data")
    edit_column(data / "train.csv", "path", 3, str(strip))
    out = tmp_path / "never"
    err = one_error_line(train_lora.main, train_argv(tiny_model, data, out), capsys)
    for needle in ("train.csv", "line 5", "strip.png", "longer than wide"):
        assert needle in err, err
    assert not out.exists()

    shutil.copy(easy_vqa_dir / "train.csv", data / "train.csv")
    edit_column(data / "test.csv", "path", 0, str(strip))
    _, run, _ = trained_run
    before = snapshot(run)
    err = one_error_line(predict.main, ["--output_dir", str(run), "--data_dir", str(data), "--progress", "false"],
                         capsys)
    for needle in ("test.csv", "line 2", "strip.png", "longer than wide"):
        assert needle in err, err
    assert snapshot(run) == before


# ----------------------------------------------------------------------------------------- arguments


BAD_ARGUMENTS = {
    "prompt_template_unknown_placeholder": (["--prompt_template", "Q: {question}\n{options}\n{hint}"],
                                            ["--prompt_template", "{hint}"]),
    "negative_max_train_samples": (["--max_train_samples", "-5"], ["--max_train_samples -5", "at least 1"]),
    "negative_seed": (["--seed", "-1"], ["--seed -1"]),
    "oversample_infinite": (["--oversample", "colour=inf"], ["--oversample 'colour=inf'", "at most 1000"]),
}


@pytest.mark.parametrize("name", list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_before_anything_is_written(name, tiny_model, easy_vqa_dir, tmp_path, capsys):
    import train_lora

    extra, needles = BAD_ARGUMENTS[name]
    out = tmp_path / "new_run"
    err = one_error_line(train_lora.main, train_argv(tiny_model, easy_vqa_dir, out, 1, *extra), capsys)
    for needle in needles:
        assert needle in err, err
    assert not out.exists(), f"written on bad arguments: {snapshot(out)}"


def test_a_fold_folder_that_is_a_file_is_refused_before_anything_is_written(tiny_model, easy_vqa_dir, tmp_path,
                                                                            capsys):
    import train_lora

    out = tmp_path / "run"
    out.mkdir()
    (out / "fold1").write_text("not a folder\n")
    before = snapshot(out)
    err = one_error_line(train_lora.main, train_argv(tiny_model, easy_vqa_dir, out), capsys)
    assert "fold1 is a file, not a fold folder" in err, err
    assert snapshot(out) == before  # no folds.csv either


def test_folds_csv_edited_to_leave_no_training_rows(tiny_model, easy_vqa_dir, tmp_path, capsys):
    import train_lora
    from mcvqa.data import assign_folds, load_split

    out = tmp_path / "run"
    assign_folds(load_split(easy_vqa_dir, "train", check_images=False), 2, 0, out)
    edit_column(out / "folds.csv", "fold", slice(None), "1")  # every row held out for fold 1
    before = snapshot(out)
    err = one_error_line(train_lora.main, train_argv(tiny_model, easy_vqa_dir, out), capsys)
    assert "folds.csv: fold 1 leaves the training set empty" in err, err
    assert "delete folds.csv and folds.json" in err, err
    assert snapshot(out) == before


# ----------------------------------------------------------------------------------------- --resume


def _resume_past_a_damaged_checkpoint(run, fold, damage, tiny_model, easy_vqa_dir, extra, capfd):
    """Give fold `fold` an older complete checkpoint beside its newest, damage the newest, resume."""
    import train_lora

    checkpoints = run / f"fold{fold}" / "checkpoints"
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert int(newest.name.split("-")[1]) > 1
    older = checkpoints / "checkpoint-1"  # a copy: its trainer_state.json says the last step, so no step is retrained
    shutil.copytree(newest, older)
    why = damage(newest)
    train_lora.main(train_argv(tiny_model, easy_vqa_dir, run, fold, "--resume", *extra))
    err = capfd.readouterr().err
    assert f"--resume: skipped {newest.name}: {why}" in err, err
    assert f"--resume: continuing from {older}" in err, err
    assert "Traceback" not in err
    assert (run / f"fold{fold}" / "oof.csv").is_file()
    return err


def test_resume_passes_over_a_half_written_trainer_state(run_copy, tiny_model, easy_vqa_dir, capfd):
    def half_write(checkpoint):
        state = checkpoint / "trainer_state.json"
        state.write_text(state.read_text()[:40])
        return "trainer_state.json is truncated or unreadable"

    _resume_past_a_damaged_checkpoint(run_copy, 2, half_write, tiny_model, easy_vqa_dir, [], capfd)


def test_resume_passes_over_truncated_weights_and_is_quiet(run_copy, tiny_model, easy_vqa_dir, capfd):
    """The full fine-tune: also no "There were missing keys in the checkpoint model loaded: [every key]"."""
    trainer_log = logging.getLogger("transformers.trainer")
    reported, shown = [], []

    def spy(record):  # first in line: sees what the Trainer reports before any filter drops it
        reported.append(record.getMessage())
        return True

    class Shown(logging.Handler):
        def emit(self, record):
            shown.append(record.getMessage())

    def truncate(checkpoint):
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-100])
        return "model.safetensors is truncated"

    trainer_log.filters.insert(0, spy)
    handler = Shown(logging.WARNING)
    trainer_log.addHandler(handler)
    level = trainer_log.level  # another test (the benchmark's main) may have set transformers' verbosity to error
    trainer_log.setLevel(logging.WARNING)
    try:
        err = _resume_past_a_damaged_checkpoint(run_copy, 1, truncate, tiny_model, easy_vqa_dir,
                                                ["--full_finetune"], capfd)
    finally:
        trainer_log.removeFilter(spy)
        trainer_log.removeHandler(handler)
        trainer_log.setLevel(level)
    key_report = ("There were missing keys in the checkpoint model loaded",
                  "There were unexpected keys in the checkpoint model loaded")
    assert any(m.startswith(key_report) for m in reported), "the Trainer no longer reloads: drop the filter"
    assert not [m for m in shown if m.startswith(key_report)]
    assert "missing keys" not in err and "unexpected keys" not in err


# ----------------------------------------------------------------------------------------- full or read-only disks


def _cut_short(path):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 61504 vs 61392")


@pytest.mark.parametrize("failure", ["oserror_28", "torch_zip_writer"])
def test_a_full_disk_while_training_is_one_line(failure, tiny_model, easy_vqa_dir, tmp_path, monkeypatch, capsys):
    """torch.save fails as on a full disk: an OSError(ENOSPC), or (what a full tmpfs really gave for optimizer.pt)
    torch's zip writer giving up with no cause named."""
    import torch

    import train_lora
    from mcvqa.trainer import last_complete_checkpoint

    def full(obj, f, *args, **kwargs):
        if failure == "oserror_28":
            raise OSError(errno.ENOSPC, "No space left on device")
        _cut_short(f)

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    err = one_error_line(train_lora.main, train_argv(tiny_model, easy_vqa_dir, out, 1, "--max_train_samples", "8"),
                         capsys)
    checkpoints = out / "fold1" / "checkpoints"
    assert f"error: {checkpoints / 'checkpoint-1'}: cannot write: " in err, err
    assert ("no space left on the disk" if failure == "oserror_28" else "as on a full disk") in err, err
    assert "MB free on its disk" in err and "--resume" in err, err
    assert not (out / "fold1" / "oof.csv").exists() and not (out / "fold1" / "metrics.json").exists()
    skipped = []
    assert last_complete_checkpoint(checkpoints, skipped) is None and skipped  # --resume passes over it


def test_a_full_disk_at_the_last_small_files_is_one_line_and_keeps_the_weights(tiny_model, easy_vqa_dir, tmp_path,
                                                                                  monkeypatch, capsys):
    """The disk fills after the weights and run record are saved, while metrics.json is written."""
    import train_lora
    from mcvqa import io
    from mcvqa.runs import RunRecord, check_weights

    real = io.write_json

    def full(path, obj):
        if Path(path).name == "metrics.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj)

    monkeypatch.setattr(io, "write_json", full)
    out = tmp_path / "run"
    err = one_error_line(train_lora.main, train_argv(tiny_model, easy_vqa_dir, out, 1, "--max_train_samples", "8"),
                         capsys)
    assert f"error: {out / 'fold1'}: cannot write: no space left on the disk" in err, err
    assert f"python predict.py --output_dir {out} --folds 1 --score_oof" in err, err
    check_weights(out / "fold1", RunRecord.load(out / "fold1"))  # the training is not lost


def _probs_outputs(fold):
    return {name: (fold / name).read_bytes() for name in ("test_probs.csv", "artefacts.json", "oof_tta.csv")}


def test_predict_on_a_full_disk_leaves_the_previous_outputs(run_copy, easy_vqa_dir, monkeypatch, capsys):
    import predict

    fold = run_copy / "fold2"
    before = _probs_outputs(fold)
    original = pd.DataFrame.to_csv

    def full(self, path_or_buf=None, *args, **kwargs):
        if hasattr(path_or_buf, "write"):
            path_or_buf.write("id,a,b")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, path_or_buf, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    err = one_error_line(predict.main, ["--output_dir", str(run_copy), "--folds", "2", "--data_dir",
                                        str(easy_vqa_dir), "--progress", "false"], capsys)
    assert f"{fold / 'test_probs.csv'}: cannot write (No space left on device)" in err, err
    assert _probs_outputs(fold) == before
    assert not [p for p in fold.iterdir() if p.name.endswith(".tmp")]


def test_predict_on_a_read_only_folder_leaves_the_previous_outputs(run_copy, easy_vqa_dir, capsys):
    import predict

    fold = run_copy / "fold2"
    before = _probs_outputs(fold)
    argv = ["--output_dir", str(run_copy), "--folds", "2", "--data_dir", str(easy_vqa_dir), "--progress", "false"]
    fold.chmod(0o555)
    try:
        if os.geteuid() != 0:
            err = one_error_line(predict.main, argv, capsys)
        else:
            # Root writes into read-only folders (CAP_DAC_OVERRIDE): run predict.py as root without that capability.
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: chmod proves nothing")
            proc = subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable,
                                   "predict.py", *argv], cwd=REPO, capture_output=True, text=True, timeout=600,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            if proc.stderr.startswith("setpriv:"):
                pytest.skip(f"cannot drop root's capabilities here: {proc.stderr.strip()}")
            err = proc.stderr
            assert proc.returncode == 2 and "Traceback" not in err, err
            err = err[err.index("error: "):]
            assert err.count("error:") == 1 and all(line[:1] == " " for line in err.splitlines()[1:] if line), err
    finally:
        fold.chmod(0o755)
    assert f"{fold / 'test_probs.csv'}: cannot write (Permission denied)" in err, err
    assert _probs_outputs(fold) == before
    assert not [p for p in fold.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------- damaged folds


@pytest.fixture(scope="module")
def other_model(tmp_path_factory):
    """A valid tiny Qwen2.5-VL of another width (64, not 128): what a base-model folder may hold later."""
    from tools.make_tiny_model import make_tiny_model

    return make_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("other") / "m64", hidden_size=64,
                           max_pixels=56 * 56, min_pixels=56 * 56)


def _empty_oof(fold, other_model):
    (fold / "oof.csv").write_bytes(b"")
    return ["--tta", "--tta_scales", "1.0"], ["oof.csv: empty (0 bytes", "train_lora.py --output_dir"]


def _truncated_record(fold, other_model):
    path = fold / "train_config.json"
    path.write_text(path.read_text()[:100])
    return [], ["train_config.json", "unreadable or truncated", "retrain the fold"]


def _truncated_weights(fold, other_model):
    path = fold / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [], ["adapter_model.safetensors", "truncated", "retrain the fold or restore the file"]


def _base_replaced(fold, other_model):
    path = fold / "train_config.json"
    record = json.loads(path.read_text())
    record["model"]["model_name_or_path"] = str(other_model)
    path.write_text(json.dumps(record))
    return [], [str(fold), "do not fit its base model", str(other_model), "size mismatch", "[16, 64]"]


DAMAGED = {"oof_csv_empty_under_tta": _empty_oof, "train_config_truncated": _truncated_record,
           "weights_truncated": _truncated_weights, "base_model_now_another_model": _base_replaced}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_predict_on_a_damaged_fold_is_one_line(name, run_copy, easy_vqa_dir, other_model, capsys):
    import predict

    fold = run_copy / "fold2"  # the LoRA fold
    extra, needles = DAMAGED[name](fold, other_model)
    before = snapshot(run_copy)
    err = one_error_line(predict.main, ["--output_dir", str(run_copy), "--folds", "2", "--data_dir",
                                        str(easy_vqa_dir), "--progress", "false", *extra], capsys)
    for needle in needles:
        assert needle in err, err
    assert snapshot(run_copy) == before


# ----------------------------------------------------------------------------------------- small things


def test_explicit_report_to_none_is_kept_and_tensorboard_stays_the_default(tmp_path, monkeypatch):
    import importlib.util

    from transformers import TrainingArguments

    import train_lora

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    configure = train_lora.configure_training_args
    given = configure(args, tmp_path / "fold1", "fp32", has_eval=True, run_name="x", given={"report_to"})
    assert given.report_to in ([], ["none"], "none")
    default = configure(args, tmp_path / "fold1", "fp32", has_eval=True, run_name="x")
    if importlib.util.find_spec("tensorboard") is not None:
        assert default.report_to == ["tensorboard"]


def test_training_warns_about_a_broken_test_csv_and_goes_on(tiny_model, easy_vqa_dir, tmp_path, capsys):
    """Also: --report_to none (SMALL_TRAINING gives it) leaves no TensorBoard event files."""
    data = copy_data(easy_vqa_dir, tmp_path / "data")
    edit_column(data / "test.csv", "path", 1, "gone.png")
    out = tmp_path / "run"
    metrics = train_fold(tiny_model, data, out, 1, "--max_train_samples", "8")
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, err
    for needle in ("test.csv", "line 3", "gone.png", "predict.py will refuse test.csv", "training continues"):
        assert needle in warning[0], warning
    assert (out / "fold1" / "oof.csv").is_file() and metrics["n_train"] == 8
    assert not list(out.rglob("events.out.tfevents*")), "--report_to none given, TensorBoard still wrote"


def test_adapter_loads_without_the_peft_deprecation_warning(trained_run):
    import predict

    _, run, _ = trained_run
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, built = predict.load_fold(run / "fold2", "fp32", liger="false")
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)], [str(w.message) for w in seen]
    # Hidden where peft triggers it only: the same property read elsewhere still warns where transformers does.
    base = built.model.base_model.model
    with warnings.catch_warnings(record=True) as direct:
        warnings.simplefilter("always")
        getattr(base, "is_gradient_checkpointing", None)
    # Deprecated in transformers 5.24, not in every version that is supported.
    deprecated = "deprecated" in (getattr(type(base), "is_gradient_checkpointing", None).__doc__ or "").lower()
    assert bool([w for w in direct if "is_gradient_checkpointing" in str(w.message)]) == deprecated
