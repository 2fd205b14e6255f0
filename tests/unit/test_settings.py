"""Settings: read once from FLYWHEEL_* variables, and handed to a child process unchanged."""

from __future__ import annotations

import pytest

from flywheel.domain.signals import SignalConfig
from flywheel.settings import Settings


def test_the_signal_rules_are_a_setting_and_reach_a_child_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SIGNALS", '{"edit_min_distance": 0.3, "rating_scale": 7}')
    settings = Settings()
    assert settings.signals == SignalConfig(edit_min_distance=0.3, rating_scale=7)
    for name, value in settings.child_env().items():
        monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_unset_signal_rules_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_SIGNALS", raising=False)
    assert Settings().signals == SignalConfig()


def test_bad_signal_rules_are_refused_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SIGNALS", '{"edit_min_distance": 2}')
    with pytest.raises(ValueError, match="edit_min_distance"):
        Settings()
