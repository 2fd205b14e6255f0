"""Hard-case sampler: score prompts by what users objected to, cluster near-duplicates, fill a stratified budget."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from datasketch import MinHash, MinHashLSH

from flywheel.domain.messages import message_text

SAMPLER_VERSION = 1  # bump whenever the same inputs and config would choose differently

# Why a candidate was not chosen, in the order the checks run (a candidate is counted under the first that applies).
AFTER_WATERMARK = "after_watermark"
NO_CONSENT = "no_consent"
QUARANTINED = "quarantined"
NO_SIGNAL = "no_signal"
CLUSTER_CAP = "cluster_cap"
OVER_BUDGET = "over_budget"
EXCLUSION_REASONS = (AFTER_WATERMARK, NO_CONSENT, QUARANTINED, NO_SIGNAL, CLUSTER_CAP, OVER_BUDGET)

# The MinHash scheme is pinned so a datasketch upgrade cannot silently re-cluster the same prompts.
_MINHASH_SCHEME = "affine32"


# ---- input ----


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptCandidate:
    """One prompt (all interactions sharing a prompt_key) as the read models see it at the watermark."""

    prompt_key: str
    interaction_ids: tuple[str, ...]
    app_id: str
    model_version: str
    tags: tuple[str, ...]  # as the app sent them; the first one is the primary tag used for stratification
    consent: bool  # False when any interaction or judging user of this prompt did not consent to training
    thumbs_down: int = 0
    regenerations: int = 0
    edits: int = 0  # substantive edits only
    disagreements: int = 0
    # best-vs-worst margin of an earlier selection, as a share of its deciding scorer's scale (a reward model's
    # margin as it is), if any; at or below 0 (a tie, or the decider against the ranks) it is as hard as it gets
    prior_reward_margin: float | None = None
    text: str  # what near-duplicate detection compares: see prompt_text()
    last_position: int  # event-log position of the newest event that went into this record

    @property
    def primary_tag(self) -> str:
        return self.tags[0] if self.tags else ""

    @property
    def stratum(self) -> tuple[str, str, str]:
        return (self.app_id, self.model_version, self.primary_tag)


def prompt_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The user turns of a conversation: system prompts are shared by every prompt of an app and would make
    unrelated prompts look alike."""
    user = [message_text(m) for m in messages if m.get("role") == "user"]
    return "\n".join(user if user else (message_text(m) for m in messages))


# ---- configuration ----


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """Weights, budget, cluster cap and clustering parameters of one sampling run; `version()` names them."""

    weight_thumbs_down: float = 1.0
    weight_regenerations: float = 0.7
    weight_edits: float = 1.0
    weight_disagreements: float = 1.2
    weight_reward_margin: float = 1.0
    weight_novelty: float = 0.5
    # A prior margin of 0 is as hard as it gets (contributes 1), one at or above this scale contributes 0.
    reward_margin_scale: float = 1.0
    budget: int = 1000
    # One cluster may take at most max(1, floor(max_cluster_share * budget)) places, and at most
    # max_per_cluster when that is set.
    max_cluster_share: float = 0.05
    max_per_cluster: int | None = None
    lsh_threshold: float = 0.8  # estimated Jaccard similarity of word shingles at which two prompts are linked
    num_perm: int = 128
    shingle_words: int = 3
    minhash_seed: int = 1  # kept apart from `seed` so changing the tie-break seed does not re-cluster
    seed: int = 0  # breaks ties between equal scores, together with the watermark
    require_signal: bool = True  # a prompt nobody objected to and without a prior margin is not a hard case

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name in ("max_per_cluster", "require_signal") or value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number")
            if name.startswith("weight_") and value < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.reward_margin_scale <= 0:
            raise ValueError("reward_margin_scale must be > 0")
        if self.budget < 0:
            raise ValueError("budget must be >= 0")
        if not 0.0 < self.max_cluster_share <= 1.0:
            raise ValueError("max_cluster_share must be within (0, 1]")
        if self.max_per_cluster is not None and self.max_per_cluster < 1:
            raise ValueError("max_per_cluster must be >= 1")
        if not 0.0 < self.lsh_threshold <= 1.0:
            raise ValueError("lsh_threshold must be within (0, 1]")
        if self.num_perm < 2:
            raise ValueError("num_perm must be >= 2")
        if self.shingle_words < 1:
            raise ValueError("shingle_words must be >= 1")

    @property
    def cluster_cap(self) -> int:
        cap = max(1, math.floor(self.max_cluster_share * self.budget))
        return cap if self.max_per_cluster is None else min(cap, self.max_per_cluster)

    def version(self) -> str:
        """A short hash of the values and the sampler version: equal configs give the same version."""
        canonical = {k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                     for k, v in sorted(asdict(self).items())}
        canonical["sampler_version"] = SAMPLER_VERSION
        return hashlib.sha256(orjson.dumps(canonical)).hexdigest()[:12]


# ---- output ----


@dataclass(frozen=True, slots=True, kw_only=True)
class HardCaseScore:
    """Each signal's weighted contribution; `total` is their sum and ranks the candidates."""

    thumbs_down: float
    regenerations: float
    edits: float
    disagreements: float
    reward_margin: float
    novelty: float
    total: float

    @property
    def signal(self) -> float:
        """The total without novelty: zero means nobody objected and no earlier round found it close."""
        return math.fsum((self.thumbs_down, self.regenerations, self.edits, self.disagreements, self.reward_margin))


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledHardCase:
    """A chosen prompt, why it scored as it did, and which near-duplicate cluster it belongs to."""

    prompt_key: str
    interaction_ids: tuple[str, ...]
    app_id: str
    model_version: str
    tags: tuple[str, ...]
    stratum: tuple[str, str, str]  # (app_id, model_version, primary tag)
    cluster_id: str  # the smallest prompt_key of the cluster
    cluster_size: int
    score: HardCaseScore
    rank: int  # 0-based order of choice: round-robin over strata, best first within each round


@dataclass(frozen=True, slots=True, kw_only=True)
class Exclusion:
    prompt_key: str
    reason: str  # one of EXCLUSION_REASONS


@dataclass(frozen=True, slots=True, kw_only=True)
class SampledHardCases:
    """The outcome of one sampling run: what was chosen, what was left out and why."""

    chosen: tuple[SampledHardCase, ...]
    excluded: tuple[Exclusion, ...]  # sorted by (reason order, prompt_key)
    watermark: int
    seed: int
    config_version: str
    clusters: int  # number of near-duplicate clusters among the eligible candidates

    @property
    def excluded_counts(self) -> dict[str, int]:
        """Excluded candidates per reason, every reason present (zero when none)."""
        counts = Counter(e.reason for e in self.excluded)
        return {reason: counts.get(reason, 0) for reason in EXCLUSION_REASONS}


# ---- scoring and clustering ----


def _shingles(text: str, size: int) -> set[bytes]:
    words = text.casefold().split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + size]).encode() for i in range(len(words) - size + 1)}


def _clusters(candidates: Sequence[PromptCandidate], config: SamplerConfig) -> dict[str, str]:
    """prompt_key -> cluster id: connected components of pairs whose estimated Jaccard reaches the threshold.

    LSH only proposes pairs; each is confirmed on the MinHash estimate, so the components do not depend on the
    order prompts were inserted in. Identical signatures (the same text, in practice) are joined up front and
    stand in the index once, which keeps a prompt repeated thousands of times from costing a quadratic number
    of comparisons.
    """
    shingles = [_shingles(c.text, config.shingle_words) for c in candidates]
    hashes = MinHash.bulk(shingles, num_perm=config.num_perm, seed=config.minhash_seed, scheme=_MINHASH_SCHEME)
    parent = {c.prompt_key: c.prompt_key for c in candidates}

    def root(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        a, b = root(a), root(b)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smaller key becomes the root: a cluster's id is its smallest member

    representative: dict[bytes, tuple[str, MinHash]] = {}
    for c, m in sorted(zip(candidates, hashes, strict=True), key=lambda cm: cm[0].prompt_key):
        signature = m.hashvalues.tobytes()
        if signature in representative:
            union(representative[signature][0], c.prompt_key)
        else:
            representative[signature] = (c.prompt_key, m)

    lsh = MinHashLSH(threshold=config.lsh_threshold, num_perm=config.num_perm)
    by_key = dict(representative.values())
    for key, m in by_key.items():
        lsh.insert(key, m)
    for key in sorted(by_key):
        m = by_key[key]
        for other in sorted(lsh.query(m)):
            if other <= key or root(other) == root(key) or m.jaccard(by_key[other]) < config.lsh_threshold:
                continue
            union(key, other)
    return {c.prompt_key: root(c.prompt_key) for c in candidates}


def score(candidate: PromptCandidate, cluster_size: int, config: SamplerConfig) -> HardCaseScore:
    """The weighted signals of one candidate. Counts are damped (log1p): the tenth thumbs-down of a prompt says
    less than the first, and one viral prompt should not outrank everything else."""
    margin = 0.0
    if candidate.prior_reward_margin is not None:
        margin = max(0.0, 1.0 - max(candidate.prior_reward_margin, 0.0) / config.reward_margin_scale)
    parts = {
        "thumbs_down": config.weight_thumbs_down * math.log1p(max(0, candidate.thumbs_down)),
        "regenerations": config.weight_regenerations * math.log1p(max(0, candidate.regenerations)),
        "edits": config.weight_edits * math.log1p(max(0, candidate.edits)),
        "disagreements": config.weight_disagreements * math.log1p(max(0, candidate.disagreements)),
        "reward_margin": config.weight_reward_margin * margin,
        "novelty": config.weight_novelty / max(1, cluster_size),
    }
    return HardCaseScore(**parts, total=math.fsum(parts.values()))


def _tie_break(seed: int, watermark: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{watermark}\x1f{key}".encode()).hexdigest()


# ---- sampling ----


def sample(candidates: Iterable[PromptCandidate], config: SamplerConfig, *, watermark: int,
           quarantined: frozenset[str]) -> SampledHardCases:
    """Choose up to `config.budget` hard cases.

    Candidates newer than the watermark, without consent, or quarantined (their prompt_key or any of their
    interaction ids is in `quarantined`) are excluded before anything else reads them, so they neither count
    towards cluster sizes nor take a place. The rest are clustered (MinHash LSH on word shingles), scored
    (novelty = weight / cluster size), and chosen round-robin over (app, model version, primary tag) strata,
    best first within each stratum, with at most `config.cluster_cap` per cluster.

    A pure function of the set of candidates, the config, the watermark and the quarantine list: input order
    does not matter; equal scores are ordered by a hash of (seed, watermark, prompt_key).
    Raises ValueError when two candidates share a prompt_key: the caller groups interactions per prompt.
    """
    ordered = sorted(candidates, key=lambda c: c.prompt_key)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.prompt_key == b.prompt_key:
            raise ValueError(f"duplicate prompt_key {a.prompt_key!r}: give one candidate per prompt")

    excluded: list[Exclusion] = []
    eligible: list[PromptCandidate] = []
    for c in ordered:
        if c.last_position > watermark:
            excluded.append(Exclusion(prompt_key=c.prompt_key, reason=AFTER_WATERMARK))
        elif not c.consent:
            excluded.append(Exclusion(prompt_key=c.prompt_key, reason=NO_CONSENT))
        elif c.prompt_key in quarantined or not quarantined.isdisjoint(c.interaction_ids):
            excluded.append(Exclusion(prompt_key=c.prompt_key, reason=QUARANTINED))
        else:
            eligible.append(c)

    cluster_of = _clusters(eligible, config) if eligible else {}
    sizes = Counter(cluster_of.values())
    scored: list[tuple[PromptCandidate, HardCaseScore]] = []
    for c in eligible:
        s = score(c, sizes[cluster_of[c.prompt_key]], config)
        if config.require_signal and s.signal <= 0.0:
            excluded.append(Exclusion(prompt_key=c.prompt_key, reason=NO_SIGNAL))
        else:
            scored.append((c, s))

    def rank_key(item: tuple[PromptCandidate, HardCaseScore]) -> tuple[float, str, str]:
        c, s = item
        return (-s.total, _tie_break(config.seed, watermark, c.prompt_key), c.prompt_key)

    strata: dict[tuple[str, str, str], list[tuple[PromptCandidate, HardCaseScore]]] = defaultdict(list)
    for item in sorted(scored, key=rank_key):
        strata[item[0].stratum].append(item)
    queues = {k: iter(v) for k, v in strata.items()}

    cap = config.cluster_cap
    taken: Counter[str] = Counter()
    chosen: list[SampledHardCase] = []
    while queues and len(chosen) < config.budget:
        # Each stratum offers its best candidate whose cluster still has room; a full cluster's candidates
        # are passed over (and recorded) on the way.
        offers: list[tuple[PromptCandidate, HardCaseScore]] = []
        for stratum in sorted(queues):
            for item in queues[stratum]:
                if taken[cluster_of[item[0].prompt_key]] < cap:
                    offers.append(item)
                    break
                excluded.append(Exclusion(prompt_key=item[0].prompt_key, reason=CLUSTER_CAP))
            else:
                del queues[stratum]
        # Within a round the best offers go first, which only matters when the budget ends mid-round. Two strata
        # may offer from the same cluster: once it is full the later offer can never be taken (caps only fill).
        for c, s in sorted(offers, key=rank_key):
            cluster = cluster_of[c.prompt_key]
            if len(chosen) >= config.budget:
                excluded.append(Exclusion(prompt_key=c.prompt_key, reason=OVER_BUDGET))
            elif taken[cluster] >= cap:
                excluded.append(Exclusion(prompt_key=c.prompt_key, reason=CLUSTER_CAP))
            else:
                taken[cluster] += 1
                chosen.append(SampledHardCase(
                    prompt_key=c.prompt_key, interaction_ids=tuple(sorted(c.interaction_ids)), app_id=c.app_id,
                    model_version=c.model_version, tags=c.tags, stratum=c.stratum, cluster_id=cluster,
                    cluster_size=sizes[cluster], score=s, rank=len(chosen),
                ))
    for queue in queues.values():
        excluded.extend(Exclusion(prompt_key=c.prompt_key, reason=OVER_BUDGET) for c, _ in queue)

    return SampledHardCases(
        chosen=tuple(chosen),
        excluded=tuple(sorted(excluded, key=lambda e: (EXCLUSION_REASONS.index(e.reason), e.prompt_key))),
        watermark=watermark, seed=config.seed, config_version=config.version(), clusters=len(sizes),
    )
