"""The TextEmbeddings port on Postgres: the text_embeddings table, on a connection of its own (autocommit), so a
vector is kept as soon as it is made, whatever becomes of the build that asked for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from psycopg import sql

from store.db import connect

if TYPE_CHECKING:
    import numpy as np


class PostgresTextEmbeddings:
    def __init__(self, url: str) -> None:
        self.url = url

    async def missing(self, model: str, keys: Sequence[bytes]) -> set[bytes]:
        """The keys among `keys` with no vector under `model`."""
        if not keys:
            return set()
        async with await connect(self.url) as conn:
            cur = await conn.execute("SELECT text_key FROM text_embeddings WHERE model = %s AND text_key = ANY(%s)",
                                     [model, list(keys)])
            found = {bytes(row[0]) for row in await cur.fetchall()}
        return set(keys) - found

    async def save(self, model: str, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        """Keep each key's vector (rows of `vectors`, float32); a key kept already keeps its vector."""
        import numpy as np

        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys for {len(vectors)} vectors")
        matrix = np.ascontiguousarray(vectors, dtype="<f4")
        async with await connect(self.url, autocommit=True) as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute("CREATE TEMP TABLE incoming (text_key bytea, vector bytea) ON COMMIT DROP")
            async with cur.copy("COPY incoming (text_key, vector) FROM STDIN") as copy:
                for key, row in zip(keys, matrix, strict=True):
                    await copy.write_row((key, row.tobytes()))
            await cur.execute("INSERT INTO text_embeddings (model, text_key, vector) SELECT %s, text_key, vector"
                              " FROM incoming ON CONFLICT DO NOTHING", [model])

    async def scan(self, model: str, batch: int = 16_384) -> AsyncIterator[tuple[list[bytes], np.ndarray]]:
        """Every kept key under `model` with its vector, in key order, `batch` at a time (keys, float32 rows): memory
        holds one batch, whatever the number of texts."""
        import numpy as np

        keys: list[bytes] = []
        blobs: list[bytes] = []
        async with await connect(self.url) as conn, conn.cursor(binary=True) as cur:
            query = sql.SQL("COPY (SELECT text_key, vector FROM text_embeddings WHERE model = {} ORDER BY text_key)"
                            " TO STDOUT (FORMAT binary)").format(sql.Literal(model))
            async with cur.copy(query) as copy:
                copy.set_types(["bytea", "bytea"])
                async for key, vector in copy.rows():
                    keys.append(bytes(key))
                    blobs.append(bytes(vector))
                    if len(keys) == batch:
                        yield keys, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), -1)
                        keys, blobs = [], []
        if keys:
            yield keys, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), -1)

    async def vectors(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The kept vectors of those of `keys` that have one."""
        import numpy as np

        if not keys:
            return {}
        async with await connect(self.url) as conn:
            cur = await conn.execute("SELECT text_key, vector FROM text_embeddings WHERE model = %s"
                                     " AND text_key = ANY(%s)", [model, list(keys)])
            return {bytes(k): np.frombuffer(bytes(v), dtype="<f4") for k, v in await cur.fetchall()}
