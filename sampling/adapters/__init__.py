"""Adapters to the world: vLLM, the OpenAI-compatible server, the reward model, the judge, the test runner."""
