"""The worker's consumer: Celery's, made to survive losing the Redis broker mid-delivery.

With celery 5.7 / kombu 5.7, when the broker connection drops while a message is unacknowledged,
``Consumer.on_connection_error_after_connected`` first ``collect()``s the connection (which
clears the transport's client but leaves the default channel open, its close having failed on
the dead socket), then closes it: the channel's close tries to restore the unacknowledged
message through a connection pool it can no longer build, raises ``AttributeError``, and the
worker exits with "Unrecoverable error". Seen in tests/faults on a Redis restart.

The restore could not have succeeded anyway (the broker is down at that moment): the message
stays in Redis's ``unacked`` hash, and the job's lease and the queued-job sweeper run it again.
So the close tolerates that error, logs it, and the worker reconnects as it should.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


class BrokerLossTolerantConsumer(Consumer):  # type: ignore[misc]
    """``celery.worker.consumer.Consumer`` that reconnects instead of dying on that close."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        if self.connection is not None:
            _tolerate_half_closed_channel(self.connection)
        super().on_connection_error_after_connected(exc)


def _tolerate_half_closed_channel(connection: Any) -> None:
    """Make this (dead, about to be discarded) connection's channel close survive the error."""
    close_channel = connection.maybe_close_channel

    def maybe_close_channel(channel: Any) -> None:
        try:
            close_channel(channel)
        except AttributeError:
            log.warning(
                "broker connection lost: unacknowledged messages stay in the broker's unacked "
                "set (the job lease and the sweeper run their jobs again); reconnecting",
                exc_info=True,
            )

    connection.maybe_close_channel = maybe_close_channel
