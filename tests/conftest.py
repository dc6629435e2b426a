pytest_plugins = ["tests.support.fixtures", "tests.support.e2e", "tests.support.kube", "tests.support.helm"]
