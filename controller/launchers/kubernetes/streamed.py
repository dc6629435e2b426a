"""A pool pod's outcome from what its worker wrote to the attach stream, before the kubelet reports its end.

The kubelet notices a container's exit only at its next relist (up to a second after it), so waiting for
the pod's final status costs a warm query more than everything else together. The worker's stdout comes
through the attach stream as it is written; once it holds the verified envelope (its length and sha256
checked by `decode_envelope`, so a cut or garbled one is never taken), that envelope is the outcome, and
the pod is deleted without waiting for its status. What wins: a verified envelope stands even if the pod
is then reported OOMKilled (the kernel can only have killed the worker after its whole result was
written). Without a verified envelope (the worker crashed, was OOM-killed or stopped at its deadline
before writing one), the pod's end decides, exactly as for a cold pod (pod_fate.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.launchers.base import Outcome
from controller.launchers.kubernetes.pod_fate import placement
from controller.launchers.usage import from_worker, settle
from controller.launchers.worker_io import as_error_info
from worker_image.protocol import EnvelopeError, decode_envelope


def streamed_outcome(output: bytes, pod: Mapping[str, Any]) -> Outcome | None:
    """The outcome in the worker's streamed stdout, or None when it holds no verified envelope."""
    try:
        payload = decode_envelope(output.decode(errors="replace"))
    except EnvelopeError:
        return None
    where = {**placement(pod), "result_from": "attach"}
    # A pool pod started before its query was claimed: it has no starting phase of the query's.
    usage = settle(from_worker(payload.get("usage"))[0])
    result = payload.get("result")
    if payload.get("ok") is True and isinstance(result, dict):
        return Outcome(result=result, placement=where, usage=usage)
    info = as_error_info(payload.get("error")) if payload.get("ok") is False else None
    return None if info is None else Outcome(error=info, placement=where, usage=usage)
