"""Seeded synthetic traffic for flywheel.feedback: chats, feedback on them, and every kind of bad input."""

from __future__ import annotations

import hashlib
import random
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson

from flywheel.domain.validation import (
    BAD_ENCODING,
    BAD_JSON,
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    OVERSIZE,
    UNKNOWN_INTERACTION,
    UNKNOWN_SCHEMA_VERSION,
    UNKNOWN_TYPE,
    parse,
)
from flywheel.domain.wire import SCHEMA_VERSION, FeedbackEvent

DEFAULT_START = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
DEFAULT_MAX_EVENT_BYTES = 256 * 1024
# The largest valid message is a few KiB; below this limit valid traffic could itself be oversize.
MIN_MAX_EVENT_BYTES = 16 * 1024
# Bad input comes in this rotation, one of each kind in turn.
BAD_KINDS = (
    BAD_ENCODING,
    BAD_JSON,
    NOT_AN_OBJECT,
    UNKNOWN_TYPE,
    UNKNOWN_SCHEMA_VERSION,
    MISSING_FIELD,
    INVALID_FIELD,
    OVERSIZE,
    UNKNOWN_INTERACTION,
)
PII_RATE = 0.06  # share of chats whose user text carries an email, phone, card or API key
PANEL_FRACTION = 0.04  # a realistic share of interactions that several other users also judge


@dataclass(frozen=True, slots=True)
class Simulated:
    """One message for the feedback topic and what ingest must make of it."""

    key: bytes | None
    value: bytes
    event_type: str | None  # the type of the well-formed event in `value`; None when it must not parse
    expected_reason: str | None  # None: stored; otherwise the dead-letter reason (flywheel.domain.validation)

    @property
    def event(self) -> FeedbackEvent | None:
        """The event `value` parses to, or None for malformed bytes.

        Parsed on access rather than held: a list of 100k messages then stays cheap to build and to keep.
        """
        return None if self.event_type is None else parse(self.value, max_bytes=len(self.value))


@dataclass(frozen=True, slots=True)
class Summary:
    """What a stream holds: events the store must keep (by type), messages it must dead-letter (by reason)."""

    valid_by_type: dict[str, int]
    bad_by_reason: dict[str, int]

    @classmethod
    def of(cls, messages: Iterable[Simulated]) -> Summary:
        valid: Counter[str] = Counter()
        bad: Counter[str] = Counter()
        for m in messages:
            if m.expected_reason is None:
                valid[str(m.event_type)] += 1
            else:
                bad[m.expected_reason] += 1
        return cls(dict(sorted(valid.items())), dict(sorted(bad.items())))

    @property
    def valid(self) -> int:
        return sum(self.valid_by_type.values())

    @property
    def bad(self) -> int:
        return sum(self.bad_by_reason.values())

    @property
    def produced(self) -> int:
        return self.valid + self.bad

    def as_dict(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "valid": {"total": self.valid, "by_type": self.valid_by_type},
            "bad": {"total": self.bad, "by_reason": self.bad_by_reason},
        }

    def describe(self) -> str:
        lines = [f"{'produced':<26}{self.produced:>9}", f"{'valid (to be stored)':<26}{self.valid:>9}"]
        lines += [f"  {k:<24}{v:>9}" for k, v in self.valid_by_type.items()]
        lines.append(f"{'bad (to be dead-lettered)':<26}{self.bad:>9}")
        lines += [f"  {k:<24}{v:>9}" for k, v in self.bad_by_reason.items()]
        return "\n".join(lines)


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


# ---- apps, users and what they talk about ----


@dataclass(frozen=True, slots=True)
class Turn:
    """One user request with a good answer and a flawed one."""

    user: str
    good: str
    flawed: str
    tags: tuple[str, ...] = ()
    tool: tuple[str, str] | None = None  # (tool name, its output), shown to the model before it answers


Writer = Callable[[random.Random], Turn]


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


# -- support-bot --

_PLANS = ("Basic", "Plus", "Pro", "Team")
_PRODUCTS = ("wireless earbuds", "standing desk", "espresso machine", "trail running shoes",
             "27-inch monitor", "hiking backpack", "air purifier")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_CITIES = ("Reno", "Columbus", "Rotterdam", "Leeds", "Lyon", "Memphis")
_CARRIERS = ("UPS", "DHL", "FedEx", "the postal service")


def _order(rng: random.Random) -> str:
    return f"#{rng.randint(100000, 999999)}"


def _double_charge(rng: random.Random) -> Turn:
    plan, month, day = rng.choice(_PLANS), rng.choice(_MONTHS), rng.randint(1, 28)
    user = rng.choice((
        f"Hi, I was charged twice for my {plan} subscription on {month} {day}. Can you refund one of them?",
        f"There are two identical {plan} plan charges on my statement from {month} {day}. What happened?",
    ))
    good = (f"Sorry about the duplicate charge. I can see two {plan} plan payments on {month} {day}; the "
            "second was a retry that should have been voided. I've refunded it, and it will show on your "
            "statement within 5 to 7 business days.")
    flawed = ("Subscription charges are final and can't be refunded. Please contact your bank if you think "
              "it's wrong.")
    return Turn(user, good, flawed, ("factuality",))


def _late_order(rng: random.Random) -> Turn:
    order, product, carrier = _order(rng), rng.choice(_PRODUCTS), rng.choice(_CARRIERS)
    days = rng.randint(2, 9)
    user = rng.choice((
        f"My order {order} ({product}) was supposed to arrive {days} days ago and it still isn't here.",
        f"Where is my {product}? Order {order}, the tracking page hasn't changed in {days} days.",
    ))
    good = (f"I'm sorry for the wait. Order {order} left our {rng.choice(_CITIES)} warehouse and is with "
            f"{carrier}, who reported a sorting delay. The new delivery estimate is in {rng.randint(1, 3)} "
            "business days. If it hasn't arrived by then, reply here and I'll ship a replacement at no cost.")
    flawed = f"Orders usually arrive within 3 to 5 days. Please wait a little longer for your {product}."
    return Turn(user, good, flawed)


def _password_reset(rng: random.Random) -> Turn:
    tries = rng.choice(("twice", "three times", "four times"))
    user = rng.choice((
        f"I'm not getting the password reset email. I've tried {tries} already.",
        "I can't log in and the reset link never shows up in my inbox.",
    ))
    good = ("Reset emails come from our no-reply address, so please check your spam or promotions folder "
            "first. If it isn't there, I've just sent a fresh link that stays valid for 30 minutes; older "
            "links stop working once a new one is sent.")
    flawed = "Try again later, the email system is sometimes slow."
    return Turn(user, good, flawed)


def _cancel_plan(rng: random.Random) -> Turn:
    plan = rng.choice(_PLANS)
    user = f"How do I cancel my {plan} plan before the next billing date?"
    good = (f"Go to Settings → Billing → Cancel plan and confirm. You keep the {plan} features until the end "
            "of the current billing period and won't be charged again.")
    flawed = "You can only cancel by phoning us during business hours."
    return Turn(user, good, flawed, ("factuality",))


def _return_policy(rng: random.Random) -> Turn:
    product = rng.choice(_PRODUCTS)
    user = rng.choice((f"What's your return policy for the {product}?",
                       f"Can I still return a {product} I opened?"))
    good = (f"You can return the {product} within 30 days of delivery if it's undamaged and in its original "
            "packaging, opened or not. Start from Orders → Return item and we'll email you a prepaid label.")
    flawed = f"Every item, including the {product}, can be returned within 365 days, no questions asked."
    return Turn(user, good, flawed, ("factuality",))


def _other_customer(rng: random.Random) -> Turn:
    order = _order(rng)
    user = f"Can you tell me the name and address of whoever placed order {order}? It was left at my door."
    good = ("I can't share details about another customer. If a parcel was delivered to you by mistake, "
            "reply with the order number on the label and we'll arrange a pickup so it reaches its owner.")
    flawed = f"Sure, order {order} was placed by a customer on Elm Street; I can read you the full address."
    return Turn(user, good, flawed, ("safety",))


# -- code-assistant --

# (language, fence, task, good code, flawed code, why the good code is right)
_CODE_TASKS = (
    ("Python", "python", "reverse a list", "reversed_items = items[::-1]", "reversed_items = items.reverse()",
     "Slicing with a step of -1 returns a new list; `list.reverse()` works in place and returns None."),
    ("Python", "python", "remove duplicates from a list but keep the order",
     "unique = list(dict.fromkeys(items))", "unique = list(set(items))",
     "Dicts keep insertion order, so the first occurrence of each item wins; a set loses the order."),
    ("Python", "python", "read a file line by line",
     'with open(path, encoding="utf-8") as f:\n    for line in f:\n        handle(line.rstrip("\\n"))',
     "for line in open(path).read():\n    handle(line)",
     "Iterating over the file object streams one line at a time and the `with` block closes the file."),
    ("Python", "python", "sort a list of dicts by one field", 'rows.sort(key=lambda row: row["age"])',
     'rows.sort("age")', "`sort` takes a key function; it is called once per row."),
    ("JavaScript", "js", "deep copy an object", "const copy = structuredClone(original);",
     "const copy = original;", "`structuredClone` copies nested objects, arrays, maps and dates."),
    ("JavaScript", "js", "run several requests in parallel",
     "const [user, orders] = await Promise.all([fetchUser(id), fetchOrders(id)]);",
     "const user = await fetchUser(id);\nconst orders = await fetchOrders(id);",
     "`Promise.all` starts both requests at once and rejects as soon as either fails."),
    ("Go", "go", "check whether a key exists in a map", "if v, ok := m[key]; ok {\n    use(v)\n}",
     "if m[key] != nil {\n    use(m[key])\n}",
     "The two-value form tells a missing key apart from a zero value."),
    ("SQL", "sql", "get the 5 customers with the highest total order amount",
     "SELECT customer_id, SUM(amount) AS total\nFROM orders\nGROUP BY customer_id\n"
     "ORDER BY total DESC\nLIMIT 5;",
     "SELECT customer_id, amount FROM orders ORDER BY amount DESC LIMIT 5;",
     "Grouping by customer sums all of their orders before ranking them."),
    ("Rust", "rust", "read an environment variable with a default",
     'let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());',
     'let port = std::env::var("PORT").unwrap();',
     "`unwrap_or_else` falls back instead of panicking when PORT is unset."),
)

# (error message, offending line, good explanation, flawed explanation)
_PY_ERRORS = (
    ('TypeError: can only concatenate str (not "int") to str', 'print("Total: " + total)',
     '`total` is an int. Convert it, `print("Total: " + str(total))`, or use an f-string: '
     '`print(f"Total: {total}")`.',
     "Your Python installation is probably corrupted; reinstall it and try again."),
    ("KeyError: 'email'", 'email = payload["email"]',
     'The payload has no "email" key. Use `payload.get("email")` and handle None, or check the sender.',
     "Dictionary keys are case-insensitive, so the key must be misspelled somewhere else."),
    ("IndexError: list index out of range", "last = items[len(items)]",
     "Indexes run from 0 to len(items) - 1. Use `items[-1]` for the last element, and check the list "
     "isn't empty.",
     "Python lists start at 1, so use items[len(items) + 1]."),
    ("ZeroDivisionError: division by zero", "average = total / count",
     "`count` is 0 when there are no rows. Guard it: `average = total / count if count else 0.0`.",
     "Wrap the line in `try: ... except: pass` and the error goes away."),
)


def _how_to(rng: random.Random) -> Turn:
    lang, fence, task, good_code, flawed_code, why = rng.choice(_CODE_TASKS)
    user = rng.choice((f"How do I {task} in {lang}?", f"What's the idiomatic way to {task} in {lang}?"))
    good = f"Like this:\n\n```{fence}\n{good_code}\n```\n\n{why}"
    flawed = f"You can do it like this:\n\n```{fence}\n{flawed_code}\n```"
    return Turn(user, good, flawed, ("code",))


def _debug(rng: random.Random) -> Turn:
    error, line, good, flawed = rng.choice(_PY_ERRORS)
    user = f"Why does this line raise `{error}`?\n\n```python\n{line}\n```"
    return Turn(user, good, flawed, ("code",))


def _failing_test(rng: random.Random) -> Turn:
    module, case = rng.choice((("cart", "discount"), ("invoice", "tax_rounding"), ("auth", "token_expiry"),
                               ("search", "pagination")))
    want = rng.randint(10, 99)
    got = want + rng.choice((-10, -1, 1, 10))
    passed, secs = rng.randint(40, 400), rng.uniform(1.5, 30.0)
    output = (f"FAILED tests/test_{module}.py::test_{case} - AssertionError: assert {got} == {want}\n"
              f"1 failed, {passed} passed in {secs:.1f}s")
    user = rng.choice(("CI is red on my branch. Can you run the tests and tell me what fails?",
                       "Run the test suite and explain the failure, please."))
    good = (f"One test fails: `test_{case}` in tests/test_{module}.py expects {want} but gets {got}, so "
            f"the {module} code is off by {abs(got - want)}. The other {passed} tests pass; start with the "
            f"most recent change to the {module} module.")
    flawed = f"All {passed + 1} tests pass, so the CI failure must be a flaky runner. Re-run the pipeline."
    return Turn(user, good, flawed, ("code", "tool_use"), tool=("run_tests", output))


# -- math-tutor --


def _multiply(rng: random.Random) -> Turn:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    tens, units = b // 10 * 10, b % 10
    user = rng.choice((f"What is {a} × {b}?", f"Can you help me multiply {a} by {b}?"))
    good = f"Split {b} into {tens} + {units}: {a} × {tens} = {a * tens} and {a} × {units} = {a * units}, " \
           f"so {a} × {b} = {a * tens} + {a * units} = {a * b}."
    flawed = f"{a} × {b} = {a * b + rng.choice((-100, -10, 10, 100))}."
    return Turn(user, good, flawed, ("math",))


def _linear_equation(rng: random.Random) -> Turn:
    x, a, b = rng.randint(-9, 12), rng.randint(2, 9), rng.randint(1, 30)
    c = a * x + b
    user = f"Solve for x: {a}x + {b} = {c}"
    good = (f"Subtract {b} from both sides: {a}x = {c - b}. Divide both sides by {a}: x = {x}. "
            f"Check: {a} × {x} + {b} = {c}. ✓")
    flawed = f"Add {b} to both sides: {a}x = {c + b}, so x = {Fraction(c + b, a)}."
    return Turn(user, good, flawed, ("math",))


def _add_fractions(rng: random.Random) -> Turn:
    p, q = rng.sample(range(2, 10), 2)
    total = Fraction(1, p) + Fraction(1, q)
    common = p * q
    user = f"What is 1/{p} + 1/{q}?"
    good = f"Use a common denominator of {common}: 1/{p} = {q}/{common} and 1/{q} = {p}/{common}, " \
           f"so the sum is {p + q}/{common} = {total}."
    flawed = f"Add the tops and the bottoms: 1/{p} + 1/{q} = 2/{p + q}."
    return Turn(user, good, flawed, ("math",))


def _percentage(rng: random.Random) -> Turn:
    pct, n = rng.choice((5, 10, 12, 15, 20, 25, 30, 40)), rng.randrange(40, 800, 20)
    answer = Fraction(pct * n, 100)
    user = rng.choice((f"What is {pct}% of {n}?",
                       f"A jacket costs ${n} and is {pct}% off. How much do I save?"))
    good = f"{pct}% means {pct}/100, so {pct}/100 × {n} = {float(answer):g}."
    flawed = f"{pct}% of {n} is {n} ÷ {pct} = {n / pct:.2f}."
    return Turn(user, good, flawed, ("math",))


def _average_speed(rng: random.Random) -> Turn:
    speed, hours = rng.randrange(40, 124, 4), rng.choice((1.5, 2, 2.5, 3, 4))
    distance = speed * hours
    user = f"A train travels {distance:g} km in {hours:g} hours. What is its average speed?"
    good = f"Average speed = distance ÷ time = {distance:g} km ÷ {hours:g} h = {speed} km/h."
    flawed = f"Average speed = distance × time = {distance * hours:g} km/h."
    return Turn(user, good, flawed, ("math", "factuality"))


def _test_answers(rng: random.Random) -> Turn:
    subject = rng.choice(("algebra", "geometry", "statistics"))
    user = f"Just give me the answers to tomorrow's {subject} test, I'll paste all the questions."
    good = (f"I can't hand out answers to a test, but I can get you ready for it: send me one {subject} "
            "problem you find hard and we'll work through it step by step.")
    flawed = f"Sure, paste the {subject} test and I'll write out every answer for you to copy."
    return Turn(user, good, flawed, ("safety",))


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


# ---- PII that redaction must catch ----

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


# ---- feedback wording ----

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


# ---- the traffic itself ----


class _Traffic:
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

    # -- valid traffic --

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

    # -- bad traffic --

    def bad(self, kind: str) -> Simulated:
        """One message that ingest must dead-letter with reason `kind`."""
        return _BAD_BUILDERS[kind](self)

    def _phantom(self) -> _Served:
        """A response that is never emitted: bad messages about it can never be stored by accident."""
        return self._serve(self._start_chat())

    def _target(self) -> _Served:
        return self._pick_recent() if self.recent else self._phantom()

    def _feedback_wire(self, kind: str, target: _Served | None = None) -> dict[str, Any]:
        target = target or self._target()
        payloads = {"thumbs": self._thumbs, "rating": self._rating, "edit": self._edit}
        return self._envelope(kind, target, payloads[kind](target))

    def _interaction_wire(self, target: _Served) -> dict[str, Any]:
        payload = {"messages": list(target.chat.messages), "response": target.response,
                   "tags": list(target.chat.tags)}
        return self._envelope("interaction", target, payload)

    def _bad_encoding(self) -> Simulated:
        # A legacy producer that writes Latin-1 instead of UTF-8.
        wire = self._interaction_wire(self._phantom())
        follow_up = "Merci ! Et pour la facture de février, le reçu est déjà envoyé ?"
        wire["payload"]["messages"].append({"role": "user", "content": follow_up})
        value = orjson.dumps(wire).decode().encode("latin-1", errors="replace")
        return Simulated(wire["interaction_id"].encode(), value, None, BAD_ENCODING)

    def _bad_json(self) -> Simulated:
        # A producer that died mid-write: cut at a character boundary so it is bad JSON, not bad UTF-8.
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")))
        text = orjson.dumps(wire).decode()
        cut = self.rng.randint(1, len(text) - 1)
        return Simulated(wire["interaction_id"].encode(), text[:cut].encode(), None, BAD_JSON)

    def _not_an_object(self) -> Simulated:
        # A producer that batches events into one array message.
        batch = [self._feedback_wire("thumbs"), self._feedback_wire("rating")]
        return Simulated(None, orjson.dumps(batch), None, NOT_AN_OBJECT)

    def _unknown_type(self) -> Simulated:
        # A newer app release emitting a feedback kind this service does not know yet.
        wire = self._feedback_wire("thumbs")
        wire["type"] = self.rng.choice(("bookmark", "share", "copy_code", "report"))
        wire["payload"] = {}
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, UNKNOWN_TYPE)

    def _unknown_schema_version(self) -> Simulated:
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating", "edit")))
        wire["schema_version"] = 99
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, UNKNOWN_SCHEMA_VERSION)

    def _missing_field(self) -> Simulated:
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")))
        where = self.rng.choice(("event_id", "occurred_at", "app_id", "model_version", "user", "payload",
                                 "user.consent_training", "payload.value_or_score"))
        if where == "user.consent_training":
            del wire["user"]["consent_training"]
        elif where == "payload.value_or_score":
            wire["payload"].pop("value", None)
            wire["payload"].pop("score", None)
        else:
            del wire[where]
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, MISSING_FIELD)

    def _invalid_field(self) -> Simulated:
        wire = self._feedback_wire("rating")
        mistake = self.rng.randrange(5)
        if mistake == 0:
            wire["payload"]["score"] = str(wire["payload"]["score"])  # "5": strict, never coerced
        elif mistake == 1:
            wire["payload"]["score"] = 7  # outside the 1..5 scale
        elif mistake == 2:
            wire["occurred_at"] = wire["occurred_at"][:-6]  # no timezone
        elif mistake == 3:
            wire["user"]["consent_training"] = "yes"
        else:
            wire["type"], wire["payload"] = "thumbs", {"value": "sideways"}
        return Simulated(wire["interaction_id"].encode(), orjson.dumps(wire), None, INVALID_FIELD)

    def _oversize(self) -> Simulated:
        # Someone pasted a whole build log into the chat.
        wire = self._interaction_wire(self._phantom())
        overhead = len(orjson.dumps(wire))
        line = "2025-03-03T09:00:00Z INFO worker-3 step=compile target=//services/api:server cache=miss\n"
        count = (self.max_event_bytes - overhead) // len(line) + 1 + self.rng.randint(0, 20)
        log = "Here's the full build log:\n" + line * count
        wire["payload"]["messages"].append({"role": "user", "content": log})
        value = orjson.dumps(wire)
        return Simulated(wire["interaction_id"].encode(), value, None, OVERSIZE)

    def _unknown_interaction(self) -> Simulated:
        # Well-formed feedback about an interaction that never arrives (its producer lost it): it is parked,
        # then dead-lettered after the grace period.
        wire = self._feedback_wire(self.rng.choice(("thumbs", "rating")), self._phantom())
        value = orjson.dumps(wire)
        return Simulated(wire["interaction_id"].encode(), value, wire["type"], UNKNOWN_INTERACTION)


_BAD_BUILDERS: dict[str, Callable[[_Traffic], Simulated]] = {
    BAD_ENCODING: _Traffic._bad_encoding,
    BAD_JSON: _Traffic._bad_json,
    NOT_AN_OBJECT: _Traffic._not_an_object,
    UNKNOWN_TYPE: _Traffic._unknown_type,
    UNKNOWN_SCHEMA_VERSION: _Traffic._unknown_schema_version,
    MISSING_FIELD: _Traffic._missing_field,
    INVALID_FIELD: _Traffic._invalid_field,
    OVERSIZE: _Traffic._oversize,
    UNKNOWN_INTERACTION: _Traffic._unknown_interaction,
}
