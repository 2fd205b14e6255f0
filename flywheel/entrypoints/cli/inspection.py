"""Reading the store: stats, signals, and a replay of the read models."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import typer

from flywheel.entrypoints.cli.common import _endpoints, _in_store, _print, _schema, _settings
from flywheel.entrypoints.cli.progress import progress
from flywheel.settings import Endpoints


def _query_store(query: Callable[[Any], dict[str, Any]]) -> tuple[dict[str, Any], Endpoints]:
    """Run a read-only report against the store the settings point at."""
    from store.db import connect_sync

    endpoints = _endpoints(_settings())
    _schema(endpoints.database_url)
    with connect_sync(endpoints.database_url) as conn:
        return query(conn), endpoints


def stats(as_json: bool = typer.Option(False, "--json")) -> None:
    """Events stored by type, dead-lettered by reason, read-model counts, consumer lag."""
    from store.stats import store_stats
    from streams.lag import with_lag

    data, endpoints = _query_store(store_stats)
    data["consumers"] = with_lag(endpoints.kafka_bootstrap, data["consumers"], _settings().kafka_security())
    _print(data, as_json, _describe_stats(data))


def _describe_stats(d: dict[str, Any]) -> str:
    lines = [f"events stored      {d['events']['total']:>9}   (head position {d['events']['head_position']})"]
    lines += [f"  {k:<16} {v:>9}" for k, v in d["events"]["by_type"].items()]
    lines.append(f"dead-lettered      {d['dead_lettered']['total']:>9}")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["dead_lettered"]["by_reason"].items()]
    lines.append(f"parked (waiting)   {d['parked']:>9}")
    lines.append("read models")
    lines += [f"  {k:<16} {v:>9}" for k, v in d["read_models"].items()]
    lines.append(f"signals behind     {d['signals_behind']:>9} events")
    p = d["privacy"]
    lines.append(f"users erased       {p['erased_users']:>9}   ({p['events_stored_as_erased']} events as erased)")
    lines.append(f"consent withdrawn  {p['withdrawn_users']:>9}   users (scope training)")
    lines.append("consumers")
    for c in d["consumers"]:
        lag = "n/a" if c.get("lag") is None else c["lag"]
        lines.append(f"  {c['consumer_group']} {c['topic']}[{c['partition']}] offset {c['offset']} lag {lag}")
    return "\n".join(lines)


def signals(as_json: bool = typer.Option(False, "--json")) -> None:
    """Derived preference data: counts by rule, rater agreement, length and position bias, agreement of users with
    the judge and the reward model, bias-probe accuracy of each scorer."""
    from store.stats import signal_report

    report = _in_store(signal_report)
    _print(report, as_json, _describe_signals(report))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _describe_signals(r: dict[str, Any]) -> str:
    lines = ["signals by rule                      count  disagree  no-consent"]
    for c in r["signals"]:
        name = f"{c['kind']}/{c['rule']}" + (f" [{c['status']}]" if c["status"] else "")
        lines.append(f"  {name:<33}{c['count']:>7}{c['disagreement']:>10}{c['no_consent']:>12}")
    lines.append("feedback per 100 responses          responses  up  down  edits  regens  ratings  comparisons")
    for version, f in r["feedback_rates"].items():
        lines.append(f"  {version:<33}{f['interactions']:>10}{f['thumbs_up']:>4.0f}{f['thumbs_down']:>6.0f}"
                     f"{f['edits']:>7.0f}{f['regenerations']:>8.0f}{f['ratings']:>9.0f}{f['comparisons']:>13.0f}")
    if any(r["agreement"].values()):
        lines.append("agreement bands: >= 0.75 strong, 0.60-0.75 moderate, 0.40-0.60 fair, < 0.40 poor")
    for kind, by in r["agreement"].items():
        for key, groups in by.items():
            lines.append(f"agreement on {kind} by {key}")
            for group, a in groups.items():
                figures = []
                for name in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
                    f = a[name]
                    figures.append(f"{name} {_fmt(f['value'])} ({f['band']})" if f else f"{name} n/a")
                lines.append(f"  {group:<22} items {a['items']:>5}  " + "  ".join(figures))
    lines += _describe_scorer_audits(r)
    lb, pb = r["length_bias"], r["position_bias"]
    lines.append(f"length bias      longer response chosen in {_fmt(lb['chosen_longer_rate'])} of {lb['pairs']} "
                 f"pairs, r(length diff, margin) = {_fmt(lb['correlation'])}")
    lines.append(f"position bias    first-shown wins {_fmt(pb['first_shown_win_rate'])} of {pb['comparisons']} "
                 f"comparisons (p = {_fmt(pb['p_value'], 3)}), ties {pb['ties']}")
    return "\n".join(lines)


def _estimate(e: dict[str, Any] | None) -> str:
    if e is None:
        return "n/a"
    interval = "" if e["low"] is None else f" [{e['low']:.2f}, {e['high']:.2f}]"
    return f"{e['value']:.2f}{interval} ({e['band']})"


def _describe_scorer_audits(r: dict[str, Any]) -> list[str]:
    lines = []
    for key, groups in r.get("scorer_agreement", {}).items():
        lines.append(f"users vs judge vs reward model on pairs, by {key} (95% bootstrap intervals)")
        for group, a in groups.items():
            lines.append(f"  {group:<22} pairs {a['items']:>5}  alpha {_estimate(a['krippendorff_alpha'])}")
            for p in a["rater_pairs"]:
                lines.append(f"    kappa {' / '.join(p['raters']):<28} {_estimate(p['cohen_kappa'])}"
                             f"  over {p['items']}")
    for p in r.get("bias_probes", []):
        drift = "n/a" if p["drift"] is None else f"{p['drift']:+.2f}"
        flag = f"  FLAGGED: below {p['min_accuracy']:.2f}" if p["flagged"] else ""
        lines.append(f"bias probes      {p['scorer']:<14} accuracy {p['accuracy']:.2f} ({p['correct']}/"
                     f"{p['probes']}), drift {drift}{flag}")
    return lines


def replay(check: bool = typer.Option(False, "--check", help="Rebuild into scratch tables and compare."),
           as_json: bool = typer.Option(False, "--json")) -> None:
    """Rebuild every read model from the event log (--check: verify without touching the live ones; exit 1 on
    drift)."""
    from store.db import connect
    from store.projections import check as check_projections
    from store.projections import rebuild

    settings = _settings()
    endpoints = _endpoints(settings)
    _schema(endpoints.database_url)

    async def run() -> Any:
        conn = await connect(endpoints.database_url)
        try:
            with progress("checking read models" if check else "rebuilding read models", unit="events") as shown:
                return await (check_projections if check else rebuild)(conn, settings.signals, shown)
        finally:
            await conn.close()

    out = asyncio.run(run())
    if not check:
        _print({"rebuilt_from_events": out}, as_json, f"rebuilt read models from {out} events")
        return
    drifted = any(d.missing or d.extra for d in out)
    _print({"drift": drifted, "tables": [{"table": d.table, "missing": d.missing, "extra": d.extra} for d in out]},
           as_json, "\n".join(f"{d.table:<14} " + ("ok" if not (d.missing or d.extra)
                                                    else f"DRIFT: {d.missing} missing, {d.extra} extra") for d in out))
    raise typer.Exit(1 if drifted else 0)
