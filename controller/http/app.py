"""Builds the FastAPI app and owns the lifetime of its store, launcher and dispatcher."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller.http import routes
from controller.http.auth import Authenticator, document
from controller.http.deps import Services
from controller.http.docs import install_docs
from controller.http.errors import install_error_handlers
from controller.http.middleware import BearerAuth, BodySizeLimit
from controller.launchers import make_launcher
from controller.quantity import parse_memory_bytes
from controller.queue.dispatcher import Dispatcher
from controller.queue.metrics import Metrics
from controller.queue.store import Store, open_store
from controller.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The app; it opens the configured store at start unless handed one (`podq serve` opens it first, to
    refuse a bad database in one line), and closes it at shutdown either way."""
    settings = settings or Settings()
    handed = [store] if store is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = handed.pop() if handed else open_store(settings)
        launcher = make_launcher(settings)
        metrics = Metrics(store, launcher.pool_stats)
        metrics.info.set(settings.max_concurrent)
        dispatcher = Dispatcher(
            store,
            launcher,
            max_concurrent=settings.max_concurrent,
            max_attempts=settings.max_attempts,
            metrics=metrics,
            max_memory_bytes=parse_memory_bytes(settings.max_memory),
            crash_at=settings.test_crash_at if settings.enable_test_hooks else None,
            heartbeat_seconds=settings.heartbeat_seconds,
            stale_seconds=settings.replica_stale_seconds,
        )
        await launcher.start()
        await dispatcher.start()
        app.state.services = Services(settings, store, dispatcher, launcher, metrics)
        log.info(
            "podq ready: launcher=%s store=%s max_concurrent=%d",
            launcher.name,
            settings.database_path,
            settings.max_concurrent,
        )
        try:
            yield
        finally:
            await dispatcher.stop()
            await launcher.close()
            store.close()
            log.info("podq stopped")

    app = FastAPI(
        title="podq",
        version="0.1.0",
        description="Runs SQL over parquet datasets, one isolated worker per query.",
        lifespan=lifespan,
        # Served by install_docs, from local assets rather than a CDN.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, limit=settings.max_body_bytes)
    authenticator = Authenticator.from_settings(settings)
    if authenticator.enabled:
        # Added last, so outermost: an unauthenticated request is refused before its body is read.
        metrics_open = not settings.metrics_require_auth
        app.add_middleware(BearerAuth, authenticator=authenticator, metrics_open=metrics_open)
        plain_openapi = app.openapi
        app.openapi = lambda: document(plain_openapi(), metrics_open)  # type: ignore[method-assign]
    for router in (routes.queries, routes.inspections, routes.health):
        app.include_router(router)
    log.info("API auth %s", "on" if authenticator.enabled else "off (no tokens configured)")
    return app
