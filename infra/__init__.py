"""Starting a local stack (Postgres + Kafka-protocol broker); compose files for real deployments."""
