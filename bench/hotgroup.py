"""Hot prompt group benchmark: the projector's cost per new event as one prompt group grows.

    python bench/hotgroup.py [--responses 100000] [--step 1000]

One conversation opening that every user sends (a popular first message) collects responses, each with some
feedback (thumbs, ratings by a few raters, edits), ingested --step events at a time straight through store.ingest;
after each step the signals projector runs once, with its group cache, as a worker's projector would. Prints the
projector's time per new event by decile of the group's size, and the last decile over the first: flat (<= 2) is
the target, so that one popular prompt cannot stall the projector for every app.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stack import bench_stack, fresh_database  # noqa: E402
from flywheel.domain.signals import SignalConfig  # noqa: E402
from flywheel.settings import Settings  # noqa: E402
from store.db import connect  # noqa: E402
from store.ingest import Incoming, decode_message, ingest_batch  # noqa: E402
from store.signals import GroupCache, catch_up  # noqa: E402

PROMPT = [{"role": "user", "content": "Hi! What can you help me with today?"}]


def traffic(responses: int, seed: int) -> list[dict[str, Any]]:
    """Interactions to one prompt, each followed by one or two feedback events, in event-time order."""
    rng = random.Random(seed)
    at = datetime(2026, 11, 1, tzinfo=UTC)
    out: list[dict[str, Any]] = []

    def event(kind: str, iid: str, payload: dict[str, Any], user: str) -> dict[str, Any]:
        nonlocal at
        at += timedelta(milliseconds=50)
        return {"event_id": str(uuid.UUID(int=rng.getrandbits(128))), "type": kind, "schema_version": 1,
                "occurred_at": at.isoformat(), "app_id": "assistant", "interaction_id": iid, "model_version": "m-1",
                "prompt_version": "p-1", "user": {"id_hash": user, "consent_training": True}, "payload": payload}

    for n in range(responses):
        iid = f"hot-{n}"
        user = f"u{rng.randrange(5000)}"
        out.append(event("interaction", iid, {"messages": PROMPT, "response": f"I can help with task {n} and more.",
                                              "tags": []}, user))
        roll = rng.random()
        if roll < 0.4:
            out.append(event("thumbs", iid, {"value": rng.choice(["up", "down"])}, user))
        elif roll < 0.7:
            rater = f"rater{rng.randrange(20)}"
            out.append(event("rating", iid, {"score": rng.randint(1, 5), "scale": 5}, rater))
        elif roll < 0.8:
            out.append(event("edit", iid, {"edited_response": f"I can help you with tasks like {n}, and much more."},
                             user))
    return out


async def run(url: str, events: list[dict[str, Any]], step: int, cache: GroupCache) -> list[tuple[int, float]]:
    """(group size after the step, projector seconds per new event) for each step."""
    conn = await connect(url)

    async def nothing(_: object) -> None:
        return None

    try:
        out, responses = [], 0
        for start in range(0, len(events), step):
            chunk = events[start:start + step]
            batch = [decode_message(Incoming("feedback", 0, start + k, e["interaction_id"].encode(), orjson.dumps(e)),
                                    max_event_bytes=1 << 20) for k, e in enumerate(chunk)]
            await ingest_batch(conn, batch, consumer_group="bench", publish=nothing)
            responses += sum(1 for e in chunk if e["type"] == "interaction")
            started = time.perf_counter()
            await catch_up(conn, SignalConfig(), max_events=2**62, cache=cache)
            if len(chunk) == step:  # a short last step would weigh a whole-group run by few events
                out.append((responses, (time.perf_counter() - started) / len(chunk)))
        return out
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=100_000)
    ap.add_argument("--step", type=int, default=1000, help="events ingested between projector runs")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    base = Settings()
    events = traffic(args.responses, args.seed)
    with bench_stack(base, "flywheel-bench-hot-") as (server_url, _), \
            fresh_database(server_url, f"bench_hot_{uuid.uuid4().hex[:8]}") as url:
        steps = asyncio.run(run(url, events, args.step, GroupCache(base.signals_cache_records)))
    deciles = [steps[i * len(steps) // 10:(i + 1) * len(steps) // 10] for i in range(10)]
    costs = []
    for d in deciles:
        if d:
            costs.append(statistics.median(c for _, c in d))
            print(f"group of {d[0][0]:>7}-{d[-1][0]:>7} responses: {costs[-1] * 1e6:9.1f} us per new event "
                  f"(median of {len(d)} runs)")
    print(f"last decile / first: {costs[-1] / costs[0]:.1f}x (target <= 2: flat)")


if __name__ == "__main__":
    main()
