"""Atomic file writes: every CSV/JSON the tools write appears whole or not at all."""

import json
import os
import tempfile
from pathlib import Path


def _atomic(path, write):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
