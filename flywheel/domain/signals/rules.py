"""The signal rules' names and versions, and the ids of the records they derive."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

# Every rule has a name and an integer version; bump the version whenever a rule's output changes meaning.
EDIT_PAIR = "edit_pair"
EDIT_SFT = "edit_sft"
REGENERATE_PAIR = "regenerate_pair"
THUMBS_LABEL = "thumbs_label"
RATING_LABEL = "rating_label"
RATING_PAIR = "rating_pair"
COMPARISON_PAIR = "comparison_pair"
RULES: Mapping[str, int] = {
    EDIT_PAIR: 1,
    EDIT_SFT: 1,
    REGENERATE_PAIR: 1,
    THUMBS_LABEL: 1,
    RATING_LABEL: 1,
    RATING_PAIR: 2,  # 2: a rating is compared with a window of the rater's ratings before it
    COMPARISON_PAIR: 1,
}


def digest(*parts: str) -> str:
    """A short stable hash of the parts, in order: the id of a derived record."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def record_id(rule: str, source_event_ids: Sequence[str]) -> str:
    """The id of what `rule` derived from these events; a new version of the rule gives new ids."""
    return digest(rule, str(RULES[rule]), *source_event_ids)
