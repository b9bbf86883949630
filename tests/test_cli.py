"""`jhnas score`: CSV output, resume, determinism, order independence, one-line errors."""

import pytest

from jhnas.cli import main
from jhnas.experiments.results import read_rows

A1 = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
A2 = "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|skip_connect~1|nor_conv_1x1~2|"
FAST = ["--cells", "1", "--batch-size", "8", "--quiet", "--metrics", "ntk_trace,ntk_cond,snip",
        "--compile-cache", "none"]


def _rows(path):
    return {r["arch"]: r for r in read_rows(path)}


def _values(path):
    return {a: {k: v for k, v in r.items() if k != "seconds"} for a, r in _rows(path).items()}


def _run(tmp_path, archs, out, *extra):
    f = tmp_path / f"{out}.txt"
    f.write_text("\n".join(archs) + "\n")
    return main(["score", "--space", "nb201", "--archs", str(f), "--out",
                 str(tmp_path / f"{out}.csv"), *FAST, *extra])


def test_score_resume_determinism_and_order(tmp_path):
    assert _run(tmp_path, [A1], "a") == 0
    first = _rows(tmp_path / "a.csv")
    assert list(first) == [A1] and set(first[A1]) == {"arch", "ntk_trace", "ntk_cond", "snip",
                                                      "seconds"}
    assert float(first[A1]["ntk_trace"]) > 0 and float(first[A1]["ntk_cond"]) >= 1
    # resume: A1 is kept as is (same seconds), only A2 is computed
    assert _run(tmp_path, [A1, A2], "a") == 0
    rows = _rows(tmp_path / "a.csv")
    assert list(rows) == [A1, A2] and rows[A1] == first[A1]
    # same seed, other order, fresh file: identical values
    assert _run(tmp_path, [A2, A1], "b") == 0
    assert _values(tmp_path / "b.csv") == _values(tmp_path / "a.csv")
    # another seed changes the initialisation
    assert _run(tmp_path, [A1], "c", "--seed", "1") == 0
    assert _values(tmp_path / "c.csv")[A1] != _values(tmp_path / "a.csv")[A1]


def test_sample(tmp_path):
    out = tmp_path / "s.csv"
    assert main(["score", "--sample", "2", "--seed", "3", "--out", str(out), *FAST]) == 0
    assert len(_rows(out)) == 2


@pytest.mark.parametrize("args, fragment", [
    (["--archs", "ARCHS_BAD"], "line 2"),
    (["--archs", "nope.txt"], "no such file"),
    (["--sample", "0"], "--sample must be"),
    (["--sample", "1", "--metrics", "ntk_trace,foo"], "unknown metric(s) foo"),
    (["--sample", "1", "--batch", "missing.npz"], "no such file"),
    (["--sample", "1", "--out", "no/such/dir/x.csv"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragment):
    bad = tmp_path / "bad.txt"
    bad.write_text(A1 + "\n|nor_conv_3x3~0|+|conv_7x7~0|skip_connect~1|+|none~0|none~1|none~2|\n")
    args = [str(bad) if a == "ARCHS_BAD" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "o.csv")]
    assert main(["score", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jhnas: error:") and fragment in err
    assert "Traceback" not in err


def test_compile_cache_is_written_and_reused(tmp_path):
    """enable_compile_cache stores even sub-second compilations (jhnas's blocks); a second
    process loads them instead of adding entries."""
    import os
    import subprocess
    import sys
    cache = tmp_path / "xla"
    code = ("import sys, jax, jax.numpy as jnp; from jhnas.experiments import score; "
            "score.enable_compile_cache(sys.argv[1]); "
            "print(float(jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(4)).sum()))")
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(cache)], check=True,
                             capture_output=True, text=True, env={**os.environ,
                                                                  "JAX_PLATFORMS": "cpu"})
        runs.append((out.stdout, sorted(p.name for p in cache.iterdir())))
    assert runs[0][1] and runs[0] == runs[1]


def test_score_uses_the_compile_cache_unless_none(tmp_path, monkeypatch):
    from jhnas.experiments import score
    calls = []
    monkeypatch.setattr(score, "enable_compile_cache", calls.append)
    monkeypatch.setattr(score, "score_archs", lambda *a, **k: type("T", (), {"rows": []}))
    f = tmp_path / "a.txt"
    f.write_text(A1 + "\n")
    base = ["score", "--archs", str(f), "--out", str(tmp_path / "a.csv"), *FAST]
    assert main(base) == 0 and calls == []
    assert main([*base, "--compile-cache", str(tmp_path / "c")]) == 0
    assert calls == [str(tmp_path / "c")]


# ----------------------------------------------------------------------------- issue 34: input
# checked before any work, results that carry their protocol

def _batch_file(tmp_path, name="b.npz", **changes):
    from jhnas import data
    b = data.default_batch(8)
    b = data.Batch(changes.get("x", b.x), changes.get("y", b.y))
    path = tmp_path / name
    data.save_batch(path, b)
    return path


def _error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("jhnas: error:")
    return err


@pytest.mark.parametrize("labels", [10, 99])
def test_labels_out_of_range_are_refused(tmp_path, capsys, labels):
    """They used to score, with a silently different ntk_cond (51.5 instead of 8.3)."""
    import numpy as np
    y = np.arange(8) % 10
    y[3] = labels
    batch = _batch_file(tmp_path, y=y)
    assert main(["score", "--sample", "1", "--batch", str(batch), "--batch-size", "8",
                 "--out", str(tmp_path / "o.csv"), "--quiet"]) == 2
    assert f"outside 0..9 (e.g. {labels})" in _error(capsys)
    assert not (tmp_path / "o.csv").exists()


def test_bad_batch_files_and_cache_paths(tmp_path, capsys):
    good = _batch_file(tmp_path)
    raw = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    (tmp_path / "afile").write_text("")
    base = ["score", "--sample", "1", "--batch-size", "8", "--quiet"]
    cases = [(["--batch", str(tmp_path / "trunc.npz")], "not a complete .npz batch file"),
             (["--batch", str(tmp_path / "text.npz")], "is not an .npz batch file (a zip"),
             (["--compile-cache", str(tmp_path / "afile")], "afile or a folder above it is a file"),
             (["--compile-cache", str(tmp_path / "afile" / "sub")], "is a file"),
             (["--batch-size", "0"], "--batch-size must be >= 1"),
             (["--batch-size", "100000"], "the embedded set has 1017 images")]
    for extra, fragment in cases:
        assert main([*base, *extra, "--out", str(tmp_path / "o.csv")]) == 2, extra
        assert fragment in _error(capsys), extra
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("command", ["score", "search"])
def test_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch, command):
    """A search used to run to the end (64 s; hours with --signal train) and then die with a
    traceback, leaving a stray .tmp."""
    import tempfile
    import time
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    args = (["score", "--sample", "1", *FAST] if command == "score" else
            ["search", "--budget", "2", "--seeds", "1", "--quiet"])
    cases = [(tmp_path / "adir", "is a folder: name a file in it"),
             (tmp_path / "afile" / "r.out", "afile is a file, not a folder"),
             (tmp_path / "no" / "r.out", "does not exist")]
    t = time.perf_counter()
    for out, fragment in cases:
        assert main([*args, "--out", str(out)]) == 2
        assert fragment in _error(capsys)

    def refuse(*a, **k):
        raise PermissionError("read-only")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)  # as root chmod cannot refuse
    assert main([*args, "--out", str(tmp_path / "r.out")]) == 2
    assert "cannot write there (permission denied)" in _error(capsys)
    assert time.perf_counter() - t < 10  # nothing was computed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]


def test_a_resume_with_another_protocol_is_refused(tmp_path, capsys):
    assert _run(tmp_path, [A1], "p") == 0
    capsys.readouterr()
    before = (tmp_path / "p.csv").read_text()
    batch = _batch_file(tmp_path)
    for extra, fragment in ((["--seed", "1"], "seed 0 (file) vs 1 (now)"),
                            (["--cells", "2"], "cells 1 (file) vs 2 (now)"),
                            (["--preset", "nb201"], 'preset "hnas" (file) vs "nb201" (now)'),
                            (["--batch", str(batch), "--batch-size", "4"], "batch.s")):
        assert _run(tmp_path, [A1, A2], "p", *extra) == 2, extra
        assert "was made with another protocol" in (err := _error(capsys)) and fragment in err
    assert (tmp_path / "p.csv").read_text() == before


def test_garbled_rows_are_reported_and_computed_again(tmp_path):
    assert _run(tmp_path, [A1, A2], "g") == 0
    good = _values(tmp_path / "g.csv")
    path = tmp_path / "g.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split(",")[1], "17.22xyz", 1)  # A1's ntk_trace
    lines.append("|nor_conv_3x3~0|+|bogus~0|none~1|+|none~0|none~1|none~2|,1.0,2.0,3.0,4.0")
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(RuntimeWarning, match="2 malformed row"):
        assert _run(tmp_path, [A1, A2], "g") == 0
    rows = read_rows(path)
    assert [r["arch"] for r in rows] == [A2, A1]
    assert _values(path) == good


def test_three_scorers_share_one_file_and_survive_a_kill(tmp_path):
    """Issue 32: three `jhnas score` processes on one --out, one killed by SIGKILL mid-run, then
    a rerun: every architecture exactly once, the values of a single process."""
    import signal
    import subprocess
    import sys
    import time

    import jax

    from jhnas.spaces import nb201
    archs = nb201.sample(jax.random.key(5), 12)
    f = tmp_path / "archs.txt"
    f.write_text("\n".join(archs) + "\n")
    fast = [a for a in FAST if a not in ("--compile-cache", "none")]
    opts = ["--archs", str(f), *fast, "--compile-cache", str(tmp_path / "xla")]
    assert main(["score", *opts, "--out", str(tmp_path / "one.csv")]) == 0  # warms the cache
    shared = tmp_path / "shared.csv"
    cmd = [sys.executable, "-m", "jhnas.cli", "score", *opts, "--out", str(shared)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (shared.exists() and len(read_rows(shared)) >= 2):
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)
        for p in procs[1:]:
            assert p.wait(timeout=300) == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert main(["score", *opts, "--out", str(shared)]) == 0
    keys = [r["arch"] for r in read_rows(shared)]
    assert sorted(keys) == sorted(archs)  # each exactly once
    assert _values(shared) == _values(tmp_path / "one.csv")
