"""Every contract test runs against each implementation: in memory, and on Postgres (a fresh database)."""

from __future__ import annotations

import pytest

from tests.contract.backends import Backend, Memory, Postgres


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Memory()
    return Postgres(request.getfixturevalue("endpoints").database_url)
