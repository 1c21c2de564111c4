"""Lyric filters: each gives a verdict and a score with its reason; nothing is dropped silently.

Verdicts: ``approved`` (confident accept), ``rejected`` (confident reject, with the reason) and
``review`` (uncertain: a curator decides). Thresholds come from ``FilterConfig``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from curation.lyric_text import clean_lyric

PLACEHOLDERS = re.compile(
    r"lyrics? (are )?not (yet )?(available|found)|not licensed to display|no lyrics|"
    r"instrumental only|lyrics will be available|be the first to add", re.IGNORECASE)


@dataclass(frozen=True)
class FilterConfig:
    min_match_score: float = 0.5      # below: rejected as another song's lyric
    review_match_score: float = 0.85  # between min and this: a curator checks the match
    min_language_chars: int = 80      # shorter texts cannot be told apart reliably: review
    english_confidence: float = 0.90  # langdetect's English probability to accept
    other_confidence: float = 0.90    # another language's probability to reject


@dataclass(frozen=True)
class Verdict:
    verdict: str   # approved | rejected | review
    reason: str
    scores: dict

    def as_dict(self) -> dict:
        return asdict(self)


def detect_language(text: str) -> list[tuple[str, float]]:
    """Languages and probabilities by langdetect, made deterministic (fixed seed)."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return [(item.lang, round(item.prob, 4)) for item in detect_langs(text)]
    except LangDetectException:
        return []


def judge(text: str | None, *, instrumental: bool, match_score: float,
          config: FilterConfig = FilterConfig()) -> Verdict:
    """Run the filters in order of certainty; the first that decides gives the verdict."""
    if instrumental:
        return Verdict("rejected", "instrumental: the provider marks the track instrumental", {"instrumental": 1.0})
    if not text or not clean_lyric(text):
        return Verdict("rejected", "not found: the provider has no lyric text for this song", {"length": 0})
    cleaned = clean_lyric(text)
    if PLACEHOLDERS.search(cleaned) and len(cleaned) < 300:
        return Verdict("rejected", "placeholder: the text says the lyric is unavailable", {"length": len(cleaned)})
    scores: dict = {"match": round(match_score, 3), "length": len(cleaned)}
    if match_score < config.min_match_score:
        return Verdict("rejected", f"mismatch: match score {match_score:.2f} < {config.min_match_score}", scores)
    languages = detect_language(cleaned)
    top_lang, top_prob = languages[0] if languages else ("unknown", 0.0)
    english = dict(languages).get("en", 0.0)
    scores.update(language=top_lang, language_prob=top_prob, english_prob=english)
    if len(cleaned) < config.min_language_chars:
        return Verdict("review", f"too short to tell its language ({len(cleaned)} characters)", scores)
    if top_lang != "en" and top_prob >= config.other_confidence:
        return Verdict("rejected", f"non-English: {top_lang} (p={top_prob:.2f})", scores)
    if english < config.english_confidence:
        return Verdict("review", f"language uncertain: English p={english:.2f}, top {top_lang} p={top_prob:.2f}", scores)
    if match_score < config.review_match_score:
        return Verdict("review", f"uncertain match: score {match_score:.2f} < {config.review_match_score}", scores)
    return Verdict("approved", f"English (p={english:.2f}) and matched ({match_score:.2f})", scores)


def filter_pending(db_url: str, config: FilterConfig = FilterConfig()) -> dict[str, int]:
    """Judge every lyric candidate still pending; returns counts by verdict and by reason kind."""
    from collections import Counter

    from sqlalchemy import select

    from curation.catalog import LyricCandidate, session_scope

    counts: Counter = Counter()
    with session_scope(db_url) as session:
        for candidate in session.scalars(select(LyricCandidate).where(LyricCandidate.verdict == "pending")):
            verdict = judge(candidate.text, instrumental=candidate.instrumental,
                            match_score=candidate.match_score, config=config)
            candidate.verdict, candidate.reason, candidate.decided_by = verdict.verdict, verdict.reason, "filters"
            candidate.scores = {**(candidate.scores or {}), **verdict.scores}
            counts[verdict.verdict] += 1
            if verdict.verdict == "rejected":
                counts["rejected:" + verdict.reason.split(":")[0]] += 1
    return dict(sorted(counts.items()))
