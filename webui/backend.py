"""What every handler of the web UI shares: settings, the producer, the vote log and the model list."""

from __future__ import annotations

from broker.connection import async_client
from broker.errors import BrokerUnavailable
from broker.producer import Producer
from broker.settings import Settings
from webui.settings import WebUISettings
from webui.status import live_models
from webui.votes import VoteLog


class Backend:
    """What all handlers share: settings, the producer (made on first use, inside the server's event loop, where
    its event-routing tasks must live), the vote log and the model list."""

    def __init__(self, settings: Settings, ui: WebUISettings) -> None:
        if not settings.redis_url:
            raise ValueError("the web UI needs a Redis URL (--redis-url or QUEUECHAT_REDIS_URL)")
        self.settings = settings
        self.ui = ui
        self.votes = VoteLog(ui.log_dir)
        self._producer: Producer | None = None
        self._models: list[str] | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            assert self.settings.redis_url
            self._producer = Producer(async_client(self.settings.redis_url), self.settings)
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
        if self._producer is not None:
            await self._producer.close()
