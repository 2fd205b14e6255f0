"""Ingest with personal fields sealed (as in production) against the same ingest storing them in the clear.

    python bench/ingest_crypto.py [--events 50000] [--repeat 3]

Simulated traffic is decoded once (validation and redaction are the same either way), then stored by
store.ingest.ingest_batch in batches of --batch into fresh databases, taking turns: sealed (per-user keys loaded
once per batch, AES-GCM per event) and clear (the same code with a key ring that leaves events as they are: the
store as it was before sealing). Prints each median rate and the ratio sealed / clear (target >= 0.90). The store
alone is timed, without decoding or Kafka, so the ratio is stricter than the worker's end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import store.ingest  # noqa: E402
from bench._stack import bench_stack, fresh_database  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from flywheel.simulator import generate  # noqa: E402
from store import keys  # noqa: E402
from store.db import connect  # noqa: E402
from store.ingest import Decoded, Incoming, decode_message, ingest_batch  # noqa: E402


class ClearRing(keys.KeyRing):
    """A key ring that seals nothing: what the store did before personal fields were sealed."""

    def seal(self, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def open(self, data: dict[str, Any]) -> dict[str, Any]:
        return data

    def seal_bytes(self, user: str, raw: bytes, context: bytes) -> bytes | None:
        return raw


async def _clear_load(conn: Any, users: Iterable[str | None], *, create: bool, lock: bool = True) -> keys.KeyRing:
    return ClearRing()


async def _nothing(_: object) -> None:
    return None


async def store_all(url: str, decoded: list[Decoded], batch: int) -> float:
    conn = await connect(url)
    try:
        started = time.perf_counter()
        for start in range(0, len(decoded), batch):
            await ingest_batch(conn, decoded[start:start + batch], consumer_group="bench", publish=_nothing)
        return time.perf_counter() - started
    finally:
        await conn.close()


def compare(server_url: str, events: int, *, batch: int = 2000, repeat: int = 4, seed: int = 11,
            say: Callable[[str], None] = print) -> tuple[float, float]:
    """(clear, sealed) median rates in events/s, storing the same decoded traffic in turns into fresh databases
    on the server of `server_url`."""
    decoded = [decode_message(Incoming("feedback", 0, i, sim.key, sim.value), max_event_bytes=1 << 20)
               for i, sim in enumerate(generate(events, seed=seed, bad_fraction=0.0))]
    sealed_keys = store.ingest.keys
    clear_keys = SimpleNamespace(load=_clear_load)
    times: dict[str, list[float]] = {"sealed": [], "clear": []}
    try:
        for turn in range(repeat):
            # ABBA: the order changes every turn, so a machine warming up or getting busier favours neither.
            for mode in ("clear", "sealed") if turn % 2 == 0 else ("sealed", "clear"):
                store.ingest.keys = clear_keys if mode == "clear" else sealed_keys  # type: ignore[assignment]
                with fresh_database(server_url, f"bench_crypto_{uuid.uuid4().hex[:8]}") as url:
                    times[mode].append(asyncio.run(store_all(url, decoded, batch)))
                say(f"  {mode:<6} {events / times[mode][-1]:9,.0f} events/s")
    finally:
        store.ingest.keys = sealed_keys
    return events / statistics.median(times["clear"]), events / statistics.median(times["sealed"])


def report(events: int, repeat: int, clear: float, sealed: float) -> None:
    print(f"store, personal fields in the clear    {clear:9,.0f} events/s (median of {repeat}, {events} events)")
    print(f"store, personal fields sealed          {sealed:9,.0f} events/s   "
          f"ratio {sealed / clear:5.2f}   (target >= 0.90)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()

    with bench_stack(Settings(), "flywheel-bench-crypto-") as (server_url, _):
        clear, sealed = compare(server_url, args.events, batch=args.batch, repeat=args.repeat, seed=args.seed,
                                say=lambda line: print(line, flush=True))
    report(args.events, args.repeat, clear, sealed)


if __name__ == "__main__":
    main()
