"""Scores one mutmut run (tests/mutation.sh): reads the `mutants/*.meta` files of the current directory.

Usage: mutation_score.py MODULE_PATH EQUIVALENTS_FILE OUT_JSON CPU_SECONDS  (the run's, passed through)

A mutant counts as killed when mutmut says killed or timeout (a mutant that makes a test hang is caught),
or when it survived and EQUIVALENTS_FILE lists it with the mutated line it still makes (so an entry whose
mutant changed with the code stops counting and the mutant is reported as a survivor again). Everything
else (survived, no tests, suspicious, segfault, not checked) counts against the score.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# In this process, not one `mutmut show` each: that started mutmut again, a second of CPU per listed mutant.
from mutmut.mutation.diff_apply import get_diff_for_mutant

KILLED_CODES = {1, 3}
TIMEOUT_CODES = {36, 24, -24, 152, 255}
SURVIVED_CODE = 0
NO_TESTS_CODES = {5, 33}


def equivalents(path: Path) -> dict[str, tuple[str, str]]:
    """mutant name -> (the mutated line, the reason), from lines `name | mutated line | reason`."""
    listed: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split(" | ")
        # The mutated line may hold " | " itself; the name and the reason do not.
        name, mutated, reason = parts[0].strip(), " | ".join(parts[1:-1]).strip(), parts[-1].strip()
        if len(parts) < 3 or not (name and mutated and reason):
            sys.exit(f"{path}:{number}: expected 'mutant name | mutated line | reason', got {line!r}")
        listed[name] = (mutated, reason)
    return listed


def mutated_lines(name: str) -> list[str]:
    """The added lines of the mutant's diff (what `mutmut show NAME` prints), stripped."""
    diff = get_diff_for_mutant(name)
    return [
        line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]


def main() -> None:
    module, equivalents_file, out, cpu = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    meta = json.loads((Path("mutants") / (module + ".meta")).read_text())
    codes: dict[str, int | None] = meta["exit_code_by_key"]
    listed = equivalents(equivalents_file)
    counts = {"killed": 0, "timeout": 0, "equivalent": 0, "survived": 0, "no tests": 0, "other": 0}
    survivors: list[str] = []
    stale: list[str] = []
    for name, code in sorted(codes.items()):
        if code in KILLED_CODES:
            counts["killed"] += 1
        elif code in TIMEOUT_CODES:
            counts["timeout"] += 1
        elif code == SURVIVED_CODE and name in listed:
            if listed[name][0] in mutated_lines(name):
                counts["equivalent"] += 1
                continue
            stale.append(name)
            counts["survived"] += 1
            survivors.append(name)
        elif code == SURVIVED_CODE:
            counts["survived"] += 1
            survivors.append(name)
        elif code in NO_TESTS_CODES:
            counts["no tests"] += 1
            survivors.append(name)
        else:
            counts["other"] += 1
            survivors.append(f"{name} (exit code {code})")
    total = len(codes)
    caught = counts["killed"] + counts["timeout"] + counts["equivalent"]
    score = 100.0 * caught / total if total else 0.0
    for name in stale:
        print(f"  stale equivalent (its mutant changed, re-read it): {name}")
    for name in survivors:
        print(f"  not killed: {name}")
    result = {"module": module, "mutants": total, **counts, "score": score, "cpu seconds": cpu}
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
