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
