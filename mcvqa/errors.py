"""User-facing errors: one clear line and exit status 2, never a traceback."""

import functools
import sys


class UserError(Exception):
    """A problem with the user's input (data, flags, folders) that they can fix."""


def report_user_errors(main):
    """Wrap a script's entry point so a `UserError` prints `error: ...` and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def collect(problems, header=None):
    """Raise one UserError listing every problem found, or do nothing when there are none."""
    if problems:
        lines = ([header] if header else []) + [f"  - {p}" for p in problems]
        raise UserError("\n".join(lines) if len(lines) > 1 else lines[0])
