pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.stored",
    "tests.support.e2e",
    "tests.support.kube",
    "tests.support.helm",
    "tests.support.promtool",
]
