"""Running a unit of work against a test database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from store.db import connect


def in_store(url: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run `work(conn)` on a fresh autocommit connection (units of work own their transactions)."""

    async def go() -> Any:
        conn = await connect(url, autocommit=True)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def sampled_cases(url: str, sample_id: str) -> list[dict[str, Any]]:
    """A recorded sample's chosen cases as the store reads them: each conversation opened from its sealed form."""
    from store.hardcases import PostgresHardCases

    sampled = in_store(url, lambda conn: PostgresHardCases(conn).sample(sample_id))
    assert sampled is not None, f"no sample {sample_id}"
    return list(sampled.chosen)
