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


NOT_SET = "not stated (set it in the settings)"


def _timeframe(pair) -> str:
    low, high = (pair or [None, None]) + [None] * (2 - len(pair or []))
    if not low and not high:
        return "unknown"
    return f"{(low or '?')[:10]} to {(high or '?')[:10]}"


def render(manifest: dict) -> str:
    """The datasheet's Markdown: every question of *Datasheets for Datasets* (Gebru et al.), answered
    from the manifest (figures, catalog state, recipe) and the settings it records (licence, maintainer,
    retention, sources)."""
    recipe, counts, catalog = manifest["recipe"], manifest["counts"], manifest["catalog"]
    eligible, kept = manifest["figures"]["eligible"], manifest["figures"]["snapshot"]
    dataset = manifest.get("dataset") or {}
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
    sources = ", ".join(dataset.get("sources") or []) or "the configured sharing site"
    provider = dataset.get("lyrics_provider") or "the configured LRCLIB-compatible lyric service"
    license_, maintainer = dataset.get("license") or NOT_SET, dataset.get("maintainer") or NOT_SET
    retention = dataset.get("retention") or NOT_SET
    posted, crawled = _timeframe(catalog.get("posted_between")), _timeframe(catalog.get("crawled_between"))
    return f"""# Datasheet: image2song snapshot {manifest['version']}

After Gebru et al., *Datasheets for Datasets* (every question of its seven sections, answered for this
snapshot). Figures are this snapshot's; the paper's (Image2song, ICCV 2017) are quoted for comparison.

## Motivation
- **For what purpose was the dataset created?** Training and evaluating image → song retrieval through
  lyrics, after the paper's protocol: given an image, rank songs by how well their lyric words match
  the image content.
- **Who created it, on behalf of whom?** The image2song pipeline, run by the maintainer below, from its
  catalog. Maintainer: {maintainer}.
- **Who funded it?** Not recorded by the pipeline; see the maintainer.
- **Other comments.** The snapshot is one immutable version; the catalog it came from keeps changing.

## Composition
- **What do the instances represent?** A *triplet* is one post: an image, the song the user paired it
  with (title, artist, lyric) and optionally a mood and the post's favorite count. Songs and their
  lyrics are in `songs.parquet`; triplets, with their split membership, in `triplets.parquet`.
- **How many instances?** {counts['triplets']:,} triplets of {counts['songs']:,} songs (Table 1 form below).
- **A sample of a larger set?** Yes: of all crawled posts, those whose image is stored and whose song
  has an approved lyric (one post per distinct image), then the recipe's selection: songs with at least
  {recipe['min_posts']} posts, per song the {recipe['posts_per_song']} posts with the most favorites (ties:
  the older post by the site's time, then the post id). Not representative of the site: popular songs
  and popular posts are favoured by design, as in the paper.
- **Available posts** (Table 1 form):

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

- **What data does each instance consist of?** Post id, provenance (`source`, `external_id`, `post_url`),
  image hash, path and perceptual hash, song id, title and artist, mood, favorite count, the lyric
  candidate used, split membership; per song the original lyric and the modeling text.
- **Is there a label or target?** The song paired with the image (retrieval target).
- **Is any information missing?** Moods are optional ({kept.get('with_mood', 0) if kept else 0:,} of
  {kept.get('triplets', 0) if kept else 0:,} triplets have one); songs without an approved lyric are absent.
- **Relationships between instances?** Triplets of one song share `song_id`; near-duplicate images are
  kept on one side of each split.
- **Recommended splits.**

| split | train triplets | test triplets | test songs |
|---|---|---|---|
| A (held-out songs) | {counts['split_a_train']:,} | {counts['split_a_test']:,} | {counts['split_a_test_songs']:,} |
| B (held-out images) | {counts['split_b_train']:,} | {counts['split_b_test']:,} | {counts['split_b_test_songs']:,} |

  Split A holds out {recipe['test_songs']} songs with all their images; split B holds out
  {recipe['test_images_per_song']} image(s) per song; seed {recipe['seed']}. Notes:
{notes}
- **Errors, noise or redundancies?** Lyrics may be mismatched despite the filters and curators; favorite
  counts are a snapshot of a moving number. Leakage: no image is in both train and test of a split
  ({leakage}), and no lyric (identical, or the same set of words) is in both train and test of split A;
  the build fails otherwise.
- **Self-contained, or linked to external resources?** Images are referenced by content hash in the
  object store, not copied; `post_url` links to the source, which may change or disappear. The manifest
  lists every file's SHA-256 and each Parquet page carries a checksum.
- **Confidential data?** None is collected on purpose; posts were public when crawled.
- **Offensive or anxiety-causing content?** Possible: images and lyrics are user-chosen and unmoderated.
- **Does it relate to people? Identify subpopulations?** Posts are made by people; no user names or
  user ids are kept, and no subpopulation is identified.
- **Can individuals be identified, directly or indirectly?** Indirectly, yes: `post_url`, `external_id`
  and `source` identify the post and so lead to its author's page on the site; images may show people.
  Drop those three columns before sharing beyond the maintainer's use.
- **Sensitive data (race, health, religion, …)?** Not collected; images or lyrics may reveal some.

## Collection process
- **How was the data acquired?** Posts (image, song title and artist, mood, favorite count, the site's
  time) are crawled from {sources}, politely (robots.txt obeyed, per-host pacing, an honest User-Agent:
  {dataset.get('user_agent') or 'see the settings'}); images are downloaded, validated and stored by
  content hash; lyrics are looked up by title, artist and duration from {provider}.
- **Mechanisms and their validation?** The crawlers and filters of this repository, tested against
  real servers on loopback; filter precision and recall are measured on a labelled set.
- **Sampling strategy?** All posts the crawl reached; then the recipe above.
- **Who was involved, and how were they compensated?** The maintainer's curators decided uncertain
  lyrics; their compensation is not recorded by the pipeline.
- **Timeframe.** Posts made from {posted} (the site's time), crawled from {crawled}.
- **Ethical review?** Not recorded by the pipeline; see the maintainer.
- **Collected from the individuals directly, or via third parties?** Via the sharing site (third party).
- **Were individuals notified? Did they consent? Can they revoke consent?** No notification and no
  individual consent: posts were public, and the site's terms and robots.txt were followed. Removal:
  {retention}
- **Impact analysis?** Not recorded by the pipeline.
- **At build time the catalog held** {catalog.get('posts', 0):,} posts, {catalog.get('images_stored', 0):,}
  stored images, {catalog.get('songs', 0):,} songs, {catalog.get('lyric_candidates', 0):,} lyric candidates.

## Preprocessing, cleaning, labeling
- **What was done?** Lyric filters give each lyric a verdict with its reason (language, placeholder,
  instrumental, match score, duplicate, empty modeling text); uncertain ones go to human curators, who
  accept, correct or reject them (the paper had twenty participants do this step). Provider text is made
  safe (invalid UTF-8, lone surrogates, control characters) with the original bytes' hash kept. Verdicts
  at build time:

| verdict | lyrics | by reason kind |
|---|---|---|
{chr(10).join(verdict_lines) or '| (none) | 0 | |'}

  Review decisions carried by the included lyrics: {len(catalog.get('review_decisions_included', [])):,}
  ({', '.join(f'{k}: {v}' for k, v in catalog.get('review_decisions_by_kind', {}).items()) or 'none'});
  still pending (they join a later snapshot): {catalog.get('pending_reviews', 0):,}.
  `modeling_text` is the lyric lower-cased with non-alphanumerics and stop words removed, as the paper
  does.
- **Was the raw data saved?** Yes: the original lyric is kept in `lyric`; the catalog keeps every
  candidate, verdict, reason and review decision.
- **Is the preprocessing software available?** Yes: this repository, at code version
  {manifest.get('code_version')}.

## Uses
- **Used already for?** The paper's image → song and song → image retrieval (splits A and B).
- **Repository of uses?** None is kept by the pipeline.
- **Other possible uses?** Lyric-based music recommendation for images; mood prediction.
- **Anything that might affect future uses?** Popularity selection (favorites) biases toward popular
  songs; lyrics are English only (non-English ones are rejected).
- **Uses to avoid.** Identifying people, judging users by their posts; favorite counts measure
  popularity, not quality.

## Distribution
- **Distributed to third parties?** Only as the licence below allows.
- **How?** Parquet files (zstd, page checksums) with a JSON manifest listing every file's SHA-256; read
  with pandas, pyarrow or DuckDB, or `curation.snapshots.reader.load_snapshot` (which verifies).
- **When?** Each refresh may publish a new immutable version.
- **Licence and terms of use.** {license_}. Lyrics may be under copyright and images belong to their
  posters: share only where their licences allow.
- **Third-party restrictions?** The source site's terms, and the lyric provider's terms, apply.
- **Export controls?** None known.

## Maintenance
- **Who maintains it, and how to reach them?** {maintainer}.
- **Erratum?** `image2song snapshot diff A B` tells what changed between versions; errors are fixed
  in the catalog (a curator's decision, a re-crawl) and appear in the next snapshot.
- **Will it be updated?** Yes: a refresh publishes a new version when approved data change; old
  versions stay immutable.
- **Retention limits for data about people.** {retention}.
- **Are older versions supported?** They stay readable; `image2song snapshot verify` checks any of them.
- **How can others contribute?** Through the maintainer; curators work the review queue.
"""


def write_datasheet(folder: Path, manifest: dict) -> list[str]:
    """Write ``datasheet.md`` and the plot into ``folder``; returns the file names."""
    folder = Path(folder)
    (folder / PLOT).write_bytes(plot_occurrences(manifest["figures"]["eligible"].get("occurrences", {}),
                                                 manifest["recipe"]["min_posts"]))
    (folder / DATASHEET).write_text(render(manifest))
    return [DATASHEET, PLOT]
