"""A snapshot's datasheet, after Gebru et al., "Datasheets for Datasets" (2018/2021), in Markdown, with
this snapshot's figures in the form of the paper's Table 1 (triplets, songs, available mood, favorite
count range) and Fig. 2 (how many songs occur how often, and the triplets they bring), plus a PNG plot.

Everything here is computed from the manifest; nothing reads the catalog.
"""

from __future__ import annotations

import io
from pathlib import Path

PLOT = "song_occurrences.png"
DATASHEET = "datasheet.md"

# The paper's Fig. 2 groups songs by how often they occur; these are its kind of bins.
BINS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 9), (10, 19), (20, 49), (50, None))


def occurrence_bins(occurrences: dict) -> list[dict]:
    """Songs and triplets per occurrence bin, from {occurrences: number of songs}."""
    rows = []
    for low, high in BINS:
        label = f"{low}" if low == high else (f"{low}–{high}" if high else f"≥ {low}")
        inside = {int(n): s for n, s in occurrences.items() if int(n) >= low and (high is None or int(n) <= high)}
        rows.append({"bin": label, "songs": sum(inside.values()),
                     "triplets": sum(n * s for n, s in inside.items())})
    return rows


def plot_occurrences(occurrences: dict, min_posts: int) -> bytes:
    """The song-occurrence histogram as PNG bytes (matplotlib's Agg canvas, no pyplot state, no
    timestamps in the file: the same figures give the same bytes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = occurrence_bins(occurrences)
    figure = Figure(figsize=(7, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot(1, 1, 1)
    labels = [r["bin"] for r in rows]
    songs = [r["songs"] for r in rows]
    kept_low = [low for low, _ in BINS]
    colors = ["#1f77b4" if low >= min_posts else "#9bb7d4" for low in kept_low]
    bars = axis.bar(labels, songs, color=colors)
    for bar, row in zip(bars, rows):
        axis.annotate(f"{row['songs']:,} songs\n{row['triplets']:,} triplets",
                      (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                      fontsize=7, xytext=(0, 2), textcoords="offset points")
    axis.set_xlabel("posts per song (occurrences)")
    axis.set_ylabel("songs")
    axis.set_title(f"Song occurrences (dark: ≥ {min_posts}, kept by the recipe)", fontsize=10)
    axis.margins(y=0.25)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _table1(figures: dict) -> str:
    if not figures or not figures.get("triplets"):
        return "| (no triplets) | | | |"
    low, high = figures["favorite_count"]
    share = 100 * figures["with_mood"] / figures["triplets"]
    return (f"| {figures['triplets']:,} | {figures['songs']:,} | {figures['with_mood']:,} ({share:.1f}%) "
            f"| [{low:,}, {high:,}] |")


def render(manifest: dict) -> str:
    """The datasheet's Markdown."""
    recipe, counts, catalog = manifest["recipe"], manifest["counts"], manifest["catalog"]
    eligible, kept = manifest["figures"]["eligible"], manifest["figures"]["snapshot"]
    verdicts = catalog.get("lyric_verdicts", {})
    verdict_lines = []
    for verdict, entry in verdicts.items():
        reasons = ", ".join(f"{kind}: {n:,}" for kind, n in entry["by_reason"].items())
        verdict_lines.append(f"| {verdict} | {entry['total']:,} | {reasons} |")
    bins = "\n".join(f"| {r['bin']} | {r['songs']:,} | {r['triplets']:,} |"
                     for r in occurrence_bins(eligible.get("occurrences", {})))
    notes = "\n".join(f"  - {key}: {value}" for key, value in manifest.get("notes", {}).items()) or "  - none"
    nd = recipe.get("near_duplicate_bits")
    leakage = (f"images whose perceptual hashes differ in at most {nd} of 64 bits count as one image"
               if nd is not None else "only byte-identical images (sha256) count as one image")
    return f"""# Datasheet: image2song snapshot {manifest['version']}

After Gebru et al., *Datasheets for Datasets*. Figures are this snapshot's; the paper's (Image2song,
ICCV 2017) are quoted for comparison.

## Motivation
- **Purpose.** Training and evaluating image → song retrieval through lyrics, after the paper's
  protocol: given an image, rank songs by how well their lyric words match the image content.
- **Creators and funding.** Built by the image2song pipeline from its catalog; whoever runs the pipeline
  is responsible for this copy.

## Composition
- **Instances.** A *triplet* is one post: an image, the song the user paired it with (title, artist,
  lyric) and optionally a mood and the post's favorite count. Songs and their lyrics are in
  `songs.parquet`; triplets, with their split membership, in `triplets.parquet`.
- **Available posts** (Table 1 form; every post whose image is stored and whose song has an approved
  lyric, one post per distinct image):

| Triplet | Song | Available Mood | Favorite Count |
|---|---|---|---|
{_table1(eligible)}

  The paper's Table 1: 16,973 triplets, 6,373 songs, 3,158 with a mood (18.6%), favorites [1, 8,964].

- **This snapshot** (the recipe's selection):

| Triplet | Song | Available Mood | Favorite Count |
|---|---|---|---|
{_table1(kept)}

  The paper kept 8,849 triplets of 586 songs (songs with at least 5 posts), then 5 per song.

- **Song occurrences** (Fig. 2 form; available posts): ![song occurrences]({PLOT})

| posts per song | songs | triplets |
|---|---|---|
{bins}

- **Splits.**

| split | train triplets | test triplets | test songs |
|---|---|---|---|
| A (held-out songs) | {counts['split_a_train']:,} | {counts['split_a_test']:,} | {counts['split_a_test_songs']:,} |
| B (held-out images) | {counts['split_b_train']:,} | {counts['split_b_test']:,} | {counts['split_b_test_songs']:,} |

- **Recipe.** Songs with at least {recipe['min_posts']} posts; per song the {recipe['posts_per_song']} posts
  with the most favorites; split A holds out {recipe['test_songs']} songs with all their images; split B
  holds out {recipe['test_images_per_song']} image(s) per song; seed {recipe['seed']}. Notes:
{notes}
- **Leakage.** No image is in both train and test of a split: {leakage}; the build fails otherwise.
- **Sensitive data.** Images and moods are user posts; they may show people. Nothing else about users
  is kept (no user names or ids).

## Collection process
Posts (image, song title and artist, mood, favorite count) are crawled politely from the configured
sharing site (robots.txt obeyed), images are downloaded, validated and stored by content hash, and
lyrics are looked up by title and artist from an LRCLIB-compatible lyric service. Catalog at build time:
{catalog.get('posts', 0):,} posts, {catalog.get('images_stored', 0):,} stored images,
{catalog.get('songs', 0):,} songs, {catalog.get('lyric_candidates', 0):,} lyric candidates.

## Preprocessing, cleaning, labeling
Lyric filters give each lyric a verdict with its reason (language, placeholder, instrumental, match
score); uncertain ones go to human curators, who accept, correct or reject them (the paper had twenty
participants do this step). Verdicts at build time:

| verdict | lyrics | by reason kind |
|---|---|---|
{chr(10).join(verdict_lines) or '| (none) | 0 | |'}

Review decisions carried by the included lyrics: {len(catalog.get('review_decisions_included', [])):,}
({', '.join(f'{k}: {v}' for k, v in catalog.get('review_decisions_by_kind', {}).items()) or 'none'});
still pending (they join a later snapshot): {catalog.get('pending_reviews', 0):,}.
`modeling_text` is the lyric lower-cased with non-alphanumerics and stop words removed, as the paper
does; the original text is kept in `lyric`.

## Uses
Image → song and song → image retrieval research (splits A and B of the paper). Not for identifying
people, nor for judging users by their posts. Favorite counts measure popularity, not quality.

## Distribution
Parquet files (zstd) with a JSON manifest listing every file's sha256; read with pandas, pyarrow or
DuckDB, or `curation.snapshots.reader.load_snapshot`. Images are referenced by content hash
(`image_sha256`, `image_path` inside the object store), not copied. Lyrics may be under copyright:
share this snapshot only where their licences allow.

## Maintenance
Snapshots are immutable and versioned; a refresh publishes a new version when approved data change
(`image2song snapshot diff A B` tells what changed). Errors are fixed in the catalog (a curator's
decision, a re-crawl) and appear in the next snapshot. Code version: {manifest.get('code_version')}.
"""


def write_datasheet(folder: Path, manifest: dict) -> list[str]:
    """Write ``datasheet.md`` and the plot into ``folder``; returns the file names."""
    folder = Path(folder)
    (folder / PLOT).write_bytes(plot_occurrences(manifest["figures"]["eligible"].get("occurrences", {}),
                                                 manifest["recipe"]["min_posts"]))
    (folder / DATASHEET).write_text(render(manifest))
    return [DATASHEET, PLOT]
