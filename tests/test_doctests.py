"""The ``>>>`` examples of jhnas's docstrings, run as doctests.

Every module of the package that has examples is one test: its examples run with
``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``, in the module's namespace, and the test fails with
doctest's report of every example that does not give its documented output. A module that
cannot be imported (an optional dependency missing) is skipped with the reason, and so is a
module of :data:`SLOW` unless ``JHNAS_SLOW_DOCTESTS=1``.
"""
from __future__ import annotations

import doctest
import importlib
import io
import os
import pkgutil

import pytest

import jhnas

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

#: Modules whose examples take too long for every run of the suite (the rest take seconds).
SLOW = {"jhnas.train": "its example trains an NB201 network for one epoch (tens of seconds on "
                       "2 CPU cores); tests/test_train.py covers training"}


def _modules() -> list[str]:
    names = ["jhnas"] + [m.name for m in pkgutil.walk_packages(jhnas.__path__, "jhnas.")]
    return sorted(set(names))


def _with_examples() -> list:
    """One parameter per module with examples; a module that does not import is a skip."""
    params = []
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            params.append(pytest.param(name, marks=pytest.mark.skip(
                reason=f"{name} does not import: {e}")))
            continue
        if not any(t.examples for t in doctest.DocTestFinder().find(module)):
            continue
        if name in SLOW and os.environ.get("JHNAS_SLOW_DOCTESTS") != "1":
            params.append(pytest.param(name, marks=pytest.mark.skip(
                reason=f"{SLOW[name]}; JHNAS_SLOW_DOCTESTS=1 runs it")))
        else:
            params.append(name)
    return params


@pytest.mark.parametrize("name", _with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in doctest.DocTestFinder().find(module):
        if test.examples:
            runner.run(test, out=report.write)
    failed, attempted = runner.failures, runner.tries
    assert attempted > 0
    assert failed == 0, f"{failed} of {attempted} examples failed in {name}:\n{report.getvalue()}"
