"""Measure the lyric filters on a labelled set (``tests/data/lyrics_labelled.jsonl``): precision and
recall of each filter, and of the language filter's "English" call. Used by the tests and the bench."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from crawlers.lyrics import match_score
from curation.lyrics.filters import FilterConfig, Lyric, Verdict, judge_many

# filter -> (the reason kinds by which it decides, the label it should catch)
FILTERS = {
    "instrumental": ({"instrumental"}, "instrumental"),
    "not found": ({"not found"}, "missing"),
    "placeholder": ({"placeholder"}, "placeholder"),
    "non-English": ({"non-English"}, "non_english"),
    "too short": ({"too short"}, "short"),
    "mismatch": ({"mismatch", "uncertain match"}, "mismatch"),
    "duplicate": ({"duplicate"}, "duplicate"),
}


@dataclass(frozen=True)
class Score:
    name: str
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def line(self) -> str:
        return (f"{self.name:<22} precision {self.precision:6.3f}  recall {self.recall:6.3f}  "
                f"(tp {self.tp}, fp {self.fp}, fn {self.fn})")


def load_labelled(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def as_lyric(case: dict) -> Lyric:
    song, hit = case["song"], case["hit"]
    if hit is None:
        return Lyric(case["id"], song["title"], None, False, 0.0)
    m = match_score(song["title"], song["artist"], song["duration"], hit["title"], hit["artist"], hit["duration"])
    return Lyric(case["id"], song["title"], hit["plain"], hit["instrumental"], m.score if m.duration_ok else 0.0)


def judge_cases(cases: list[dict], config: FilterConfig = FilterConfig()) -> list[Verdict]:
    return judge_many([as_lyric(c) for c in cases], config)


def score_filters(cases: list[dict], verdicts: list[Verdict]) -> dict[str, Score]:
    """Per filter: it fires when the verdict's reason is one of its kinds. Plus:

    * ``English``: the language filter's call "English" (its pass) against texts whose language is
      English, over the cases where the language filter ran;
    * ``approved``: the routing's approvals against the ``ok`` label (what reaches a snapshot unseen).
    """
    scores = {}
    for name, (kinds, label) in FILTERS.items():
        fired = [v.kind in kinds and v.verdict != "approved" for v in verdicts]
        truth = [c["label"] == label for c in cases]
        scores[name] = _count(name, fired, truth)
    ran = [(c, next((f for f in v.filters if f.filter == "language"), None)) for c, v in zip(cases, verdicts)]
    ran = [(c, f) for c, f in ran if f is not None and not f.reason.startswith("too short")]
    scores["English"] = _count("English", [f.verdict == "pass" for _, f in ran], [c["language"] == "en" for c, _ in ran])
    scores["approved"] = _count("approved", [v.verdict == "approved" for v in verdicts],
                                [c["label"] == "ok" for c in cases])
    return scores


def _count(name: str, fired: list[bool], truth: list[bool]) -> Score:
    return Score(name, sum(f and t for f, t in zip(fired, truth)), sum(f and not t for f, t in zip(fired, truth)),
                 sum(t and not f for f, t in zip(fired, truth)))
