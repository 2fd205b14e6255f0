"""The TextEmbeddings port on Postgres: the text_embeddings table, on a connection of its own (autocommit), so a
vector is kept as soon as it is made, whatever becomes of the build that asked for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from store.db import connect

if TYPE_CHECKING:
    import numpy as np


SAVE_LOCK = 0x5E3A_17C0  # advisory lock: a save of embeddings, or the read of the newest kept one


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
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", [SAVE_LOCK])  # see `newest`
            await cur.execute("CREATE TEMP TABLE incoming (text_key bytea, vector bytea) ON COMMIT DROP")
            async with cur.copy("COPY incoming (text_key, vector) FROM STDIN") as copy:
                for key, row in zip(keys, matrix, strict=True):
                    await copy.write_row((key, row.tobytes()))
            await cur.execute("INSERT INTO text_embeddings (model, text_key, vector) SELECT %s, text_key, vector"
                              " FROM incoming ON CONFLICT DO NOTHING", [model])

    async def vectors(self, model: str, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """The kept vectors of those of `keys` that have one."""
        import numpy as np

        if not keys:
            return {}
        async with await connect(self.url) as conn:
            cur = await conn.execute("SELECT text_key, vector FROM text_embeddings WHERE model = %s"
                                     " AND text_key = ANY(%s)", [model, list(keys)])
            return {bytes(k): np.frombuffer(bytes(v), dtype="<f4") for k, v in await cur.fetchall()}

    async def keys(self, model: str) -> set[bytes]:
        """Every kept key under `model`."""
        out: set[bytes] = set()
        async with await connect(self.url) as conn, conn.cursor(binary=True) as cur:
            query = sql.SQL("COPY (SELECT text_key FROM text_embeddings WHERE model = {}) TO STDOUT (FORMAT binary)"
                            ).format(sql.Literal(model))
            async with cur.copy(query) as copy:
                copy.set_types(["bytea"])
                async for (key,) in copy.rows():
                    out.add(bytes(key))
        return out

    async def newest(self, model: str) -> int:
        """The `seq` of the last vector kept under `model` (0 for none). Waits for the saves under way, so every
        vector up to it is committed, and every later one gets a greater `seq`."""
        async with await connect(self.url, autocommit=True) as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SAVE_LOCK])
            cur = await conn.execute("SELECT coalesce(max(seq), 0) FROM text_embeddings WHERE model = %s", [model])
            return int((await cur.fetchone() or (0,))[0])

    async def compared(self, model: str, checked: str) -> tuple[int, dict[bytes, list[dict[str, Any]]]]:
        """How far a comparison has got (the last `seq` compared, 0 for none) and the matches it found."""
        async with await connect(self.url) as conn:
            cur = await conn.execute("SELECT upto FROM semantic_compared WHERE model = %s AND checked = %s",
                                     [model, checked])
            row = await cur.fetchone()
            cur = await conn.execute("SELECT text_key, matches FROM semantic_matches WHERE model = %s AND checked = %s",
                                     [model, checked])
            return (0 if row is None else int(row[0])), {bytes(k): m for k, m in await cur.fetchall()}

    async def scan(self, model: str, *, after: int, upto: int, batch: int = 16_384
                   ) -> AsyncIterator[tuple[list[bytes], np.ndarray]]:
        """The kept keys and vectors with `after` < seq <= `upto`, in `seq` order, `batch` at a time (keys, float32
        rows): memory holds one batch, whatever the number of texts."""
        import numpy as np

        keys: list[bytes] = []
        blobs: list[bytes] = []
        async with await connect(self.url) as conn, conn.cursor(binary=True) as cur:
            query = sql.SQL("COPY (SELECT text_key, vector FROM text_embeddings WHERE model = {} AND seq > {}"
                            " AND seq <= {} ORDER BY seq) TO STDOUT (FORMAT binary)").format(
                sql.Literal(model), sql.Literal(after), sql.Literal(upto))
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

    async def record(self, model: str, checked: str, upto: int, matches: dict[bytes, list[dict[str, Any]]]) -> None:
        """Keep a comparison's new matches and how far it has got, together."""
        async with await connect(self.url, autocommit=True) as conn, conn.transaction(), conn.cursor() as cur:
            if matches:
                await cur.executemany(
                    "INSERT INTO semantic_matches (model, checked, text_key, matches) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    [(model, checked, key, Jsonb(found)) for key, found in matches.items()])
            await cur.execute("INSERT INTO semantic_compared (model, checked, upto) VALUES (%s, %s, %s)"
                              " ON CONFLICT (model, checked) DO UPDATE SET upto = greatest(semantic_compared.upto,"
                              " excluded.upto)", [model, checked, upto])
