"""Where a Faust app keeps its files."""

from __future__ import annotations

from flywheel.settings import Settings


def faust_datadir(settings: Settings, group: str) -> str:
    """A Faust app's directory under FLYWHEEL_HOME (Faust's default, ./<group>-data, litters the working
    directory; and Faust makes only the last directory of the path itself)."""
    path = settings.home / "faust" / group
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
