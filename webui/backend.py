"""What every handler of the web UI shares: settings, the producer, the vote log and the model list."""

from __future__ import annotations

from collections.abc import Callable

from broker.connection import async_client
from broker.errors import BrokerUnavailable
from broker.producer import Producer
from broker.settings import Settings
from webui.settings import WebUISettings
from webui.status import live_models
from webui.votes import VoteLog


class Backend:
    """What all handlers share: settings, the producer, the vote log and the model list.

    The producer is the process's own: ``producer`` gives the one an app the UI is mounted into already has (the
    API's, see :mod:`queuechat.compose`); without it the UI makes its own on first use, inside the server's event
    loop, where its event-routing tasks must live, and closes it with :meth:`close`."""

    def __init__(
        self, settings: Settings, ui: WebUISettings, *, producer: Callable[[], Producer] | None = None
    ) -> None:
        self.redis_url = settings.require_redis_url("the web UI")
        self.settings = settings
        self.ui = ui
        self.votes = VoteLog(ui.log_dir)
        self._shared = producer
        self._producer: Producer | None = None
        self._models: list[str] | None = None

    @property
    def producer(self) -> Producer:
        if self._shared is not None:
            return self._shared()
        if self._producer is None:
            self._producer = Producer(async_client(self.redis_url), self.settings)
        return self._producer

    async def models(self, *, fresh: bool) -> list[str]:
        """The live models. In ``once`` mode the first answer is kept for page loads; the ↻ button is fresh."""
        if fresh or self.ui.model_list_mode == "reload" or not self._models:  # an empty list is worth a retry
            try:
                self._models = await live_models(self.producer)
            except BrokerUnavailable:
                return self._models or []
        return self._models

    async def close(self) -> None:
        """Close the producer this backend made (a shared one is closed by its owner)."""
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
