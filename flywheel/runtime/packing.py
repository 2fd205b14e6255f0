"""How a chunk of round entries crosses to the builder process: the named tuples as plain tuples, beside their types."""

from __future__ import annotations

from typing import Any

from flywheel.domain.rounds import Entry, Row


class Packed(list[Any]):
    """A chunk as it is pickled: each named tuple (`Prepared`, `Removed`, `Repeat`) as a plain tuple of its values,
    each Row as it is, and `types` saying what each entry was. A plain tuple pickles and unpickles in C, where a
    named tuple costs a Python call each way, once per row. A list, as what the builder's queue carries is."""

    types: list[type[Any]]


def pack(chunk: list[Entry]) -> Packed:
    """A chunk as it crosses to the builder process (`unpack` makes it again)."""
    packed = Packed([tuple(e) if isinstance(e, tuple) else e for e in chunk])
    packed.types = list(map(type, chunk))
    return packed


def unpack(packed: Packed) -> list[Entry]:
    """The chunk `pack` was given: the same entries, of the same types, in the same order."""
    new = tuple.__new__
    if Row in packed.types:
        return [value if cls is Row else new(cls, value) for cls, value in zip(packed.types, packed, strict=True)]
    return list(map(new, packed.types, packed))
