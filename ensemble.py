#!/usr/bin/env python
"""Blend the test probabilities of every trained model into one submission.

Reads the test_probs.csv of every fold folder under OUTPUT_DIR (written by predict.py; any depth, see
mcvqa.runs), refuses any that no longer match its fold's weights or the data folder (artefacts.json),
averages each model's folds, fits a temperature per model on its out-of-fold probabilities (oof_tta.csv
when present, else oof.csv), fits non-negative blend weights summing to 1 (or, with --method stack, a
logistic-regression stacker) on the OOF rows common to all models, and writes OUTPUT_DIR/submission.csv
(one letter per id of DATA_DIR/sample_submission.csv, same order and columns), ensemble_probs.csv
(id,a,b,c,d), ensemble.json (weights, temperatures, OOF scores) and ensemble.log beside it.

Examples:

    # after train_lora.py + predict.py with their defaults: just run it
    python ensemble.py

    # a logistic-regression stacker over the models' OOF log-probabilities (scored by nested CV)
    python ensemble.py --method stack

    # plain mean of the models, no temperature scaling, plots in runs/ensemble_report/
    python ensemble.py --method mean --no_temperature --report

    # majority vote of two explicit models' fold files, submission elsewhere
    python ensemble.py --method vote \\
        --files runs/Qwen2.5-VL-7B-Instruct/fold1/test_probs.csv runs/Qwen2.5-VL-3B-Instruct/fold1/test_probs.csv \\
        --submission /tmp/submission.csv

    # defaults from a YAML file (keys are the flag names), command-line flags override it
    python ensemble.py --config configs/ensemble.yaml --space logprob
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from mcvqa.errors import UserError, argument_errors, report_user_errors
from mcvqa.io import write_csv, write_json
from mcvqa.logfile import captured, keep


@dataclass
class EnsembleArguments:
    output_dir: str = field(
        default="runs", metadata={"help": "Folder holding one sub-folder per model run (<model>/fold*/test_probs.csv)."}
    )
    data_dir: str = field(default="data", metadata={"help": "Folder holding sample_submission.csv."})
    files: Optional[List[str]] = field(
        default=None,
        metadata={"help": "Explicit test_probs.csv files to blend instead of searching OUTPUT_DIR. Files in "
                          "<run>/fold*/ are grouped per run; OOF files next to them are used."},
    )
    method: str = field(
        default="auto",
        metadata={"help": "auto (with >= 2 models all with OOF: stack where its nested-CV OOF log-loss beats "
                          "the weights', else weights; otherwise mean), mean, weights (log-loss-optimal on OOF), "
                          "vote (majority of argmaxes, ties by mean probability) or stack (a multinomial logistic "
                          "regression over the models' OOF log-probabilities, scored by nested CV).",
                  "choices": ["auto", "mean", "weights", "vote", "stack"]},
    )
    temperature: bool = field(
        default=True,
        metadata={"help": "Fit a temperature per model on its OOF (minimising log-loss) and apply it to its "
                          "test probabilities before blending. --no_temperature turns it off."},
    )
    space: Optional[str] = field(
        default=None,
        metadata={"help": "Blend in prob space (weighted mean, the default) or logprob space (weighted "
                          "geometric mean).", "choices": ["prob", "logprob"]},
    )
    report: bool = field(
        default=False,
        metadata={"help": "Also write PNG plots + report.md of the blend's OOF to <submission dir>/ensemble_report/."},
    )
    submission: Optional[str] = field(
        default=None, metadata={"help": "Where to write the submission CSV (default OUTPUT_DIR/submission.csv)."}
    )


@report_user_errors
@captured("ensemble.py")  # the console into ensemble.log beside the submission (mcvqa.logfile)
def main(args: EnsembleArguments):
    from mcvqa import ensemble as ens

    models = ens.discover_models(args.output_dir, args.files, data_dir=args.data_dir)
    template = ens.load_template(args.data_dir)
    id_col, _ = ens.template_columns(template)
    ens.load_models(models, template[id_col].astype(str).tolist())
    result = ens.run_ensemble(models, template, method=args.method, temperature=args.temperature, space=args.space)

    sub_path = Path(args.submission) if args.submission else Path(args.output_dir) / "submission.csv"
    out_dir = sub_path.parent
    keep(out_dir / "ensemble.log")  # at the first file written: a refusal writes no log
    try:
        write_csv(out_dir / "ensemble_probs.csv", result.probs)
        write_json(out_dir / "ensemble.json", result.summary)
        write_csv(sub_path, result.submission)  # last: a submission only appears once everything else did
    except OSError as err:
        raise UserError(f"could not write the ensemble outputs to {out_dir}: {err}") from None
    print(f"wrote {sub_path} ({len(result.submission)} rows), {out_dir / 'ensemble_probs.csv'}, "
          f"{out_dir / 'ensemble.json'}")
    if args.report:
        if result.oof_after is None:
            print("no report: the models have no common OOF rows to plot")
        else:
            from mcvqa.report import write_ensemble_report

            path = write_ensemble_report(
                out_dir / "ensemble_report", result.oof_ids, result.oof_labels, result.oof_before,
                result.oof_after, question_types=result.oof_question_types, per_model_scores=result.per_model_scores,
            )
            print(f"wrote {path}")
    return result


@report_user_errors
def cli(argv=None):
    from mcvqa.cli import parse_args

    with argument_errors():
        (args, _given) = parse_args([EnsembleArguments], argv)
    return main(args)


if __name__ == "__main__":
    cli(sys.argv[1:])
