"""Faust's aiokafka transport with two changes (URL scheme ``rgkafka://``).

1. Commits never pass what the processor has finished. When the app stops or rebalances, Faust
   suspends flow control and *acknowledges* the messages it then skips without handing them to
   the agent (streams.py: ``value = skipped_value`` ... ``it.after(event, do_ack or value is
   skipped_value)``); the final commit then covers messages that were never processed, and they
   are lost. Seen in test_worker_stopped_mid_rollout_resumes_without_counting_twice[SIGTERM]: one
   message of 20 events missing after a graceful restart. The guard caps each commit of a source
   topic at the processor's position (the offset after its last finished batch); the processor's
   OffsetGuard (stream.offsets) handles the messages Faust drops at start and on rebalance.

2. A configurable fetch wait. faust-streaming builds its consumer with ``fetch_max_wait_ms=1500``
   and no setting to change it. aiokafka leaves a partition whose fetched records are still
   buffered out of the next fetch request, so that request may hold only idle partitions
   (commands, the assignor's topic) and the broker parks it for the full wait: events then stall
   for up to 1.5 s at a time. Measured on the worker benchmark: ~1.3 s pauses between batches and
   5x lower throughput. The wait comes from ``Settings.fetch_max_wait_ms``.

Everything else is Faust's own transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

SCHEME = "rgkafka"
FETCH_MAX_WAIT_MS = 100  # set by stream.app.bootstrap from the settings


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka keeps the constructor argument here and hands it to its Fetcher in start().
        consumer._fetch_max_wait_ms = int(getattr(self.app, "rollout_gate_fetch_max_wait_ms", FETCH_MAX_WAIT_MS))
        return consumer


# (topic, partition) -> the next offset the processor has not finished, 0 if none, or None for a
# topic the processor does not consume (left to Faust).
CommitLimit = Callable[[str, int], int | None]


def clamp_commit_offsets(offsets: Mapping[Any, int], committed: Mapping[Any, int | None],
                         limit: CommitLimit) -> dict[Any, int]:
    """Faust's committable offsets, each capped at the processor's position; an offset that would
    not move the committed one forward is dropped."""
    out: dict[Any, int] = {}
    for tp, offset in offsets.items():
        cap = limit(tp.topic, tp.partition)
        if cap is not None:
            offset = min(offset, cap)
            done = committed.get(tp)
            if offset <= 0 or (done is not None and offset <= done):
                continue
        out[tp] = offset
    return out


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _filter_committable_offsets(self, tps: Any) -> dict[Any, int]:
        offsets = super()._filter_committable_offsets(tps)
        limit: CommitLimit | None = getattr(self.app, "rollout_gate_commit_limit", None)
        if limit is None:
            return offsets
        return clamp_commit_offsets(offsets, self._committed_offset, limit)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


drivers.TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
