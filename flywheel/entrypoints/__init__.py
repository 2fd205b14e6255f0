"""Entry points: the `flywheel` CLI and the scheduler."""
