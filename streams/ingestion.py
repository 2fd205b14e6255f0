"""The ingest agent's port: the batch use case it drives, and the worker's own (store.ingest on Postgres)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import psycopg

from store.ingest import BatchOutcome, BrokerView, Decoded, Publish, ingest_batch


class Ingestion(Protocol):
    """What the ingest agent does with each batch in hand: ask the broker about it, then store it."""

    async def broker_view(self, batch: Sequence[Decoded]) -> BrokerView:
        """The ids of the topics the batch came from and its partitions' log ends (store.ingest.BrokerView)."""
        ...

    async def ingest(self, batch: Sequence[Decoded], broker: BrokerView) -> BatchOutcome:
        """Store the batch exactly once, in one transaction, with its dead letters published before the commit;
        may raise flywheel.domain.tracking.TrackedBeyondLogEnd (a person must decide)."""
        ...


# Opened once per run of the agent, closed when it stops.
OpenIngestion = Callable[[], AbstractAsyncContextManager[Ingestion]]


class StoreIngestion:
    """The worker's own: store.ingest.ingest_batch on one Postgres connection; `view` asks the broker."""

    def __init__(self, conn: psycopg.AsyncConnection, *, consumer_group: str, publish: Publish,
                 view: Callable[[Sequence[Decoded]], Awaitable[BrokerView]]) -> None:
        self.conn, self.consumer_group, self.publish, self.view = conn, consumer_group, publish, view

    async def broker_view(self, batch: Sequence[Decoded]) -> BrokerView:
        return await self.view(batch)

    async def ingest(self, batch: Sequence[Decoded], broker: BrokerView) -> BatchOutcome:
        return await ingest_batch(self.conn, batch, consumer_group=self.consumer_group, publish=self.publish,
                                  broker=broker)
