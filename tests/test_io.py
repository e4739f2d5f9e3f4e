"""mcvqa/io.py: atomic writes leave files with the permissions of any file the user writes."""

import json
import os
import stat

import pandas as pd
import pytest

from mcvqa.io import write_csv, write_json, write_text


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_files_get_the_umask_mode(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # what an ordinary open() gives under this umask
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~mask

    write_text(tmp_path / "a.txt", "hello\n")
    write_json(tmp_path / "b.json", {"k": 1})
    write_csv(tmp_path / "c.csv", pd.DataFrame({"id": ["q1"], "answer": ["a"]}))
    for name in ("a.txt", "b.json", "c.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert json.loads((tmp_path / "b.json").read_text()) == {"k": 1}
    assert (tmp_path / "c.csv").read_text() == "id,answer\nq1,a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.csv", "plain.txt"]


def test_overwrite_replaces_and_leaves_no_temporary(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "sub" / "out.txt"
    write_text(target, "one")
    os.chmod(target, 0o600)
    write_text(target, "two")
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
