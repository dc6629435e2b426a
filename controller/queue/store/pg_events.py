"""The PostgreSQL store's ears: one connection of its own that LISTENs on the store's channels and hands
every NOTIFY to the subscriber, reconnecting (and saying so) when the server goes away."""

from __future__ import annotations

import logging
import threading

import psycopg

from controller.queue.store.base import CANCEL, FINISHED, QUEUED, RECONNECTED, Subscriber

log = logging.getLogger(__name__)

CHANNELS = (FINISHED, QUEUED, CANCEL)
RECONNECT_SECONDS = 1.0


class Listener:
    def __init__(self, url: str, subscriber: Subscriber, connect_timeout: float) -> None:
        self._url = url
        self._subscriber = subscriber
        self._connect_timeout = connect_timeout
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podq-pg-listener", daemon=True)
        self._thread.start()
        # Events from now on are heard (unless the database is out of reach: then once it is back).
        self._listening.wait(connect_timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, round(self._connect_timeout))
                ) as conn:
                    for channel in CHANNELS:
                        conn.execute(f"LISTEN {channel}")
                    self._listening.set()
                    if not first:
                        log.info("listening to the database again")
                        # Whatever was notified while deaf is lost: let the subscriber look again.
                        self._subscriber(RECONNECTED, "")
                    first = False
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=0.1):
                            self._subscriber(notify.channel, notify.payload)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("database listener lost (%s); reconnecting", exc)
                    first = False
                    self._stop.wait(RECONNECT_SECONDS)
