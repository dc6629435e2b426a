"""Writing to a container's stdin through ``pods/attach``: the official client's `kubernetes.stream`, which
speaks the channel protocol (v5.channel.k8s.io, else v4) over a websocket. Blocking: `KubeClient` runs it
on its thread pool."""

from __future__ import annotations

from typing import Any

from kubernetes import client as k8s
from kubernetes.stream import stream

STDIN_CHANNEL = 0


def write_stdin(configuration: Any, namespace: str, name: str, container: str, data: bytes) -> None:
    """Attach to the container's stdin only, write `data`, close stdin and detach."""
    # `stream` swaps its ApiClient's transport while it connects, so it gets an ApiClient of its own,
    # never the one KubeClient's threads share.
    with k8s.ApiClient(configuration) as api_client:
        connection = stream(
            k8s.CoreV1Api(api_client).connect_get_namespaced_pod_attach,
            name,
            namespace,
            container=container,
            stdin=True,
            stdout=False,
            stderr=False,
            tty=False,
            _preload_content=False,
            binary=True,
        )
        try:
            connection.write_stdin(data)
            # With v5 this closes stdin before the connection closes; with v4 closing the connection does.
            connection.close_channel(STDIN_CHANNEL)
        finally:
            connection.close()
