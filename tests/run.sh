#!/usr/bin/env bash
# The test command: installs podq with its dev tools into a virtualenv, then lint, type-check and every
# test tier. Extra arguments go to pytest (e.g. `bash tests/run.sh -m unit`).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${PODQ_VENV:-.venv}
step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "install into $venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[dev]'

step "ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

step "mypy"
"$venv/bin/mypy"

step "pytest"
# pytest exits 5 when it collects nothing; set -e turns that into a failure too.
"$venv/bin/python" -m pytest "$@"
