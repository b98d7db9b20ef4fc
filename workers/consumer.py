"""The worker's consumer: Celery's, made to survive losing the Redis broker mid-delivery.

With celery 5.7 / kombu 5.7, ``Consumer.on_connection_error_after_connected`` first
``collect()``s the lost connection, which clears its transport's client but leaves its channel
open (that channel's close failed on the dead socket). Two things then raise ``AttributeError``
(the channel cannot build a connection pool without that client) and the worker exits with
"Unrecoverable error", both seen in tests/faults on a Redis restart:

- closing that channel, which tries to restore its unacknowledged messages;
- acknowledging, on that channel, a task that was running across the reconnect and finished
  after it (``worker_cancel_long_running_tasks_on_connection_loss`` is off, so such tasks run
  to the end and record their outcome in the store).

Neither can do anything useful on a channel that is gone: the messages stay in Redis's
``unacked`` set and come back after the visibility timeout, when their job's start is skipped
(the job is finished) or runs it (its lease lapsed; the sweeper and the reaper act sooner). So
on that old channel both failures are logged and dropped, and the worker reconnects as it
should.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)


class BrokerLossTolerantConsumer(Consumer):  # type: ignore[misc]
    """``celery.worker.consumer.Consumer`` that reconnects instead of dying on the lost
    connection's channel."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        connection = self.connection
        if connection is not None:
            _tolerate_half_closed_channel(connection)
            channels = {
                id(ch): ch
                for ch in (getattr(connection, "_default_channel", None), self._task_channel())
            }
            for channel in channels.values():
                if channel is not None:
                    _drop_late_acks(channel)
        super().on_connection_error_after_connected(exc)

    def _task_channel(self) -> Any:
        return getattr(getattr(self, "task_consumer", None), "channel", None)


def _tolerate_half_closed_channel(connection: Any) -> None:
    """Make this (lost, about to be discarded) connection's channel close survive the error."""
    close_channel = connection.maybe_close_channel

    def maybe_close_channel(channel: Any) -> None:
        try:
            close_channel(channel)
        except AttributeError:
            log.warning(
                "broker connection lost: its unacknowledged messages stay in the broker's "
                "unacked set (restored after the visibility timeout; job leases and the "
                "sweeper act sooner); reconnecting",
                exc_info=True,
            )

    connection.maybe_close_channel = maybe_close_channel


def _drop_late_acks(channel: Any) -> None:
    """Acks and rejects on the lost channel that fail for want of a connection are logged and
    dropped instead of ending the worker."""
    ack, reject = channel.basic_ack, channel.basic_reject

    def basic_ack(delivery_tag: Any, multiple: bool = False) -> None:
        try:
            ack(delivery_tag, multiple=multiple)
        except AttributeError:
            log.warning(
                "a task finished after its broker connection was lost: message %s stays "
                "unacked and comes back after the visibility timeout (its start is then "
                "skipped)",
                delivery_tag,
            )

    def basic_reject(delivery_tag: Any, requeue: bool = False) -> None:
        try:
            reject(delivery_tag, requeue=requeue)
        except AttributeError:
            log.warning(
                "message %s came on a lost broker connection and cannot be rejected: it "
                "comes back after the visibility timeout",
                delivery_tag,
            )

    channel.basic_ack = basic_ack
    channel.basic_reject = basic_reject
