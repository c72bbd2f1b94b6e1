"""The broker: the only code that knows Redis key names and the wire protocol.

Front servers (api, webui) use :class:`broker.producer.Producer`; model workers use
:class:`broker.consumer.JobConsumer` and :class:`broker.registry.WorkerRegistration`.
"""

from broker.keys import Keys
from broker.settings import Settings

__all__ = ["Keys", "Settings"]
