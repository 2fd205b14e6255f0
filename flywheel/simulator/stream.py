"""The seeded stream: valid traffic in causal order with bad input spread evenly through it."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime

from flywheel.simulator.bad_input import BAD_KINDS, _Traffic
from flywheel.simulator.message import Simulated

DEFAULT_START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
# The largest valid message is a few KiB; below this limit valid traffic could itself be oversize.
MIN_MAX_EVENT_BYTES = 16 * 1024
PANEL_FRACTION = 0.04  # a realistic share of interactions that several other users also judge


def generate(
    events: int,
    *,
    seed: int,
    bad_fraction: float = 0.0,
    start: datetime = DEFAULT_START,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    panel_fraction: float = 0.0,
) -> Iterator[Simulated]:
    """Exactly `events` messages in stream order; same arguments, same bytes.

    Feedback always follows the interactions it refers to; about `bad_fraction` of the messages are bad
    input, spread evenly through the stream and rotating through BAD_KINDS. About `panel_fraction` of the
    interactions are also judged by a panel of 2 to 4 other users of the app, each giving a thumbs or the
    same kind of rating on their own, so inter-rater agreement can be measured (PANEL_FRACTION is a
    realistic share). At 0, the default, the stream is byte for byte what it was before panels existed.
    """
    if events < 0:
        raise ValueError("events must be >= 0")
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError("bad_fraction must be within 0..1")
    if max_event_bytes < MIN_MAX_EVENT_BYTES:
        raise ValueError(f"max_event_bytes must be >= {MIN_MAX_EVENT_BYTES}")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if not 0.0 <= panel_fraction <= 1.0:
        raise ValueError("panel_fraction must be within 0..1")
    traffic = _Traffic(random.Random(seed), start, max_event_bytes, panel_fraction)
    # Error diffusion with a seeded phase: the bad count is within one of events * bad_fraction.
    phase = traffic.rng.random()
    total_bad = min(events, int(events * bad_fraction + phase))
    pending: deque[Simulated] = deque()  # the rest of a multi-message action, e.g. regenerate + interaction
    bad = 0
    for produced in range(events):
        valid_slots_left = events - produced - (total_bad - bad)
        # A bad message never splits an action: messages are built in stream order, so time only moves on.
        bad_due = bad < int((produced + 1) * bad_fraction + phase) or valid_slots_left == 0
        if not pending and bad < total_bad and bad_due:
            bad += 1
            yield traffic.bad(BAD_KINDS[(bad - 1) % len(BAD_KINDS)])
            continue
        if not pending:
            pending.extend(traffic.valid(room=valid_slots_left))
        yield pending.popleft()
