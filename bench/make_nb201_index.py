"""Regenerates jhnas/_data/nb201_archs.txt.gz from ../shared/data (see jhnas/_data/PROVENANCE.md).

The embedded images are made by bench/make_default_data.py.
"""
import csv
import gzip
import io
import hashlib
from pathlib import Path

from jhnas.experiments.results import write_atomic
from jhnas.spaces import nb201

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "jhnas" / "_data" / "nb201_archs.txt.gz"


def main() -> None:
    with open(SHARED / "nats-bench-landscape" / "nats_bench.csv") as f:
        archs = [r["ArchitectureString"] for r in csv.DictReader(f)]
    lines = ["".join(str(nb201.OPS.index(op)) for op in nb201.parse(a)) for a in archs]
    buf = io.BytesIO()  # the gzip header names the file, as GzipFile(OUT) wrote it
    with gzip.GzipFile(OUT.name, "wb", fileobj=buf, mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    write_atomic(OUT, buf.getvalue())
    print(OUT.name, hashlib.sha256(OUT.read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
