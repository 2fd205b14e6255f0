"""The round gates in the order they run, and the gates of one build with their state (dedup, the cap, counts)."""

from __future__ import annotations

import functools

from flywheel.domain.rounds.config import RoundConfig
from flywheel.domain.rounds.dedup import digest
from flywheel.domain.rounds.distribution_cap import DistributionCap
from flywheel.domain.rounds.entries import EXCLUDED, Prepared, Removed, Repeat
from flywheel.domain.rounds.quality import reason_of
from flywheel.domain.rounds.quarantine import ANSWER, PROMPT, ContaminationHit, Match, QuarantineIndex, words
from flywheel.domain.rounds.rows import KINDS
from flywheel.domain.rounds.semantic import METHOD, SemanticHits, text_key
from flywheel.domain.rounds.split import Splitter
from flywheel.domain.rounds.tally import Tally

# Gates in the order they run; a removed row is counted under the first that removed it.
CONSENT = "consent"
PII = "pii"
CONTAMINATION = "contamination"
DEDUP = "dedup"
QUALITY = "quality"
DISTRIBUTION_CAP = "distribution_cap"
GATES = (CONSENT, PII, CONTAMINATION, DEDUP, QUALITY, DISTRIBUTION_CAP)
UNEMBEDDED_KEPT = 100_000  # texts without an embedding a cut hands back to be embedded (the rest are counted)


class Gates:
    """The gates of one build in their order, with their state: dedup digests and the distribution cap. The first
    gates (kind, consent) are `Prepare`'s; these count what they removed and run the rest."""

    def __init__(self, config: RoundConfig, index: QuarantineIndex, tally: Tally, *, cache_size: int,
                 semantic: SemanticHits | None = None) -> None:
        self.config = config
        self.index = index
        self.semantic = semantic
        # Texts the semantic check could not clear (no kept embedding), by key, at most UNEMBEDDED_KEPT of them, and
        # how many in all: the round is not published while there are any.
        self.unembedded: dict[bytes, str] = {}
        self.unembedded_count = 0
        self.tally = tally
        self.cap = DistributionCap(config.stratum_cap_share, config.cap_warmup)
        self.splitter = Splitter(config)
        # One 16-byte digest per distinct row that got past contamination: the only state that grows with rows.
        self.seen: dict[str, set[bytes]] = {kind: set() for kind in KINDS}
        # What the gates up to dedup made of each row that has exact copies later (Row.copy_key): the gate that
        # removed it, the quarantine items it holds, or DEDUP (it got past them, so dedup removes its copies).
        self.copies: dict[bytes, str | frozenset[ContaminationHit]] = {}
        self.kinds = frozenset(config.kinds)
        self._reading = functools.lru_cache(maxsize=cache_size)(self._read)

    def _remove(self, gate: str, kind: str) -> None:
        """Count a row removed by `gate`; the caller returns None (no split)."""
        self.tally.removed[gate][kind] += 1

    def removed(self, row: Removed) -> None:
        """Count a row the first gates removed (`Prepare`)."""
        kind = row.kind
        self.tally.rows_in[kind] += 1
        if row.gate == EXCLUDED:
            self.tally.excluded_kinds[kind] += 1
            return
        self._remove(row.gate, kind)
        if row.copy_key is not None:
            self.copies[row.copy_key] = row.gate

    def split(self, row: Prepared) -> str | None:
        """The split a row past the first gates goes to, or None when a later gate removed it (counted under
        that gate)."""
        kind = row.kind
        self.tally.rows_in[kind] += 1
        copy_key = row.copy_key
        if row.pii:
            self._remove(PII, kind)
            if copy_key is not None:
                self.copies[copy_key] = PII
            return None
        prompt, answers = row.prompt, row.answers
        normalised_prompt, prompt_matches = self._reading(prompt)
        normalised = []
        found = [ContaminationHit(m.item, PROMPT, m.method, m.score) for m in prompt_matches]
        for answer in answers:
            text, matches = self._reading(answer)
            normalised.append(text)
            if matches:
                found += [ContaminationHit(m.item, ANSWER, m.method, m.score) for m in matches]
        if self.semantic is not None:
            found += self._semantic(normalised_prompt, normalised)
        if found:
            hits = frozenset(found)
            self.tally.contaminated(hits)
            self._remove(CONTAMINATION, kind)
            if copy_key is not None:
                self.copies[copy_key] = hits
            return None
        if copy_key is not None:
            self.copies[copy_key] = DEDUP
        return self._rest(row, prompt, answers, normalised_prompt, normalised)

    def repeat(self, row: Repeat) -> None:
        """Count an exact copy of an earlier row as the gates would: removed where that row was, by dedup
        when that row got past contamination (its digest is the copy's)."""
        kind = row.kind
        self.tally.rows_in[kind] += 1
        if kind not in self.kinds:
            self.tally.excluded_kinds[kind] += 1
            return
        outcome = self.copies.get(row.copy_key)
        if outcome is None:
            raise ValueError(f"a repeat at position {row.position} of a row not seen before")
        if isinstance(outcome, frozenset):
            self.tally.contaminated(outcome)
            self._remove(CONTAMINATION, kind)
        else:
            self._remove(outcome, kind)

    def _semantic(self, prompt: str, answers: list[str]) -> list[ContaminationHit]:
        """The items the row's prompt or answers paraphrase, as hits of the semantic method (also counted per item
        side and row side)."""
        assert self.semantic is not None
        found: list[ContaminationHit] = []
        for side, text in ((PROMPT, prompt), *((ANSWER, a) for a in answers)):
            matches = self.semantic.of(text)
            if matches is None:
                key = text_key(text)
                if key not in self.unembedded:
                    self.unembedded_count += 1
                    if len(self.unembedded) < UNEMBEDDED_KEPT:
                        self.unembedded[key] = text
                continue
            for match in matches:
                found.append(ContaminationHit(match.item_id, side, METHOD, match.score))
                self.tally.semantic_hit(match, side)
        return found

    def _read(self, text: str) -> tuple[str, tuple[Match, ...]]:
        """A text as dedup and splits see it (`normalise`d) and the quarantine items in it; immutable, as it is
        cached."""
        tokens = words(text)
        return " ".join(tokens), self.index.matches_words(tokens)

    def _rest(self, row: Prepared, prompt: str, answers: tuple[str, ...], normalised_prompt: str,
              normalised: list[str]) -> str | None:
        kind = row.kind
        row_digest = digest(kind, row.roles, row.label, normalised_prompt, normalised)
        seen = self.seen[kind]
        if row_digest in seen:
            self._remove(DEDUP, kind)
            return None
        seen.add(row_digest)
        reason = reason_of(kind, row.truncated, self.config, prompt, answers, normalised)
        if reason is not None:
            self.tally.quality[reason][kind] += 1
            self._remove(QUALITY, kind)
            return None
        if not self.cap.admit(kind, row.stratum):
            self._remove(DISTRIBUTION_CAP, kind)
            return None
        split = self.splitter(normalised_prompt)
        self.tally.keep(row, split, len(prompt) + sum(len(a) for a in answers))
        return split
