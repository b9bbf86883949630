"""Resumable CSV: rows survive, torn lines are dropped, headers are checked."""
import math

import pytest

from jhnas.results import ResultsCSV


def test_append_and_resume(tmp_path):
    path = tmp_path / "s.csv"
    t = ResultsCSV(path, ["arch", "m", "seconds"])
    t.append({"arch": "a", "m": 0.1 + 0.2, "seconds": 1.5})
    t.append({"arch": "b,c", "m": float("nan"), "seconds": 2.0})  # a comma inside is quoted
    again = ResultsCSV(path, ["arch", "m", "seconds"])
    assert "a" in again and "b,c" in again and "z" not in again
    assert float(again.rows["a"]["m"]) == 0.1 + 0.2  # shortest round-trip repr
    assert math.isnan(float(again.rows["b,c"]["m"]))


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "s.csv"
    t = ResultsCSV(path, ["arch", "m", "seconds"])
    t.append({"arch": "a", "m": 1.0, "seconds": 1.0})
    with open(path, "a") as f:
        f.write("b,2.0")  # killed in the middle of a write
    again = ResultsCSV(path, ["arch", "m", "seconds"])
    assert list(again.rows) == ["a"]
    assert path.read_text() == "arch,m,seconds\na,1.0,1.0\n"
    again.append({"arch": "b", "m": 2.0, "seconds": 1.0})
    assert path.read_text().splitlines()[-1] == "b,2.0,1.0"


def test_header_mismatch_and_missing_folder(tmp_path):
    path = tmp_path / "s.csv"
    ResultsCSV(path, ["arch", "m", "seconds"])
    with pytest.raises(ValueError, match="expected arch,n,seconds"):
        ResultsCSV(path, ["arch", "n", "seconds"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResultsCSV(tmp_path / "nope" / "s.csv", ["arch"])


def test_cpu_name_is_the_cpuinfo_model_name():
    from jhnas.results import cpu_name
    name = cpu_name()
    assert isinstance(name, str) and name
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return
    if "model name" in text:
        assert name in text
