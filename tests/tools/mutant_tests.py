"""A pytest plugin for the test runs of tests/mutation.sh (`-p tests.tools.mutant_tests`), which mutmut
starts once per mutant, each in a process forked from one that imported everything already.

- The objects inherited from that process are frozen out of the garbage collector: pytest collects
  several times per run, and walking (and so copying, page by page) the inherited heap each time cost
  about as much as a quick module's tests themselves.
- The tests run quickest first, by the time each took in mutmut's clean run (`mutmut-stats.json` where
  the tests run), so that a mutant a quick test kills (mutmut passes `-x`) is not first made to wait for
  the slow ones; mutmut hands them over as an unordered set. Tests it has no time for go last.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest

STATS = Path("mutmut-stats.json")


def pytest_configure() -> None:
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not STATS.exists():
        return
    seconds: dict[str, float] = json.loads(STATS.read_text())["duration_by_test"]
    items.sort(key=lambda item: seconds.get(item.nodeid, math.inf))
