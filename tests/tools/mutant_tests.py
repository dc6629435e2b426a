"""A pytest plugin for the test runs of tests/mutation.sh (`-p tests.tools.mutant_tests`), which mutmut
starts once per mutant, each in a process forked from one that imported everything already. What a run
costs beyond its tests is pytest's own start-up, paid once per mutant; this plugin cuts it.

- The objects inherited from that process are frozen out of the garbage collector: pytest collects
  several times per run, and walking (and so copying, page by page) the inherited heap each time cost
  about as much as a quick module's tests themselves.
- The installed packages' metadata is read once, in the process the runs are forked from: pytest looks up
  its plugins' entry points once for every plugin a conftest names, reading every installed package's
  metadata files each time.
- A test file is collected only as far as the tests mutmut asked for: mutmut names the tests that cover
  the mutated function, and pytest would otherwise build (parametrize, resolve the fixtures of) every
  test of the file before picking those out.
- The tests run quickest first, by the time each took in mutmut's clean run (`mutmut-stats.json` where
  the tests run), so that a mutant a quick test kills (mutmut passes `-x`) is not first made to wait for
  the slow ones; mutmut hands them over as an unordered set. Tests it has no time for go last.
"""

from __future__ import annotations

import functools
import gc
import json
import math
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

STATS = Path("mutmut-stats.json")
# For each test file named with tests in it (`file::test`), the names of those tests; None: the whole file.
ASKED = pytest.StashKey[dict[Path, set[str] | None]]()


class _ReadOnce(metadata.Distribution):
    """An installed package whose metadata is read once, however often it is asked for."""

    def __init__(self, installed: metadata.Distribution) -> None:
        self._installed = installed
        self._texts: dict[str, str | None] = {}

    def read_text(self, filename: str) -> str | None:
        if filename not in self._texts:
            self._texts[filename] = self._installed.read_text(filename)
        return self._texts[filename]

    def locate_file(self, path: str | os.PathLike[str]) -> Any:
        return self._installed.locate_file(path)

    @functools.cached_property
    def entry_points(self) -> metadata.EntryPoints:
        return super().entry_points

    @functools.cached_property
    def files(self) -> list[metadata.PackagePath] | None:
        return super().files


def _read_metadata_once() -> None:
    """From now on (and in the processes forked from this one), `importlib.metadata.distributions()`
    hands out the same installed packages, each reading its metadata files once."""
    if getattr(metadata.distributions, "read_once", False):
        return
    every = metadata.distributions
    installed = [_ReadOnce(found) for found in every()]
    for package in installed:
        if any(entry.group == "pytest11" for entry in package.entry_points):
            package.files  # noqa: B018 (pytest reads the file list of each package with a plugin)

    def distributions(**query: Any) -> Iterable[metadata.Distribution]:
        return iter(installed) if not query else every(**query)

    distributions.read_once = True  # type: ignore[attr-defined]
    metadata.distributions = distributions


def asked_for(args: list[str], root: Path) -> dict[Path, set[str] | None]:
    """Which tests of which file the command line asks for: `file::test[param]` asks for `test` of
    `file` (a class's tests by the class's name); a bare `file` asks for all of it (None)."""
    names: dict[str, set[str] | None] = {}
    for arg in args:
        path, _, test = arg.partition("::")
        name = test.split("::")[0].split("[")[0]
        if not name:
            names[path] = None
        elif path not in names:
            names[path] = {name}
        elif (known := names[path]) is not None:
            known.add(name)
    return {Path(os.path.abspath(root / path)): asked for path, asked in names.items()}


def pytest_configure(config: pytest.Config) -> None:
    _read_metadata_once()
    gc.freeze()
    config.stash[ASKED] = asked_for(config.args, config.invocation_params.dir)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> list[Any] | None:
    if not isinstance(collector, pytest.Module):
        return None
    wanted = collector.config.stash[ASKED].get(collector.path)
    if wanted is None or name in wanted:
        return None
    return []  # a test (or anything else) of the file that was not asked for: no item


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not STATS.exists():
        return
    seconds: dict[str, float] = json.loads(STATS.read_text())["duration_by_test"]
    items.sort(key=lambda item: seconds.get(item.nodeid, math.inf))
