"""Personal data in user text that redaction must catch: emails, phone numbers, cards, API keys."""

from __future__ import annotations

import random

from flywheel.simulator.apps import App

PII_RATE = 0.06  # share of chats whose user text carries an email, phone, card or API key

_FIRST = ("ann", "bruno", "chen", "dana", "emeka", "farah", "goran", "hana")
_LAST = ("lee", "okafor", "silva", "novak", "kim", "meyer", "haddad")


def _email(rng: random.Random) -> str:
    domain = rng.choice(("example.com", "mail.example.org", "example.net"))
    return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(1, 99)}@{domain}"


def _phone(rng: random.Random) -> str:
    area, line = rng.choice(("415", "212", "312", "646")), f"01{rng.randint(0, 99):02d}"
    return rng.choice((f"+1 {area}-555-{line}", f"({area}) 555-{line}", f"{area}.555.{line}",
                       f"+1{area}555{line}", f"+44 20 7946 0{rng.randint(0, 999):03d}"))


def _card(rng: random.Random) -> str:
    body = "4" + "".join(str(rng.randint(0, 9)) for _ in range(14))
    digits = body + str(_luhn_check_digit(body))
    sep = rng.choice((" ", "-", ""))
    return sep.join(digits[i:i + 4] for i in range(0, 16, 4))


def _luhn_check_digit(body: str) -> int:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled: the check digit will sit to the right of it
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10


def _api_key(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "sk-proj-" + "".join(rng.choice(alphabet) for _ in range(40))


def _with_pii(rng: random.Random, app: App, text: str) -> str:
    kind = rng.choice(("email", "phone", "card", "key"))
    if kind == "email":
        return f"{text} You can reach me at {_email(rng)}."
    if kind == "phone":
        return f"{text} Please call me back on {_phone(rng)}."
    if kind == "card":
        return f"{text} The card I paid with is {_card(rng)}, expiry 09/27."
    if app.app_id == "code-assistant":
        return f'{text}\n\n```python\nclient = OpenAI(api_key="{_api_key(rng)}")\n```'
    return f"{text} My integration key is {_api_key(rng)}, is it still valid?"
