"""The signal rules' dispatch tables: every feedback type a group reads has rules, and every rule is run."""

from __future__ import annotations

from flywheel.domain.signals import EVENT_HANDLERS, FEEDBACK_TYPES, JUDGES, RULES, WINDOW_RULES


def test_every_feedback_type_a_group_reads_has_its_rules() -> None:
    assert set(EVENT_HANDLERS) == set(FEEDBACK_TYPES)


def test_a_comparison_judges_neither_response_alone() -> None:
    assert set(JUDGES) == set(FEEDBACK_TYPES) - {"comparison"}


def test_every_versioned_rule_is_in_a_table_and_names_itself_first_in_its_docstring() -> None:
    tables = [*EVENT_HANDLERS.values(), *WINDOW_RULES.values()]
    rules = [rule for handlers in tables for rule in handlers]
    named = {(rule.__doc__ or "").split(":", 1)[0] for rule in rules}

    assert named == set(RULES)
