"""A round's manifest (its four manifests, file hashes and identity) and its content hash."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import orjson

from flywheel.domain.rounds.config import BUILDER_VERSION, RoundConfig
from flywheel.domain.rounds.gates import CONTAMINATION, GATES
from flywheel.domain.rounds.quality import QUALITY_REASONS
from flywheel.domain.rounds.quarantine import QuarantineIndex, QuarantineList
from flywheel.domain.rounds.rows import KINDS, SCORER_SEPARATOR
from flywheel.domain.rounds.semantic import SemanticHits
from flywheel.domain.rounds.split import SPLITS
from flywheel.domain.rounds.tally import LENGTH_BUCKETS, Tally


def content_hash(files: dict[str, str], *, config_version: str, watermark: int, quarantine_version: str) -> str:
    """sha256 over the sorted (path, file sha256) list, the config version, the watermark and the quarantine
    list version."""
    canonical = {"files": sorted([path, digest] for path, digest in files.items()), "config_version": config_version,
                 "watermark": watermark, "quarantine_version": quarantine_version}
    return hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()


def round_manifest(config: RoundConfig, quarantine: QuarantineList, index: QuarantineIndex, tally: Tally,
                   files_manifest: dict[str, dict[str, Any]], *, watermark: int, parent: str | None,
                   round_number: int, semantic: SemanticHits | None = None) -> dict[str, Any]:
    """What manifest.json holds: the round's identity, config and files, and the data sources, sample processing,
    training consumption and evaluation isolation manifests."""
    files = {path: entry["sha256"] for path, entry in files_manifest.items()}
    config_version = config.version()
    hits = tally.hit_records()
    manifest: dict[str, Any] = {
        "round": round_number,
        "parent": parent,
        "watermark": watermark,
        "builder_version": BUILDER_VERSION,
        "config": config.as_dict(),
        "config_version": config_version,
        "files": files_manifest,
        "content_hash": content_hash(files, config_version=config_version, watermark=watermark,
                                     quarantine_version=quarantine.version),
        "data_sources": _data_sources(tally),
        "sample_processing": _sample_processing(tally),
        "training_consumption": [],
        "evaluation_isolation": {
            "quarantine_version": quarantine.version,
            "quarantine_digest": quarantine.digest(),
            "items": len(quarantine.items),
            "indexed_texts": index.indexed_texts,
            "method": {"ngram": config.ngram, "min_item_words": config.min_item_words,
                       "shingle_words": config.shingle_words, "minhash_threshold": config.minhash_threshold,
                       "num_perm": config.num_perm},
            "contaminated_rows": _by_kind(tally.removed[CONTAMINATION]),
            "whole_texts": index.whole_texts,
            "hits": dict(sorted(tally.item_hits.items())),
            "hits_by_list": dict(sorted(tally.list_hits.items())),
            "hits_by_method": _counted(hits, "method"),
            "hits_by_side": _counted(hits, "side"),
            "hit_records": hits,
        },
    }
    if semantic is not None:
        manifest["evaluation_isolation"]["semantic"] = {
            "model": semantic.model, "threshold": semantic.threshold, "item_sides": semantic.items_compared,
            "hits": tally.semantic_records(),
        }
    return manifest


def _counted(records: list[dict[str, Any]], field: str) -> dict[str, int]:
    """Hits (an item found in a row) per value of a hit record's field: a row holding two items counts twice."""
    out: Counter[str] = Counter()
    for r in records:
        out[r[field]] += r["rows"]
    return dict(sorted(out.items()))


def _by_kind(counter: Counter[str]) -> dict[str, int]:
    return {kind: counter[kind] for kind in KINDS}


def _shares(counter: Counter[str], total: int) -> dict[str, dict[str, float | int]]:
    return {value: {"count": n, "share": round(n / total, 6) if total else 0.0} for value, n in sorted(counter.items())}


def _data_sources(tally: Tally) -> dict[str, Any]:
    sources: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for key, n in tally.kept.items():
        sources[key.kind][key.source] += n
    return {
        "apps": sorted(tally.kept_by("app_id")),
        "model_versions": sorted(tally.kept_by("model_version")),
        "prompt_versions": sorted(v for v in tally.kept_by("prompt_version") if v is not None),
        "positions": {"min": tally.min_position, "max": tally.max_position},
        "rows_by_kind": _by_kind(tally.kept_by("kind")),
        "sources_by_kind": {kind: dict(sorted(sources[kind].items())) for kind in KINDS},
        # generated SFT samples and DPO pairs per set of scorers that selected them ("llm_judge+reward_model")
        "selected_by": {kind: {SCORER_SEPARATOR.join(scorers): n
                               for (k, scorers), n in sorted(tally.selected_by.items()) if k == kind}
                        for kind in ("sft", "dpo")},
    }


def _sample_processing(tally: Tally) -> dict[str, Any]:
    kept = tally.kept_by("kind")
    rows_in, rows_out = sum(tally.rows_in.values()), sum(kept.values())
    splits: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    tags: Counter[str] = Counter()
    for key, n in tally.kept.items():
        splits[key.split][key.kind] += n
        for tag in set(key.tags) or {""}:
            tags[tag] += n
    lengths = tally.kept_by("length")
    return {
        "gate_order": list(GATES),
        "rows_in": rows_in,
        "rows_in_by_kind": _by_kind(tally.rows_in),
        "excluded_kinds": _by_kind(tally.excluded_kinds),
        "removed": {gate: _by_kind(tally.removed[gate]) for gate in GATES},
        "quality_reasons": {reason: _by_kind(tally.quality[reason]) for reason in QUALITY_REASONS},
        "rows_out": rows_out,
        "rows_out_by_kind": _by_kind(kept),
        "effective_sample_rate": round(rows_out / rows_in, 6) if rows_in else 0.0,
        "splits": {split: _by_kind(splits[split]) for split in SPLITS},
        "distribution": {
            "rows": rows_out,
            "by_kind": _shares(kept, rows_out),
            "by_app": _shares(tally.kept_by("app_id"), rows_out),
            "by_model_version": _shares(tally.kept_by("model_version"), rows_out),
            # A row counts once under each of its tags ("" when it has none), so shares may sum above 1.
            "by_tag": _shares(tags, rows_out),
            "by_length": {name: {"count": lengths[name],
                                 "share": round(lengths[name] / rows_out, 6) if rows_out else 0.0}
                          for _, name in LENGTH_BUCKETS},
        },
    }


NEXT_ROUND = "next"  # how the store labels scorer judgements no published round covers yet


def with_scorer_audits(manifest: dict[str, Any], audits: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest with a `scorer_audits` section (agreement of users, judge and reward model on pairs, per round,
    app and model version; each scorer's latest bias-probe audit; the flagged scorers), and the report's figures,
    both with the judgements no earlier round covers labelled as this round. Pure: the same figures at the same
    watermark give the same manifest."""
    label = str(manifest["round"])
    agreement = {key: {(label if group == NEXT_ROUND else group): figures for group, figures in groups.items()}
                 for key, groups in audits.get("scorer_agreement", {}).items()}
    relabelled = {**audits, "scorer_agreement": agreement}
    section = {"agreement": agreement, "bias_probes": list(audits.get("bias_probes", [])),
               "flagged_scorers": list(audits.get("flagged_scorers", []))}
    return {**manifest, "scorer_audits": section}, relabelled
