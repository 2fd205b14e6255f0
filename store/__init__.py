"""Postgres event store: append-only log, tracking rows, read models and their projections."""
