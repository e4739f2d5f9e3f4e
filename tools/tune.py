"""Search training hyperparameters on one fold with Optuna (TPE), scored by the fold's OOF log-loss.

    python tools/tune.py --n_trials 20 --trial_minutes 30 -- \
        --model_name_or_path Qwen/Qwen2.5-VL-3B-Instruct --data_dir data --max_train_samples 4000
    python tools/tune.py --train_config configs/t4x2_qwen2.5vl_3b_qlora.yaml --space configs/tune/space.yaml \
        --n_trials 12 --trial_minutes 40 --timeout_minutes 600 -- --data_dir data
    accelerate launch train_lora.py --config runs/tune/best.yaml --fold 1     # then train with the winner

Everything after `--` is passed to train_lora.py in every trial, as are the keys of --train_config (a
train_lora.py preset); the search space (--space, default configs/tune/space.yaml) gives the flags that
vary. Each trial trains fold --fold by calling train_lora.main(argv) with its own
--output_dir OUTPUT_DIR/trialNNN and --time_budget_minutes --trial_minutes, and is scored by
`oof_log_loss` in the metrics.json that train_lora.py writes (lower is better). Every trial holds out the
same rows: fold, n_folds and seed are never searched.

Pruning: while a trial trains, each evaluation's log-loss on the held-out fold is reported to Optuna
(step = epochs x 100, so evaluations at the same epoch are compared across trials whatever the batch
size), and a trial the pruner rejects stops there. train_lora.main(argv) takes no callbacks, so the
hook is a `PruneOnEvaluate` TrainerCallback that tune.py adds to every transformers Trainer created
while a trial runs (it wraps Trainer.__init__ for the duration of the trial, then restores it).
--pruner median (default) stops a trial whose log-loss is above the median of earlier trials at the same
epoch, once --n_startup_trials trials have finished; --pruner threshold stops one above --prune_above.

The study lives in the database --storage (default sqlite:///OUTPUT_DIR/optuna.db): rerunning the same
command after a Kaggle session was cut off continues it up to --n_trials finished trials, and a trial
that was running when the session died is run again (heartbeat). At the end (and after each trial) the
best settings are printed and written as a train_lora.py preset (--preset, default OUTPUT_DIR/best.yaml):
the fixed training flags plus the best trial's values, without the trial-only flags (output_dir, fold,
time_budget_minutes, max_train_samples, max_eval_samples, max_steps, resume, report).
One process, one GPU per study process; two processes may share a study (same --storage and
--study_name, e.g. CUDA_VISIBLE_DEVICES=0 and =1 on Kaggle's 2x T4).
"""

import gc
import json
import math
import os
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import Trainer, TrainerCallback  # noqa: E402

from mcvqa.cli import load_yaml, parse_args  # noqa: E402
from mcvqa.errors import UserError, argument_errors, collect, report_user_errors  # noqa: E402

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "configs" / "tune" / "space.yaml"
# Set by tune.py per trial, or fixed so that every trial holds out the same rows.
NOT_SEARCHED = ("output_dir", "fold", "full_train", "n_folds", "seed", "time_budget_minutes", "resume")
# Passed to every trial but left out of the preset: they make trials short, not models good.
TRIAL_ONLY = ("output_dir", "fold", "full_train", "resume", "report", "time_budget_minutes", "max_train_samples",
              "max_eval_samples", "max_steps")
EPOCH_STEPS = 100  # Optuna step of an evaluation = round(epoch * EPOCH_STEPS)


@dataclass
class TuneArguments:
    output_dir: str = field(default="runs/tune", metadata={
        "help": "Trial folders (trialNNN/fold{K}/), the default SQLite study and the best preset go here."})
    space: str = field(default=str(DEFAULT_SPACE), metadata={
        "help": "YAML search space: train_lora.py flag -> {choices: [...]} or {low:, high:[, log:][, step:]}."})
    train_config: str = field(default=None, metadata={
        "help": "A train_lora.py preset every trial starts from (flags after `--` and the space override it)."})
    fold: int = field(default=1, metadata={"help": "The fold every trial holds out and is scored on."})
    n_trials: int = field(default=20, metadata={
        "help": "Finished (complete or pruned) trials the study should reach; a rerun continues up to it."})
    trial_minutes: float = field(default=30.0, metadata={
        "help": "Each trial's --time_budget_minutes (training stops, then the fold is evaluated as usual)."})
    timeout_minutes: float = field(default=None, metadata={
        "help": "Start no new trial after this many minutes (a running trial finishes): fit a Kaggle session."})
    storage: str = field(default=None, metadata={
        "help": "Optuna storage URL; default sqlite:///OUTPUT_DIR/optuna.db. Kept across sessions."})
    study_name: str = field(default="mcvqa", metadata={"help": "Study name inside the storage."})
    pruner: str = field(default="median", metadata={
        "help": "median: stop a trial above the median of earlier trials at the same epoch; threshold: stop one "
                "above --prune_above; none.", "choices": ["median", "threshold", "none"]})
    n_startup_trials: int = field(default=3, metadata={
        "help": "Median pruner: trials that finish before any is pruned."})
    prune_above: float = field(default=math.log(4), metadata={
        "help": "Threshold pruner: stop a trial whose evaluation log-loss is above this (log 4 = 1.386 is chance)."})
    n_random_trials: int = field(default=5, metadata={
        "help": "Trials sampled at random before TPE models the results."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampler (the training seed is a training flag)."})
    preset: str = field(default=None, metadata={"help": "Where the best settings go; default OUTPUT_DIR/best.yaml."})
    keep_checkpoints: bool = field(default=False, metadata={
        "help": "Keep each trial's checkpoints/ (optimizer states: GBs per trial); the weights, metrics.json, "
                "oof.csv and trainer_state.json are always kept."})


# ----------------------------------------------------------------------------------------- train_lora's flags


def train_parser():
    from transformers import HfArgumentParser

    from mcvqa.args import TRAIN_ARGUMENT_TYPES, TRAINING_DEFAULTS

    parser = HfArgumentParser(TRAIN_ARGUMENT_TYPES, allow_abbrev=False)
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def flag_names():
    return {a.dest for a in train_parser()._actions if a.dest != "help"}


def parse_train(argv, what):
    """Parse a train_lora.py argv exactly as train_lora.py does; a problem is a UserError naming `what`."""
    from mcvqa.args import parse_train_args

    try:
        with argument_errors():
            return parse_train_args(argv)
    except UserError as err:
        raise UserError(f"{what}: {err}") from None


def given_flags(argv):
    """Flag names present in an argv (`--name value`, `--name=value` or a bare boolean `--name`)."""
    return [a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")]


def argv_values(argv):
    """{flag: typed value} of the flags in `argv`, typed by train_lora.py's parser."""
    namespace, _ = train_parser().parse_known_args(argv)
    return {k: plain(getattr(namespace, k)) for k in given_flags(argv) if hasattr(namespace, k)}


def plain(value):
    """A value YAML can write and train_lora.py read back: enums as their value."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str, dict)):
        return value
    return str(getattr(value, "value", value))


def flag_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def to_argv(values):
    return [x for k, v in values.items() for x in (f"--{k}", flag_value(v))]


# ----------------------------------------------------------------------------------------- search space


def load_space(path):
    """The YAML space as {flag: spec}; every problem (unknown flag, malformed range) in one UserError."""
    space = load_yaml(path)
    flags = flag_names()
    problems = []
    for name, spec in space.items():
        where = f"{name!r}"
        if name not in flags:
            problems.append(f"{where} is not a train_lora.py flag (see python train_lora.py --help)")
            continue
        if name in NOT_SEARCHED:
            problems.append(f"{where} cannot be searched: every trial must hold out the same rows and tune.py sets "
                            "output_dir and time_budget_minutes itself")
            continue
        if not isinstance(spec, dict):
            problems.append(f"{where}: expected {{choices: [...]}} or {{low: A, high: B}}, got {spec!r}")
            continue
        unknown = set(spec) - {"choices", "low", "high", "log", "step"}
        if unknown:
            problems.append(f"{where}: unknown keys {', '.join(sorted(unknown))} (use choices, low, high, log, step)")
        elif "choices" in spec:
            if set(spec) != {"choices"}:
                problems.append(f"{where}: choices cannot be combined with low/high/log/step")
            elif not isinstance(spec["choices"], list) or not spec["choices"]:
                problems.append(f"{where}: choices must be a non-empty list")
            elif any(isinstance(c, (list, dict)) or c is None for c in spec["choices"]):
                problems.append(f"{where}: each choice must be a single number, string or true/false")
        else:
            low, high = spec.get("low"), spec.get("high")
            numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high))
            if not numbers:
                problems.append(f"{where}: a range needs numeric low and high (got low={low!r}, high={high!r})")
            elif low >= high:
                problems.append(f"{where}: low {low} must be below high {high}")
            elif spec.get("log") and low <= 0:
                problems.append(f"{where}: a log range needs low > 0 (got {low})")
            elif spec.get("log") and spec.get("step") is not None:
                problems.append(f"{where}: log and step cannot be combined")
    if not space:
        problems.append("the space is empty: name at least one train_lora.py flag")
    collect(problems, f"--space {path}:")
    return space


def is_int_range(spec):
    return all(isinstance(spec[k], int) for k in ("low", "high")) and isinstance(spec.get("step", 1), int)


def candidates(spec):
    """The values a space entry can take at its edges (all choices, or low and high)."""
    return list(spec["choices"]) if "choices" in spec else [spec["low"], spec["high"]]


def suggest(trial, space):
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif is_int_range(spec):
            params[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1),
                                             log=bool(spec.get("log")))
        else:
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                               log=bool(spec.get("log")))
    return params


# ----------------------------------------------------------------------------------------- pruning hook


class PruneOnEvaluate(TrainerCallback):
    """Reports each evaluation's log-loss to the Optuna trial and stops the trial when the pruner says so."""

    def __init__(self, trial):
        self.trial = trial
        self.reported = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        import optuna

        value = (metrics or {}).get("eval_log_loss")
        if value is None or not math.isfinite(value):
            return
        step = int(round((state.epoch or 0.0) * EPOCH_STEPS))
        if step in {s for s, _ in self.reported}:
            return  # a second evaluation at the same epoch (the time budget's last one): Optuna keeps the first
        self.trial.report(float(value), step)
        self.reported.append((step, float(value)))
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", float(state.epoch or 0.0))
            # Raised through trainer.train() and train_lora.main(): the trial ends here, nothing more is saved.
            raise optuna.TrialPruned(f"evaluation log-loss {value:.4f} at epoch {state.epoch:.2f}")


@contextmanager
def trainer_callback(callback):
    """Every transformers Trainer built inside the block gets `callback` (train_lora.main takes no callbacks)."""
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_callback(callback)

    Trainer.__init__ = init
    try:
        yield
    finally:
        Trainer.__init__ = original


# ----------------------------------------------------------------------------------------- the study


def make_pruner(args):
    import optuna

    if args.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=args.n_startup_trials, n_warmup_steps=0)
    if args.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(upper=args.prune_above)
    return optuna.pruners.NopPruner()


def make_storage(url):
    """An RDB storage with a heartbeat, so a trial left RUNNING by a killed session is failed and run again."""
    import optuna
    from optuna import storages

    # optuna 4.9 renamed the retry callback and its argument; the heartbeat is marked experimental.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
            key, retry = "heartbeat_stale_trial_callback", storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        else:
            key, retry = "failed_trial_callback", storages.RetryFailedTrialCallback(max_retry=1)
        try:
            return storages.RDBStorage(url, heartbeat_interval=60, grace_period=180, **{key: retry})
        except Exception as err:  # noqa: BLE001 - a bad URL or an unreachable database: the user's to fix
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"--storage {url}: cannot open the study database ({first})") from None


def finished(study):
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def describe_params(params):
    return " ".join(f"--{k} {f'{v:.4g}' if isinstance(v, float) else flag_value(v)}" for k, v in params.items())


def write_preset(path, study, fixed, storage_url, trial_only):
    """The best trial's settings as a train_lora.py --config preset; parsed back with train_lora's types."""
    import yaml

    from mcvqa.io import write_text

    best = study.best_trial
    values = {k: v for k, v in fixed.items() if k not in TRIAL_ONLY}
    values.update(best.params)
    acc = best.user_attrs.get("oof_accuracy")
    header = [
        f"# Written by tools/tune.py: the best of {len(finished(study))} finished trials of study "
        f"{study.study_name!r} in {storage_url}:",
        f"# trial {best.number}, fold {best.user_attrs.get('fold')} OOF log-loss {best.value:.4f}"
        + (f", accuracy {acc:.4f}" if acc is not None else "") + ".",
        "# Keys are train_lora.py flag names:  accelerate launch train_lora.py --config THIS_FILE --fold 1",
    ]
    if trial_only:
        header.append("# The trials also ran with (left out here: they shorten trials): " + " ".join(
            f"--{k} {flag_value(v)}" for k, v in trial_only.items()))
    text = "\n".join(header) + "\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)
    write_text(path, text)
    parse_train(["--config", str(path)], f"the preset {path} does not parse as train_lora.py flags")
    return path


def check_args(args, passthrough):
    problems = []
    if args.n_trials < 1:
        problems.append(f"--n_trials {args.n_trials}: must be at least 1")
    if args.trial_minutes <= 0:
        problems.append(f"--trial_minutes {args.trial_minutes}: must be positive")
    if args.timeout_minutes is not None and args.timeout_minutes <= 0:
        problems.append(f"--timeout_minutes {args.timeout_minutes}: must be positive")
    if args.fold < 1:
        problems.append(f"--fold {args.fold}: tuning needs a held-out fold (1 or more)")
    if args.n_startup_trials < 0 or args.n_random_trials < 0:
        problems.append("--n_startup_trials and --n_random_trials cannot be negative")
    for name in given_flags(passthrough):
        if name in ("output_dir", "fold", "full_train", "time_budget_minutes", "resume"):
            problems.append(f"--{name} after `--`: tune.py sets it for each trial (use tune.py's --output_dir, "
                            "--fold, --trial_minutes)")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        problems.append("tune.py runs as one process (each trial on one GPU): start it with python, not "
                        "accelerate launch or torchrun")
    collect(problems, "invalid arguments:")


def split_argv(argv):
    """tune.py's own flags, and the training flags after `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


@report_user_errors
def main(argv=None):
    """Run (or continue) the study; returns {best_value, best_params, best_trial, preset, trials}."""
    import train_lora  # noqa: F401 - also installs its warning filters before its flags are parsed here

    own, passthrough = split_argv(argv)
    with argument_errors():
        args, _given = parse_args(TuneArguments, own)
    check_args(args, passthrough)
    space = load_space(args.space)
    clash = sorted(set(space) & set(given_flags(passthrough)))
    if clash:
        raise UserError(f"{', '.join('--' + c for c in clash)}: given after `--` and searched by --space "
                        f"{args.space}: remove one of the two")

    out = Path(args.output_dir)
    base = ["--config", args.train_config] if args.train_config else []
    fixed_argv = base + passthrough + ["--fold", str(args.fold), "--time_budget_minutes", str(args.trial_minutes)]
    # Every flag, and every edge of the space, parses as train_lora.py would parse it: no trial fails on a typo.
    parse_train(fixed_argv + ["--output_dir", str(out / "check")], "training flags")
    for name, spec in space.items():
        for value in candidates(spec):
            parse_train(fixed_argv + ["--output_dir", str(out / "check"), f"--{name}", flag_value(value)],
                        f"--space {args.space}: {name}={value!r}")
    fixed = {**(load_yaml(args.train_config) if args.train_config else {}), **argv_values(passthrough)}
    fixed["fold"], fixed["time_budget_minutes"] = args.fold, args.trial_minutes
    trial_only = {k: v for k, v in fixed.items() if k in TRIAL_ONLY and k not in ("output_dir", "fold")}

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)
    storage_url = args.storage or f"sqlite:///{(out / 'optuna.db').resolve()}"
    storage = make_storage(storage_url)
    study = optuna.create_study(storage=storage, study_name=args.study_name, direction="minimize",
                                pruner=make_pruner(args), load_if_exists=True)
    # Seeded by the trials so far: a resumed session must not replay the first session's random points.
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=args.n_random_trials,
                                               seed=args.seed + len(study.trials))
    setup = {"training_flags": json.dumps(fixed, sort_keys=True, default=str),
             "space": json.dumps(space, sort_keys=True)}
    saved = {k: study.user_attrs.get(k) for k in setup}
    if all(v is None for v in saved.values()):
        for k, v in setup.items():
            study.set_user_attr(k, v)
    elif saved != setup:
        was, now = (json.loads(saved["training_flags"] or "{}"), json.loads(setup["training_flags"]))
        changed = [f"{k}: {was.get(k, '(not given)')!r} -> {now.get(k, '(not given)')!r}"
                   for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        if saved["space"] != setup["space"]:
            changed.append(f"the search space ({args.space})")
        raise UserError(f"study {args.study_name!r} in {storage_url} was run with other settings, so its trials would "
                        f"not compare with new ones ({'; '.join(changed)}). Use another --study_name, or the "
                        "same settings")
    preset = Path(args.preset or out / "best.yaml")

    def objective(trial):
        import train_lora

        params = suggest(trial, space)
        trial_dir = out / f"trial{trial.number:03d}"
        fold_dir = trial_dir / f"fold{args.fold}"
        trial.set_user_attr("fold", args.fold)
        trial.set_user_attr("fold_dir", str(fold_dir))
        print(f"trial {trial.number} | {describe_params(params)}", flush=True)
        callback = PruneOnEvaluate(trial)
        # The undecorated main: its UserError arrives as an exception (a divergence ends this trial only,
        # see trial_errors), not as report_user_errors' exit.
        train = getattr(train_lora.main, "__wrapped__", train_lora.main)
        started = time.time()
        try:
            with trainer_callback(callback):
                train(fixed_argv + ["--output_dir", str(trial_dir)] + to_argv(params))
        except trial_errors() as err:
            trial.set_user_attr("error", str(err).splitlines()[0])
            print(f"trial {trial.number} | failed: {str(err).splitlines()[0]}", flush=True)
            raise
        except UserError as err:
            # A data or flag problem: the same flags would fail every trial.
            raise UserError(f"trial {trial.number}: {err}") from None
        except SystemExit as err:
            # train_lora.py printed its `error:` line; the same flags would fail every trial.
            raise UserError(f"trial {trial.number} stopped with the error above (exit status {err.code}); "
                            f"its flags: {' '.join(fixed_argv + to_argv(params))}") from None
        except optuna.TrialPruned:
            print(f"trial {trial.number} | pruned at epoch {trial.user_attrs.get('pruned_at_epoch', 0):.2f} "
                  f"(evaluation log-loss {callback.reported[-1][1]:.4f}) | {(time.time() - started) / 60:.1f}m",
                  flush=True)
            raise
        finally:
            trial.set_user_attr("minutes", (time.time() - started) / 60)
            release_memory()
            if not args.keep_checkpoints:
                shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)
        metrics = json.loads((fold_dir / "metrics.json").read_text(encoding="utf-8"))
        value = float(metrics["oof_log_loss"])
        trial.set_user_attr("oof_accuracy", float(metrics["oof_accuracy"]))
        print(f"trial {trial.number} | OOF log-loss {value:.4f} | accuracy {metrics['oof_accuracy']:.4f} | "
              f"{(time.time() - started) / 60:.1f}m", flush=True)
        return value

    def after_trial(study, trial):
        if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
            write_preset(preset, study, fixed, storage_url, trial_only)

    remaining = args.n_trials - len(finished(study))
    if remaining > 0:
        print(f"study {args.study_name!r} ({storage_url}): {len(finished(study))} of {args.n_trials} trials "
              f"finished, running up to {remaining} more", flush=True)
        study.optimize(objective, n_trials=remaining, timeout=args.timeout_minutes and args.timeout_minutes * 60,
                       callbacks=[optuna.study.MaxTrialsCallback(
                           args.n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)),
                           after_trial],
                       catch=trial_errors(), gc_after_trial=True)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise UserError(f"study {args.study_name!r}: no trial completed (pruned or failed: see above), so there "
                        "is no best setting yet")
    write_preset(preset, study, fixed, storage_url, trial_only)
    best = study.best_trial
    print(f"best: trial {best.number} | OOF log-loss {best.value:.4f} | "
          f"accuracy {best.user_attrs.get('oof_accuracy', float('nan')):.4f} | {describe_params(best.params)}")
    print(f"preset: {preset}")
    return {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
            "preset": str(preset), "trials": len(study.trials)}


def trial_errors():
    """Failures that end one trial but not the study: divergence at a bold learning rate, out of memory at a
    large pixel budget. Everything else (a data or flag problem) stops the study."""
    errors = []
    try:
        from mcvqa.trainer import TrainingDiverged

        errors.append(TrainingDiverged)
    except ImportError:
        pass
    import torch

    errors.append(torch.OutOfMemoryError)
    return tuple(errors)


def release_memory():
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


if __name__ == "__main__":
    main()
