"""Starting one worker: forked from a zygote when one is given and answers, else a new interpreter."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.launchers.local.child import child_setup
from controller.launchers.local.process import WorkerProcess
from controller.launchers.local.zygote import Zygote, ZygoteLost
from worker_image.protocol import REQUEST_ENV, REQUEST_FD_ENV

__all__ = ["start_worker"]

log = logging.getLogger(__name__)


async def start_worker(
    zygote: Zygote | None,
    *,
    python: str,
    env: Mapping[str, str],
    job_dir: Path,
    cgroup_procs: Sequence[Path],
    rlimit_as: int | None,
    query_id: str,
    max_envelope_bytes: int,
) -> tuple[WorkerProcess, Zygote | None]:
    """The worker, and the zygote it was forked from (None: started cold). `env` holds the request; the
    worker gets it through a pipe instead (warm: a pipe of its own; cold: stdin), so that it is in no
    process's /proc environ for another query to read."""
    worker_env = dict(env)
    request = worker_env.pop(REQUEST_ENV).encode()
    if zygote is not None:
        try:
            worker = await WorkerProcess.fork(
                zygote,
                request=request,
                env=worker_env,
                cwd=job_dir,
                cgroup_procs=cgroup_procs,
                rlimit_as=rlimit_as,
                query_id=query_id,
                max_envelope_bytes=max_envelope_bytes,
            )
        except (ZygoteLost, OSError) as exc:
            log.warning("query %s: no warm worker (%s); starting it cold", query_id, exc)
        else:
            return worker, zygote
    worker = await WorkerProcess.spawn(
        [python, "-m", "worker_image"],
        env={**worker_env, REQUEST_FD_ENV: "0"},
        request=request,
        cwd=job_dir,
        setup=child_setup(cgroup_procs=cgroup_procs, address_space_bytes=rlimit_as),
        query_id=query_id,
        max_envelope_bytes=max_envelope_bytes,
    )
    return worker, None
