"""The night a scheduled run belongs to: the same for every instance running one fire time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flywheel.entrypoints.scheduler import MISFIRE_GRACE, night_of


def at(hour: int, minute: int = 0, second: float = 0, day: int = 6) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC) + timedelta(seconds=second)


@pytest.mark.parametrize("started", [at(3), at(3, 0, 0.2), at(3, 0, 31), at(3, 59, 59)])
def test_a_run_on_time_or_late_within_the_grace_belongs_to_the_fire_time(started: datetime) -> None:
    assert night_of("0 3 * * *", started) == "2026-12-06T03:00:00+00:00"


def test_instances_starting_on_either_side_of_a_second_name_one_night() -> None:
    assert night_of("* * * * *", at(5, 0, 0.001)) == night_of("* * * * *", at(5, 0, 59.9)) \
        == "2026-12-06T05:00:00+00:00"
    assert night_of("* * * * *", at(5, 1)) == "2026-12-06T05:01:00+00:00"


def test_a_run_outside_every_grace_is_a_night_of_its_own() -> None:
    late = at(3) + timedelta(seconds=MISFIRE_GRACE + 1)
    assert night_of("0 3 * * *", late) == late.isoformat()
    assert night_of("0 3 * * *", at(2, 59)) == at(2, 59).isoformat()  # never the next fire time, early
