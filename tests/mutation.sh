#!/usr/bin/env bash
# Mutation testing of the pure modules and the store (issue 19): mutmut over each module, one at a time,
# against that module's own unit tests, in a scratch copy of the tree (mutmut's `mutants/` never lands
# here). Prints a score and the CPU seconds per module, and a total; exits 1 if any module scores under
# $PODQ_MUTATION_MIN (default 90). A survivor listed in tests/mutation-equivalents.txt (with the mutated line and a reason)
# counts as killed.
#
#   bash tests/mutation.sh                 every module
#   bash tests/mutation.sh sqlguard store  only those (names as in the table below)
#
# Runs in the virtualenv tests/run.sh makes (.venv, or $PODQ_VENV), installing mutmut into it if missing.
# Niced, at most $PODQ_MUTATION_JOBS (default 2) test processes at once. Keeps the scratch copy when
# PODQ_MUTATION_KEEP=1 (to look at survivors: `cd <copy> && mutmut show <name>`).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${PODQ_VENV:-.venv}
minimum=${PODQ_MUTATION_MIN:-90}
jobs=${PODQ_MUTATION_JOBS:-2}
mutmut_version=3.8.1

# name | module | its unit tests (space-separated)
modules=(
  "pod_fate|controller/launchers/kubernetes/pod_fate.py|tests/unit/test_pod_fate.py"
  "pod_progress|controller/launchers/kubernetes/pod_progress.py|tests/unit/test_pod_fate.py"
  "pod_status|controller/launchers/kubernetes/pod_status.py|tests/unit/test_pod_status.py tests/unit/test_pod_fate.py tests/unit/test_pool.py"
  "podspec|controller/launchers/kubernetes/podspec.py|tests/unit/test_podspec.py"
  "sqlguard|worker_image/sqlguard.py|tests/unit/test_sqlguard.py"
  "local_outcome|controller/launchers/local/outcome.py|tests/unit/test_local_outcome.py"
  "store|controller/queue/store/sql.py|tests/unit/test_store.py tests/unit/test_store_queue_limit.py tests/unit/test_store_records.py tests/unit/test_store_attempts.py tests/unit/test_queue_deadline_limits.py tests/unit/test_replicas.py"
  "store_sqlite|controller/queue/store/sqlite.py|tests/unit/test_store.py tests/unit/test_store_queue_limit.py tests/unit/test_store_records.py"
  "store_reads|controller/queue/store/reads.py|tests/unit/test_store.py tests/unit/test_store_records.py tests/unit/test_store_attempts.py"
  "store_attempts|controller/queue/store/attempts.py|tests/unit/test_store_attempts.py tests/unit/test_store_records.py"
  "retry|controller/queue/retry.py|tests/unit/test_retry_policy.py"
)

[ -x "$venv/bin/python" ] || { echo "no virtualenv at $venv: run bash tests/run.sh first" >&2; exit 2; }
venv=$(cd "$venv" && pwd)
if [[ $("$venv/bin/python" -m pip show mutmut 2>/dev/null | sed -n 's/^Version: //p') != "$mutmut_version" ]]; then
  "$venv/bin/python" -m pip install --quiet "mutmut==$mutmut_version"
fi
export PATH="$venv/bin:$PATH"
# mutmut starts a few fresh interpreters per module (its stats, clean and forced-fail runs, its fork server),
# each importing the whole test stack: without bytecode written, each compiles the project's modules and
# pytest rewrites the assertions of every plugin package's (hypothesis') modules again, ~3 s apiece.
unset PYTHONDONTWRITEBYTECODE

selected=("$@")
scratch=$(mktemp -d "${TMPDIR:-/tmp}/podq-mutation.XXXXXX")
postgres_pid=""
finish() {
  if [[ -n $postgres_pid ]]; then kill "$postgres_pid" 2>/dev/null && wait "$postgres_pid" || true; fi
  if [[ ${PODQ_MUTATION_KEEP:-0} == 1 ]]; then echo "scratch copies kept under $scratch"; else rm -rf "$scratch"; fi
}
trap finish EXIT

# One PostgreSQL server for every test process of the run: the store's tests start one per session, and
# mutmut runs a session per mutant.
"$venv/bin/python" -m tests.tools.shared_postgres "$scratch/postgres.port" &
postgres_pid=$!
for _ in $(seq 600); do
  [[ -s $scratch/postgres.port ]] && break
  kill -0 "$postgres_pid" 2>/dev/null || { echo "the shared PostgreSQL server did not start" >&2; exit 2; }
  sleep 0.1
done
[[ -s $scratch/postgres.port ]] || { echo "the shared PostgreSQL server did not start within 60 s" >&2; exit 2; }
PODQ_TEST_POSTGRES_PORT=$(cat "$scratch/postgres.port")
export PODQ_TEST_POSTGRES_PORT

# The arguments of every test run mutmut starts. Plugins none of the measured tests use are not loaded
# (registering them is part of pytest's start, paid once per mutant): schemathesis (importing it alone
# cost a fresh interpreter a second), the debugger, reports and test kinds these tests do not have, log
# capture (no caplog). Those that decide a verdict stay: warnings (filterwarnings = error) and the
# unraisable- and thread-exception plugins (an exception in a store's thread fails its test).
pytest_args=(-m unit -p no:cacheprovider -p no:schemathesis -p no:debugging -p no:pastebin -p no:junitxml
  -p no:doctest -p no:setuponly -p no:setupplan -p no:stepwise -p no:logging -p no:legacypath -p no:subtests
  -p no:unittest -p tests.tools.mutant_tests --hypothesis-profile=mutation)

toml_list() { local out="" item; for item in "$@"; do out+="${out:+, }\"$item\""; done; printf '[%s]' "$out"; }

start=$SECONDS
# `time` (below): the user and system CPU seconds of a module's mutmut run and all its test processes.
TIMEFORMAT='%U %S'
# The tree as it is now, uncommitted changes included, copied once: every module is measured on the same code.
mkdir -p "$scratch/tree"
tar -c --exclude=__pycache__ controller worker_image tests pyproject.toml | tar -x -C "$scratch/tree"
results=()
for entry in "${modules[@]}"; do
  IFS='|' read -r name module tests <<<"$entry"
  if ((${#selected[@]})) && [[ " ${selected[*]} " != *" $name "* ]]; then continue; fi
  # shellcheck disable=SC2206
  test_files=($tests)
  work="$scratch/$name"
  cp -a "$scratch/tree" "$work"
  # The scratch copy's pyproject.toml gets this module's mutmut section. `forkserver`: polars' thread pool
  # does not survive a plain fork of the process that ran the tests, and forked tests then hang.
  # `timeout_multiplier`: a mutant that breaks the store's SQL leaves the PostgreSQL tests waiting (they
  # count as killed, by timeout); at mutmut's default of 15x the tests' own time, those waits were most of
  # the run (46 of the store's first 190 mutants, ~25 s each).
  cat >>"$work/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["controller", "worker_image"]
only_mutate = ["$module"]
pytest_add_cli_args_test_selection = $(toml_list "${test_files[@]}")
pytest_add_cli_args = $(toml_list "${pytest_args[@]}")
process_isolation = "forkserver"
timeout_multiplier = 5
use_git_change_detection = false
TOML
  printf '\n== %s: %s against %s (%s)\n' "$name" "$module" "$tests" "$(date +%T)"
  module_start=$SECONDS
  { time (cd "$work" && nice -n 10 mutmut run --max-children "$jobs" >"$work/mutmut.log" 2>&1); } 2>"$work/cpu" || {
    tail -40 "$work/mutmut.log" >&2
    echo "mutmut failed on $module (log above)" >&2
    exit 2
  }
  cpu=$(awk '{ printf "%d", $1 + $2 + 0.5 }' "$work/cpu")
  (cd "$work" && python "$root/tests/tools/mutation_score.py" "$module" "$root/tests/mutation-equivalents.txt" \
    "$work/score.json" "$cpu")
  results+=("$work/score.json")
  echo "   $((SECONDS - module_start))s, ${cpu}s of CPU (user and system, mutmut and its test processes)"
done

python - "$minimum" "$((SECONDS - start))" "${results[@]}" <<'PY'
import json, sys

minimum, seconds, paths = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = [json.load(open(path)) for path in paths]
header = ("module", "mutants", "killed", "timeout", "equivalent", "survived", "no tests", "other", "score",
          "CPU s")
print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
below = []
for r in rows:
    print(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['equivalent']} "
          f"| {r['survived']} | {r['no tests']} | {r['other']} | {r['score']:.1f}% | {r['cpu seconds']} |")
    if r["score"] < minimum:
        below.append(r["module"])
total = sum(r["mutants"] for r in rows)
caught = sum(r["killed"] + r["timeout"] + r["equivalent"] for r in rows)
cpu = sum(r["cpu seconds"] for r in rows)
print(f"| total | {total} | | | | | | | {100.0 * caught / total if total else 0:.1f}% | {cpu} |")
print(f"\n{seconds}s in all")
if below:
    print(f"under {minimum:g}%: {', '.join(below)}", file=sys.stderr)
    sys.exit(1)
PY
