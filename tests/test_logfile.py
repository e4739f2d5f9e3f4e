"""The log file beside every output (mcvqa.logfile): the console teed into train.log, predict.log, ensemble.log."""

import logging
import re
import shutil
import sys
from pathlib import Path

import pytest

from mcvqa.errors import UserError, report_user_errors
from mcvqa.logfile import captured, keep

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def read_log(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    assert lines and all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def toy(log, fail=None, resumed=False, bar_updates=0):
    """A script's main as the real ones are decorated; `fail` names what ends it."""

    @report_user_errors
    @captured("toy.py")
    def main(argv=None):
        print("accepted the input")
        keep(log, resumed=resumed)
        print("epoch 1 | eval acc 0.500")
        print("to stderr", file=sys.stderr)
        for i in range(bar_updates):  # what tqdm writes: a carriage return, then the whole bar again
            sys.stderr.write(f"\r{i + 1}/{bar_updates} steps")
        if bar_updates:
            sys.stderr.write("\n")
        if fail == "user":
            raise UserError("data/train.csv line 3: no such image\nsecond line")
        if fail == "crash":
            raise RuntimeError("something broke")
        print("fold 1 | acc 0.500 | logloss 1.386 | 0m")
        return 7

    return main


def test_console_lines_are_logged_with_timestamps_and_still_shown(tmp_path, capsys):
    log = tmp_path / "fold1" / "train.log"
    assert toy(log)(["--fold", "1", "--note", "two words"]) == 7
    out, err = capsys.readouterr()
    assert out.splitlines() == ["accepted the input", "epoch 1 | eval acc 0.500",
                                "fold 1 | acc 0.500 | logloss 1.386 | 0m"]
    assert err == "to stderr\n"
    lines = read_log(log)
    assert lines[0] == "===== toy.py started ====="
    assert lines[1] == "arguments: --fold 1 --note 'two words'"
    assert lines[2:6] == ["accepted the input", "epoch 1 | eval acc 0.500", "to stderr",
                          "fold 1 | acc 0.500 | logloss 1.386 | 0m"]
    assert lines[6].startswith("===== toy.py finished")
    assert sys.stdout is not None and type(sys.stdout).__name__ != "_Tee"  # the console is given back


def test_a_refused_run_writes_nothing(tmp_path, capsys):
    @report_user_errors
    @captured("toy.py")
    def main(argv=None):
        raise UserError("--fold 9 is out of range")

    with pytest.raises(SystemExit):
        main([])
    assert "error: --fold 9" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_error_line_of_a_user_error_lands_in_the_log(tmp_path, capsys):
    log = tmp_path / "train.log"
    with pytest.raises(SystemExit) as info:
        toy(log, fail="user")([])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error: data/train.csv line 3") == 1  # shown once on the console, not echoed by the log
    lines = read_log(log)
    at = lines.index("error: data/train.csv line 3: no such image")
    assert lines[at + 1] == "  second line" and "exit status 2" in lines[at + 2]


def test_a_crash_leaves_its_traceback_in_the_log(tmp_path, capsys):
    log = tmp_path / "train.log"
    with pytest.raises(RuntimeError):
        toy(log, fail="crash")([])
    text = "\n".join(read_log(log))
    assert "Traceback (most recent call last)" in text and "RuntimeError: something broke" in text
    assert text.splitlines()[-1].startswith("===== toy.py ended with the error above")


def test_progress_bars_leave_their_last_state_only(tmp_path, capsys):
    log = tmp_path / "train.log"
    toy(log, bar_updates=500)([])
    assert "500/500 steps" in capsys.readouterr().err  # the console still gets every redraw
    lines = read_log(log)
    assert [line for line in lines if "steps" in line] == ["500/500 steps"]


def test_nested_bars_and_unfinished_states_stay_out(tmp_path, capsys):
    from tqdm import tqdm

    log = tmp_path / "train.log"

    @captured("toy.py")
    def main(argv=None):
        keep(log)
        outer = tqdm(total=3, file=sys.stderr, mininterval=0)
        for _ in range(3):
            inner = tqdm(total=5, file=sys.stderr, leave=False, position=1, mininterval=0)
            for _ in range(5):
                inner.update()
            inner.close()
            tqdm.write("{'loss': '6.47'}", file=sys.stdout)
            outer.update()
        outer.close()

    main([])
    lines = read_log(log)[2:-1]
    assert lines.count("{'loss': '6.47'}") == 3
    bars = [line for line in lines if "|" in line]
    assert bars and all(re.search(r"\b(\d+)/\1\b", line) for line in bars), bars  # finished bars only
    assert bars[-1].startswith("100%") and "3/3" in bars[-1]
    assert not any("\x1b" in line for line in lines)


def test_a_resumed_run_appends_with_a_marker(tmp_path, capsys):
    log = tmp_path / "train.log"
    toy(log)(["--fold", "1"])
    first = read_log(log)
    toy(log, resumed=True)(["--fold", "1", "--resume"])
    lines = read_log(log)
    assert lines[:len(first)] == first
    assert "resumed" in lines[len(first)] and lines[len(first) + 1] == "arguments: --fold 1 --resume"


def test_only_rank_0_writes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    log = tmp_path / "train.log"
    toy(log)([])
    assert "accepted the input" in capsys.readouterr().out
    assert not log.exists()


def test_trainer_info_records_go_to_the_log_only(tmp_path, capsys):
    import transformers  # (its logging set up, as in the scripts)

    # The library's default verbosity (warning), whatever an earlier test (the benchmark's main) set.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        _trainer_info_records_go_to_the_log_only(tmp_path, capsys)
    finally:
        transformers.logging.set_verbosity(verbosity)


def _trainer_info_records_go_to_the_log_only(tmp_path, capsys):
    log = tmp_path / "train.log"

    @captured("toy.py")
    def main(argv=None):
        keep(log)
        logging.getLogger("transformers.trainer").info("  Num examples = 60")
        logging.getLogger("transformers.modeling_utils").warning("a warning the console shows")

    main([])
    err = capsys.readouterr().err
    assert "Num examples" not in err  # the console as before: the library's verbosity is warning
    lines = read_log(log)
    assert "  Num examples = 60" in lines and lines.count("a warning the console shows") == 1
    assert logging.getLogger("transformers.trainer").level == logging.NOTSET  # put back


def test_train_predict_and_ensemble_leave_their_logs(trained_run, easy_vqa_dir, tmp_path):
    """The session's run (train_lora.main twice, predict.main once) and an ensemble on a copy of it."""
    import ensemble

    _, out, _ = trained_run
    lines = read_log(out / "fold1" / "train.log")
    assert lines[0] == "===== train_lora.py started ====="
    assert lines[1].startswith("arguments: --model_name_or_path ") and "--fold 1" in lines[1]
    assert any(line.startswith("  epoch ") and "| eval acc " in line for line in lines), lines
    assert any("Num examples" in line for line in lines), lines  # the Trainer's data summary
    assert any(re.match(r"fold 1 \| acc \d\.\d{3} \| logloss \d\.\d{3} \| \d+m$", line) for line in lines), lines
    assert lines[-1].startswith("===== train_lora.py finished")
    assert (out / "fold2" / "train.log").is_file()

    lines = read_log(out / "predict.log")
    assert any(line.endswith("wrote test_probs.csv (24 rows, 4 view(s))") for line in lines), lines
    assert lines[-1].startswith("===== predict.py finished")
    assert not list(out.glob("fold*/predict.log"))

    run = Path(shutil.copytree(out, tmp_path / "tiny"))
    ensemble.cli(["--output_dir", str(run), "--data_dir", str(easy_vqa_dir)])
    lines = read_log(run / "ensemble.log")
    assert lines[1].startswith("arguments: --output_dir ") and any(line.startswith("wrote ") for line in lines)
    assert lines[-1].startswith("===== ensemble.py finished")
