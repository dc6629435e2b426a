"""What the nodes could hold, kept fresh, for the 422 on limits no node could ever run (see `capacity`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from controller.launchers.base import Limits
from controller.launchers.kubernetes.capacity import NodeRoom, node_rooms, refusal
from controller.launchers.kubernetes.client.api import KubeClient
from controller.launchers.kubernetes.client.errors import Forbidden, KubeError

log = logging.getLogger(__name__)

NODE_REFRESH_SECONDS = 60.0


class NodeRooms:
    """The rooms of the nodes the worker pods may land on; unknown (refusing nothing) where the API server
    will not list nodes to the controller."""

    def __init__(self, api: KubeClient, node_selector: Mapping[str, str], unschedulable_after: float) -> None:
        self._api = api
        self._node_selector = node_selector
        self._unschedulable_after = unschedulable_after
        self._rooms: list[NodeRoom] | None = None
        self._forbidden = False

    def refusal(self, limits: Limits) -> str | None:
        return None if self._rooms is None else refusal(limits, self._rooms)

    async def refresh(self) -> None:
        try:
            nodes = await self._api.list_nodes()
        except Forbidden:
            if not self._forbidden:
                log.warning(
                    "cannot list nodes (forbidden): limits no node could hold are not refused at submission, "
                    "they fail as unschedulable after %gs instead",
                    self._unschedulable_after,
                )
            self._forbidden = True
            self._rooms = None
            return
        except KubeError as exc:
            log.warning("cannot list nodes: %s; keeping what was known", exc)
            return
        self._rooms = node_rooms(nodes, self._node_selector)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(NODE_REFRESH_SECONDS)
            await self.refresh()
