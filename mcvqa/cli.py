"""Argument parsing shared by the scripts: HfArgumentParser dataclasses, `--config file.yaml`, CLI overrides."""

import dataclasses
import sys
from pathlib import Path

from transformers import HfArgumentParser

from mcvqa.errors import UserError, collect


def parse_args(dataclass_types, argv=None, defaults=None):
    """Parse `argv` into the dataclasses; values from `--config FILE.yaml` are defaults the CLI overrides.

    `defaults` replaces dataclass defaults (the script's own task defaults) below the YAML file.
    Unknown YAML keys, YAML values outside a flag's choices and an unreadable file raise `UserError`.
    Returns (instances..., given) where `given` is the set of field names set by the YAML file or the CLI.
    """
    if dataclasses.is_dataclass(dataclass_types):
        dataclass_types = [dataclass_types]
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, rest, i = None, [], 0
    while i < len(argv):
        if argv[i] == "--config":
            if i + 1 >= len(argv):
                raise UserError("--config needs a YAML file path")
            config_path, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--config="):
            config_path = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1

    # No abbreviated flags: "--lr" silently meaning "--lr_scheduler_type" is a trap, and `given` reads full names.
    parser = HfArgumentParser(dataclass_types, allow_abbrev=False)
    if defaults:
        parser.set_defaults(**defaults)
    config = {}
    if config_path is not None:
        config = load_yaml(config_path)
        actions = {a.dest: a for a in parser._actions}
        problems = [f"unknown key {k!r} (see --help for the flag names)" for k in sorted(set(config) - set(actions))]
        # argparse checks choices only for values typed on the command line, not for defaults.
        problems += [f"{k}: {v!r} is not one of {', '.join(map(str, actions[k].choices))}"
                     for k, v in config.items() if k in actions and actions[k].choices and v not in actions[k].choices]
        collect(problems, f"--config {config_path}:")
        for action in parser._actions:
            if action.dest in config:
                action.required = False
        parser.set_defaults(**config)
    given = set(config) | {a.split("=")[0][2:].replace("-", "_") for a in rest if a.startswith("--")}
    try:
        instances = parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)
    except ValueError as err:  # unknown flags, or a dataclass __post_init__ complaining
        raise UserError(str(err)) from None
    return (*instances, given)


def load_yaml(path):
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--config {path}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return data
