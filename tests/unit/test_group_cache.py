"""The projector's group cache: bounded, oldest groups first, but never the hot group it just derived."""

from __future__ import annotations

from flywheel.domain.signals import PromptGroup, SignalConfig
from store.signals import GroupCache, _Known
from tests.unit.test_signals import thumbs, turn


def group(name: str, responses: int) -> _Known:
    interactions = [turn(f"{name}{n}", n + 1, messages=({"role": "user", "content": name},))
                    for n in range(responses)]
    g = PromptGroup(interactions, [thumbs(f"{name}0", responses + 1)], SignalConfig())
    return _Known(g, {})


def test_the_oldest_groups_go_first_and_the_biggest_of_the_run_stays_even_past_the_bound() -> None:
    cache = GroupCache(max_records=10)
    cache.start(0)
    cache.commit(1, {"a": group("a", 3), "b": group("b", 3)})
    assert len(cache) == 2  # 8 inputs: under the bound

    cache.commit(2, {"c": group("c", 4)})  # 13 inputs: a, the oldest, goes
    assert [k for k in ("a", "b", "c") if cache.get(k)] == ["b", "c"]

    hot = group("hot", 30)
    cache.commit(3, {"hot": hot, "d": group("d", 2)})
    assert cache.get("hot") is hot and len(cache) == 1  # alone past the bound, it stays
    assert cache.position == 3
