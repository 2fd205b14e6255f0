"""PII redaction: what must go, what must stay, and a property over prose with PII sprinkled in."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.domain.redact import Redactor, find_pii, has_pii, luhn_ok, redact

EMAILS = ["ann@example.com", "first.last+tag@mail.example.co.uk", "x_y-z99@example.io", "ANN.LEE@EXAMPLE.ORG"]
PHONES = [
    "+1 415-555-0132",
    "+1 (415) 555-0132",
    "(415) 555-0132",
    "415-555-0132",
    "415.555.0132",
    "415 555 0132",
    "+14155550132",
    "+44 20 7946 0958",
    "020 7946 0958",
    "+49 30 9018 2045",
    "+33 1 42 68 53 00",
    "+91 98765 43210",
]
CARDS = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "5500 0000 0000 0004",
    "6011-0009-9013-9424",
    "3782 822463 10005",  # Amex layout
    "378282246310005",
]
SECRETS = [
    "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
    "sk-ant-api03-x1y2z3x1y2z3x1y2z3x1y2z3",
    "sk-abcdefghijklmnop1234",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1B2" * 9,
    "github_pat_" + "A1b2_" * 8,
    "xoxb-1234567890-abcdefghij",
    "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]
# (text, the secret value inside it)
ASSIGNED_SECRETS = [
    ("api_key=abcd1234efgh5678", "abcd1234efgh5678"),
    ('"api_key": "abcd1234efgh5678"', "abcd1234efgh5678"),
    ("API-KEY: Zx9Zx9Zx9Zx9", "Zx9Zx9Zx9Zx9"),
    ("x-api-key: abcdef1234567", "abcdef1234567"),
    ("password: hunter2hunter2", "hunter2hunter2"),
    ("password: sunshine!", "sunshine!"),
    ("Password = 'correct-horse-battery-staple'", "correct-horse-battery-staple"),
    ("client_secret: abcd1234efgh", "abcd1234efgh"),
    ("OPENAI_API_KEY=abcd1234abcd1234", "abcd1234abcd1234"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLE"),
    ("DB_PASSWORD=hunter2hunter2", "hunter2hunter2"),
    ("self.token = 'abcd1234efgh'", "abcd1234efgh"),
    ("Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345", "abcdefghijklmnopqrstuvwxyz012345"),
    ("curl -H 'Authorization: Bearer abc.def_ghi-jkl=012345678'", "abc.def_ghi-jkl=012345678"),
]
LEFT_ALONE = [
    # digit runs that are not cards (Luhn fails, or too long to be one) and not phones
    "order 1234567890123456 shipped",
    "ref 98765432101234567890123",
    "ISBN 9783161484100",
    "tracking 1Z999AA10123456784",
    # dates, times, versions, numbers in prose
    "2024-01-15",
    "2024-01-15T10:30:00Z",
    "15/01/2024 at 10:30:45",
    "Jan 15, 2024",
    "Python 3.11.4, macOS 10.15.7 and release 2.14.3 (v1.2.3)",
    "We shipped 1,234 orders in 2023 and 15% more in 2024; revenue was $1,299.99.",
    "pi = 3.14159265358979",
    # ordinary prose, including the words that hint at secrets
    "The secret: practice every day.",
    "Reset your password from the login page; passwords need at least 12 characters.",
    "Keep the token limit at 8192 tokens and the key idea in mind.",
    "Bearer bonds were popular once.",
    "Email support if the team @mentions you.",
    # code
    "for i in range(100):\n    total += i * 2",
    "token = tokenizer.encode(text)",
    "token = data.token",
    "password = getpass.getpass()",
    "secret = os.environ['SECRET']",
    "api_key = os.getenv('OPENAI_API_KEY')",
    "secret_key: Optional[str] = None",
    "token_count = 12345678",
    "the max_tokens: 4096 setting",
    "SELECT * FROM orders LIMIT 50 OFFSET 100;",
    "timeout_ms = 30000",
    "x = arr[1024]",
    "@dataclass(frozen=True)\nclass Point:\n    x: int",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "sha 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "risk-assessment-framework-2",
]


@pytest.mark.parametrize("email", EMAILS)
def test_emails_are_replaced(email: str) -> None:
    assert redact(f"Write to {email}, please.") == "Write to [EMAIL], please."


@pytest.mark.parametrize("phone", PHONES)
def test_phone_numbers_are_replaced_in_many_formats(phone: str) -> None:
    assert redact(f"Call {phone} after 5pm.") == "Call [PHONE] after 5pm."


@pytest.mark.parametrize("card", CARDS)
def test_luhn_valid_cards_are_replaced(card: str) -> None:
    assert luhn_ok(re.sub(r"\D", "", card))
    assert redact(f"Card: {card}.") == "Card: [CARD]."


@pytest.mark.parametrize("tail", [" 12/25", " 123", " 12 25", " exp 12/25"])
def test_a_card_followed_by_its_expiry_or_cvv_is_still_replaced(tail: str) -> None:
    for card in ("4111111111111111", "4111 1111 1111 1111"):
        out = redact(f"card {card}{tail}")
        assert out.startswith("card [CARD]") and "1111" not in out


@pytest.mark.parametrize("secret", SECRETS)
def test_secrets_are_replaced(secret: str) -> None:
    out = redact(f"use {secret} here")

    assert out == "use [SECRET] here"


@pytest.mark.parametrize(("text", "value"), ASSIGNED_SECRETS)
def test_assigned_secrets_are_replaced(text: str, value: str) -> None:
    out = redact(text)

    assert "[SECRET]" in out and value not in out


@pytest.mark.parametrize("text", LEFT_ALONE)
def test_ordinary_text_and_code_are_left_alone(text: str) -> None:
    assert redact(text) == text
    assert find_pii(text) == []


def test_the_non_luhn_example_really_fails_luhn() -> None:
    assert not luhn_ok("1234567890123456")
    assert luhn_ok("4111111111111111") and luhn_ok("0") and not luhn_ok("4111111111111112")


def test_counts_are_kept_per_kind() -> None:
    r = Redactor()
    out = r("ann@example.com, bo@example.com, +1 415-555-0132, 4111 1111 1111 1111, AKIAIOSFODNN7EXAMPLE")

    assert out == "[EMAIL], [EMAIL], [PHONE], [CARD], [SECRET]"
    assert dict(r.counts) == {"EMAIL": 2, "PHONE": 1, "CARD": 1, "SECRET": 1}


def test_find_pii_names_the_kinds_still_present() -> None:
    text = "mail ann@example.com or call (415) 555-0132 with key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"

    assert find_pii(text) == ["EMAIL", "PHONE", "SECRET"]
    assert find_pii(redact(text)) == []


def test_redaction_is_idempotent() -> None:
    text = ", ".join([*EMAILS, *PHONES, *CARDS, *SECRETS])
    once = redact(text)

    assert redact(once) == once
    assert not re.search(r"\d{4}", once)


def test_empty_text() -> None:
    assert redact("") == "" and find_pii("") == []


@pytest.mark.parametrize(
    "text",
    ["a." * 50_000 + "@", "x-" * 60_000 + " secret=", "x_" * 60_000 + " password=", "a_b_c_d " * 25_000,
     "4 " * 60_000],
)
def test_pathological_input_is_linear(text: str) -> None:
    import time

    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0


# ---- property: PII sprinkled into prose is removed, and the prose survives ----

WORDS = ["the", "refund", "for", "my", "order", "arrived", "late", "please", "check", "account", "thanks",
         "invoice", "shipping", "window", "support", "team", "weekend", "delivery", "address", "changed",
         "reset", "link", "never", "came", "could", "you", "look", "into", "it", "again", "tomorrow",
         "morning", "kind", "regards"]

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


def _n(k: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=k, max_size=k)


@st.composite
def emails(draw: st.DrawFn) -> str:
    name = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
    local = ".".join(draw(st.lists(name, min_size=1, max_size=3)))
    domain = draw(st.sampled_from(["example.com", "mail.example.org", "example.co.uk", "corp.example.net"]))
    return f"{local}@{domain}"


@st.composite
def phones(draw: st.DrawFn) -> str:
    area, mid, end = draw(_n(3)), draw(_n(3)), draw(_n(4))
    layout = draw(st.sampled_from(["+1 {a}-{m}-{e}", "({a}) {m}-{e}", "{a}.{m}.{e}", "{a}-{m}-{e}",
                                   "+1{a}{m}{e}", "+44 20 {m}{x} {e}"]))
    return layout.format(a=area, m=mid, e=end, x=draw(digits))


@st.composite
def cards(draw: st.DrawFn) -> str:
    body = draw(st.sampled_from("3456")) + draw(_n(14))
    check = next(d for d in "0123456789" if luhn_ok(body + d))
    number = body + check
    sep = draw(st.sampled_from(["", " ", "-"]))
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


@st.composite
def secrets(draw: st.DrawFn) -> str:
    alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    tail = draw(st.text(alphabet=alnum, min_size=20, max_size=40))
    upper = draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=16))
    value = draw(st.text(alphabet=alnum, min_size=12, max_size=24)) + draw(digits)
    return draw(st.sampled_from([f"sk-proj-{tail}", f"AKIA{upper}", f"ghp_{tail}{tail}", f"api_key={value}",
                                 f"Bearer {tail}", f"DB_PASSWORD={value}"]))


pii = st.one_of(emails(), phones(), cards(), secrets())
PLACEHOLDER = re.compile(r"\[(EMAIL|PHONE|CARD|SECRET)\][,.]?")


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=40),
    sprinkled=st.lists(st.tuples(st.integers(min_value=0), pii, st.sampled_from(["", ",", "."])), max_size=5),
)
def test_pii_sprinkled_into_prose_is_removed_and_the_prose_survives(
    words: list[str], sprinkled: list[tuple[int, str, str]]
) -> None:
    # One PII item per gap between words, so two items are never glued together.
    gaps: dict[int, str] = {}
    for where, item, punctuation in sprinkled:
        gaps.setdefault(where % (len(words) + 1), item + punctuation)
    tokens: list[str] = []
    for i in range(len(words) + 1):
        if i in gaps:
            tokens.append(gaps[i])
        if i < len(words):
            tokens.append(words[i])
    text = " ".join(tokens)

    r = Redactor()
    out = r(text)

    for item in gaps.values():
        assert item.rstrip(",.") not in out
    assert find_pii(out) == []
    assert sum(r.counts.values()) == len(gaps)
    assert [t for t in out.split() if not PLACEHOLDER.fullmatch(t)] == words


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(WORDS + LEFT_ALONE + [s for s, _ in ASSIGNED_SECRETS]), pii,
                       st.text(max_size=8)), max_size=8).map(" ".join),
))
def test_has_pii_is_whether_find_pii_finds_any(text: str) -> None:
    assert has_pii(text) == bool(find_pii(text))


@pytest.mark.parametrize("text", [*PHONES, *CARDS, *SECRETS, *(s for s, _ in ASSIGNED_SECRETS), "me@example.com",
                                  "API_KEY=ABCD1234EFGH5678", "BEARER ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"])
def test_has_pii_finds_every_kind(text: str) -> None:
    assert has_pii(f"Note: {text} (see above)") and has_pii(text)


def test_a_value_named_as_a_secret_is_redacted_whole_as_it_would_be_in_text() -> None:
    r = Redactor()
    assert r.member("password", "hunter2hunter2") == "[SECRET]"
    assert r.member("api_key", "abcd1234efgh5678") == "[SECRET]"
    assert r.member("city", "Paris") == "Paris"
    assert r.member("note", "mail ann@example.com") == "mail [EMAIL]"
    assert r.member("password", "") == ""
    assert r.counts == {"SECRET": 2, "EMAIL": 1}
