"""Settings: read once from FLYWHEEL_* variables, and handed to a child process unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.domain.signals import SignalConfig
from flywheel.settings import READ_ELSEWHERE, Settings, UnknownSetting, check_environment, setting_names


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


def test_an_unknown_variable_is_refused_at_start_up_naming_it_and_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLYWHEEL_GENERATOR_URLL", "http://vllm:8000")
    with pytest.raises(ValueError, match=r"FLYWHEEL_GENERATOR_URLL \(did you mean FLYWHEEL_GENERATOR_URL\?\)"):
        Settings()


def test_a_renamed_variable_names_the_setting_that_replaced_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_VLLM_URL", "http://vllm:8000/v1")
    with pytest.raises(ValueError, match=r"FLYWHEEL_VLLM_URL \(did you mean FLYWHEEL_GENERATOR_URL\?\)"):
        Settings()


def test_every_unknown_variable_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_NIGHTLY_CRONN", "0 3 * * *")
    monkeypatch.setenv("flywheel_qwertyuiop", "1")  # the prefix is read whatever its case, so it is checked so
    with pytest.raises(UnknownSetting) as refused:
        check_environment(dict(os.environ))
    assert "FLYWHEEL_NIGHTLY_CRONN (did you mean FLYWHEEL_NIGHTLY_CRON?)" in str(refused.value)
    assert "flywheel_qwertyuiop" in str(refused.value)


def test_variables_read_outside_settings_and_every_setting_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in READ_ELSEWHERE:
        monkeypatch.setenv(name, "x")
    for name, value in Settings().child_env().items():
        monkeypatch.setenv(name, value)
    assert Settings().partitions == 4
    assert not set(READ_ELSEWHERE) & setting_names()


def test_the_command_line_says_which_variable_is_unknown(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLYWHEEL_")}
    env.update(FLYWHEEL_HOME=str(tmp_path), FLYWHEEL_PARTITONS="8")
    done = subprocess.run([sys.executable, "-m", "flywheel", "stats"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "unknown environment variable: FLYWHEEL_PARTITONS (did you mean FLYWHEEL_PARTITIONS?)" in done.stderr
    assert "Traceback" not in done.stderr
