"""The stack a benchmark runs on: the one the settings point at, or an embedded one made for the run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flywheel.settings import Settings


@contextmanager
def bench_stack(base: Settings, prefix: str) -> Iterator[tuple[str, str]]:
    """(database URL, Kafka bootstrap): FLYWHEEL_DATABASE_URL and FLYWHEEL_KAFKA_BOOTSTRAP when both are set,
    else a fresh embedded stack under a temporary directory, purged afterwards."""
    if base.database_url and base.kafka_bootstrap:
        yield base.database_url, base.kafka_bootstrap
        return
    from infra.stack import LocalStack

    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # the embedded PostgreSQL runs as `nobody` when we are root
    try:
        env = LocalStack(root / "stack").up()
        yield env.database_url, env.kafka_bootstrap
    finally:
        LocalStack(root / "stack").purge()
        shutil.rmtree(root, ignore_errors=True)
