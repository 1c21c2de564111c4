"""Snapshots: the paper's protocol, determinism, leakage, manifest and datasheet, readers (pandas, pyarrow,
DuckDB), storage through fsspec (local folder and a real S3-compatible server on loopback), the CLI."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, update

from catalog_factory import fill_catalog
from curation.catalog import Image, LyricCandidate, Post, session_scope
from curation.review.queue import decide, enqueue_reviews, pending_items
from curation.snapshots.leakage import close_value_pairs, components, near_duplicate_pairs
from curation.snapshots.reader import load_snapshot, read_manifest, verify_snapshot
from curation.snapshots.recipe import assign_splits
from curation.snapshots.store import SnapshotStore
from curation.snapshots import (
    Recipe, SnapshotError, build_snapshot, check_leakage, diff_snapshots, latest_snapshot, list_snapshots,
)


# --- the paper's protocol -----------------------------------------------------------------------

def test_snapshot_follows_the_papers_protocol(db_url, tmp_path):
    fill_catalog(db_url, songs=12, posts_per_song=6, german=(0,))
    result = build_snapshot(db_url, tmp_path / "snaps", Recipe(test_songs=4, seed=1))
    snap = load_snapshot(result["path"], verify=True)
    t = snap.triplets
    assert t["song_id"].nunique() == 11  # the German song is rejected
    assert (t.groupby("song_id").size() == 5).all()  # 5 posts per song, not 6
    test_a = t[t["split_a"] == "test"]
    assert test_a["song_id"].nunique() == 4 and len(test_a) == 20
    assert set(test_a["song_id"]).isdisjoint(t.loc[t["split_a"] == "train", "song_id"])
    assert (t[t["split_b"] == "test"].groupby("song_id").size() == 1).all()
    assert set(snap.songs["song_id"]) == set(t["song_id"])
    assert result["counts"]["split_b_test"] == 11 and result["counts"]["split_a_test_songs"] == 4
    assert len(snap.split("a", "test")) == 20 and len(snap.split("b", "train")) == 44


def test_snapshot_keeps_the_top_favorites(db_url, tmp_path):
    fill_catalog(db_url, songs=3, posts_per_song=7)
    snap = load_snapshot(build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=1))["path"])
    with session_scope(db_url) as session:
        for song_id, group in snap.triplets.groupby("song_id"):
            favorites = sorted(session.scalars(select(Post.favorite_count).where(Post.song_id == int(song_id[1:]))),
                               reverse=True)
            assert sorted(group["favorite_count"], reverse=True) == favorites[:5]


def test_other_recipes_by_configuration(db_url, tmp_path):
    fill_catalog(db_url, songs=8, posts_per_song=4, german=())
    with pytest.raises(SnapshotError, match="at least 5 approved posts"):
        build_snapshot(db_url, tmp_path / "s")
    recipe = Recipe(min_posts=4, posts_per_song=3, test_songs=2, test_images_per_song=2, seed=3)
    snap = load_snapshot(build_snapshot(db_url, tmp_path / "s", recipe)["path"])
    t = snap.triplets
    assert (t.groupby("song_id").size() == 3).all() and t["song_id"].nunique() == 8
    assert t.loc[t["split_a"] == "test", "song_id"].nunique() == 2
    assert (t[t["split_b"] == "test"].groupby("song_id").size() == 2).all()
    assert snap.manifest["recipe"] == recipe.to_dict() and snap.manifest["seed"] == 3


def test_one_post_per_image(db_url, tmp_path):
    """The same bytes posted twice count once (the post with more favorites), so they cannot leak."""
    fill_catalog(db_url, songs=6, posts_per_song=6, german=())
    with session_scope(db_url) as session:
        first, second = session.execute(select(Post.image_id, Post.song_id).order_by(Post.id)
                                        .where(Post.song_id.in_([1, 2])).limit(12)).all()[0::6]
        sha = session.scalar(select(Image.sha256).where(Image.id == first.image_id))
        session.execute(update(Image).where(Image.id == second.image_id).values(sha256=sha))
    t = load_snapshot(build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=2))["path"]).triplets
    assert t["image_sha256"].is_unique


# --- determinism and publishing ------------------------------------------------------------------

def test_rebuild_from_an_unchanged_catalog_is_identical(db_url, tmp_path):
    fill_catalog(db_url)
    first = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=7))
    again = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=7))
    assert again["published"] is False and again["version"] == first["version"]
    other_root = build_snapshot(db_url, tmp_path / "elsewhere", Recipe(test_songs=3, seed=7))
    # The catalog keeps snapshot paths relative to the snapshots root: another root does not hold the
    # latest, so the same data are published there, byte for byte.
    assert other_root["published"] is True and other_root["files"] == first["files"]
    fresh = tmp_path / "fresh"
    store = SnapshotStore(fresh)
    # Build again into a new root as if no snapshot existed: the same files, byte for byte.
    with session_scope(db_url) as session:
        from curation.catalog import SnapshotRecord

        session.query(SnapshotRecord).delete()
    rebuilt = build_snapshot(db_url, fresh, Recipe(test_songs=3, seed=7))
    assert rebuilt["published"] and rebuilt["files"] == first["files"]
    assert store.versions() == [rebuilt["version"]]
    a, b = load_snapshot(first["path"]).triplets, load_snapshot(rebuilt["path"]).triplets
    pd.testing.assert_frame_equal(a[["post_id", "split_a", "split_b"]], b[["post_id", "split_a", "split_b"]])
    reseeded = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=8))
    assert reseeded["published"] and reseeded["files"] != first["files"]


def test_snapshot_without_enough_songs_is_a_clear_error(db_url, tmp_path):
    fill_catalog(db_url, songs=3, posts_per_song=2)
    with pytest.raises(SnapshotError, match="at least 5 approved posts"):
        build_snapshot(db_url, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_failed_build_leaves_no_half_snapshot(db_url, tmp_path, monkeypatch):
    import curation.snapshots.build as snapshots

    fill_catalog(db_url)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(snapshots, "_code_version", crash)
    with pytest.raises(OSError, match="disk full"):
        build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))
    assert list((tmp_path / "s").iterdir()) == []
    assert list_snapshots(db_url) == [] and latest_snapshot(db_url) is None


# --- leakage ------------------------------------------------------------------------------------

def test_multi_index_hashing_finds_exactly_the_close_pairs():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=300, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 300).astype(np.uint64)
    flips = [np.uint64(1) << np.uint64(b) for b in range(64)]
    close = base.copy()
    for i in range(0, 300, 3):  # every third value gets a near twin (1 to 6 bits off)
        for b in rng.choice(64, size=1 + i % 6, replace=False):
            close[i] ^= flips[b]
    values = np.unique(np.concatenate([base, close]))
    for bits in (0, 3, 6):
        found = {tuple(p) for p in close_value_pairs(values, None, bits).tolist()}
        brute = {(i, j) for i, j in itertools.combinations(range(len(values)), 2)
                 if int(values[i] ^ values[j]).bit_count() <= bits}
        assert found == brute


def test_near_duplicates_and_components():
    hashes = ["ffffffffffffffff", "fffffffffffffff0", "0000000000000000", None, "ffffffffffffffff", "abc"]
    pairs = near_duplicate_pairs(hashes, 4)
    assert pairs.tolist() == [[0, 1], [0, 4], [1, 4]]
    assert components(6, pairs).tolist() == [0, 0, 2, 3, 0, 5]


def test_leakage_check_fails_on_an_image_or_a_near_duplicate_in_train_and_test():
    rows = pd.DataFrame({"post_id": ["1", "2", "3"], "image_sha256": ["a", "b", "c"],
                         "image_phash": ["ffffffffffffffff", "fffffffffffffff7", "0000000000000000"],
                         "split_a": ["train", "test", "train"], "split_b": ["train", "train", "test"]})
    with pytest.raises(SnapshotError, match=r"split_a: near-duplicate.*train post 1 ~ test post 2 \(1 bits\)"):
        check_leakage(rows, 4)
    assert check_leakage(rows, None)["result"].startswith("no image")
    rows.loc[2, "image_sha256"] = "a"
    with pytest.raises(SnapshotError, match="split_b: 1 images are in both"):
        check_leakage(rows, None)


def test_split_assignment_keeps_near_duplicates_on_one_side():
    """Two songs share a near-duplicate image: split A holds them out together or not at all, and
    split B never holds out an image that has a near duplicate."""
    rng = np.random.default_rng(1)
    rows = []
    for song in range(40):
        for post in range(5):
            rows.append({"post_id": song * 10 + post, "song_id": song, "image_sha256": f"{song}-{post}",
                         "image_phash": f"{int(rng.integers(0, 2**63)):016x}"})
    frame = pd.DataFrame(rows)
    twin = int(frame.loc[0, "image_phash"], 16) ^ 0b101
    frame.loc[frame["post_id"] == 71, "image_phash"] = f"{twin:016x}"  # song 7's image ~ song 0's image
    for seed in range(12):
        kept, notes = assign_splits(frame, Recipe(test_songs=10, seed=seed))
        side = kept.groupby("song_id")["split_a"].first()
        assert side[0] == side[7]
        assert kept.loc[kept["post_id"].isin([0, 71]), "split_b"].eq("train").all()
        assert (kept["split_a"] == "test").groupby(kept["song_id"]).first().sum() == 10
        check_leakage(kept.assign(post_id=kept["post_id"].astype(str)), 4)
        assert notes["near_duplicate_pairs"] == 1


def test_build_with_near_duplicate_images_in_the_catalog(db_url, tmp_path):
    fill_catalog(db_url, songs=10, posts_per_song=5, german=())
    with session_scope(db_url) as session:
        images = session.execute(select(Post.song_id, Image.id, Image.phash).join(Image, Post.image_id == Image.id)
                                 .order_by(Post.song_id, Post.id)).all()
        by_song = {}
        for song, image_id, phash in images:
            by_song.setdefault(song, []).append((image_id, phash))
        songs = sorted(by_song)
        # every song's first image is a near duplicate of song 1's first image: one big cluster
        reference = int(by_song[songs[0]][0][1], 16)
        for offset, song in enumerate(songs[1:4], 1):
            session.execute(update(Image).where(Image.id == by_song[song][0][0])
                            .values(phash=f"{reference ^ (1 << offset):016x}"))
    result = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=0))
    snap = load_snapshot(result["path"])
    t = snap.triplets
    cluster = {f"s{s}" for s in songs[:4]}
    assert t.loc[t["song_id"].isin(cluster), "split_a"].nunique() == 1
    assert snap.manifest["notes"]["near_duplicate_pairs"] == 6
    assert snap.manifest["leakage"]["near_duplicate_bits"] == 4


# --- manifest and datasheet ---------------------------------------------------------------------

def test_manifest_records_what_the_snapshot_holds(db_url, tmp_path):
    fill_catalog(db_url, german=(0, 1))
    with session_scope(db_url) as session:  # one lyric goes to a curator, who accepts it
        candidate = session.scalar(select(LyricCandidate).where(LyricCandidate.verdict == "approved").limit(1))
        candidate.verdict, candidate.reason = "review", "uncertain match: score 0.70 < 0.80"
    enqueue_reviews(db_url)
    decide(db_url, pending_items(db_url)[0]["item"], "accept", "ann")
    result = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=5))
    path = result["path"]
    manifest = read_manifest(path)
    assert manifest["recipe"]["seed"] == 5 and manifest["seed"] == 5
    assert [f["name"] for f in manifest["schema"]["triplets"]][:3] == ["post_id", "source", "external_id"]
    assert manifest["counts"]["split_a_test"] + manifest["counts"]["split_a_train"] == manifest["counts"]["triplets"]
    assert set(manifest["file_details"]) == {"triplets.parquet", "songs.parquet", "datasheet.md",
                                             "song_occurrences.png"}
    verify_snapshot(path)
    catalog = manifest["catalog"]
    assert catalog["lyric_verdicts"]["rejected"] == {"total": 2, "by_reason": {"non-English": 2}}
    assert catalog["lyric_verdicts"]["approved"]["total"] == 10
    assert len(catalog["review_decisions_included"]) == 1 and catalog["review_decisions_by_kind"] == {"accept": 1}
    assert catalog["posts"] == 72 and catalog["pending_reviews"] == 0
    assert manifest["code_version"].startswith("0.1.0") or manifest["code_version"].startswith("unknown")
    assert manifest["figures"]["eligible"]["occurrences"] == {"6": 10} or \
        manifest["figures"]["eligible"]["occurrences"] == {6: 10}


def test_datasheet_has_table_1_and_fig_2(db_url, tmp_path):
    from PIL import Image as PILImage

    fill_catalog(db_url)
    path = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["path"]
    sheet = open(f"{path}/datasheet.md").read()
    for section in ("## Motivation", "## Composition", "## Collection process", "## Preprocessing",
                    "## Uses", "## Distribution", "## Maintenance"):
        assert section in sheet
    assert "| Triplet | Song | Available Mood | Favorite Count |" in sheet
    assert "| 66 | 11 | 11 (16.7%) | [0, 49] |" in sheet  # all available posts
    assert "| 5–9 | 11 | 66 |" in sheet  # Fig. 2: 11 songs occur 6 times
    with PILImage.open(f"{path}/song_occurrences.png") as plot:
        assert plot.format == "PNG" and plot.size[0] > 300


# --- readers ------------------------------------------------------------------------------------

@pytest.fixture
def built(tmp_path):
    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    return build_snapshot(url, tmp_path / "s", Recipe(test_songs=3))["path"]


def test_pandas_reads_the_files_as_they_are(built):
    frame = pd.read_parquet(f"{built}/triplets.parquet")
    assert len(frame) == 55 and (frame["split_a"] == "test").sum() == 15
    assert set(pd.read_parquet(f"{built}/songs.parquet")["song_id"]) == set(frame["song_id"])


def test_pyarrow_dataset_reads_the_files_as_they_are(built):
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    dataset = ds.dataset(f"{built}/triplets.parquet")
    assert dataset.count_rows() == 55
    assert dataset.count_rows(filter=pc.field("split_b") == "test") == 11
    metadata = pq.ParquetFile(f"{built}/triplets.parquet").metadata
    columns = {metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i)
               for i in range(metadata.num_columns)}
    assert columns["favorite_count"].statistics.has_min_max
    assert "RLE_DICTIONARY" in str(columns["song_id"].encodings)
    assert "RLE_DICTIONARY" not in str(columns["image_sha256"].encodings)


def test_duckdb_reads_the_files_as_they_are(built):
    import duckdb

    rows = duckdb.sql(f"select split_a, count(*) from '{built}/triplets.parquet' group by split_a "
                      "order by split_a").fetchall()
    assert rows == [("test", 15), ("train", 40)]
    joined = duckdb.sql(f"select count(distinct t.song_id) from '{built}/triplets.parquet' t "
                        f"join '{built}/songs.parquet' s using (song_id)").fetchall()
    assert joined[0][0] == 11


# --- storage through fsspec ---------------------------------------------------------------------

def test_local_fsspec_url(tmp_path):
    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    result = build_snapshot(url, f"file://{tmp_path / 'store'}", Recipe(test_songs=3))
    assert result["path"] == str(tmp_path / "store" / result["version"])
    assert len(load_snapshot(f"file://{result['path']}").triplets) == 55


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the loopback S3 server; fsspec reaches it through AWS_* variables."""
    import uuid

    import boto3
    import s3fs

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    bucket = f"snaps-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    s3fs.S3FileSystem.clear_instance_cache()


def test_snapshots_on_s3(tmp_path, s3):
    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    root = f"{s3}/snapshots"
    first = build_snapshot(url, root, Recipe(test_songs=3))
    assert first["path"] == f"{root}/{first['version']}"
    snap = load_snapshot(first["path"], verify=True)
    assert len(snap.triplets) == 55 and len(snap.songs) == 11
    assert SnapshotStore(root).versions() == [first["version"]]
    assert build_snapshot(url, root, Recipe(test_songs=3))["published"] is False
    local = build_snapshot(url, tmp_path / "local", Recipe(test_songs=3, seed=9))
    assert diff_snapshots(first["path"], local["path"])["songs"]["lost"] == 0


def test_failed_s3_upload_publishes_nothing(tmp_path, s3, monkeypatch):
    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    root = f"{s3}/snapshots"
    store = SnapshotStore(root)
    calls = []
    original = store.fs.put_file  # fsspec caches the instance: the build gets this same one

    def flaky(local, remote, *args, **kwargs):
        calls.append(remote)
        if len(calls) == 3:
            raise ConnectionError("connection reset")
        return original(local, remote, *args, **kwargs)

    monkeypatch.setattr(store.fs, "put_file", flaky)
    with pytest.raises(ConnectionError):
        build_snapshot(url, root, Recipe(test_songs=3))
    assert len(calls) == 3 and not any(c.endswith("manifest.json") for c in calls)
    assert SnapshotStore(root).versions() == [] and list_snapshots(url) == []


# --- diff and the CLI -----------------------------------------------------------------------------

def test_diff_tells_rows_and_songs_that_changed(db_url, tmp_path):
    fill_catalog(db_url, songs=8)
    first = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=2))
    fill_catalog(db_url, songs=10)  # two new songs with their posts
    second = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=2))
    diff = diff_snapshots(first["path"], second["path"])
    assert diff["songs"]["gained"] == 2 and diff["songs"]["lost"] == 0
    assert diff["triplets"] == {"old": 35, "new": 45, "added": 10, "removed": 0, "changed": 0}
    for part in ("train", "test"):
        row = diff["splits"][f"split_b_{part}"]
        assert row["new"] - row["old"] == row["added"] - row["removed"]
    assert diff["splits"]["split_b_test"]["added"] >= 2


def test_cli_snapshot_build_list_show_diff(tmp_path, monkeypatch, capsys):
    from curation.catalog import upgrade
    from image2song.cli import main

    url = f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}"
    monkeypatch.setenv("IMAGE2SONG_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("IMAGE2SONG_DB_URL", url)
    (tmp_path / "state").mkdir()
    upgrade(url)
    fill_catalog(url)
    assert main(["snapshot", "build", "--test-songs", "3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["snapshot", "build", "--test-songs", "3", "--seed", "4"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert main(["snapshot", "list"]) == 0
    listing = capsys.readouterr().out
    assert first["version"] in listing and second["version"] in listing
    assert main(["snapshot", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == second["version"]
    assert main(["snapshot", "show", first["version"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["test_songs"] == 3
    assert main(["snapshot", "diff", first["version"], second["version"]]) == 0
    out = capsys.readouterr().out
    assert "split_a_test" in out and "songs: 11 -> 11, gained 0, lost 0" in out
    assert main(["snapshot", "diff", first["version"]]) == 2
    assert main(["snapshot", "build", "--min-posts", "50"]) == 2
    assert "at least 50 approved posts" in capsys.readouterr().err


# --- protocol details (issue 11) -------------------------------------------------------------------

def test_favourite_ties_go_to_the_older_post_by_the_sites_time(db_url, tmp_path):
    """The crawl meets posts newest first, so the older posts get the higher catalog ids: the tie-break
    must follow the site's time, not the crawl order."""
    from crawlers.sharing_site import PostRecord
    from curation.crawl_store import ensure_source, store_posts

    fill_catalog(db_url, songs=6, posts_per_song=5, german=())
    source = ensure_source(db_url, "test", "html_site", "http://site")
    # Song 0 gets 4 more posts, all with 99 favorites (more than any other): newest crawled first.
    extra = [PostRecord(f"tie-{day}", f"http://site/post/tie-{day}", "http://site/img/0-0.jpg", "Song 0",
                        "Artist 0", None, 200, None, 99, f"2026-01-{day:02d}T12:00:00Z") for day in (9, 8, 2, 1)]
    store_posts(db_url, source, extra)
    with session_scope(db_url) as session:  # distinct images, stored, so each post is eligible
        for i, record in enumerate(extra):
            post = session.scalar(select(Post).where(Post.external_id == record.external_id))
            session.add(image := Image(url=f"http://site/img/tie-{i}.jpg", status="stored",
                                       sha256=f"{i:064x}", phash=f"{(0xF0F0F0F0F0F0F0F0 ^ (i * 0x1111111)):016x}",
                                       content_type="image/jpeg"))
            session.flush()
            post.image_id = image.id
    snap = load_snapshot(build_snapshot(db_url, tmp_path / "s", Recipe(posts_per_song=2, min_posts=2, test_songs=1,
                                                                       near_duplicate_bits=None))["path"])
    kept = set(snap.triplets.loc[snap.triplets["song_id"] == "s1", "external_id"])
    assert kept == {"tie-1", "tie-2"}, kept


def test_the_sites_post_time_is_crawled_and_stored(db_url):
    from crawlers.sharing_site import parse_post_page
    from curation.crawl_store import ensure_source, store_posts

    html = ('<article class="post" data-post-id="7"><img class="post-image" src="/i.jpg">'
            '<span class="song-title">T</span> <span class="song-artist">A</span>'
            '<time class="posted" datetime="2026-01-02T03:04:05Z">2 Jan</time></article>')
    record = parse_post_page(html, "http://site/post/7")
    assert record.posted_at == "2026-01-02T03:04:05Z"
    store_posts(db_url, ensure_source(db_url, "t", "html_site", "http://site"), [record])
    with session_scope(db_url) as session:
        posted = session.scalar(select(Post.posted_at))
    assert (posted.year, posted.month, posted.day, posted.hour) == (2026, 1, 2, 3)


# --- integrity (issue 11) -------------------------------------------------------------------------

def _flip_in_column(path, column: str) -> None:
    """Flip one bit in the last byte of a column chunk's pages (page data, not a header)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    offset = start + chunk.total_compressed_size - 1
    data = bytearray(open(path, "rb").read())
    data[offset] ^= 0x01
    open(path, "wb").write(bytes(data))


def test_a_flipped_bit_is_never_read_silently(built):
    from curation.snapshots.reader import SnapshotIntegrityError, check_snapshot

    _flip_in_column(f"{built}/triplets.parquet", "split_a")
    with pytest.raises(SnapshotIntegrityError, match="triplets.parquet: SHA-256 differs"):
        load_snapshot(built)  # verification is on by default
    with pytest.raises(SnapshotIntegrityError, match="could not verify page integrity|damaged"):
        load_snapshot(built, verify=False)  # even unverified, every page is checked against its CRC
    problems = check_snapshot(built, pages=True)
    assert any("column 'split_a' is damaged" in p for p in problems), problems
    assert not any("column 'post_id'" in p for p in problems)


def test_a_manifest_with_edited_counts_fails_verification(db_url, tmp_path):
    from curation.snapshots.build import latest_problems
    from curation.snapshots.reader import SnapshotIntegrityError

    fill_catalog(db_url)
    path = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["path"]
    manifest = json.loads(open(f"{path}/manifest.json").read())
    manifest["counts"]["split_a_test"] += 5
    open(f"{path}/manifest.json", "w").write(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(SnapshotIntegrityError, match="own manifest_sha256"):
        load_snapshot(path)
    assert any("catalog's record" in p for p in latest_problems(db_url, tmp_path / "s"))
    # Even with its own hash recomputed, the counts no longer match the data.
    from curation.snapshots.reader import manifest_content_hash

    manifest["manifest_sha256"] = manifest_content_hash(manifest)
    open(f"{path}/manifest.json", "w").write(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(SnapshotIntegrityError, match="split_a_test: 15 rows, the manifest says 20"):
        load_snapshot(path)


def test_a_rebuild_over_a_damaged_latest_snapshot_republishes(db_url, tmp_path):
    fill_catalog(db_url)
    first = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))
    _flip_in_column(f"{first['path']}/songs.parquet", "modeling_text")
    again = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))
    assert again["published"] is True and again["version"] != first["version"]
    assert again["files"] == first["files"]  # the same data, whole again
    snap = load_snapshot(again["path"])
    assert snap.manifest["notes"]["republished_over_damaged"]["version"] == first["version"]
    assert build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["published"] is False


def test_cli_snapshot_verify_names_what_is_damaged(tmp_path, monkeypatch, capsys):
    from curation.catalog import upgrade
    from image2song.cli import main

    url = f"sqlite:///{tmp_path / 'state' / 'catalog.sqlite'}"
    monkeypatch.setenv("IMAGE2SONG_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("IMAGE2SONG_DB_URL", url)
    (tmp_path / "state").mkdir()
    upgrade(url)
    fill_catalog(url)
    assert main(["snapshot", "build", "--test-songs", "3"]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    assert main(["snapshot", "verify"]) == 0
    assert f"{version}  ok" in capsys.readouterr().out
    _flip_in_column(tmp_path / "state" / "snapshots" / version / "triplets.parquet", "split_b")
    assert main(["snapshot", "verify", version]) == 1
    out = capsys.readouterr().out
    assert f"{version}  DAMAGED" in out and "triplets.parquet: SHA-256 differs" in out
    assert "column 'split_b' is damaged" in out
    assert main(["snapshot", "verify", version, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)[0]["ok"] is False


def _build_killed_at(tmp_path, url: str, root, where: str):
    """Run a build in a child process that dies (os._exit, no cleanup) at ``where``."""
    import os
    import subprocess
    import sys

    script = f"""
import os
import curation.snapshots.build as build
from curation.snapshots.store import SnapshotStore
def die(*args, **kwargs):
    os._exit(9)
if {where!r} == "publish":
    SnapshotStore.publish = die
else:
    build.record_snapshot = die
build.build_snapshot({url!r}, {str(root)!r}, build.Recipe(test_songs=3))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 9, done.stderr


def test_a_killed_build_leaves_nothing_a_glob_reads_and_the_next_build_cleans_up(tmp_path):
    import duckdb

    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    root = tmp_path / "snapshots"
    first = build_snapshot(url, root, Recipe(test_songs=3))
    fill_catalog(url, songs=14)
    _build_killed_at(tmp_path, url, root, "publish")
    staged = list((tmp_path / "snapshots.staging").iterdir())
    assert len(staged) == 1 and (staged[0] / "triplets.parquet").exists()
    rows = duckdb.sql(f"select count(*) from '{root}/*/triplets.parquet'").fetchall()[0][0]
    assert rows == first["counts"]["triplets"]  # only the published snapshot
    second = build_snapshot(url, root, Recipe(test_songs=3))
    assert second["published"] and list((tmp_path / "snapshots.staging").iterdir()) == []


def test_a_build_killed_before_its_catalog_write_is_adopted_not_duplicated(tmp_path):
    from curation.catalog import upgrade

    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    root = tmp_path / "snapshots"
    _build_killed_at(tmp_path, url, root, "catalog")
    published = SnapshotStore(root).versions()
    assert len(published) == 1 and list_snapshots(url) == []
    again = build_snapshot(url, root, Recipe(test_songs=3))
    assert again["published"] is False and again["version"] == published[0]
    assert SnapshotStore(root).versions() == published and [s["version"] for s in list_snapshots(url)] == published


def test_a_moved_state_folder_still_builds(tmp_path):
    import shutil

    from curation.catalog import upgrade
    from curation.catalog.db import engine_for

    state = tmp_path / "state"
    state.mkdir()
    url = f"sqlite:///{state / 'catalog.sqlite'}"
    upgrade(url)
    fill_catalog(url)
    first = build_snapshot(url, state / "snapshots", Recipe(test_songs=3))
    engine_for(url).dispose()
    moved = tmp_path / "moved"
    shutil.move(str(state), str(moved))
    moved_url = f"sqlite:///{moved / 'catalog.sqlite'}"
    again = build_snapshot(moved_url, moved / "snapshots", Recipe(test_songs=3))
    assert again["published"] is False and again["version"] == first["version"]
    assert again["path"] == str(moved / "snapshots" / first["version"])
    assert load_snapshot(again["path"]).triplets["image_path"].str.startswith("/").sum() == 0


def test_identical_lyrics_never_sit_in_train_and_test(db_url, tmp_path):
    """A curator accepts both songs of a flagged duplicate pair: they share a text, so split A holds them
    out together, and the independent check fails a split that would put them apart."""
    from curation.snapshots.build import check_lyric_leakage

    fill_catalog(db_url, songs=12, german=())
    with session_scope(db_url) as session:
        rows = {c.song_id: c for c in session.scalars(select(LyricCandidate))}
        ids = sorted(rows)
        for song_id in ids[1:6]:  # five songs carry song 1's text, word for word or reordered
            rows[song_id].text = rows[ids[0]].text if song_id % 2 else " ".join(reversed(rows[ids[0]].text.split()))
    result = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=5))
    snap = load_snapshot(result["path"])
    sides = snap.triplets.drop_duplicates("song_id").set_index("song_id")["split_a"]
    linked = [f"s{song_id}" for song_id in ids[:6]]
    assert sides[linked].nunique() == 1
    assert snap.manifest["leakage"]["lyrics"]["shared_texts"] == 1
    kept = snap.triplets.assign(song_id=snap.triplets["song_id"].str[1:].astype(int))
    modeling = dict(zip(snap.songs["song_id"].str[1:].astype(int), snap.songs["modeling_text"]))
    kept.loc[kept["song_id"] == ids[0], "split_a"] = "test" if sides[linked[0]] == "train" else "train"
    with pytest.raises(SnapshotError, match="lyric"):
        check_lyric_leakage(kept, modeling)


def test_an_empty_modeling_text_never_reaches_a_snapshot(db_url, tmp_path):
    """A curator accepts a lyric with nothing left for modeling (and an old approval has one too): the
    build leaves both songs out and sends them back to review."""
    from curation.catalog import ReviewItem

    fill_catalog(db_url, songs=12, german=())
    stop_words_only = "And it is, is it? The... and, so!"
    with session_scope(db_url) as session:
        first, second = session.scalars(select(LyricCandidate).order_by(LyricCandidate.id).limit(2))
        first.text = second.text = stop_words_only
        first.verdict = "review"  # a curator will accept it
        left_out = sorted([f"s{first.song_id}", f"s{second.song_id}"])
        first_id, second_id = first.id, second.id
    enqueue_reviews(db_url)
    item = next(i for i in pending_items(db_url) if i["text"] == stop_words_only)["item"]
    decide(db_url, item, "accept", "ann")
    snap = load_snapshot(build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["path"])
    assert not set(left_out) & set(snap.triplets["song_id"]) and (snap.songs["modeling_text"] != "").all()
    assert snap.manifest["notes"]["left_out_empty_modeling_text"] == left_out
    with session_scope(db_url) as session:
        assert session.get(LyricCandidate, first_id).verdict == "review"
        assert session.get(ReviewItem, item).state == "pending"  # reopened for a curator
        second = session.get(LyricCandidate, second_id)
        assert second.verdict == "review" and second.reason.startswith("empty modeling text")
    assert enqueue_reviews(db_url)["enqueued"] == 1  # the never-reviewed one joins the queue


def test_diff_at_content_level(db_url, tmp_path):
    fill_catalog(db_url, songs=12, german=())
    first = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=1))
    with session_scope(db_url) as session:
        candidate = session.scalar(select(LyricCandidate).order_by(LyricCandidate.id))
        candidate.text += " and a brand new ending"
        edited = f"s{candidate.song_id}"
        kept_post = int(load_snapshot(first["path"]).triplets["post_id"].iloc[0])
        session.get(Post, kept_post).mood = "wistful"
    second = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=1))
    diff = diff_snapshots(first["path"], second["path"])
    assert diff["songs"]["lyric_changed_ids"] == [edited] and diff["songs"]["modeling_text_changed_ids"] == [edited]
    assert diff["triplets"]["changed"] == 1
    assert [row["changed_ids"] for row in diff["splits"].values() if row["changed"]] == [[str(kept_post)]] * 2
    assert diff["moved"]["split_a"]["train_to_test"] == diff["moved"]["split_a"]["test_to_train"] == 0
    third = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3, seed=2))  # other members held out
    diff = diff_snapshots(second["path"], third["path"])
    a = load_snapshot(second["path"]).triplets.drop_duplicates("song_id").set_index("song_id")["split_a"]
    b = load_snapshot(third["path"]).triplets.drop_duplicates("song_id").set_index("song_id")["split_a"]
    expected = sorted(s for s in a.index if a[s] == "test" and b[s] == "train")
    assert expected and diff["moved"]["split_a"]["test_to_train_ids"] == expected
    assert diff["moved"]["split_a"]["test_to_train"] == diff["moved"]["split_a"]["train_to_test"] == len(expected)
    assert diff["songs"]["lyric_changed"] == 0 and diff["triplets"]["changed"] == 0


def test_datasheet_answers_every_question_from_the_manifest_and_settings(tmp_path):
    from curation.catalog import upgrade
    from image2song import stages
    from image2song.settings import Settings

    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path / "state"),
                                  "IMAGE2SONG_DATASET_LICENSE": "CC BY-NC 4.0 for the metadata",
                                  "IMAGE2SONG_MAINTAINER": "Data Team <data@example.org>",
                                  "IMAGE2SONG_RETENTION": "kept 2 years; removal within 30 days of a request"})
    settings.home.mkdir(parents=True)
    upgrade(settings.db_url)
    fill_catalog(settings.db_url)
    with session_scope(settings.db_url) as session:
        from datetime import datetime, timezone

        for post in session.scalars(select(Post)):
            post.posted_at = datetime(2026, 1, 1 + post.id % 28, tzinfo=timezone.utc)
    sheet = open(f"{stages.build_snapshot(settings, test_songs=3)['path']}/datasheet.md").read()
    questions = ["For what purpose", "Who created it", "Who funded it", "What do the instances represent",
                 "How many instances", "A sample of a larger set", "What data does each instance",
                 "label or target", "information missing", "Relationships between", "Recommended splits",
                 "Errors, noise", "Self-contained", "Confidential data", "Offensive", "relate to people",
                 "Can individuals be identified", "Sensitive data", "How was the data acquired",
                 "Mechanisms", "Sampling strategy", "Who was involved", "Timeframe", "Ethical review",
                 "via third parties", "consent", "Impact analysis", "What was done", "raw data saved",
                 "preprocessing software", "Used already", "Repository of uses", "Other possible uses",
                 "affect future uses", "Uses to avoid", "Distributed to third parties", "How?", "When?",
                 "Licence and terms of use", "Third-party restrictions", "Export controls", "Who maintains it",
                 "Erratum", "Will it be updated", "Retention limits", "older versions", "contribute"]
    missing = [q for q in questions if q not in sheet]
    assert not missing, missing
    assert "CC BY-NC 4.0 for the metadata" in sheet and "Data Team <data@example.org>" in sheet
    assert "kept 2 years; removal within 30 days of a request" in sheet
    assert "Posts made from 2026-01-01 to 2026-01-28" in sheet
    assert "`post_url`, `external_id`\n  and `source` identify the post" in sheet


def test_the_manifest_hash_survives_json_round_trips(db_url, tmp_path):
    """Songs occurring 6 and 12 times: the manifest's integer keys become strings in JSON and sort
    otherwise; the manifest's own hash must be over what readers see."""
    fill_catalog(db_url, songs=12, posts_per_song=6)
    fill_catalog(db_url, songs=3, posts_per_song=12)
    path = build_snapshot(db_url, tmp_path / "s", Recipe(test_songs=3))["path"]
    assert set(load_snapshot(path).manifest["figures"]["eligible"]["occurrences"]) == {"6", "12"}
