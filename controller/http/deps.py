"""What a route gets injected: the controller's services, and the parameters several routes share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from controller.launchers.base import Launcher
from controller.queue.dispatcher import Dispatcher
from controller.queue.metrics import Metrics
from controller.queue.store import Store
from controller.settings import Settings

MAX_WAIT_SECONDS = 300.0


@dataclass
class Services:
    settings: Settings
    store: Store
    dispatcher: Dispatcher
    launcher: Launcher
    metrics: Metrics


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]
WaitParam = Annotated[
    float, Query(ge=0, le=MAX_WAIT_SECONDS, description="Seconds to wait for a terminal state (long poll).")
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Retries with this key and the same body get the first query back (202, same "
        "`Location`, `Idempotent-Replayed: true`) instead of a second run; another body is a 422. "
        "1-255 printable ASCII characters, bare or as a quoted structured-field string.",
    ),
]
