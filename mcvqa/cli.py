"""Argument parsing shared by the scripts: HfArgumentParser dataclasses, `--config file.yaml`, CLI overrides."""

import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from mcvqa.errors import UserError


def parse_args(dataclass_types, argv=None, defaults=None):
    """Parse `argv` into the dataclasses; values from `--config FILE.yaml` are defaults the CLI overrides.

    Returns (instances..., given) where `given` is the set of field names set by the YAML file or the CLI.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    if defaults:
        parser.set_defaults(**defaults)
    config = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UserError("--config needs a YAML file")
        path = Path(argv[i + 1])
        del argv[i: i + 2]
        config = load_yaml(path)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(config) - known)
        if unknown:
            raise UserError(f"{path}: unknown keys {', '.join(unknown)} (see --help for the valid names)")
        parser.set_defaults(**config)
    given = set(config) | {a.split("=")[0][2:].replace("-", "_") for a in argv if a.startswith("--")}
    instances = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return (*instances, given)


def load_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    return data
