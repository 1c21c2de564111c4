"""Reports: one per run (Markdown and HTML side by side, with PNG plots), and one per snapshot that sets
every run of it side by side.

A run folder (``harness.runs``) holds one experiment per tag vocabulary and split, each with its
``evaluation.json``. The run report has first the paper's model on every vocabulary and split (the paper's
Table 2), then per vocabulary, split and direction, every model and baseline trained there with
R@1/3/5/10/20/50/100 and MedR, each with its bootstrap 95 % interval, and chance as the first row;
the paper's numbers; the recall@K curves and per-song ranks as PNG; and the headline of every earlier
run of the same snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PAPER = {  # Image2song (ICCV 2017), Table 3, obj+attr tags, image -> song
    "a": {"R@1": 2.6, "R@5": 9.4, "R@10": 16.8, "MedR": 41.5},
    "b": {"R@1": 13.10, "R@5": 38.38, "R@10": 62.50, "MedR": 7.82},
}
METRICS = ("R@1", "R@3", "R@5", "R@10", "R@20", "R@50", "R@100", "MedR")
DIRECTIONS = (("image_to_song", "image → song"), ("song_to_image", "song → image"))
MODEL_ORDER = ("paper", "hybrid", "attentive-reader", "psi", "minilm", "topics", "conse", "control", "neighbours", "popularity",
               "permuted")
LABELS = {
    "paper": "paper's model (BiLSTM)", "hybrid": "hybrid (lyrics + image history)", "attentive-reader": "Attentive Reader",
    "psi": "bag of words (PSI)", "minilm": "MiniLM + InfoNCE", "topics": "visual topics (bag of words)", "conse": "CONSE", "control": "lyric-free control",
    "neighbours": "image-history neighbours (no lyrics)",
    "popularity": "popularity", "permuted": "permuted lyrics (control)",
}


def load_evaluations(run_dir: str | os.PathLike) -> list[dict]:
    """Every ``evaluation.json`` under a run folder, ordered by vocabulary then split."""
    found = [json.loads(p.read_text()) for p in Path(run_dir).glob("*/split-*/evaluation.json")]
    return sorted(found, key=lambda e: (e["vocabulary"], e["split"]))


def _cell(d: dict, key: str) -> str:
    if key not in d["model"]:
        return "–"  # R@K with K >= candidates is 100 % by construction: left out
    lo, hi = d["ci95"][key]
    return f"{d['model'][key]:.1f} [{lo:.1f}, {hi:.1f}]"


def _ordered(models: dict) -> list[str]:
    return sorted(models, key=lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER))


def headline(evaluation: dict, model: str = "paper") -> dict | None:
    r = evaluation["models"].get(model, {})
    if "image_to_song" not in r:
        return None
    d = r["image_to_song"]
    return {"R@10": d["model"].get("R@10"), "R@10 ci95": d["ci95"].get("R@10"), "MedR": d["model"]["MedR"],
            "MedR ci95": d["ci95"]["MedR"], "chance R@10": d["chance"].get("R@10"), "chance MedR": d["chance"]["MedR"]}


def vocabulary_table(evaluations: list[dict]) -> list[str]:
    """The paper's Table 2: the paper's model on each tag vocabulary and split, image → song, every figure
    with its 95 % interval, chance beside it. Empty when no experiment has the paper's model."""
    from modeling.tags.vocabularies import VOCABULARIES  # the paper's Table 2 order, then the fine classes

    rows = sorted((e for e in evaluations if "image_to_song" in e["models"].get("paper", {})),
                  key=lambda e: (VOCABULARIES.index(e["vocabulary"]) if e["vocabulary"] in VOCABULARIES
                                 else len(VOCABULARIES), e["vocabulary"], e["split"]))
    if not rows:
        return []
    metrics, chance = ("R@1", "R@5", "R@10", "MedR"), ("R@1", "R@10", "MedR")
    lines = ["| tags | split | queries | candidates | " + " | ".join(metrics) + " | "
             + " | ".join(f"chance {m}" for m in chance) + " |", "|---|---|---:|---:|" + "---:|" * (len(metrics) + len(chance))]
    for e in rows:
        d = e["models"]["paper"]["image_to_song"]
        lines.append(f"| {e['vocabulary']} | {e['split'].upper()} | {d['n_queries']} | {d['n_candidates']} | "
                     + " | ".join(_cell(d, m) for m in metrics) + " | "
                     + " | ".join(f"{d['chance'][m]:.1f}" if m in d["chance"] else "–" for m in chance) + " |")
    return lines


def hybrid_sentence(e: dict) -> str:
    """What the hybrid of an evaluation is made of; a weight at either end of the grid is said plainly."""
    weight = e.get("hybrid_weight")
    if weight is None:
        return ""
    lyric = LABELS.get(e.get("hybrid_lyric_model"), e.get("hybrid_lyric_model"))
    said = f"; the hybrid fuses {lyric} (weight {weight:.2f}) with the image-history neighbours, both chosen on validation"
    if weight == 0.0:
        said += " (weight 0: validation gave the lyrics no weight, so the hybrid is its history side alone)"
    elif weight == 1.0 and e["split"] == "b":
        said += " (weight 1: validation gave the history no weight, so the hybrid is its lyric model alone)"
    return said


def results_tables(evaluations: list[dict], *, plots: dict | None = None) -> list[str]:
    lines = []
    for e in evaluations:
        lines += [f"## Tags {e['vocabulary']}, split {e['split'].upper()}", "",
                  f"{e['n_images']} test images, {e['n_songs']} test songs{hybrid_sentence(e)}.", ""]
        for key, title in DIRECTIONS:
            first = next((r[key] for r in e["models"].values() if key in r), None)
            if first is None:
                continue
            lines += [f"### {title} ({first['n_queries']} queries, {first['n_candidates']} candidates)", "",
                      "| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS),
                      "| *chance* | " + " | ".join(f"{first['chance'][m]:.1f}" if m in first["chance"] else "–" for m in METRICS) + " |"]
            for name in _ordered(e["models"]):
                r = e["models"][name]
                if "not_applicable" in r:
                    lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(["n/a"] * len(METRICS)) + " |")
                    continue
                lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(_cell(r[key], m) for m in METRICS) + " |")
            if plots and (e["vocabulary"], e["split"], key) in plots:
                lines += ["", f"![recall@K]({plots[(e['vocabulary'], e['split'], key)]})"]
            lines.append("")
        if plots and (e["vocabulary"], e["split"], "per_song") in plots:
            lines += [f"Per-song ranks: ![per song]({plots[(e['vocabulary'], e['split'], 'per_song')]})", ""]
        lines += hybrid_comparison(e)
        na = [f"{LABELS.get(n, n)}: {r['not_applicable']}" for n, r in e["models"].items() if "not_applicable" in r]
        if na:
            lines += ["n/a: " + "; ".join(na) + ".", ""]
    return lines


def hybrid_comparison(e: dict) -> list[str]:
    """The hybrid minus each of its parts, image -> song, with paired-bootstrap intervals."""
    versus = e.get("hybrid_versus") or {}
    if not versus:
        return []
    lines = ["### The hybrid against its parts (image → song, paired bootstrap over the same queries)", "",
             "| hybrid minus | R@10 (points) | MedR (ranks) | verdict |", "|---|---:|---:|---|"]
    for other, d in versus.items():
        r, m = d["image_to_song"]["R@10"], d["image_to_song"]["MedR"]
        better = [name for name, ok in (("R@10", r["ci95"][0] > 0), ("MedR", m["ci95"][1] < 0)) if ok]
        worse = [name for name, ok in (("R@10", r["ci95"][1] < 0), ("MedR", m["ci95"][0] > 0)) if ok]
        verdict = ("better on " + " and ".join(better) if better else "") + ("; " if better and worse else "") + \
                  ("worse on " + " and ".join(worse) if worse else "")
        lines.append(f"| {LABELS.get(other, other)} | {r['difference']:+.1f} [{r['ci95'][0]:+.1f}, {r['ci95'][1]:+.1f}] | "
                     f"{m['difference']:+.1f} [{m['ci95'][0]:+.1f}, {m['ci95'][1]:+.1f}] | {verdict or 'no difference shown'} |")
    return lines + [""]


def plot_run(run_dir: str | os.PathLike, evaluations: list[dict]) -> dict:
    """Recall@K curves (every K) per vocabulary, split and direction, and per-song ranks, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    out = Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    for e in evaluations:
        for key, title in DIRECTIONS:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            n = None
            for name in _ordered(e["models"]):
                r = e["models"][name]
                if key not in r:
                    continue
                ranks = np.sort(np.asarray(r[key]["ranks"]))
                n = r[key]["n_candidates"]
                ks = np.arange(1, n + 1)
                ax.plot(ks, 100.0 * np.searchsorted(ranks, ks, side="right") / len(ranks), label=LABELS.get(name, name),
                        lw=2 if name in ("paper", "hybrid") else 1)
            if n is None:
                plt.close(fig)
                continue
            ax.plot([1, n], [100.0 / n, 100.0], "k:", lw=1, label="chance (one relevant)")
            ax.set(xscale="log", xlabel="K", ylabel="recall@K (%)", ylim=(0, 100),
                   title=f"{title}, tags {e['vocabulary']}, split {e['split'].upper()}")
            made[(e["vocabulary"], e["split"], key)] = _save_plot(fig, ax, out, f"recall-{_plot_stem(e)}-{key}.png")
        per_song = Path(run_dir) / e["vocabulary"] / f"split-{e['split']}" / "per_song.csv"
        if per_song.exists():
            df = pd.read_csv(per_song)
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            for name in [m for m in ("paper", "hybrid", "control", "conse") if m in set(df["model"])]:
                v = np.sort(df[df.model == name]["image_to_song_median_rank"].dropna().to_numpy())
                ax.plot(np.arange(1, len(v) + 1), v, label=LABELS.get(name, name))
            ax.set(xlabel="songs, best first", ylabel="median rank of the song for its test images", yscale="log",
                   title=f"Per song, tags {e['vocabulary']}, split {e['split'].upper()}")
            made[(e["vocabulary"], e["split"], "per_song")] = _save_plot(fig, ax, out, f"per-song-{_plot_stem(e)}.png")
    return made


def _plot_stem(evaluation: dict) -> str:
    return f"{evaluation['vocabulary'].replace('+', '_')}-{evaluation['split']}"


def _save_plot(fig, ax, out: Path, name: str) -> str:
    """Write a finished plot (legend, tight layout) as ``out/name`` and close it; returns its path in the run
    folder, as the report links it."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return f"plots/{name}"


def _html(markdown_text: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + title + "</title><style>"
            "body{font-family:sans-serif;max-width:75em;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}"
            "td:first-child,th:first-child{text-align:left}img{max-width:48em}</style></head><body>" + body + "</body></html>\n")


def earlier_runs_table(runs: list[tuple[str, list[dict]]]) -> list[str]:
    """One row per run, vocabulary and split: the paper's model and the hybrid, image -> song R@10 and MedR."""
    lines = ["| run | tags | split | paper R@10 | paper MedR | hybrid R@10 | hybrid MedR | chance R@10 | chance MedR |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key, evaluations in runs:
        for e in evaluations:
            p, h = headline(e, "paper"), headline(e, "hybrid")
            ref = p or h
            if ref is None:
                continue

            def f(x, k):
                return "–" if x is None or x.get(k) is None else f"{x[k]:.1f}"
            lines.append(f"| {key} | {e['vocabulary']} | {e['split'].upper()} | {f(p, 'R@10')} | {f(p, 'MedR')} | "
                         f"{f(h, 'R@10')} | {f(h, 'MedR')} | {f(ref, 'chance R@10')} | {f(ref, 'chance MedR')} |")
    return lines


def paper_table() -> list[str]:
    return ["| split | R@1 | R@5 | R@10 | MedR |", "|---|---:|---:|---:|---:|",
            *(f"| {s.upper()} | " + " | ".join(f"{PAPER[s][m]}" for m in ("R@1", "R@5", "R@10", "MedR")) + " |" for s in ("a", "b"))]


def write_run_report(run_dir: str | os.PathLike, *, snapshot: str, run_key: str, params: dict,
                     earlier: list[tuple[str, list[dict]]]) -> dict:
    """``report.md`` + ``report.html`` (+ ``plots/``) in the run folder; returns their paths."""
    run_dir = Path(run_dir)
    evaluations = load_evaluations(run_dir)
    plots = plot_run(run_dir, evaluations)
    lines = [f"# Evaluation: snapshot {snapshot}, run {run_key}", "",
             "Parameters: " + ", ".join(f"`{k}={v}`" for k, v in sorted(params.items())) + ".", "",
             "R@K in %, MedR the median rank of the closest relevant item (1-based, ties pessimistic; lower is "
             "better); [brackets]: bootstrap 95 % interval over queries. Chance: the exact expectation of a random "
             "ranking. The permuted-lyrics control is the paper's model trained with the lyrics permuted among the "
             "training songs: it must sit at chance.", ""]
    table2 = vocabulary_table(evaluations)
    if table2:
        lines += ["## The paper's model per tag vocabulary (as the paper's Table 2), image → song", "", *table2, ""]
    lines += results_tables(evaluations, plots=plots)
    lines += ["## The paper's numbers (obj+attr tags, image → song)", "", *paper_table(), "",
              "## Runs of this snapshot (image → song)", "", *earlier_runs_table(earlier + [(run_key, evaluations)]), ""]
    md = "\n".join(lines) + "\n"
    (run_dir / "report.md").write_text(md)
    (run_dir / "report.html").write_text(_html(md, f"image2song {snapshot} {run_key}"))
    return {"report_md": str(run_dir / "report.md"), "report_html": str(run_dir / "report.html"),
            "evaluations": evaluations}


def write_snapshot_report(out_dir: str | os.PathLike, snapshot: str, runs: list[tuple[str, Path]]) -> dict:
    """``<snapshot>.md`` + ``.html``: every run of the snapshot side by side, newest last, with links."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [(key, load_evaluations(path)) for key, path in runs]
    lines = [f"# Snapshot {snapshot}: every run", "", *earlier_runs_table(rows), "",
             "## The paper's numbers (obj+attr tags, image → song)", "", *paper_table(), "", "## Run reports", ""]
    lines += [f"- {key}: {path / 'report.md'} ({path / 'report.html'})" for key, path in runs]
    md = "\n".join(lines) + "\n"
    (out_dir / f"{snapshot}.md").write_text(md)
    (out_dir / f"{snapshot}.html").write_text(_html(md, f"image2song {snapshot}"))
    return {"report": str(out_dir / f"{snapshot}.md"), "report_html": str(out_dir / f"{snapshot}.html")}
