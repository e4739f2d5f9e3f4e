"""Atomic file writes: every CSV/JSON the tools write appears whole or not at all."""

import json
import os
import secrets
from pathlib import Path


def _temporary(path):
    """(fd, name) of a new file next to `path`. Unlike mkstemp (always 0600), created with mode 0666 so that
    the kernel applies the umask: the result reads like any file the user writes (shared machines, a Kaggle
    dataset made from the folder)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary file name")


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text):
    return _atomic(path, lambda fh: fh.write(text))


def write_json(path, obj):
    return _atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"))


def write_csv(path, df):
    """Write a pandas DataFrame as UTF-8 CSV without the index."""
    return _atomic(path, lambda fh: df.to_csv(fh, index=False))
