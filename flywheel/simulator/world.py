"""The simulated world: its clock, the chats users start and the responses served to them."""

from __future__ import annotations

import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from flywheel.domain.wire import SCHEMA_VERSION
from flywheel.simulator.apps import _APP_WEIGHTS, _USER_WEIGHTS, APPS, App, Persona, _personas
from flywheel.simulator.message import Simulated
from flywheel.simulator.pii import PII_RATE, _with_pii
from flywheel.simulator.turns import Turn


@dataclass(frozen=True, slots=True)
class _Chat:
    """A conversation waiting for a response."""

    app: App
    user: Persona
    model_version: str
    prompt_version: str
    messages: tuple[dict[str, Any], ...]
    turn: Turn  # the last one: the request the response answers
    tags: tuple[str, ...]


@dataclass(slots=True)
class _Served:
    """A response to a chat, remembered so feedback can refer to it."""

    interaction_id: str
    chat: _Chat
    model_version: str
    response: str
    good: bool
    given: set[str] = field(default_factory=set)  # feedback kinds already given on it


class _World:
    """The state of the simulated world: the clock, and what has been served so far."""

    def __init__(self, rng: random.Random, start: datetime, max_event_bytes: int,
                 panel_fraction: float = 0.0) -> None:
        self.rng = rng
        self.panel_fraction = panel_fraction
        self.panels: deque[_Served] = deque()  # served, waiting for their panel of other users
        self.clock = start
        self.max_event_bytes = max_event_bytes
        self.users = {app.app_id: _personas(app) for app in APPS}
        self.recent: deque[_Served] = deque(maxlen=48)
        self.siblings: deque[tuple[_Served, _Served]] = deque(maxlen=16)  # same prompt, not compared yet

    # -- ids, time, serialisation --

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _tick(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(20, 3000))
        return self.clock.isoformat(timespec="milliseconds")

    def _envelope(self, kind: str, served: _Served, payload: dict[str, Any],
                  user: Persona | None = None) -> dict[str, Any]:
        user = user or served.chat.user
        return {
            "event_id": self._uuid(),
            "type": kind,
            "schema_version": SCHEMA_VERSION,
            "occurred_at": self._tick(),
            "app_id": served.chat.app.app_id,
            "interaction_id": served.interaction_id,
            "model_version": served.model_version,
            "prompt_version": served.chat.prompt_version,
            "user": {"id_hash": user.id_hash, "consent_training": user.consent_training},
            "payload": payload,
        }

    def _message(self, wire: dict[str, Any]) -> Simulated:
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), wire["type"], None)

    # -- chats and responses --

    def _pick_recent(self) -> _Served:
        # Feedback mostly lands on what was just served; sometimes a user comes back to an older answer.
        back = min(int(self.rng.expovariate(1 / 6)), len(self.recent) - 1)
        return self.recent[-1 - back]

    def _new_chat(self) -> list[Simulated]:
        return [self._emit_interaction(self._serve(self._start_chat()))]

    def _start_chat(self) -> _Chat:
        rng = self.rng
        app = rng.choices(APPS, weights=_APP_WEIGHTS)[0]
        model = rng.choices(app.models, weights=[share for _, share, _ in app.models])[0][0]
        prompt_version, system = app.prompts[-1] if rng.random() < 0.6 else rng.choice(app.prompts)
        user = rng.choices(self.users[app.app_id], weights=_USER_WEIGHTS)[0]
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        turns = [rng.choice(app.writers)(rng) for _ in range(rng.choices((1, 2, 3), weights=(65, 25, 10))[0])]
        for i, turn in enumerate(turns):
            text = turn.user if i == 0 else rng.choice(app.follow_ups) + turn.user
            if i == len(turns) - 1 and rng.random() < PII_RATE:
                text = _with_pii(rng, app, text)
            messages.append({"role": "user", "content": text})
            if turn.tool is not None:
                name, output = turn.tool
                messages.append({"role": "assistant", "content": f"Calling {name}."})
                messages.append({"role": "tool", "name": name, "content": output})
            if i < len(turns) - 1:
                messages.append({"role": "assistant", "content": turn.good})
        tags = tuple(sorted({tag for turn in turns for tag in turn.tags}))
        return _Chat(app, user, model, prompt_version, tuple(messages), turns[-1], tags)

    def _serve(self, chat: _Chat, model_version: str | None = None) -> _Served:
        """A response to `chat`, good or flawed by the quality of the model that writes it."""
        model_version = model_version or chat.model_version
        quality = {model: q for model, _, q in chat.app.models}[model_version]
        good = self.rng.random() < quality
        return _Served(self._uuid(), chat, model_version, chat.turn.good if good else chat.turn.flawed, good)

    def _emit_interaction(self, served: _Served) -> Simulated:
        rng = self.rng
        finish = "stop"
        if rng.random() < 0.03:  # ran into max_tokens: cut off mid-answer, which users dislike
            served.response, served.good = served.response[: max(12, len(served.response) * 2 // 3)], False
            finish = "length"
        sampling = dict(served.chat.app.sampling)
        if rng.random() < 0.3:
            sampling["seed"] = rng.randint(0, 2**31 - 1)
        payload = {"messages": list(served.chat.messages), "response": served.response, "sampling": sampling,
                   "tags": list(served.chat.tags), "finish_reason": finish}
        self.recent.append(served)
        # Guarded so that without panels not one extra random number is drawn: old seeds keep their bytes.
        if self.panel_fraction and rng.random() < self.panel_fraction:
            self.panels.append(served)
        return self._message(self._envelope("interaction", served, payload))
