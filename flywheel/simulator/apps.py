"""The simulated apps, their models and prompt versions, and their users."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from flywheel.simulator.turns import (
    Writer,
    _add_fractions,
    _average_speed,
    _cancel_plan,
    _debug,
    _double_charge,
    _failing_test,
    _how_to,
    _late_order,
    _linear_equation,
    _multiply,
    _other_customer,
    _password_reset,
    _percentage,
    _return_policy,
    _test_answers,
)


@dataclass(frozen=True, slots=True)
class App:
    app_id: str
    weight: float
    models: tuple[tuple[str, float, float], ...]  # (model version, traffic share, chance of a good answer)
    prompts: tuple[tuple[str, str | None], ...]  # (prompt version, system prompt), oldest first
    writers: tuple[Writer, ...]
    follow_ups: tuple[str, ...]
    addenda: tuple[str, ...]  # what users add when they edit a response substantively
    sampling: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Persona:
    id_hash: str
    consent_training: bool


APPS = (
    App(
        app_id="support-bot",
        weight=0.45,
        models=(("support-llama-3.1-8b-2024-11", 0.2, 0.55), ("support-llama-3.1-8b-2025-01", 0.5, 0.7),
                ("support-llama-3.3-70b-2025-02", 0.3, 0.85)),
        prompts=(("support-v7", "You are the support assistant of Northwind Outfitters. Be concise and "
                                "friendly, and never share another customer's data."),
                 ("support-v8", "You are the support assistant of Northwind Outfitters. Be concise and "
                                "friendly, never share another customer's data, and always say what action "
                                "you took.")),
        writers=(_double_charge, _late_order, _password_reset, _cancel_plan, _return_policy, _other_customer),
        follow_ups=("Thanks. One more thing: ", "OK, and another question. ", "Got it, thanks! Also: "),
        addenda=("I've also added a note to your account so the next agent has the context.",
                 "You'll get a confirmation email once this is done."),
        sampling={"temperature": 0.3, "top_p": 0.9, "max_tokens": 512},
    ),
    App(
        app_id="code-assistant",
        weight=0.35,
        models=(("coder-qwen2.5-7b-r3", 0.3, 0.6), ("coder-qwen2.5-7b-r4", 0.4, 0.7),
                ("coder-qwen2.5-32b-r1", 0.3, 0.85)),
        prompts=(("code-v3", None),
                 ("code-v4", "You are a senior software engineer. Answer with a short explanation and one "
                             "runnable snippet; say when something is a matter of taste.")),
        writers=(_how_to, _how_to, _debug, _failing_test),
        follow_ups=("That worked, thanks. Another question: ", "Follow-up: ", "Nice. Next: "),
        addenda=("Add a unit test that covers the empty case too.", "This also works on older versions."),
        sampling={"temperature": 0.2, "top_p": 1.0, "max_tokens": 2048},
    ),
    App(
        app_id="math-tutor",
        weight=0.2,
        models=(("tutor-mistral-7b-r5", 0.4, 0.65), ("tutor-mistral-7b-r6", 0.6, 0.8)),
        prompts=(("tutor-v2", "You are a patient math tutor for high-school students. Show each step."),
                 ("tutor-v3", "You are a patient math tutor for high-school students. Show each step, check "
                              "the answer, and never hand out test answers.")),
        writers=(_multiply, _linear_equation, _add_fractions, _percentage, _average_speed, _test_answers),
        follow_ups=("Thanks! Next one: ", "OK I get it. What about this: ", "And this one? "),
        addenda=("Always check your answer by substituting it back.", "Write the units at every step."),
        sampling={"temperature": 0.7, "top_p": 0.95, "max_tokens": 1024},
    ),
)
_APP_WEIGHTS = tuple(app.weight for app in APPS)

_USERS_PER_APP = 9
_NO_CONSENT = frozenset({2, 6})  # these users opted out of training on their data
# Power users: the first users of an app produce most of its traffic.
_USER_WEIGHTS = tuple(1.0 / (i + 1) for i in range(_USERS_PER_APP))


def _personas(app: App) -> tuple[Persona, ...]:
    # Hash of a stable name: the same person in every run and seed, as in production.
    return tuple(
        Persona(hashlib.sha256(f"{app.app_id}/user-{i}".encode()).hexdigest()[:32], i not in _NO_CONSENT)
        for i in range(_USERS_PER_APP)
    )
