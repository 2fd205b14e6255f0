"""`flywheel quarantine`: benchmark and eval items no round may contain."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flywheel.entrypoints.cli.common import BY_HELP, _in_store, _operator, _print, _settings, fail, failing

quarantine_app = typer.Typer(help="Benchmark and eval items no round may contain.", no_args_is_help=True)


def _read_items(path: Path) -> list[tuple[str, str]]:
    items = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) \
                or not isinstance(obj.get("answer", ""), str) or not obj["prompt"].strip():
            raise ValueError(f"{path}:{n}: need an object with a non-empty string 'prompt' and a string 'answer'")
        items.append((obj["prompt"], obj.get("answer", "")))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


@quarantine_app.command("add")
def quarantine_add(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL: {prompt, answer} per line."),
    name: str = typer.Option(..., "--name", help="The list's name, e.g. the benchmark."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Add benchmark/eval items to the quarantine list (an event; every later round is checked against it)."""
    from flywheel.domain.events import QuarantineItemsAdded
    from store.projections import record

    with failing(ValueError, code=2):
        items = _read_items(file)
    who = _operator(by, _settings())
    stored = _in_store(lambda conn: record(conn, [QuarantineItemsAdded.listing(name, items, by=who)]))
    _print({"list": name, "items": len(items), "added": bool(stored)}, as_json,
           f"{len(items)} items {'added to' if stored else 'already in'} quarantine list {name!r}")


@quarantine_app.command("list")
def quarantine_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Quarantine lists, their item counts, the version rounds record, and active rollback slices."""
    from store.rounds import quarantine

    version, items, slices = _in_store(quarantine)
    lists: dict[str, int] = {}
    for _, list_name, _, _ in items:
        lists[list_name] = lists.get(list_name, 0) + 1
    data = {"version": version, "lists": lists, "slices": slices}
    human = [f"quarantine version {version}"] + [f"  {k:<24} {v:>7} items" for k, v in sorted(lists.items())]
    human += [f"  slice from rollback of round {sl['round']}: "
              + ", ".join(f"{k}={v}" for k, v in sl.items() if k != "round") for sl in slices]
    _print(data, as_json, "\n".join(human))


@quarantine_app.command("show")
def quarantine_show(name: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """The items of one quarantine list."""
    from store.rounds import quarantine

    _, items, _ = _in_store(quarantine)
    rows = [{"item_id": i, "prompt": p, "answer": a} for i, n, p, a in items if n == name]
    if not rows:
        fail(f"no quarantine list {name!r}")
    _print(rows, as_json, "\n".join(f"{r['item_id']}  {r['prompt'][:60]!r} -> {r['answer'][:30]!r}" for r in rows))
