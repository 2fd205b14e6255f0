"""Use cases, one per module: each takes its ports and does one job."""
