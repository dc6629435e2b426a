"""One PostgreSQL server for many test processes (tests/mutation.sh's mutants): started as
tests/support/postgres.py starts the suite's own, with the databases of its pool (`POOL`) that the test
processes take turns at; its port written to PORT_FILE once they exist, stopped and removed on SIGTERM or
SIGINT.

    python -m tests.tools.shared_postgres PORT_FILE
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.support.postgres import POOL, PostgresServer, binaries


def main(port_file: Path) -> None:
    bin_dir = binaries()
    if bin_dir is None:
        sys.exit("no PostgreSQL binaries (initdb): apt-get install postgresql, or run bash tests/run.sh")
    ending = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, ending)
    server = PostgresServer(bin_dir)
    try:
        server.init()
        server.start()
        for name in POOL:
            server.execute(server.url(), f"CREATE DATABASE {name}")
        port_file.write_text(str(server.port))
        signal.sigwait(ending)
    finally:
        server.remove()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
