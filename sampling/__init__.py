"""Hard-case sampling, multi-candidate generation, scoring and selection."""
