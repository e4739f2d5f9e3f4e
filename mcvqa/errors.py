"""User-facing errors: one clear line and exit status 2, never a traceback."""

import contextlib
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
            print(error_text(err), file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


def error_text(err):
    """A UserError as the user sees it: one `error:` line, any further lines indented under it."""
    first, *rest = str(err).splitlines() or [type(err).__name__]
    rest = [line if line.startswith(" ") else f"  {line}" for line in rest if line.strip()]
    return "\n".join([f"error: {first}", *rest])


def collect(problems, header=None):
    """Raise one UserError listing every problem found, or do nothing when there are none."""
    if problems:
        lines = ([header] if header else []) + [f"  - {p}" for p in problems]
        raise UserError("\n".join(lines) if len(lines) > 1 else lines[0])


@contextlib.contextmanager
def argument_errors():
    """Flag problems found while parsing (a bad value, an unknown flag, a TrainingArguments check) as one
    UserError instead of argparse's usage dump or a ValueError traceback."""
    import argparse

    def error(self, message):
        raise UserError(f"{message} (see --help)")

    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = error
    try:
        yield
    except ValueError as err:
        message = str(err).strip() or "invalid arguments"
        unused = "Some specified arguments are not used by the HfArgumentParser: "
        if message.startswith(unused):  # HfArgumentParser's wording for unknown flags
            import ast

            try:
                message = "unknown arguments: " + " ".join(ast.literal_eval(message[len(unused):]))
            except (ValueError, SyntaxError, TypeError):
                pass
        raise UserError(f"{message} (see --help)") from None
    finally:
        argparse.ArgumentParser.error = original
