"""Progress of long runs: a tqdm bar on a terminal, one line per step in a log file.

``bar(...)`` takes tqdm's arguments. When standard error is not a terminal (output redirected
to a file, a batch job, CI) a bar of carriage returns is unreadable, so each ``update`` prints
one line instead: ``scoring: 12/200 arch, 1.3 s/arch [16 s]``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable, Iterator, Sized

from tqdm.auto import tqdm


class Lines:
    """The part of tqdm's interface jhnas uses, printing one line per update.

    Examples:
      >>> import sys
      >>> for _ in Lines(range(2), desc="scoring", unit="arch", file=sys.stdout):
      ...     pass
      scoring: 1/2 arch [0 s]
      scoring: 2/2 arch [0 s]
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", initial: int = 0, file: Any = None, **_: Any):
        self.iterable, self.desc, self.unit, self.n = iterable, desc, unit, initial
        # like tqdm: no total for an iterable without a length (a generator)
        self.total = (total if total is not None or not isinstance(iterable, Sized)
                      else len(iterable))
        self.file, self.postfix, self.start = file or sys.stderr, "", time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("'NoneType' object is not iterable")
        for item in self.iterable:
            yield item
            self.update()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def update(self, n: int = 1) -> None:
        self.n += n
        total = f"/{self.total}" if self.total is not None else ""
        post = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}{post} "
              f"[{time.perf_counter() - self.start:.0f} s]", file=self.file, flush=True)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (``enabled`` and a terminal), :class:`Lines` (``enabled``, no terminal) or a
    silent tqdm (not ``enabled``); ``kwargs`` are tqdm's (``total``, ``desc``, ``unit``, ...).

    Examples:
      >>> list(bar(range(3), enabled=False))
      [0, 1, 2]
    """
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, **kwargs)
    return Lines(iterable, **kwargs)


def counted(fn: Callable, progress_bar: Any, postfix: Callable[[Any], str] | None = None
            ) -> Callable:
    """``fn`` that advances ``progress_bar`` by one after each call, with ``postfix(result)`` as
    the bar's postfix (e.g. one line per evaluation of a search's training signal)."""

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if postfix is not None:
            progress_bar.set_postfix_str(postfix(out), refresh=False)
        progress_bar.update()
        return out

    return wrapped
