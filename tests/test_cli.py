"""`jhnas score`: CSV output, resume, determinism, order independence, one-line errors."""
import csv

import pytest

from jhnas.cli import main

A1 = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
A2 = "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|none~0|skip_connect~1|nor_conv_1x1~2|"
FAST = ["--cells", "1", "--batch-size", "8", "--quiet", "--metrics", "ntk_trace,ntk_cond,snip",
        "--compile-cache", "none"]


def _rows(path):
    with open(path) as f:
        return {r["arch"]: r for r in csv.DictReader(f)}


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
    code = ("import sys, jax, jax.numpy as jnp; from jhnas import score; "
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
    from jhnas import score
    calls = []
    monkeypatch.setattr(score, "enable_compile_cache", calls.append)
    monkeypatch.setattr(score, "score_archs", lambda *a, **k: type("T", (), {"rows": []}))
    f = tmp_path / "a.txt"
    f.write_text(A1 + "\n")
    base = ["score", "--archs", str(f), "--out", str(tmp_path / "a.csv"), *FAST]
    assert main(base) == 0 and calls == []
    assert main([*base, "--compile-cache", str(tmp_path / "c")]) == 0
    assert calls == [str(tmp_path / "c")]
