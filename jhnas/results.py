"""Append-only, resumable CSV results: one row per architecture, nothing lost on a crash.

Each finished row is written with a single ``write`` of the whole line, flushed and fsynced, so a
kill loses at most the row being computed. Reopening the file skips the rows already there; a
torn last line (a kill during the write) is dropped, atomically, before appending.
"""
from __future__ import annotations

import csv
import io
import os
import platform
from pathlib import Path
from typing import Iterable, Mapping


def _line(values: Iterable) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``), to record with timings: they
    differ between CPUs."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_value(v) -> str:
    """Floats as their shortest round-trip repr ('nan', 'inf' included), others as str."""
    return repr(float(v)) if isinstance(v, float) else str(v)


class ResultsCSV:
    """Rows keyed by their first column (e.g. ``arch``).

    Args:
      path: the CSV file; created with a header if absent.
      columns: the header. An existing file must have exactly this header.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str]):
        self.path, self.columns = Path(path), list(columns)
        self.rows: dict[str, dict[str, str]] = {}
        if self.path.exists() and self.path.stat().st_size > 0:
            self._load()
        else:
            if self.path.parent and not self.path.parent.exists():
                raise FileNotFoundError(f"output folder {self.path.parent} does not exist")
            self._replace(_line(self.columns))

    def _load(self) -> None:
        text = self.path.read_text()
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(complete)))
        if not rows or rows[0] != self.columns:
            found = ",".join(rows[0]) if rows else "nothing"
            raise ValueError(f"{self.path} has columns {found}, expected "
                             f"{','.join(self.columns)}: use another --out or the same options")
        good = [rows[0]] + [r for r in rows[1:] if len(r) == len(self.columns)]
        for r in good[1:]:
            self.rows[r[0]] = dict(zip(self.columns, r))
        if complete != text or len(good) != len(rows):  # torn or malformed line: drop it
            self._replace("".join(_line(r) for r in good))

    def _replace(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, row: Mapping) -> None:
        values = [format_value(row[c]) for c in self.columns]
        with open(self.path, "a") as f:
            f.write(_line(values))
            f.flush()
            os.fsync(f.fileno())
        self.rows[values[0]] = dict(zip(self.columns, values))
