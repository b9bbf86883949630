"""Resumable results files: one CSV row per key, nothing lost on a crash, several writers safe.

A results file is a CSV whose first line may be a comment carrying the protocol the rows were
computed with (``# jhnas-results {"protocol": {...}}``, JSON), then the header, then one row per
key (the first column, e.g. ``arch``). :func:`read_rows` reads it (pandas: ``comment="#"``).

Guarantees of :class:`ResultsCSV`:

* **Nothing lost**: each finished row is written with a single ``write`` of the whole line,
  flushed and fsynced, so a kill loses at most the rows being computed. A torn last line (a
  writer killed during its write) is cut off before the next append.
* **Same protocol**: a file that names a protocol is only resumed with the same one; any
  difference is a :class:`ProtocolError` that names it. Files without the comment line (written
  by jhnas before it) are read with a warning.
* **Valid rows**: a row whose key fails ``check_key`` or whose values are not numbers (or empty)
  is reported, cut from the file and computed again; duplicate keys (possible in files of
  earlier versions) are counted in a warning and the first row of each is kept.
* **Several writers**: any number of processes, on any machines sharing the folder, may use one
  file. Appends hold an exclusive lock (``.NAME.lock`` beside the file, :mod:`filelock`; it
  stays there, empty), and :meth:`ResultsCSV.claim` marks a key as being computed
  (``.NAME.claims``, removed when empty) so that other processes skip it: every key is computed
  and written once. A claim is stale, and taken over, when its process no longer runs (same
  machine) or it is older than ``claim_timeout`` seconds (default 6 hours; any machine).
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import socket
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from filelock import FileLock

from jhnas._version import __version__

MAGIC = "# jhnas-results "
#: Seconds after which another process may take over a claim whose owner it cannot check.
CLAIM_TIMEOUT = 6 * 3600.0


class ProtocolError(ValueError):
    """A results file was made with another protocol (or other columns) than this run's."""


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


def versions() -> dict[str, str]:
    """The versions of jhnas and of the libraries its numbers depend on, to record with results
    (random streams and float rounding change between jax versions)."""
    out = {"jhnas": __version__}
    for name in ("jax", "jaxlib", "flax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def format_value(v) -> str:
    """Floats as their shortest round-trip repr ('nan', 'inf' included), others as str."""
    return repr(float(v)) if isinstance(v, float) else str(v)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``path`` whole or not at all: a temporary file in the same folder (named after
    this process), fsynced, then renamed over ``path``. Concurrent writers each replace the file
    whole; a crash leaves the old file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def update_json(path: str | os.PathLike, update: Callable[[dict], dict]) -> dict:
    """Replaces the JSON object in ``path`` (``{}`` if absent) by ``update(old)``, under an
    exclusive lock (``.NAME.lock``), atomically: processes adding their rows to one results file
    at the same time lose none. Returns the new object."""
    path = Path(path)
    with FileLock(path.with_name(f".{path.name}.lock")):
        new = update(json.loads(path.read_text()) if path.exists() else {})
        write_atomic(path, json.dumps(new, indent=1) + "\n")
    return new


def read_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a results file (or of any CSV) as dicts, the protocol comment skipped."""
    with open(path, newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def read_protocol(path: str | os.PathLike) -> dict | None:
    """The protocol a results file names, None if it names none."""
    with open(path) as f:
        first = f.readline()
    return json.loads(first[len(MAGIC):])["protocol"] if first.startswith(MAGIC) else None


def _differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {json.dumps(a)} (file) vs {json.dumps(b)} (now)")
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


class ResultsCSV:
    """Rows keyed by their first column, in a file shared safely by several processes.

    Args:
      path: the CSV file; created (with the protocol line and header) if absent or empty.
      columns: the header. An existing file must have exactly these columns.
      protocol: JSON-serialisable description of how the values are computed (seed, batch,
        versions, ...). Written into a new file; an existing file must name the same one.
      check_key: ``key -> error message or None``; rows with a bad key are recomputed.
      claim_timeout: see the module docstring.

    Raises :class:`ProtocolError` for other columns or another protocol, ``FileNotFoundError``
    if the folder does not exist.
    """

    def __init__(self, path: str | os.PathLike, columns: list[str], *,
                 protocol: Mapping | None = None,
                 check_key: Callable[[str], str | None] | None = None,
                 claim_timeout: float = CLAIM_TIMEOUT):
        self.path, self.columns = Path(path), list(columns)
        self.protocol = None if protocol is None else json.loads(json.dumps(protocol))
        self.check_key, self.claim_timeout = check_key, claim_timeout
        self.rows: dict[str, dict[str, str]] = {}
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"output folder {self.path.parent} does not exist")
        self._lock = FileLock(self.path.with_name(f".{self.path.name}.lock"))
        self._claims = self.path.with_name(f".{self.path.name}.claims")
        self._mine: set[str] = set()
        self._read = 0  # bytes of the file already parsed into self.rows
        with self._lock:
            if self.path.exists() and self.path.stat().st_size > 0:
                self._load()
            else:
                head = "" if self.protocol is None else (
                    MAGIC + json.dumps({"protocol": self.protocol}, sort_keys=True) + "\n")
                self._replace(head + _line(self.columns))
                self._read = self.path.stat().st_size

    # -- reading

    def _load(self) -> None:
        """Parses the whole file (under the lock); repairs it if a line is torn or bad."""
        text = self.path.read_text()
        complete = text[: text.rfind("\n") + 1]
        lines = complete.splitlines(keepends=True)
        head = []
        if lines and lines[0].startswith(MAGIC):
            head = [lines.pop(0)]
            self._check_protocol(json.loads(head[0][len(MAGIC):])["protocol"])
        elif self.protocol is not None:
            warnings.warn(f"{self.path} names no protocol (written by an earlier jhnas): its "
                          f"rows are kept, but cannot be checked against this run's",
                          RuntimeWarning, stacklevel=3)
        rows = list(csv.reader(lines))
        if not rows or rows[0] != self.columns:
            self._column_error(rows[0] if rows else [])
        good, bad, dupes = [lines[0]], [], 0
        for n, (line, r) in enumerate(zip(lines[1:], rows[1:]), 2 + len(head)):
            problem = self._problem(r)
            if problem:
                bad.append(f"line {n}: {problem}")
                continue
            good.append(line)  # duplicates stay in the file: they are the user's data
            if r[0] in self.rows:
                dupes += 1
            else:
                self.rows[r[0]] = dict(zip(self.columns, r))
        if bad:
            warnings.warn(f"{self.path}: {len(bad)} malformed row(s) removed, to be computed "
                          f"again ({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''})",
                          RuntimeWarning, stacklevel=3)
        if dupes:
            warnings.warn(f"{self.path}: {dupes} duplicate row(s) (the same {self.columns[0]} "
                          f"more than once, as earlier jhnas versions could write); the first "
                          f"row of each is used", RuntimeWarning, stacklevel=3)
        if bad or complete != text:
            self._replace("".join(head + good))
        self._read = self.path.stat().st_size

    def _problem(self, r: list[str]) -> str | None:
        if len(r) != len(self.columns):
            return f"{len(r)} fields, expected {len(self.columns)}"
        bad = [c for c, v in zip(self.columns[1:], r[1:]) if not _is_number(v)]
        if bad:
            return f"{', '.join(bad)} not a number"
        return self.check_key(r[0]) if self.check_key else None

    def _check_protocol(self, found: Mapping) -> None:
        if self.protocol is not None and found != self.protocol:
            diff = _differences(found, self.protocol)
            raise ProtocolError(f"{self.path} was made with another protocol: "
                                f"{'; '.join(diff)}. Use another output file, or the same "
                                f"options and versions")

    def _column_error(self, found: list[str]) -> None:
        missing = [c for c in self.columns if c not in found]
        extra = [c for c in found if c not in self.columns]
        what = "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                     f"extra {', '.join(extra)}" if extra else "") if p)
        raise ProtocolError(f"{self.path} has columns {','.join(found) or '(none)'}, this run "
                            f"writes {','.join(self.columns)} ({what or 'another order'}): use "
                            f"another output file or the same metrics")

    def refresh(self) -> None:
        """Reads the rows other processes appended since the last read."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        size = self.path.stat().st_size
        if size == self._read:
            return
        with open(self.path, "rb") as f:
            f.seek(self._read)
            tail = f.read().decode()
        if not tail.endswith("\n"):  # a writer died mid-line (writes hold the lock)
            os.truncate(self.path, self._read + len(tail[: tail.rfind("\n") + 1].encode()))
            tail = tail[: tail.rfind("\n") + 1]
        for r in csv.reader(tail.splitlines(keepends=True)):
            if not self._problem(r) and r[0] not in self.rows:
                self.rows[r[0]] = dict(zip(self.columns, r))
        self._read = self.path.stat().st_size

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    # -- writing

    def _replace(self, text: str) -> None:
        write_atomic(self.path, text)

    def append(self, row: Mapping) -> bool:
        """Writes one row (and releases its claim). False, and nothing written, if another
        process wrote the key first: a key is never written twice."""
        values = [format_value(row[c]) for c in self.columns]
        with self._lock:
            self._refresh()
            written = values[0] not in self.rows
            if written:
                with open(self.path, "a") as f:
                    f.write(_line(values))
                    f.flush()
                    os.fsync(f.fileno())
                self._read = self.path.stat().st_size
                self.rows[values[0]] = dict(zip(self.columns, values))
            if values[0] in self._mine:
                self._write_claims({k: v for k, v in self._read_claims().items()
                                    if k != values[0]})
                self._mine.discard(values[0])
        return written

    # -- claims

    def _read_claims(self) -> dict[str, tuple[int, str, float]]:
        try:
            lines = self._claims.read_text().splitlines()
        except FileNotFoundError:
            return {}
        claims = {}
        for r in csv.reader(lines):
            if len(r) == 4:
                try:
                    claims[r[0]] = (int(r[1]), r[2], float(r[3]))
                except ValueError:
                    pass  # a malformed claim protects nothing
        return claims

    def _write_claims(self, claims: Mapping[str, tuple[int, str, float]]) -> None:
        if not claims:
            self._claims.unlink(missing_ok=True)
            return
        write_atomic(self._claims, "".join(_line((k, *v)) for k, v in claims.items()))

    def _stale(self, claim: tuple[int, str, float], now: float) -> bool:
        pid, host, since = claim
        if now - since > self.claim_timeout:
            return True
        return host == socket.gethostname() and not _alive(pid)

    def claim(self, key: str) -> bool:
        """Marks ``key`` as being computed by this process. False if it is done or another live
        process holds it; a stale claim is taken over."""
        with self._lock:
            self._refresh()
            if key in self.rows:
                return False
            claims, now = self._read_claims(), time.time()
            other = claims.get(key)
            if other and other[0] != os.getpid() and not self._stale(other, now):
                return False
            claims[key] = (os.getpid(), socket.gethostname(), now)
            self._write_claims(claims)
            self._mine.add(key)
            return True

    def release(self) -> None:
        """Drops this process's unfinished claims (another process may then compute them)."""
        if not self._mine:
            return
        with self._lock:
            self._write_claims({k: v for k, v in self._read_claims().items()
                                if k not in self._mine})
            self._mine.clear()

    def claimed(self, keys: Iterable[str]) -> Iterator[str]:
        """The keys of ``keys`` not yet done, each claimed by this process just before it is
        yielded; keys that another live process holds are skipped. Unfinished claims are
        released when the loop ends, however it ends."""
        try:
            for key in dict.fromkeys(keys):
                if self.claim(key):
                    yield key
        finally:
            self.release()
