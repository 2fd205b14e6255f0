"""The pure core: wire schema, internal events, signal rules, quality, redaction and the round core."""
