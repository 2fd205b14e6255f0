"""Seeded synthetic traffic for flywheel.feedback: chats, feedback on them, and every kind of bad input."""

from __future__ import annotations

from flywheel.simulator.apps import APPS, App, Persona
from flywheel.simulator.bad_input import BAD_KINDS
from flywheel.simulator.message import Simulated
from flywheel.simulator.pii import PII_RATE
from flywheel.simulator.stream import (
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_START,
    MIN_MAX_EVENT_BYTES,
    PANEL_FRACTION,
    generate,
)
from flywheel.simulator.summary import Summary
from flywheel.simulator.turns import Turn, Writer

__all__ = [
    "APPS",
    "BAD_KINDS",
    "DEFAULT_MAX_EVENT_BYTES",
    "DEFAULT_START",
    "MIN_MAX_EVENT_BYTES",
    "PANEL_FRACTION",
    "PII_RATE",
    "App",
    "Persona",
    "Simulated",
    "Summary",
    "Turn",
    "Writer",
    "generate",
]
