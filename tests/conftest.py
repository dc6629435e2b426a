from hypothesis import Phase, settings

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.postgres",
    "tests.support.stored",
    "tests.support.e2e",
    "tests.support.kube",
    "tests.support.helm",
    "tests.support.promtool",
    "tests.support.browser",
]

# tests/mutation.sh runs the tests of a module once per mutant of it: fewer examples (tests that set their
# own max_examples keep it), the same ones every run, and no example database, so that one mutant's failing
# example is not replayed against the next. No shrinking, and no looking for a second bug: the first failing
# example kills the mutant as it is.
settings.register_profile(
    "mutation",
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    report_multiple_bugs=False,
)

# No per-example deadline anywhere: on a shared 2-core machine an example's time says more about the load
# than about the code (a 200 ms deadline failed a stream test at load 11). Speed is measured in bench/.
settings.register_profile("podq", deadline=None)
settings.load_profile("podq")
