"""MkDocs hooks of the jhnas site.

The results pages include ``bench/results/*.md`` with pymdownx.snippets; this hook adds the
figures of ``bench/results/`` to the site as ``results/img/<name>.png``, so that the pages show
the files the benchmark scripts wrote instead of copies kept under ``docs/``.
"""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for png in sorted((root / "bench" / "results").glob("*.png")):
        files.append(File.generated(config, f"results/img/{png.name}", abs_src_path=str(png)))
    return files
