"""README's CLI examples, run verbatim against a live controller and compared with the output shown.

The block after ``<!-- cli-examples: tests/integration/test_cli_readme.py -->`` is a console session:
``$ `` starts a command (a trailing backslash continues it), the lines up to the next command are its
output (stdout and stderr, as a terminal shows them), where ``...`` stands for any text (ids, times).
The commands run one after another in one bash, so variables carry over; ``podq`` is this checkout's,
``PODQ_URL`` names the live controller, ``DATASET_URL`` is simple.parquet on the fixture file server,
and ``COLUMNS=80``, as the README says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller.testing.process import REPO_ROOT, ControllerProcess

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
MARKER = "<!-- cli-examples: tests/integration/test_cli_readme.py -->"
END = "@@podq-readme-command-end@@"


def examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) in the README's order."""
    text = README.read_text()
    assert MARKER in text, "README lost the CLI examples marker"
    block = text.split(MARKER, 1)[1].split("```console\n", 1)[1].split("\n```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    lines = iter(block.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command += "\n" + next(lines)
            steps.append((command, []))
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return [(command, _trim(output)) for command, output in steps]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def test_readme_cli_examples_run_as_shown(
    running_controller: ControllerProcess, file_server: str, tmp_path: Path
) -> None:
    steps = examples()
    script = "\n".join(
        f"{{\n{command}\n}} 2>&1; __status=$?; printf '%s\\n' '{END}'; (exit $__status)"
        for command, _ in steps
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PODQ_") and key not in ("COLUMNS", "LINES")
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PODQ_URL=running_controller.url,
        DATASET_URL=f"{file_server}/simple.parquet",
        COLUMNS="80",
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outputs = done.stdout.split(f"{END}\n")
    assert len(outputs) == len(steps) + 1, f"the session stopped early: {done.stdout}\n{done.stderr}"
    for (command, expected), actual in zip(steps, outputs, strict=False):
        shown = _trim(actual.splitlines())
        if expected == ["..."]:
            continue
        assert len(shown) == len(expected) and all(
            _matches(e, a) for e, a in zip(expected, shown, strict=True)
        ), f"$ {command}\nREADME shows:\n" + "\n".join(expected) + "\nbut it printed:\n" + "\n".join(shown)
