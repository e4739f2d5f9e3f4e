"""Reliability (CPU, tiny models): bad input fails cleanly in all three commands, kill -9 and --resume,
determinism, the NaN guard, atomic outputs and the loading-safety rules.

The bad-input cases run the real scripts as subprocesses (exit status and stderr as a user sees them),
a few at a time in parallel; everything else runs in-process on the tiny Qwen2.5-VL model.
"""

import ast
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import snapshot

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
PIX = ["--min_pixels", "3136", "--max_pixels", "3136"]
SMALL = ["--n_folds", "2", "--num_train_epochs", "1", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "16", *PIX, "--disable_tqdm", "true", "--report_to", "none",
         "--logging_steps", "50"]


# ----------------------------------------------------------------------------------------- helpers


def train_args(model, data, out, *extra, fold="1"):
    return ["--model_name_or_path", str(model), "--data_dir", str(data), "--output_dir", str(out),
            "--fold", fold, *SMALL, *extra]


def oof_probs(fold_dir):
    df = pd.read_csv(Path(fold_dir) / "oof.csv", dtype={"id": str})
    return df.sort_values("id").reset_index(drop=True)


def copy_data(src, dst):
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy(Path(src) / name, dst / name)
    return dst


def edit_csv(path, fn):
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def first_error_ok(stderr):
    """Exactly one `error:` line, first, followed only by indented continuation lines."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return (bool(lines) and lines[0].startswith("error: ")
            and sum(line.startswith("error:") for line in lines) == 1
            and all(line[:1] in (" ", "\t") for line in lines[1:]))


# ----------------------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def small_run(tiny_model, easy_vqa_dir, tmp_path_factory):
    """One finished LoRA fold (fold 1 of 2), trained in-process: OUT/run/fold1."""
    import train_lora

    root = tmp_path_factory.mktemp("rel_run")
    out = root / "run"
    train_lora.main(train_args(tiny_model, easy_vqa_dir, out, "--max_train_samples", "16", "--seed", "0"))
    return out


# ----------------------------------------------------------------------------------------- 1. bad input

CASES = {}


def case(name, script):
    def register(fn):
        CASES[name] = (script, fn)
        return fn
    return register


# Each builder gets ctx (paths) and returns (argv after the script, folder that must not change or appear,
# strings stderr must contain). For train the folder is the output folder, which must not even be created.

@case("train_csv_missing_column", "train_lora.py")
def _(c):
    d = copy_data(c.data, c.tmp / "missing_col")
    edit_csv(d / "train.csv", lambda df: df.drop(columns=["answer"]))
    return train_args(c.model, d, c.never), c.never, ["train.csv", "'answer'"]


@case("train_csv_answer_outside_a_d", "train_lora.py")
def _(c):
    d = copy_data(c.data, c.tmp / "bad_answer")
    edit_csv(d / "train.csv", lambda df: df.assign(answer=["e" if i == 2 else a for i, a in enumerate(df["answer"])]))
    return train_args(c.model, d, c.never), c.never, ["train.csv", "line 4 ('e')", "outside a-d"]


@case("train_csv_ragged_row", "train_lora.py")
def _(c):
    d = copy_data(c.data, c.tmp / "ragged")
    with open(d / "train.csv", "a", encoding="utf-8") as fh:
        fh.write("x1,only,three\n")
    return train_args(c.model, d, c.never), c.never, ["train.csv", "line 122", "3 fields"]


@case("train_csv_undecodable", "train_lora.py")
def _(c):
    d = copy_data(c.data, c.tmp / "encoding")
    (d / "train.csv").write_bytes(b"\xff\xfe\xfa\xfb id,question\n\xff\xff\n")
    return train_args(c.model, d, c.never), c.never, ["train.csv", "neither UTF-8 nor cp949", "iconv"]


@case("train_csv_empty_file", "train_lora.py")
def _(c):
    d = copy_data(c.data, c.tmp / "empty_csv")
    (d / "train.csv").write_bytes(b"")
    return train_args(c.model, d, c.never), c.never, ["train.csv", "empty"]


@case("train_data_dir_missing", "train_lora.py")
def _(c):
    return train_args(c.model, c.tmp / "no_such_data", c.never), c.never, ["no_such_data", "data folder not found"]


def _image_case(c, name, make):
    d = copy_data(c.data, c.tmp / name)
    bad = make(c.tmp / f"{name}_img")
    edit_csv(d / "train.csv", lambda df: df.assign(path=[str(bad) if i == 3 else p for i, p in enumerate(df["path"])]))
    return train_args(c.model, d, c.never), c.never, ["train.csv", "column 'path'", "line 5", bad.name]


@case("image_missing", "train_lora.py")
def _(c):
    return _image_case(c, "img_missing", lambda p: p.with_suffix(".png"))


@case("image_zero_bytes", "train_lora.py")
def _(c):
    def make(p):
        p = p.with_suffix(".png")
        p.write_bytes(b"")
        return p
    return _image_case(c, "img_empty", make)


@case("image_not_an_image", "train_lora.py")
def _(c):
    def make(p):
        p = p.with_suffix(".png")
        p.write_text("this is not a PNG\n")
        return p
    return _image_case(c, "img_text", make)


@case("image_is_a_directory", "train_lora.py")
def _(c):
    def make(p):
        p.mkdir()
        return p
    return _image_case(c, "img_dir", make)


@case("flag_fold_0", "train_lora.py")
def _(c):
    argv = train_args(c.model, c.data, c.never, fold="0")
    argv[argv.index("--n_folds") + 1] = "5"
    return argv, c.never, ["--fold 0", "1 to 5"]


@case("flag_fold_9_of_5", "train_lora.py")
def _(c):
    argv = train_args(c.model, c.data, c.never, fold="9")
    argv[argv.index("--n_folds") + 1] = "5"
    return argv, c.never, ["--fold 9", "1 to 5"]


@case("flag_n_folds_1", "train_lora.py")
def _(c):
    argv = train_args(c.model, c.data, c.never)
    argv[argv.index("--n_folds") + 1] = "1"
    return argv, c.never, ["--n_folds 1"]


@case("flag_min_pixels_above_max", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--min_pixels", "9000", "--max_pixels", "3136"), c.never, [
        "--min_pixels 9000", "--max_pixels 3136"]


@case("flag_quantization_4bit_on_cpu", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--quantization", "4bit"), c.never, ["--quantization 4bit", "CUDA"]


@case("flag_precision_bf16_on_cpu", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--precision", "bf16"), c.never, ["--precision bf16", "CPU"]


@case("flag_not_a_number", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--lora_r", "many"), c.never, ["--lora_r", "'many'"]


@case("flag_unknown", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--lerning_rate", "1e-4"), c.never, ["--lerning_rate"]


@case("flag_abbreviated", "train_lora.py")
def _(c):
    return train_args(c.model, c.data, c.never, "--learning_r", "1e-4"), c.never, ["--learning_r"]


@case("ema_with_best_checkpoint_and_bad_decay", "train_lora.py")
def _(c):
    return (train_args(c.model, c.data, c.never, "--ema_decay", "1.5"), c.never,
            ["--ema_decay 1.5: must be between 0 and 1", "--load_best_model_at_end false"])


@case("oversample_unknown_type", "train_lora.py")
def _(c):
    return (train_args(c.model, c.data, c.never, "--oversample", "color=3"), c.never,
            ["--oversample", "'color'", "colour"])


@case("oversample_by_unknown_column", "train_lora.py")
def _(c):
    return (train_args(c.model, c.data, c.never, "--oversample", "x=2", "--oversample_by", "grop"), c.never,
            ["--oversample_by 'grop': no such column", "train.csv", "question_type"])


@case("config_unknown_key", "train_lora.py")
def _(c):
    cfg = c.tmp / "unknown_key.yaml"
    cfg.write_text("learning_rate: 1.0e-4\nlearnin_rate: 2.0e-4\n")
    return train_args(c.model, c.data, c.never, "--config", str(cfg)), c.never, ["unknown_key.yaml", "learnin_rate"]


@case("config_malformed_yaml", "train_lora.py")
def _(c):
    cfg = c.tmp / "malformed.yaml"
    cfg.write_text("learning_rate: [1e-4\nfold: 1\n")
    return train_args(c.model, c.data, c.never, "--config", str(cfg)), c.never, ["malformed.yaml", "not valid YAML"]


@case("model_not_qwen_vl", "train_lora.py")
def _(c):
    m = c.tmp / "bert_model"
    m.mkdir()
    (m / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    return train_args(m, c.data, c.never), c.never, ["bert_model", "'bert'", "not a Qwen-VL model"]


@case("model_path_missing", "train_lora.py")
def _(c):
    return train_args(c.tmp / "no_such_model", c.data, c.never), c.never, ["no_such_model", "folder not found"]


@case("model_only_pytorch_bin", "train_lora.py")
def _(c):
    m = c.tmp / "bin_model"
    shutil.copytree(c.model, m)
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    return train_args(m, c.data, c.never), c.never, ["bin_model", "pytorch_model.bin", "safetensors"]


@case("output_dir_not_creatable", "train_lora.py")
def _(c):
    blocker = c.tmp / "a_file"
    blocker.write_text("not a folder\n")
    return train_args(c.model, c.data, blocker / "out"), blocker / "out", ["--output_dir", "a_file", "is a file"]


@case("predict_output_dir_missing", "predict.py")
def _(c):
    missing = c.tmp / "no_runs"
    return ["--output_dir", str(missing), "--data_dir", str(c.data)], missing, ["--output_dir", "no_runs", "not found"]


@case("predict_bad_tta_scales", "predict.py")
def _(c):
    return (["--output_dir", str(c.run), "--data_dir", str(c.data), "--tta", "--tta_scales", "0.9,big"], c.run,
            ["--tta_scales", "0.9,big"])


@case("predict_no_such_fold", "predict.py")
def _(c):
    return ["--output_dir", str(c.run), "--data_dir", str(c.data), "--folds", "7"], c.run, ["--folds 7"]


@case("predict_test_csv_missing_image", "predict.py")
def _(c):
    d = copy_data(c.data, c.tmp / "test_missing_img")
    edit_csv(d / "test.csv", lambda df: df.assign(path=["gone.png" if i == 0 else p for i, p in enumerate(df["path"])]))
    return ["--output_dir", str(c.run), "--data_dir", str(d)], c.run, ["test.csv", "line 2", "gone.png"]


@case("predict_test_csv_missing", "predict.py")
def _(c):
    d = copy_data(c.data, c.tmp / "no_test_csv")
    (d / "test.csv").unlink()
    return ["--output_dir", str(c.run), "--data_dir", str(d)], c.run, ["test.csv", "file not found"]


@case("predict_base_model_gone", "predict.py")
def _(c):
    run = c.tmp / "moved_run"
    shutil.copytree(c.run, run, ignore=shutil.ignore_patterns("checkpoints"))
    cfg_path = run / "fold1" / "train_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["model_name_or_path"] = str(c.tmp / "deleted_model")
    cfg_path.write_text(json.dumps(cfg))
    return ["--output_dir", str(run), "--data_dir", str(c.data)], run, ["train_config.json", "deleted_model"]


@case("ensemble_output_dir_missing", "ensemble.py")
def _(c):
    missing = c.tmp / "no_ens"
    return ["--output_dir", str(missing), "--data_dir", str(c.data)], missing, ["no_ens", "does not exist"]


def _probs_file(path, ids, rows_sum_to=1.0):
    """A fold's test_probs.csv as predict.py leaves it (with its fold's run record and provenance)."""
    from conftest import stamp

    path.parent.mkdir(parents=True, exist_ok=True)
    p = np.full((len(ids), 4), 0.25 * rows_sum_to)
    pd.DataFrame({"id": ids, "a": p[:, 0], "b": p[:, 1], "c": p[:, 2], "d": p[:, 3]}).to_csv(path, index=False)
    stamp(path.parent, path.name)


@case("ensemble_ids_differ_from_sample_submission", "ensemble.py")
def _(c):
    root = c.tmp / "ens_mismatch"
    ids = c.test_ids[:-2] + ["zz_not_in_test_1", "zz_not_in_test_2"]
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", ids)
    return ["--output_dir", str(root), "--data_dir", str(c.data)], root, ["m1/fold1/test_probs.csv", "zz_not_in_test"]


@case("ensemble_probs_from_different_test_sets", "ensemble.py")
def _(c):
    root = c.tmp / "ens_two_sets"
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", c.test_ids)
    _probs_file(root / "m2" / "fold1" / "test_probs.csv", [f"other_{i}" for i in range(len(c.test_ids))])
    return ["--output_dir", str(root), "--data_dir", str(c.data)], root, ["m2/fold1/test_probs.csv", "other_"]


@case("ensemble_rows_do_not_sum_to_1", "ensemble.py")
def _(c):
    root = c.tmp / "ens_sum"
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", c.test_ids, rows_sum_to=1.5)
    return ["--output_dir", str(root), "--data_dir", str(c.data)], root, ["m1/fold1/test_probs.csv", "sum"]


@case("ensemble_sample_submission_missing", "ensemble.py")
def _(c):
    root = c.tmp / "ens_nosub"
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", c.test_ids)
    d = c.tmp / "data_without_sub"
    d.mkdir()
    return ["--output_dir", str(root), "--data_dir", str(d)], root, ["sample_submission.csv"]


@case("ensemble_bad_method", "ensemble.py")
def _(c):
    root = c.tmp / "ens_method"
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", c.test_ids)
    return ["--output_dir", str(root), "--data_dir", str(c.data), "--method", "median"], root, ["--method", "median"]


@case("ensemble_config_unknown_key", "ensemble.py")
def _(c):
    root = c.tmp / "ens_cfg"
    _probs_file(root / "m1" / "fold1" / "test_probs.csv", c.test_ids)
    cfg = c.tmp / "ens.yaml"
    cfg.write_text("method: mean\ntemprature: false\n")
    return ["--config", str(cfg), "--output_dir", str(root), "--data_dir", str(c.data)], root, ["ens.yaml", "temprature"]


class Ctx:
    pass


# Cold cases start a fresh interpreter ([python, script, ...]) exactly as a user does, so anything printed
# while the libraries import would show. The others run the same script the same way (runpy as __main__,
# own process, own exit status, own stderr) in a child forked from a server that has already imported
# torch and transformers: ~0.5 s a case instead of ~7 s of imports.
COLD = {"image_missing", "flag_unknown", "predict_test_csv_missing_image", "predict_base_model_gone",
        "ensemble_probs_from_different_test_sets"}

FORK_SERVER = r"""
import json, os, runpy, sys, traceback
sys.path.insert(0, os.getcwd())
import train_lora, predict, ensemble  # noqa: F401  (the slow imports, done once)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        sys.argv = [job["script"], *job["argv"]]
        code = 0
        try:
            runpy.run_path(job["script"], run_name="__main__")
        except SystemExit as err:
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if isinstance(err.code, str):
                print(err.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"name": job["name"], "rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def bad_input_results(tiny_model, easy_vqa_dir, small_run, tmp_path_factory):
    """Run every case; {name: (completed process, before snapshot, after snapshot, needles)}."""
    c = Ctx()
    c.tmp, c.model, c.data, c.run = tmp_path_factory.mktemp("bad_input"), Path(tiny_model), Path(easy_vqa_dir), small_run
    c.test_ids = pd.read_csv(easy_vqa_dir / "sample_submission.csv", dtype=str)["id"].tolist()
    prepared = {}
    for name, (script, build) in CASES.items():
        c.never = c.tmp / f"out_{name}"
        argv, watched, needles = build(c)
        prepared[name] = (script, [str(a) for a in argv], watched, needles, snapshot(watched))

    def cold(name):
        script, argv, watched, needles, before = prepared[name]
        proc = subprocess.run([PY, script, *argv], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
        return name, (proc, before, snapshot(watched), needles)

    with ThreadPoolExecutor(max_workers=2) as pool:
        cold_results = pool.map(cold, [n for n in prepared if n in COLD])
        logs = c.tmp / "logs"
        logs.mkdir()
        jobs = [{"name": n, "script": s, "argv": a, "stdout": str(logs / f"{n}.out"), "stderr": str(logs / f"{n}.err")}
                for n, (s, a, *_rest) in prepared.items() if n not in COLD]
        server = subprocess.run([PY, "-c", FORK_SERVER], cwd=REPO, env=ENV, capture_output=True, text=True,
                                input="".join(json.dumps(j) + "\n" for j in jobs), timeout=600)
        assert server.returncode == 0, server.stderr[-3000:]
        results = dict(cold_results)
    for line in server.stdout.splitlines():
        if not line.startswith("{"):
            continue
        done = json.loads(line)
        name = done["name"]
        script, argv, watched, needles, before = prepared[name]
        proc = subprocess.CompletedProcess([PY, script, *argv], done["rc"], (logs / f"{name}.out").read_text(),
                                           (logs / f"{name}.err").read_text())
        results[name] = (proc, before, snapshot(watched), needles)
    assert set(results) == set(CASES)
    return results


def test_at_least_20_bad_input_cases_across_all_three_commands():
    scripts = [s for s, _ in CASES.values()]
    assert len(CASES) >= 20
    assert {"train_lora.py", "predict.py", "ensemble.py"} <= set(scripts)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_cleanly(name, bad_input_results):
    proc, before, after, needles = bad_input_results[name]
    err = proc.stderr
    shown = f"exit {proc.returncode}\n--- stderr ---\n{err}\n--- stdout ---\n{proc.stdout[-2000:]}"
    if os.environ.get("SHOW_ERRORS"):  # SHOW_ERRORS=1 pytest -s: print what each case prints
        print(f"\n[{name}] {CASES[name][0]} -> exit {proc.returncode}\n{err}")
    assert proc.returncode == 2, shown
    assert "Traceback" not in err + proc.stdout, shown
    assert first_error_ok(err), shown
    for needle in needles:
        assert needle in err, f"{needle!r} not named\n{shown}"
    assert after == before, f"the watched folder changed: {before} -> {after}"
    if CASES[name][0] == "train_lora.py":
        assert before is None and after is None, "train created its output folder on bad input"


# ----------------------------------------------------------------------------------------- 2. kill and resume

KILL_ARGS = ["--full_finetune", "--max_train_samples", "30", "--per_device_train_batch_size", "2",
             "--max_eval_samples", "8", "--save_strategy", "steps", "--save_steps", "5", "--eval_strategy", "steps",
             "--eval_steps", "5", "--seed", "0", "--early_stopping_patience", "0", "--save_total_limit", "3"]
# fp32 on CPU: the checkpoint restores weights, optimizer, scheduler and RNG states and the Trainer skips the
# batches already seen, so resumption is bit-exact here (observed max diff 0). The 1e-6 margin only allows for
# a different BLAS thread split between the subprocess and this process changing a summation order.
RESUME_TOL = 1e-6


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny_model, easy_vqa_dir, tmp_path):
    import train_lora

    killed_out = tmp_path / "killed"
    cmd = [PY, "train_lora.py", *train_args(tiny_model, easy_vqa_dir, killed_out, *KILL_ARGS)]
    ckpts = killed_out / "fold1" / "checkpoints"
    proc = subprocess.Popen(cmd, cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "2"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list(ckpts.glob("checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, f"training ended before its first checkpoint: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the process group: nothing of the run survives
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_out / "fold1" / "oof.csv").exists()
    done = {int(p.parent.name.split("-")[1]) for p in ckpts.glob("checkpoint-*/trainer_state.json")}
    assert done and max(done) < 15, f"killed too late: {sorted(done)} of 15 steps"

    resumed = subprocess.run(cmd + ["--resume"], cwd=REPO, env={**ENV, "OMP_NUM_THREADS": "2"},
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    state = json.loads((killed_out / "fold1" / "trainer_state.json").read_text())
    assert state["global_step"] == 15

    reference_out = tmp_path / "uninterrupted"
    train_lora.main(train_args(tiny_model, easy_vqa_dir, reference_out, *KILL_ARGS))
    a, b = oof_probs(killed_out / "fold1"), oof_probs(reference_out / "fold1")
    assert a["id"].tolist() == b["id"].tolist()
    diff = np.abs(a[list("abcd")].to_numpy() - b[list("abcd")].to_numpy()).max()
    print(f"killed after checkpoint(s) {sorted(done)}; resumed vs uninterrupted OOF max abs diff {diff:.3g}")
    assert diff <= RESUME_TOL, f"resumed run differs from the uninterrupted one by {diff:.3g}"
    # Not only the kept model: every evaluation after the kill matches too (the weights, optimizer and
    # data order really were restored; a resume from the base weights once passed the OOF check alone).
    evals = [{h["step"]: h["eval_loss"] for h in json.loads((o / "fold1" / "trainer_state.json").read_text())[
        "log_history"] if "eval_loss" in h} for o in (killed_out, reference_out)]
    assert evals[0].keys() == evals[1].keys() == {5, 10, 15}
    assert max(abs(evals[0][k] - evals[1][k]) for k in evals[0]) <= RESUME_TOL, evals


def test_half_written_checkpoint_is_never_resumed_from(tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    from mcvqa.trainer import last_complete_checkpoint

    ckpts = tmp_path / "checkpoints"
    good = ckpts / "checkpoint-10"
    good.mkdir(parents=True)
    save_file({"w": torch.ones(8)}, str(good / "model.safetensors"))
    (good / "trainer_state.json").write_text("{}")
    half = ckpts / "checkpoint-15"  # killed while saving: weights there, trainer_state.json (written last) not
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")
    (ckpts / "checkpoint-20").mkdir()  # killed even earlier: an empty folder
    (ckpts / "checkpoint-tmp").mkdir()  # not a step number at all
    truncated = ckpts / "checkpoint-25"  # a full disk: trainer_state.json there, the weights cut short
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:-8])
    (truncated / "trainer_state.json").write_text("{}")
    half_state = ckpts / "checkpoint-30"  # trainer_state.json itself half-written
    shutil.copytree(good, half_state)
    (half_state / "trainer_state.json").write_text('{"global_step": 3')
    skipped = []
    assert last_complete_checkpoint(ckpts, skipped) == str(good)
    assert [line.split(":")[0] for line in skipped] == ["checkpoint-30", "checkpoint-25", "checkpoint-20",
                                                         "checkpoint-15"]
    assert "truncated" in skipped[1]
    assert last_complete_checkpoint(tmp_path / "none_yet") is None


# ----------------------------------------------------------------------------------------- 3. determinism


def test_same_seed_twice_gives_identical_oof(tiny_model, easy_vqa_dir, small_run, tmp_path):
    import torch
    import train_lora

    torch.manual_seed(1234)  # a different global RNG state than the first run's: the seed flag must decide
    again = tmp_path / "again"
    train_lora.main(train_args(tiny_model, easy_vqa_dir, again, "--max_train_samples", "16", "--seed", "0"))
    a, b = oof_probs(small_run / "fold1"), oof_probs(again / "fold1")
    assert a["id"].tolist() == b["id"].tolist()
    assert np.abs(a[list("abcd")].to_numpy() - b[list("abcd")].to_numpy()).max() <= 1e-6


# ----------------------------------------------------------------------------------------- 4. NaN guard


def test_nan_loss_stops_with_advice_and_writes_no_oof(tiny_model, easy_vqa_dir, tmp_path, monkeypatch, capsys):
    import train_lora
    from mcvqa.trainer import MCVQATrainer

    original = MCVQATrainer._loss_and_letters
    seen_steps = []

    def nan_after_step_2(self, model, inputs):
        loss, letters = original(self, model, inputs)
        if model.training:
            seen_steps.append(self.state.global_step)
            if self.state.global_step >= 2:
                loss = loss * float("nan")
        return loss, letters

    monkeypatch.setattr(MCVQATrainer, "_loss_and_letters", nan_after_step_2)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as exit_info:
        train_lora.main(train_args(tiny_model, easy_vqa_dir, out, "--max_train_samples", "40",
                                   "--per_device_train_batch_size", "2", "--seed", "0"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert first_error_ok(err[err.index("error:"):]), err
    message = err[err.index("error:"):]
    for advice in ("(fp32)", "--learning_rate", "--warmup_steps", "nan", "No checkpoint had been saved"):
        assert advice in message, message
    stopped_at = int(re.search(r"at step (\d+)", message).group(1))
    assert 3 <= stopped_at <= 7 and max(seen_steps) <= 6, (stopped_at, seen_steps)  # 20 steps were planned
    assert not (out / "fold1" / "oof.csv").exists()
    assert not (out / "fold1" / "metrics.json").exists()


# ----------------------------------------------------------------------------------------- 5. atomic outputs


class Interrupted(BaseException):
    """Stands in for a kill arriving in the middle of a write."""


def _interrupt_half_way(monkeypatch, when):
    original = pd.DataFrame.to_csv

    def to_csv(self, path_or_buf=None, *args, **kwargs):
        if path_or_buf is not None and hasattr(path_or_buf, "write") and when(self):
            text = original(self, None, *args, **kwargs)
            path_or_buf.write(text[: len(text) // 2])
            path_or_buf.flush()
            raise Interrupted("killed half way through a write")
        return original(self, path_or_buf, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)


def test_predict_interrupted_mid_write_leaves_the_old_file(small_run, easy_vqa_dir, monkeypatch):
    import predict

    fold = small_run / "fold1"
    old = fold / "test_probs.csv"
    old.write_text("id,a,b,c,d\nolder,0.25,0.25,0.25,0.25\n")
    before = (old.read_bytes(), old.stat().st_mtime_ns)
    listing = sorted(p.name for p in fold.iterdir())
    _interrupt_half_way(monkeypatch, lambda df: list(df.columns) == ["id", "a", "b", "c", "d"])
    with pytest.raises(Interrupted):
        predict.main(["--output_dir", str(small_run), "--data_dir", str(easy_vqa_dir), "--progress", "false"])
    assert (old.read_bytes(), old.stat().st_mtime_ns) == before
    assert sorted(p.name for p in fold.iterdir()) == listing  # no temp file, no partial file
    old.unlink()


def test_ensemble_interrupted_mid_write_leaves_the_old_submission(easy_vqa_dir, tmp_path, monkeypatch):
    import ensemble

    ids = pd.read_csv(easy_vqa_dir / "sample_submission.csv", dtype=str)["id"].tolist()
    _probs_file(tmp_path / "m1" / "fold1" / "test_probs.csv", ids)
    sub = tmp_path / "submission.csv"
    sub.write_text("id,answer\nolder,a\n")
    before = (sub.read_bytes(), sub.stat().st_mtime_ns)
    _interrupt_half_way(monkeypatch, lambda df: "answer" in df.columns and "a" not in df.columns)
    with pytest.raises(Interrupted):
        ensemble.cli(["--output_dir", str(tmp_path), "--data_dir", str(easy_vqa_dir)])
    assert (sub.read_bytes(), sub.stat().st_mtime_ns) == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]

    _interrupt_half_way(monkeypatch, lambda df: True)  # the very first file (ensemble_probs.csv) this time
    (tmp_path / "ensemble_probs.csv").unlink()
    with pytest.raises(Interrupted):
        ensemble.cli(["--output_dir", str(tmp_path), "--data_dir", str(easy_vqa_dir)])
    assert not (tmp_path / "ensemble_probs.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


# ----------------------------------------------------------------------------------------- 6. safety


def test_remote_code_is_off_by_default():
    import predict
    from transformers import HfArgumentParser

    from mcvqa.args import ModelArguments

    assert ModelArguments().trust_remote_code is False
    (model_args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(args=[])
    assert model_args.trust_remote_code is False
    # predict has no flag of its own: it reuses the value the fold was trained with (False unless asked).
    assert "trust_remote_code" not in {f for f in predict.PredictArguments.__dataclass_fields__}
    source = (REPO / "predict.py").read_text()
    assert "trust_remote_code=True" not in source and "trust_remote_code=True" not in (REPO / "train_lora.py").read_text()


def test_models_load_from_safetensors_only(tiny_model, monkeypatch, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mcvqa.errors import UserError
    from mcvqa.modeling import check_model_folder, load_model

    seen = {}
    original = AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", spy)
    load_model(tiny_model, full_finetune=True, gradient_checkpointing=False)
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False

    bin_only = tmp_path / "bin_only"
    shutil.copytree(tiny_model, bin_only)
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    with pytest.raises(UserError, match="no .safetensors weights .*pytorch_model.bin"):
        check_model_folder(bin_only)


def test_no_torch_load_without_weights_only():
    offenders = []
    skip = {"site-packages", "__pycache__", "runs", "node_modules"}
    paths = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]  # .venv, .git, caches
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    assert REPO / "train_lora.py" in paths and REPO / "mcvqa" / "modeling.py" in paths
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                offenders.append(f"{path}:{node.lineno}: from torch import load")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: torch.load without weights_only=True")
    assert not offenders, "\n".join(offenders)


def test_offline_with_a_local_folder(tiny_model):
    import huggingface_hub.constants

    from mcvqa.errors import UserError
    from mcvqa.modeling import check_model_folder

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and huggingface_hub.constants.HF_HUB_OFFLINE
    assert check_model_folder(tiny_model).model_type == "qwen2_5_vl"  # local folder: fine offline
    with pytest.raises(UserError, match="HF_HUB_OFFLINE"):  # a hub id offline: one clear line, no network wait
        check_model_folder("someone/not-cached-model")


# ----------------------------------------------------------------------------------------- out of memory in predict


def test_predict_backs_off_on_out_of_memory_then_fails_cleanly(small_run, easy_vqa_dir, monkeypatch, capsys):
    import torch

    import mcvqa.scoring
    import predict

    original, calls = mcvqa.scoring.score_batch, []

    def oom_once(model, batch, letter_ids):
        calls.append(len(batch["input_ids"]))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(model, batch, letter_ids)

    monkeypatch.setattr(mcvqa.scoring, "score_batch", oom_once)
    predict.main(["--output_dir", str(small_run), "--data_dir", str(easy_vqa_dir), "--progress", "false",
                  "--batch_size", "16"])
    assert "out of memory: retrying with --batch_size 8" in capsys.readouterr().err
    assert calls[:2] == [16, 8]
    assert len(read_ids := pd.read_csv(small_run / "fold1" / "test_probs.csv")) == 24 and read_ids["id"].is_unique
    (small_run / "fold1" / "test_probs.csv").unlink()

    def always_oom(model, batch, letter_ids):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(mcvqa.scoring, "score_batch", always_oom)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--output_dir", str(small_run), "--data_dir", str(easy_vqa_dir), "--progress", "false",
                      "--batch_size", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "out of memory: retrying with --batch_size 1" in err
    assert first_error_ok(err[err.index("error:"):]) and "out of memory even at --batch_size 1" in err
    assert not (small_run / "fold1" / "test_probs.csv").exists()
