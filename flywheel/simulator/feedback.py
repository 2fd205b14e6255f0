"""Well-formed feedback on served responses: thumbs, ratings, edits, regenerations, comparisons, panels."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from flywheel.simulator.message import Simulated
from flywheel.simulator.pii import _email
from flywheel.simulator.world import _Served, _World

_UP_REASONS = ("clear and correct", "saved me a lot of time", "exactly what I needed",
               "good step-by-step explanation")
_DOWN_REASONS = ("wrong answer", "didn't answer my question", "too vague", "made things up",
                 "unsafe suggestion")
_DIMENSIONS = ("helpfulness", "correctness", "clarity", "tone")
_CONTRACTIONS = (("I've", "I have"), ("can't", "cannot"), ("won't", "will not"), ("isn't", "is not"),
                 ("don't", "do not"), ("it's", "it is"))


def _trivial_edit(rng: random.Random, text: str) -> str:
    """A cosmetic change: spelling out a contraction, or punctuation."""
    present = [pair for pair in _CONTRACTIONS if pair[0] in text]
    if present:
        short, long = rng.choice(present)
        return text.replace(short, long, 1)
    return text[:-1] if text.endswith(".") else text + "."


class _Feedback(_World):
    """The valid traffic: new chats, and what users make of the responses they were served."""

    def valid(self, room: int) -> list[Simulated]:
        """The next few valid messages (at most `room`): a new chat, or feedback on a recent one."""
        if self.panels and room >= 2:
            return self._panel(self.panels.popleft(), room)
        roll = self.rng.random()
        if roll < 0.40 or not self.recent:
            return self._new_chat()
        target = self._pick_recent()
        if roll < 0.62:
            return self._feedback(target, "thumbs", self._thumbs) or self._new_chat()
        if roll < 0.74:
            return self._feedback(target, "rating", self._rating) or self._new_chat()
        if roll < 0.81:
            return self._feedback(target, "edit", self._edit) or self._new_chat()
        if roll < 0.90 and room >= 2:
            return self._regenerate(target) or self._new_chat()
        if roll < 0.95 and self.siblings:
            return self._compare(*self.siblings.popleft())
        if room >= 3:
            return self._side_by_side()
        return self._new_chat()

    def _feedback(
        self, target: _Served, kind: str, payload: Callable[[_Served], dict[str, Any]]
    ) -> list[Simulated]:
        if kind in target.given:
            return []
        target.given.add(kind)
        return [self._message(self._envelope(kind, target, payload(target)))]

    def _thumbs(self, target: _Served) -> dict[str, Any]:
        rng = self.rng
        up = rng.random() < (0.85 if target.good else 0.2)
        payload: dict[str, Any] = {"value": "up" if up else "down"}
        if rng.random() < 0.4:
            reason = rng.choice(_UP_REASONS if up else _DOWN_REASONS)
            if not up and rng.random() < 0.1:
                reason += f", email me at {_email(rng)} when it's fixed"
            payload["reason"] = reason
        return payload

    def _rating(self, target: _Served) -> dict[str, Any]:
        scores = (3, 4, 5, 5) if target.good else (1, 1, 2, 3)
        payload: dict[str, Any] = {"score": self.rng.choice(scores), "scale": 5}
        if self.rng.random() < 0.5:
            payload["dimension"] = self.rng.choice(_DIMENSIONS)
        return payload

    def _edit(self, target: _Served) -> dict[str, Any]:
        rng = self.rng
        if rng.random() < 0.35:
            edited = _trivial_edit(rng, target.response)
        elif not target.good:
            edited = target.chat.turn.good  # the user writes the answer they wanted
        else:
            edited = f"{target.response}\n\n{rng.choice(target.chat.app.addenda)}"
        return {"edited_response": edited}

    def _panel(self, target: _Served, room: int) -> list[Simulated]:
        """Other users of the app judge the same response, each on their own, and sometimes disagree."""
        rng = self.rng
        others = [u for u in self.users[target.chat.app.app_id] if u != target.chat.user]
        raters = rng.sample(others, min(rng.randint(2, 4), room, len(others)))
        if rng.random() < 0.6:
            return [self._message(self._envelope("thumbs", target, self._thumbs(target), user=u)) for u in raters]
        # Everyone rates on the same dimension (or none): one item, several raters.
        dimension = rng.choice((None, *_DIMENSIONS))
        scores = (3, 4, 5, 5) if target.good else (1, 1, 2, 3)
        messages = []
        for u in raters:
            payload: dict[str, Any] = {"score": rng.choice(scores), "scale": 5}
            if dimension is not None:
                payload["dimension"] = dimension
            messages.append(self._message(self._envelope("rating", target, payload, user=u)))
        return messages

    def _regenerate(self, target: _Served) -> list[Simulated]:
        # Users mostly regenerate bad answers; a good answer is regenerated only now and then.
        if "regenerate" in target.given or self.rng.random() > (0.25 if target.good else 0.85):
            return []
        target.given.add("regenerate")
        fresh = self._serve(target.chat, target.model_version)
        payload = {"new_interaction_id": fresh.interaction_id}
        regenerate = self._message(self._envelope("regenerate", target, payload))
        self.siblings.append((target, fresh))
        return [regenerate, self._emit_interaction(fresh)]

    def _side_by_side(self) -> list[Simulated]:
        """An A/B screen: two models answer the same chat and the user picks one."""
        chat = self._start_chat()
        a_model, b_model = self.rng.sample([model for model, _, _ in chat.app.models], 2)
        a, b = self._serve(chat, a_model), self._serve(chat, b_model)
        return [self._emit_interaction(a), self._emit_interaction(b), *self._compare(a, b)]

    def _compare(self, a: _Served, b: _Served) -> list[Simulated]:
        rng = self.rng
        if a.good == b.good:
            strength = "tie" if rng.random() < 0.5 else "slightly"
            chosen, rejected = (a, b) if rng.random() < 0.5 else (b, a)
        else:
            strength = "much" if rng.random() < 0.6 else "slightly"
            chosen, rejected = (a, b) if a.good else (b, a)
            if rng.random() < 0.1:  # users misclick and disagree with each other
                chosen, rejected = rejected, chosen
        shown = [a, b] if rng.random() < 0.5 else [b, a]
        payload = {"chosen_interaction_id": chosen.interaction_id,
                   "rejected_interaction_id": rejected.interaction_id,
                   "presented_order": [s.interaction_id for s in shown], "strength": strength}
        return [self._message(self._envelope("comparison", shown[0], payload))]
