from hypothesis import settings

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
# example is not replayed against the next.
settings.register_profile("mutation", max_examples=20, derandomize=True, database=None)
