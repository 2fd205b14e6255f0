"""Faust's aiokafka transport, with a cheaper hand-off of each fetched message to the streams."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator, Set
from typing import Any

from faust.transport.drivers import aiokafka
from faust.types import TP
from mode.services import WaitArgT, WaitResults

# Assigned partitions → the offsets to read them from, where the app knows better than Kafka's committed offsets.
ResumeFrom = Callable[[Set[TP]], Awaitable[dict[TP, int]]]


class _Resumed:
    """An awaitable that carries on a coroutine already run up to its first suspension at `yielded` (what it
    handed its driver: a future to wait on, or None to let the loop run once), for a task to drive further."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro, self._yielded = coro, yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self._coro, self._yielded
        while True:
            error: BaseException | None = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # a cancellation, or the awaited future's error: the coroutine's to handle
                error = e
            try:
                yielded = coro.send(sent) if error is None else coro.throw(error)
            except StopIteration as done:
                return done.value


class Consumer(aiokafka.Consumer):
    async def perform_seek(self) -> None:
        """After an assignment Faust seeks each partition to Kafka's committed offset; where the store tracks its own
        offsets (the transport's `resume_from`), it then seeks to what the store has. Kafka's offset can be ahead
        (the store lost a commit, or a batch failed after its offsets were committed), and with no new message on
        the partition nothing would ever show it."""
        await super().perform_seek()
        resume_from: ResumeFrom | None = getattr(self.transport, "resume_from", None)
        if resume_from is not None:
            for tp, offset in sorted((await resume_from(self.assignment())).items()):
                await self.seek(tp, offset)

    async def wait_first(self, *coros: WaitArgT, timeout: Any = None) -> WaitResults:
        """Faust's fetch loop hands every message to the streams as `wait_first(callback(message),
        suspend_flow.wait())`: four futures and an asyncio.wait per message, a sixth of the ingest worker's CPU.
        Almost every hand-off completes without suspending (the stream's queue has room), so its first step runs
        here at once, as the task wait_first makes would run it first; one that must wait goes on through
        Service.wait_first from where it stopped, where flow suspension, a stop or a crash interrupt it as before.
        """
        first = coros[0] if coros else None
        if (timeout is None and len(coros) == 2 and asyncio.iscoroutine(first)
                and not self._stopped.is_set() and not self._crashed.is_set()):
            try:
                yielded = first.send(None)
            except StopIteration as done:
                other = coros[1]
                if asyncio.iscoroutine(other):
                    other.close()  # never started: nothing to wait for
                return WaitResults([first], [done.value], False)
            coros = (_Resumed(first, yielded), coros[1])
        return await super().wait_first(*coros, timeout=timeout)


class Transport(aiokafka.Transport):
    """kafka:// as Faust runs it, with the Consumer above."""

    Consumer = Consumer
