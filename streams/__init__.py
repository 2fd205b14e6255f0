"""Faust stream processors: ingest (and later projections and generation workers)."""
