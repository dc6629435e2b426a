"""`python -m bench --size smoke|small|full`: run the sections and print their tables as Markdown.

smoke keeps the code alive (seconds, for CI); small is the 1M-row fact table, 50 latency runs and 10,000
stored queries; full adds the 10M-row fact table.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import api, engine, latency
from bench.data import generate
from bench.machine import describe

SECTIONS = ("engine", "latency", "api")


@dataclass(frozen=True)
class Size:
    fact_rows: tuple[int, ...]
    repeats: int
    latency_runs: int
    stored: int


SIZES = {
    "smoke": Size(fact_rows=(20_000,), repeats=1, latency_runs=5, stored=200),
    "small": Size(fact_rows=(1_000_000,), repeats=3, latency_runs=50, stored=10_000),
    "full": Size(fact_rows=(1_000_000, 10_000_000), repeats=3, latency_runs=50, stored=10_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument(
        "--workdir", type=Path, help="keep data here (reused across runs); default a temp dir"
    )
    args = parser.parse_args()
    size, sections = SIZES[args.size], args.only or list(SECTIONS)
    with tempfile.TemporaryDirectory(prefix="podq-bench-") as temporary:
        workdir = args.workdir or Path(temporary)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"## Machine\n\n{describe()}\n- size: {args.size}\n", flush=True)
        if "engine" in sections:
            print(f"## 1. Worker engine (median of {size.repeats} runs after a warm-up)\n", flush=True)
            for rows in size.fact_rows:
                paths = generate(workdir / f"data-{rows}", rows)
                results = engine.measure(paths, workdir / "worker-tmp", size.repeats)
                print(engine.report(f"{rows:,} fact rows", results) + "\n", flush=True)
        if "latency" in sections:
            print(f"## 2. Local launcher latency ({size.latency_runs} runs each)\n", flush=True)
            print(latency.report(*latency.measure(workdir, size.latency_runs)) + "\n", flush=True)
        if "api" in sections:
            print("## 3. API and store\n", flush=True)
            results_api = api.measure(workdir, size.stored, clients=20, runs=200)
            print(api.report(results_api) + "\n", flush=True)


if __name__ == "__main__":
    main()
