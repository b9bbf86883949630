"""Resumable CSV: rows survive, torn lines are dropped, headers are checked."""
import math

import pytest

import os
import subprocess
import sys
import time

from jhnas.experiments.results import MAGIC, ProtocolError, ResultsCSV, read_protocol, read_rows


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
    with pytest.raises(ProtocolError, match="this run writes arch,n,seconds "
                                            r"\(missing n; extra m\)"):
        ResultsCSV(path, ["arch", "n", "seconds"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResultsCSV(tmp_path / "nope" / "s.csv", ["arch"])


def test_cpu_name_is_the_cpuinfo_model_name():
    from jhnas.experiments.results import cpu_name
    name = cpu_name()
    assert isinstance(name, str) and name
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return
    if "model name" in text:
        assert name in text


PROTOCOL = {"seed": 0, "batch": {"size": 64, "sha256": "ab"}, "versions": {"jax": "0.10.2"}}


def test_protocol_is_written_and_checked(tmp_path):
    path = tmp_path / "p.csv"
    t = ResultsCSV(path, ["arch", "m"], protocol=PROTOCOL)
    t.append({"arch": "a", "m": 1.0})
    assert path.read_text().startswith(MAGIC) and read_protocol(path) == PROTOCOL
    assert read_rows(path) == [{"arch": "a", "m": "1.0"}]
    assert list(ResultsCSV(path, ["arch", "m"], protocol=PROTOCOL).rows) == ["a"]
    other = {**PROTOCOL, "seed": 1, "batch": {"size": 32, "sha256": "ab"}}
    with pytest.raises(ProtocolError, match=r"batch.size 64 \(file\) vs 32 \(now\); seed 0 "
                                            r"\(file\) vs 1 \(now\)"):
        ResultsCSV(path, ["arch", "m"], protocol=other)


def test_legacy_files_duplicates_and_bad_rows(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("arch,m\na,1.0\nb,2.0\na,1.5\nc,x1\n,\nd,\n")
    with pytest.warns(RuntimeWarning) as record:
        t = ResultsCSV(path, ["arch", "m"], protocol=PROTOCOL,
                       check_key=lambda k: None if k else "empty key")
    messages = " | ".join(str(w.message) for w in record)
    assert "names no protocol" in messages
    assert "2 malformed row(s) removed" in messages and "line 5: m not a number" in messages
    assert "1 duplicate row(s)" in messages
    assert {k: r["m"] for k, r in t.rows.items()} == {"a": "1.0", "b": "2.0", "d": ""}
    assert path.read_text() == "arch,m\na,1.0\nb,2.0\na,1.5\nd,\n"  # bad rows cut


def test_claims_split_the_work_and_stale_claims_are_taken_over(tmp_path):
    path = tmp_path / "c.csv"
    ours = ResultsCSV(path, ["arch", "m"])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        host = os.uname().nodename
        now = time.time()
        (tmp_path / ".c.csv.claims").write_text(
            f"b,{other.pid},{host},{now}\nc,{dead.pid},{host},{now}\n"
            f"d,{other.pid},elsewhere,{now - 7 * 3600}\n")
        assert list(ours.claimed(["a", "b", "c", "d"])) == ["a", "c", "d"]
        assert read_rows(path) == []
        assert (tmp_path / ".c.csv.claims").read_text().startswith(f"b,{other.pid},")
        ours.claim("a")
        ours.append({"arch": "a", "m": 1.0})
        assert "a" not in (tmp_path / ".c.csv.claims").read_text()
        assert not ours.claim("a") and not ours.claim("b")  # done; held by a live process
        short = ResultsCSV(path, ["arch", "m"], claim_timeout=0.0)
        assert short.claim("b")  # older than the timeout
    finally:
        other.kill()
        other.wait()


def test_rows_written_by_another_process_are_seen(tmp_path):
    path = tmp_path / "r.csv"
    ours = ResultsCSV(path, ["arch", "m"])
    code = ("import sys; from jhnas.experiments.results import ResultsCSV; "
            "ResultsCSV(sys.argv[1], ['arch', 'm']).append({'arch': 'x', 'm': 2.0})")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert "x" not in ours
    assert not ours.append({"arch": "x", "m": 3.0})  # written by the other process: not twice
    assert [r["arch"] for r in read_rows(path)] == ["x"] and ours.rows["x"]["m"] == "2.0"
    assert not ours.claim("x")
