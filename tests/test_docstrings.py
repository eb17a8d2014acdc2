"""Every example in a docstring runs and prints what it shows (the API reference shows them)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import lightning_unlearn

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(lightning_unlearn.__path__, "lightning_unlearn.")
    if not name.endswith("__main__")
)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for test in finder.find(module, name, globs={"torch": importlib.import_module("torch"), **vars(module)}):
        if test.examples:
            runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) of {name} failed (the output above says which)"
