"""The interfaces the services need; adapters implement them, tests fake them."""
