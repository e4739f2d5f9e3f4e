"""A log file beside every output: what the console showed, one timestamped line at a time.

    @report_user_errors
    @captured("train_lora.py")             # from here on the console is also held in memory
    def main(argv=None):
        ...                                 # arguments and data checked: a refusal writes nothing
        keep(fold_dir / "train.log")        # the file opens (appending), with every line held so far

Only what the console shows goes in, plus the transformers Trainer's INFO records (the run's data summary:
examples, epochs, steps, checkpoints), which its default verbosity keeps off the console. The loss lines
(`{'loss': ...}` every --logging_steps) and evaluations are on the console already (the Trainer's progress
or printer callback, mcvqa.trainer.FoldProgress), so nothing is added for them. Progress bars redraw a
line with carriage returns, hundreds of times: only a finished bar's last state goes in. A run that ends by an exception leaves its `error:` line (UserError, as mcvqa.errors prints it after
the log has closed) or its traceback, then an "ended" line; a log without one is a process that was killed.
Under distributed training only global rank 0 logs (the others would write the same lines to one file).
"""

import functools
import logging
import os
import re
import shlex
import sys
import threading
import time
import traceback
from dataclasses import fields, is_dataclass
from pathlib import Path

_active = []  # the captures in force, innermost last
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # cursor moves of nested tqdm bars
_FINISHED = re.compile(r"\b(\d+)/\1\b")  # a bar at its total, as tqdm shows it: 16/16


def _stamp():
    return time.strftime("%Y-%m-%d %H:%M:%S")


def is_main_rank():
    """Global rank 0, read from the launcher's environment: no process group is needed yet."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class _Sink:
    """Timestamped lines: held in memory until `open`, then appended and flushed one by one."""

    def __init__(self):
        self.lock = threading.RLock()
        self.held, self.file, self.path, self.failed = [], None, None, False

    def lines(self, text):
        with self.lock:
            for line in text.splitlines() or [""]:
                entry = f"{_stamp()} {line}\n"
                if self.file is None:
                    if not self.failed:
                        self.held.append(entry)
                    continue
                try:
                    self.file.write(entry)
                    self.file.flush()
                except OSError:  # a full disk must not end a run over its log: stop logging instead
                    self._give_up()

    def open(self, path, first):
        with self.lock:
            if self.file is not None or self.failed:
                return
            path = Path(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(path, "a", encoding="utf-8")
                self.path = path
                self.file.write(f"{first}\n" + "".join(self.held))
                self.file.flush()
            except OSError as err:
                print(f"warning: cannot write the log {path} ({err.strerror or err}); the console output is not "
                      "saved", file=sys.__stderr__, flush=True)
                self._give_up()
            self.held = []

    def _give_up(self):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        self.file, self.failed, self.held = None, True, []

    def close(self):
        with self.lock:
            if self.file is not None:
                try:
                    self.file.close()
                except OSError:
                    pass
            self.file, self.held = None, []


class _Tee:
    """A console stream that also hands every finished line to the sink."""

    def __init__(self, stream, sink):
        self._stream, self._sink, self._partial = stream, sink, ""

    def write(self, text):
        n = self._stream.write(text)
        with self._sink.lock:
            self._partial += text
            *done, self._partial = self._partial.split("\n")
            for line in done:
                self._line(line)
            # A progress bar redrawing without a newline for hours: keep only its latest state.
            cut = self._partial.rfind("\r", 0, len(self._partial) - 1)
            if cut >= 0:
                self._partial = "\r" + self._partial[cut + 1:]
        return len(text) if n is None else n

    def _line(self, line):
        line = line.rstrip("\r")
        redrawn = "\r" in line or "\x1b[" in line
        line = _ANSI.sub("", line[line.rfind("\r") + 1:])
        # A progress bar's states end up on lines of their own whenever another bar or a log line cuts in:
        # only a finished bar (n/n) is worth a line; an erased one (leave=False) left nothing on screen.
        if redrawn and not _FINISHED.search(line):
            return
        self._sink.lines(line)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def finish(self):
        if self._partial.strip("\r \t"):
            self._line(self._partial)
        self._partial = ""

    def flush(self):
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the console's own
        return getattr(self._stream, name)


class _TrainerRecords(logging.Handler):
    """transformers' log records into the sink: its warnings (which go to the console by a handler holding the
    original stderr, past the tee) and the Trainer's INFO records, kept off the console as before."""

    NAME = "transformers.trainer"

    def __init__(self, sink, tees):
        super().__init__(logging.INFO)
        self.sink, self.tees = sink, tees
        self.library = logging.getLogger("transformers")
        self.trainer = logging.getLogger(self.NAME)
        self.saved_level = self.trainer.level

    def console_shows(self, record):
        # What the console showed before: the library's verbosity (which --log_level sets) decides.
        return not (record.name.startswith(self.NAME) and record.levelno < self.library.getEffectiveLevel())

    def emit(self, record):
        for handler in self.library.handlers:
            # A console handler made while the tee was in place writes through it: the tee logs that line.
            if handler is not self and getattr(handler, "stream", None) in self.tees and handler.filter(record):
                return
        try:
            self.sink.lines(self.format(record))
        except Exception:
            self.handleError(record)

    def install(self):
        if self.trainer.getEffectiveLevel() > logging.INFO:
            self.trainer.setLevel(logging.INFO)
        for handler in self.library.handlers:
            handler.addFilter(self.console_shows)
        self.library.addHandler(self)

    def remove(self):
        self.library.removeHandler(self)
        for handler in self.library.handlers:
            handler.removeFilter(self.console_shows)
        self.trainer.setLevel(self.saved_level)


def describe(arguments):
    """The arguments as one line: a command line as typed, or a dataclass as the flags it holds."""
    if arguments is None:
        arguments = sys.argv[1:]
    if is_dataclass(arguments):
        parts = []
        for f in fields(arguments):
            value = getattr(arguments, f.name)
            parts += [f"--{f.name}", *(map(str, value) if isinstance(value, (list, tuple)) else [str(value)])]
        return shlex.join(parts)
    return shlex.join(map(str, arguments))


class Capture:
    """stdout, stderr and transformers' records teed into a sink, until `close`."""

    def __init__(self, script, arguments):
        self.script, self.started, self.sink = script, time.time(), _Sink()
        self.started_at = _stamp()
        self.streams = (sys.stdout, sys.stderr)
        self.tees = (_Tee(sys.stdout, self.sink), _Tee(sys.stderr, self.sink))
        sys.stdout, sys.stderr = self.tees
        self.records = None
        if "transformers" in sys.modules:  # imported later, its handler would write through the tee anyway
            self.records = _TrainerRecords(self.sink, self.tees)
            self.records.install()
        self.sink.lines(f"arguments: {describe(arguments)}")

    def keep(self, path, resumed=False):
        how = "resumed (--resume), appending to the lines above" if resumed else "started"
        self.sink.open(path, f"{self.started_at} ===== {self.script} {how} =====")

    def ended(self, error=None):
        """The closing line (and the error that ended the run) into the log, then the console back."""
        from mcvqa.errors import UserError, error_text

        for tee in self.tees:
            tee.finish()
        minutes = (time.time() - self.started) / 60
        if error is None:
            self.sink.lines(f"===== {self.script} finished ({minutes:.1f} min) =====")
        elif isinstance(error, UserError):
            self.sink.lines(error_text(error))
            self.sink.lines(f"===== {self.script} ended with the error above, exit status 2 ({minutes:.1f} min) =====")
        elif isinstance(error, SystemExit):
            self.sink.lines(f"===== {self.script} exited with status {error.code} ({minutes:.1f} min) =====")
        elif isinstance(error, KeyboardInterrupt):
            self.sink.lines(f"===== {self.script} interrupted (Ctrl-C) after {minutes:.1f} min =====")
        else:
            self.sink.lines("".join(traceback.format_exception(type(error), error, error.__traceback__)).rstrip())
            self.sink.lines(f"===== {self.script} ended with the error above ({minutes:.1f} min) =====")

    def close(self):
        if self.records is not None:
            self.records.remove()
        for tee in self.tees:
            tee.finish()
        # Restore only if nobody replaced the streams since (e.g. a capture opened inside and left open).
        if sys.stdout is self.tees[0]:
            sys.stdout = self.streams[0]
        if sys.stderr is self.tees[1]:
            sys.stderr = self.streams[1]
        self.sink.close()


def captured(script):
    """Decorate a script's main: the console is held from its start and goes into the file named by `keep`.

    Put it under `report_user_errors` so a refusal's `error:` line is logged here, before the console gets it.
    The first positional argument is taken as the command line (None: sys.argv) or a dataclass of arguments.
    """

    def decorate(main):
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            if not is_main_rank():
                return main(*args, **kwargs)
            capture = Capture(script, args[0] if args else kwargs.get("argv", kwargs.get("args")))
            _active.append(capture)
            try:
                result = main(*args, **kwargs)
            except BaseException as err:
                capture.ended(err)
                raise
            else:
                capture.ended()
                return result
            finally:
                _active.remove(capture)
                capture.close()

        return wrapper

    return decorate


def keep(path, resumed=False):
    """Write the innermost capture's lines to `path` (appending) from now on. Call it once the input is accepted,
    just before the first output is written: a refused run writes nothing. A no-op off rank 0 or outside one."""
    if _active:
        _active[-1].keep(path, resumed)
