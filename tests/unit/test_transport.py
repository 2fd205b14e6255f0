"""The eager hand-off of streams.transport: a coroutine run up to its first suspension, then carried on by a task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.transport import _Resumed


def _started(coro: Any) -> _Resumed:
    return _Resumed(coro, coro.send(None))


def test_a_resumed_coroutine_gets_what_it_awaited_and_returns_its_value() -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        seen: list[Any] = []

        async def handoff() -> str:
            seen.append(await first)
            await asyncio.sleep(0)  # a bare yield to the loop
            seen.append(await second)
            return "done"

        task = asyncio.ensure_future(_started(handoff()))
        loop.call_soon(first.set_result, 1)
        loop.call_later(0.01, second.set_result, 2)
        seen.append(await task)
        return seen

    assert asyncio.run(main()) == [1, 2, "done"]


def test_an_error_of_the_awaited_future_reaches_the_coroutine() -> None:
    async def main() -> str:
        future = asyncio.get_running_loop().create_future()

        async def handoff() -> str:
            try:
                await future
            except KeyError:
                return "handled"
            return "not raised"

        task = asyncio.ensure_future(_started(handoff()))
        future.set_exception(KeyError("x"))
        return await task

    assert asyncio.run(main()) == "handled"


def test_cancelling_the_task_cancels_the_coroutine() -> None:
    cleaned: list[bool] = []

    async def main() -> None:
        future = asyncio.get_running_loop().create_future()

        async def handoff() -> None:
            try:
                await future
            finally:
                cleaned.append(True)

        task = asyncio.ensure_future(_started(handoff()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == [True]
