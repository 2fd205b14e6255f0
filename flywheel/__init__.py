"""Flywheel: an event-sourced online data flywheel for LLM post-training."""
