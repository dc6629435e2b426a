"""`python -m bench --size smoke|small|full`: run the sections and print their tables as Markdown.

smoke keeps the code alive (seconds, for CI); small is the 1M-row fact table, 50 latency runs, 10,000
stored queries, and on Kubernetes 20 latency runs, 200 queued queries and a burst of 20 with and without a
warm pool (8 at smoke); full adds the 10M-row fact table.
The results section (one 100,000-row result downloaded as JSON, CSV, Arrow and Parquet) is the same at
every size but smoke, which downloads 10,000 rows.
The kube section runs when asked for (`--only kube`), or by default when both `KUBECONFIG` and a worker
image (`--worker-image`, `$PODQ_E2E_WORKER_IMAGE`) are set: a kubeconfig alone may point at a cluster
nobody meant to benchmark.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import api, engine, kube, kube_burst, kube_resize, kube_warm, latency, warmstart
from bench import results as downloads_bench
from bench.data import generate
from bench.machine import describe

SECTIONS = ("engine", "latency", "api", "kube", "results")


@dataclass(frozen=True)
class Size:
    fact_rows: tuple[int, ...]
    repeats: int
    latency_runs: int
    stored: int
    kube_runs: int
    kube_queued: int
    result_rows: int = 100_000
    # `SELECT 1` queries for the warm-vs-cold throughput run (cap 4).
    throughput_queries: int = 200
    # `SELECT 1` queries of the Kubernetes burst, warm pool vs cold pods (cap 8).
    kube_burst: int = 20


SIZES = {
    "smoke": Size(
        fact_rows=(20_000,),
        repeats=1,
        latency_runs=5,
        stored=200,
        kube_runs=3,
        kube_queued=16,
        result_rows=10_000,
        throughput_queries=20,
        kube_burst=8,
    ),
    "small": Size(
        fact_rows=(1_000_000,), repeats=3, latency_runs=50, stored=10_000, kube_runs=20, kube_queued=200
    ),
    "full": Size(
        fact_rows=(1_000_000, 10_000_000),
        repeats=3,
        latency_runs=50,
        stored=10_000,
        kube_runs=20,
        kube_queued=200,
    ),
}


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _sections(only: list[str] | None, worker_image: str | None) -> list[str]:
    if only:
        return only
    kube_ready = os.environ.get("KUBECONFIG") and (worker_image or os.environ.get(kube.IMAGE_ENV))
    return list(SECTIONS) if kube_ready else [s for s in SECTIONS if s != "kube"]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument(
        "--workdir", type=Path, help="keep data here (reused across runs); default a temp dir"
    )
    parser.add_argument(
        "--worker-image", help=f"kube: the worker image on the nodes; default ${kube.IMAGE_ENV}"
    )
    parser.add_argument(
        "--kube-namespace", help="kube: namespace to create and delete; default podq-bench-<random>"
    )
    parser.add_argument(
        "--kube-label",
        type=_label,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="kube: a label of the namespace (repeatable); default podq.dev/test=bench",
    )
    parser.add_argument(
        "--kube-cpu", default="200m", help="kube: CPU limit of every query (default %(default)s)"
    )
    parser.add_argument(
        "--kube-memory", default="256Mi", help="kube: memory limit of every query (default %(default)s)"
    )
    args = parser.parse_args()
    size, sections = SIZES[args.size], _sections(args.only, args.worker_image)
    target = None
    if "kube" in sections:
        labels = dict(args.kube_label) or {"podq.dev/test": "bench"}
        target = kube.Target.from_env(
            args.worker_image, args.kube_namespace, labels, args.kube_cpu, args.kube_memory
        )
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
            queries = size.throughput_queries
            print(f"### Warm start: throughput ({queries} queries at cap 4) and memory\n", flush=True)
            rates, memories = warmstart.measure(workdir, queries, cap=4)
            print(warmstart.report(rates, memories, queries, cap=4) + "\n", flush=True)
        if "api" in sections:
            print("## 3. API and store\n", flush=True)
            results_api = api.measure(workdir, size.stored, clients=20, runs=200)
            print(api.report(results_api) + "\n", flush=True)
        if target is not None:
            _kube_section(target, workdir, size)
        elif not args.only:
            print(f"## 4. Kubernetes mode: not run (needs KUBECONFIG and {kube.IMAGE_ENV})\n", flush=True)
        if "results" in sections:
            print("## 5. Result downloads (median of 5 after a warm-up)\n", flush=True)
            downloads = downloads_bench.measure(workdir, size.result_rows)
            print(downloads_bench.report(downloads, size.result_rows) + "\n", flush=True)


def _kube_section(target: kube.Target, workdir: Path, size: Size) -> None:
    print(f"## 4. Kubernetes mode ({size.kube_runs} latency runs each)\n", flush=True)
    results_kube = kube.measure(target, workdir, size.kube_runs, size.kube_queued)
    print(kube.report(*results_kube, target) + "\n", flush=True)
    print(f"### Warm pool vs cold pods (issue 15), load average {_load()}\n", flush=True)
    warm = kube_warm.measure(target, workdir, size.kube_runs, kube_warm.POOL_SIZE)
    print(kube_warm.report(warm) + f"\n\nload average after: {_load()}\n", flush=True)
    runs = max(1, size.kube_runs // 2)
    print(f"### A larger query, pool pod resized vs cold pod, load average {_load()}\n", flush=True)
    resized = kube_resize.measure(target, workdir, runs)
    print(kube_resize.report(resized) + f"\n\nload average after: {_load()}\n", flush=True)
    queries = size.kube_burst
    print(f"### A burst of {queries}, warm pool vs cold pods, load average {_load()}\n", flush=True)
    bursts = kube_burst.measure(target, workdir, queries)
    print(kube_burst.report(bursts, queries) + f"\n\nload average after: {_load()}\n", flush=True)


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
