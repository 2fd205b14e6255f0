"""A self-contained HTML report of a round manifest: inline SVG bar charts, no external assets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

_BAR_HEIGHT = 18
_GAP = 6
_LABEL_WIDTH = 240
_BAR_WIDTH = 360
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #ddd; }
code { font-size: 0.9em; } svg text { font-size: 12px; }
"""


def bar_chart(bars: Sequence[tuple[str, float]], *, title: str) -> str:
    """One horizontal bar per (label, value), scaled to the largest value; an empty chart says so."""
    if not bars:
        return f'<p class="empty">{escape(title)}: nothing to show</p>'
    top = max((value for _, value in bars), default=0.0) or 1.0
    height = len(bars) * (_BAR_HEIGHT + _GAP) + _GAP
    width = _LABEL_WIDTH + _BAR_WIDTH + 80
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{escape(title)}">']
    for i, (label, value) in enumerate(bars):
        y = _GAP + i * (_BAR_HEIGHT + _GAP)
        length = round(_BAR_WIDTH * value / top, 1)
        text_y = y + _BAR_HEIGHT - 4
        shown = f"{value:g}"
        parts.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{text_y}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{_LABEL_WIDTH}" y="{y}" width="{length}" height="{_BAR_HEIGHT}" fill="#4a78b5">'
            f"<title>{escape(label)}: {escape(shown)}</title></rect>"
            f'<text x="{_LABEL_WIDTH + length + 6}" y="{text_y}">{escape(shown)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _counts(shares: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, float]]:
    return [(value or "(none)", float(entry["count"])) for value, entry in shares.items()]


_RATES = ("thumbs_down", "edits", "regenerations", "thumbs_up")


def _figure(f: Mapping[str, Any] | None) -> str:
    return "n/a" if f is None else escape(f"{f['value']:.2f} ({f['band']})")


def _audit_sections(audits: Mapping[str, Any]) -> list[str]:
    """The feedback behind a round, as of its watermark (store.stats.signal_report): feedback rates per model
    version, rater agreement, and length and position bias."""
    rates = [(f"{version} {kind.replace('_', ' ')}", float(f[kind]))
             for version, f in audits["feedback_rates"].items() for kind in _RATES]
    agreement = [
        f"<tr><td>{escape(kind)}</td><td>{escape(key)}</td><td>{escape(group)}</td><td>{a['items']}</td>"
        + "".join(f"<td>{_figure(a[name])}</td>" for name in ("cohen_kappa", "fleiss_kappa", "krippendorff_alpha"))
        + "</tr>"
        for kind, by in audits["agreement"].items() for key, groups in by.items() for group, a in groups.items()
    ]
    head = ("<tr><th>feedback</th><th>by</th><th>group</th><th>items</th><th>Cohen's kappa</th>"
            "<th>Fleiss' kappa</th><th>Krippendorff's alpha</th></tr>")
    lb, pb = audits["length_bias"], audits["position_bias"]
    bias = [("longer response chosen (share of non-tie pairs)", lb["chosen_longer_rate"], lb["pairs"]),
            ("r(length difference, margin)", lb["correlation"], lb["pairs"]),
            ("first-shown response wins (share of non-tie comparisons)", pb["first_shown_win_rate"],
             pb["comparisons"]),
            ("p-value of that share against 0.5 (exact binomial)", pb["p_value"], pb["comparisons"])]
    bias_rows = "".join(f"<tr><th>{escape(label)}</th><td>{'n/a' if v is None else f'{v:.3f}'}</td><td>{n}</td></tr>"
                        for label, v, n in bias)
    checkpoint = audits.get("signals_checkpoint")
    note = ("" if checkpoint is None else
            f'<p class="empty">Signal counts and length bias come from the signals read model at its checkpoint '
            f"{escape(str(checkpoint))}, not from a derivation at this round's watermark.</p>")
    return [
        "<h2>Feedback per 100 responses, by model version</h2>" + bar_chart(rates, title="feedback rates"),
        "<h2>Rater agreement (bands: &ge; 0.75 strong, 0.60&ndash;0.75 moderate, 0.40&ndash;0.60 fair,"
        " &lt; 0.40 poor)</h2>"
        + (f"<table>{head}{''.join(agreement)}</table>" if agreement
           else '<p class="empty">no item was judged by two or more raters</p>'),
        f"<h2>Length and position bias</h2><table><tr><th></th><th>value</th><th>over</th></tr>{bias_rows}</table>"
        + note,
    ]


def _estimate(e: Mapping[str, Any] | None) -> str:
    if e is None:
        return "n/a"
    interval = "" if e["low"] is None else f" [{e['low']:.2f}, {e['high']:.2f}]"
    return escape(f"{e['value']:.2f}{interval} ({e['band']})")


def scorer_audit_sections(audits: Mapping[str, Any]) -> list[str]:
    """Agreement of users, judge and reward model on pairwise preferences (Cohen's kappa per two raters and
    Krippendorff's alpha, with 95% bootstrap intervals) per round, app and model version; each scorer's
    bias-probe accuracy, drift and flag."""
    rows = []
    for key, groups in audits.get("scorer_agreement", {}).items():
        for group, a in groups.items():
            kappas = "<br>".join(f"{escape(' / '.join(p['raters']))}: {_estimate(p['cohen_kappa'])} "
                                 f"over {p['items']}" for p in a["rater_pairs"])
            rows.append(f"<tr><td>{escape(key)}</td><td>{escape(group)}</td><td>{a['items']}</td>"
                        f"<td>{kappas or 'n/a'}</td><td>{_estimate(a['krippendorff_alpha'])}</td></tr>")
    head = ("<tr><th>by</th><th>group</th><th>pairs</th><th>Cohen's kappa [95% interval]</th>"
            "<th>Krippendorff's alpha</th></tr>")
    probes = []
    for p in audits.get("bias_probes", []):
        drift = "n/a" if p["drift"] is None else f"{p['drift']:+.2f}"
        categories = ", ".join(f"{c} {v:.2f}" for c, v in sorted(p["by_category"].items()))
        flag = f"FLAGGED (below {p['min_accuracy']:.2f})" if p["flagged"] else "ok"
        probes.append(f"<tr><td>{escape(p['scorer'])}</td><td><code>{escape(p['version'])}</code></td>"
                      f"<td>{p['accuracy']:.2f} ({p['correct']}/{p['probes']})</td><td>{escape(drift)}</td>"
                      f"<td>{escape(categories)}</td><td>{escape(flag)}</td></tr>")
    probe_head = ("<tr><th>scorer</th><th>version</th><th>accuracy</th><th>drift</th><th>by category</th>"
                  "<th>flag</th></tr>")
    return [
        "<h2>Agreement of users, judge and reward model on preference pairs</h2>"
        + (f"<table>{head}{''.join(rows)}</table>" if rows
           else '<p class="empty">no pair was judged by users and a scorer</p>'),
        "<h2>Bias probes (latest run of each scorer)</h2>"
        + (f"<table>{probe_head}{''.join(probes)}</table>" if probes
           else '<p class="empty">no scorer has been audited on the probe set</p>'),
    ]


def _value(v: Any) -> str:
    return "n/a" if v is None else f"{v:g}" if isinstance(v, int | float) else str(v)


def _promotion_section(promotion: Mapping[str, Any]) -> str:
    """Each promotion gate's value, limit and verdict, and the round's state."""
    rows = "".join(
        f"<tr><td><code>{escape(g['name'])}</code></td><td>{escape(_value(g['value']))}</td>"
        f"<td>{escape(_value(g['limit']))}</td><td>{'yes' if g['blocking'] else 'no'}</td>"
        f"<td>{escape(g.get('status', 'pass' if g['passed'] else 'fail'))}</td>"
        f"<td>{escape(str(g.get('detail', {}).get('interval', '')))}</td></tr>"
        for g in promotion["gates"])
    head = ("<tr><th>gate</th><th>value</th><th>limit</th><th>blocking</th><th>verdict</th>"
            "<th>interval</th></tr>")
    return (f"<h2>Promotion: {escape(str(promotion['state']))}</h2>"
            f"<p>Human-feedback rows left out for poor rater agreement: "
            f"{escape(str(promotion.get('left_out_for_agreement', 0)))}</p><table>{head}{rows}</table>")


def _hit_records_section(records: list[Mapping[str, Any]]) -> str:
    """Every (item, side, method) the contamination gate found: rows removed and the highest score."""
    head = "<h2>Contamination hits (item, side, method, score)</h2>"
    if not records:
        return head + "<p>none</p>"
    columns = ("item", "side", "method", "score", "rows", "list")
    rows = "".join("<tr>" + "".join(f"<td>{escape(str(r[k]))}</td>" for k in columns) + "</tr>" for r in records)
    return head + "<table><tr>" + "".join(f"<th>{c}</th>" for c in columns) + "</tr>" + rows + "</table>"


def _semantic_section(semantic: Mapping[str, Any]) -> str:
    """The semantic check's hits: one line per (item, item side, row side) with its best score."""
    head = ("<tr><th>item</th><th>item side</th><th>side</th><th>method</th><th>score</th><th>texts</th></tr>")
    lines = "".join(
        "<tr>" + "".join(f"<td>{escape(str(hit[k]))}</td>"
                         for k in ("item", "item_side", "side", "method", "score", "texts")) + "</tr>"
        for hit in semantic["hits"])
    return (f"<h2>Semantic near duplicates ({escape(str(semantic['model']))}, cosine &ge; "
            f"{escape(str(semantic['threshold']))})</h2><table>{head}{lines}</table>"
            if lines else f"<h2>Semantic near duplicates ({escape(str(semantic['model']))})</h2><p>none</p>")


def report_html(manifest: Mapping[str, Any], audits: Mapping[str, Any] | None = None) -> str:
    """The HTML page of a round: identity, signal mix by kind and source, gate removals, the distribution by
    app, model version, tag and length, and (given `audits`, store.stats.signal_report at the round's
    watermark) feedback rates, agreement and bias. Every string from the manifest is escaped."""
    sources = manifest["data_sources"]
    processing = manifest["sample_processing"]
    isolation = manifest["evaluation_isolation"]
    distribution = processing["distribution"]

    mix = [(f"{kind} / {source}", float(n))
           for kind, by_source in sources["sources_by_kind"].items() for source, n in by_source.items()]
    removed = [(f"{gate} ({kind})", float(n))
               for gate, by_kind in processing["removed"].items() for kind, n in by_kind.items() if n]
    quality = [(f"{reason} ({kind})", float(n))
               for reason, by_kind in processing["quality_reasons"].items() for kind, n in by_kind.items() if n]
    hits = sorted(isolation["hits"].items(), key=lambda kv: (-kv[1], kv[0]))[:20]

    identity = [
        ("round", manifest["round"]), ("parent", manifest["parent"]), ("watermark", manifest["watermark"]),
        ("content hash", manifest["content_hash"]), ("config version", manifest["config_version"]),
        ("quarantine list", f'{isolation["quarantine_version"]} ({isolation["items"]} items)'),
        ("rows in / out", f'{processing["rows_in"]} / {processing["rows_out"]}'),
        ("effective sample rate", processing["effective_sample_rate"]),
        ("event positions", f'{sources["positions"]["min"]} .. {sources["positions"]["max"]}'),
    ]
    rows = "".join(f"<tr><th>{escape(str(k))}</th><td><code>{escape(str(v))}</code></td></tr>" for k, v in identity)
    splits = "".join(
        f"<tr><th>{escape(split)}</th>" + "".join(f"<td>{escape(str(n))}</td>" for n in by_kind.values()) + "</tr>"
        for split, by_kind in processing["splits"].items()
    )
    kinds: Mapping[str, int] = next(iter(processing["splits"].values()), {})
    split_head = "<tr><th></th>" + "".join(f"<th>{escape(k)}</th>" for k in kinds) + "</tr>"

    sections = [
        f"<h1>Round {escape(str(manifest['round']))}</h1><table>{rows}</table>",
        *([_promotion_section(manifest["promotion"])] if "promotion" in manifest else []),
        f"<h2>Splits</h2><table>{split_head}{splits}</table>",
        "<h2>Signal mix by kind and source</h2>" + bar_chart(mix, title="signal mix"),
        "<h2>Removed by each gate</h2>" + bar_chart(removed, title="gate removals"),
        "<h2>Quality gate reasons</h2>" + bar_chart(quality, title="quality reasons"),
        "<h2>Contamination hits (top 20 items)</h2>"
        + bar_chart([(k, float(v)) for k, v in hits], title="contamination hits"),
        _hit_records_section(isolation.get("hit_records", [])),
        *([_semantic_section(isolation["semantic"])] if "semantic" in isolation else []),
        "<h2>By app</h2>" + bar_chart(_counts(distribution["by_app"]), title="by app"),
        "<h2>By model version</h2>" + bar_chart(_counts(distribution["by_model_version"]), title="by model version"),
        "<h2>By tag</h2>" + bar_chart(_counts(distribution["by_tag"]), title="by tag"),
        "<h2>By length (characters)</h2>" + bar_chart(_counts(distribution["by_length"]), title="by length"),
        *(_audit_sections(audits) if audits is not None else ()),
        *(scorer_audit_sections(audits) if audits is not None else ()),
    ]
    title = f"Flywheel round {manifest['round']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")
