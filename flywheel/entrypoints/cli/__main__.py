"""`python -m flywheel.entrypoints.cli`: the flywheel CLI."""

from __future__ import annotations

from flywheel.entrypoints.cli import main

main()
