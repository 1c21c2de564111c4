"""Tests for modeling/tags: WordNet fold, pixel attributes, the backends, the tag store across snapshots,
broken images, resuming, the registry, and the Airflow wiring of the tag task.

CPU only, except the CPU/GPU agreement test (skipped with a message without a GPU). Tiny snapshots are
written in tmp_path in the format of ``curation/snapshots/reader.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from modeling.tags import VOCABULARIES, Tagger, extract_tags, load_tags, make_backend, register  # noqa: E402
from modeling.tags.attributes import ATTRIBUTE_NAMES, COLOUR_NAMES, pixel_attributes  # noqa: E402
from modeling.tags.decode import Geometry  # noqa: E402
from modeling.tags.vocabularies import imagenet_class_names, imagenet_wnids, object_fold  # noqa: E402
from modeling.tags.wordnet import load_nouns, parse_data_line, wnid_offset  # noqa: E402


# ------------------------------------------------------------------ helpers
def jpeg_bytes(seed: int, size=(160, 120), fmt="JPEG") -> bytes:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x, y = int(rng.integers(0, size[0] - 30)), int(rng.integers(0, size[1] - 30))
        draw.ellipse([x, y, x + 40, y + 30], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    img.save(buf, fmt, quality=85) if fmt == "JPEG" else img.save(buf, fmt)
    return buf.getvalue()


def put(store: Path, data: bytes, suffix: str = ".jpg") -> tuple[str, str]:
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{sha[:2]}/{sha}{suffix}"
    (store / sha[:2]).mkdir(parents=True, exist_ok=True)
    (store / rel).write_bytes(data)
    return sha, rel


def write_snapshot(path: Path, images: list[tuple[str, str]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"post_id": [f"p{i}" for i in range(len(images))], "image_sha256": [s for s, _ in images],
                  "image_path": [r for _, r in images], "song_id": "s0", "title": "t", "artist": "a", "mood": None,
                  "favorite_count": 0, "split_a": "train", "split_b": "train"}).to_parquet(path / "triplets.parquet")
    pd.DataFrame({"song_id": ["s0"], "title": ["t"], "artist": ["a"], "lyric": ["x"], "modeling_text": ["x"]}
                 ).to_parquet(path / "songs.parquet")
    (path / "manifest.json").write_text(json.dumps({"version": path.name, "seed": 0}))
    return path


@register("test-mean-colour")
class MeanColourBackend:
    """A backend defined outside the package: proves a new one needs no change to the callers, and is
    fast enough for the store tests. It counts the images it is shown."""

    name = "test-mean-colour"
    version = "1"
    model = "mean colour (test)"
    geometry = Geometry(resize=32, crop=32)
    heads = {"obj": ["red thing", "green thing", "blue thing"], "attr": ["bright"]}
    seen = 0

    def __init__(self, device="auto", precision="auto", compile=None):
        self.device = torch.device("cpu")
        self.compile = False

    def __call__(self, pixels):
        type(self).seen += len(pixels)
        mean = pixels.float().mean((2, 3)) / 255
        return {"obj": torch.softmax(mean * 4, 1), "attr": mean.mean(1, keepdim=True)}


@pytest.fixture()
def images(tmp_path):
    """Six JPEGs of mixed sizes, a PNG with transparency, a corrupt file, a truncated JPEG and a path
    that is not in the object store."""
    from PIL import Image

    store = tmp_path / "objects"
    good = [put(store, jpeg_bytes(i, size=[(160, 120), (90, 200), (640, 480)][i % 3])) for i in range(6)]
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    good.append(put(store, buf.getvalue(), ".png"))
    corrupt = put(store, b"\xff\xd8\xff\xe0 this is not really a jpeg")
    truncated = put(store, jpeg_bytes(99, size=(300, 200))[:400])
    missing = ("f" * 64, "ff/not-there.jpg")
    return store, good, {"corrupt": corrupt, "truncated": truncated, "missing": missing}


# ------------------------------------------------------------------ WordNet and the object vocabulary
def test_wordnet_data_line_and_imagenet_ids():
    line = ("02099601 05 n 02 golden_retriever 0 retriever 0 002 @ 02099267 n 0000 ~ 02099712 n 0000 "
            "| an English breed having a long silky golden coat  ")
    synset = parse_data_line(line)
    assert synset.offset == 2099601 and synset.lemmas == ("golden_retriever", "retriever")
    assert synset.hypernyms == (2099267,) and synset.name == "golden retriever"
    nouns = load_nouns()
    assert len(imagenet_wnids()) == 1000
    for wnid, name in zip(imagenet_wnids(), imagenet_class_names()):
        assert wnid_offset(wnid) in nouns, (wnid, name)
    assert nouns[wnid_offset("n02099601")].name == "golden retriever"


def test_object_fold_is_readable_and_keeps_probability():
    names, index = object_fold()
    classes = imagenet_class_names()
    tag = {c: names[i] for c, i in zip(classes, index)}
    assert all(tag[c] == "dog" for c in classes[151:269])  # the 118 dog classes of ImageNet-1k
    assert tag["tabby"] == tag["Persian cat"] == "cat" and tag["tench"] == "fish"
    assert tag["moped"] == "motorcycle" and tag["alp"] == "mountain"
    assert 200 <= len(names) <= 700 and len(set(names)) == len(names)
    assert all("_" not in n and n == n.lower() for n in names)
    probs = np.random.default_rng(0).dirichlet(np.ones(1000), size=3).astype(np.float32)
    from modeling.tags.vocabularies import fold_to_objects

    folded = fold_to_objects(probs)
    np.testing.assert_allclose(folded.sum(1), 1.0, atol=1e-5)
    dog = names.index("dog")
    np.testing.assert_allclose(folded[:, dog], probs[:, 151:269].sum(1), rtol=1e-5)


# ------------------------------------------------------------------ pixel attributes
def test_pixel_attributes_on_known_images():
    def solid(rgb):
        return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 64, 64)

    att = lambda x: dict(zip(ATTRIBUTE_NAMES, pixel_attributes(x)[0].tolist()))  # noqa: E731
    red, black, white = att(solid((255, 0, 0))), att(solid((0, 0, 0))), att(solid((255, 255, 255)))
    assert red["red"] == 1 and red["warm"] == 1 and red["vivid"] == 1 and red["cold"] == 0
    assert black["black"] == 1 and black["dark"] == 1 and black["bright"] == 0
    assert white["white"] == 1 and white["pale"] == 1 and white["bright"] == pytest.approx(1, abs=1e-3)
    assert att(solid((0, 0, 255)))["cold"] == 1 and att(solid((0, 0, 255)))["blue"] == 1
    for flat in (red, black, white):
        assert flat["contrast"] == 0 and flat["detailed"] == 0
    halves = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    halves[..., 32:] = 255
    split = att(halves)
    assert split["contrast"] == pytest.approx(1.0, abs=1e-3) and 0 < split["detailed"] < 0.2
    assert split["black"] == pytest.approx(0.5) and split["white"] == pytest.approx(0.5)
    assert att(solid((128, 128, 128)))["colorful"] == 0 < red["colorful"]

    noise = torch.randint(0, 256, (5, 3, 224, 224), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    a, b = pixel_attributes(noise), pixel_attributes(noise.clone())
    assert a.shape == (5, len(ATTRIBUTE_NAMES)) and a.dtype == torch.float32
    assert torch.equal(a, b) and (a >= 0).all() and (a <= 1).all()
    np.testing.assert_allclose(a[:, :len(COLOUR_NAMES)].sum(1), 1.0, atol=1e-5)


# ------------------------------------------------------------------ the stage, default backend
def test_extract_tags_vocabularies_errors_and_determinism(images, tmp_path):
    store, good, bad = images
    snap = write_snapshot(tmp_path / "snap-1", good + list(bad.values()))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 would: the tagging may use more, but gives them back
    try:
        out = extract_tags(snap, store, tmp_path / "tags", tmp_path / "views", device="cpu", batch_size=4, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)

    assert set(out["tags_paths"]) == set(VOCABULARIES)
    assert out["attempted"] == 10 and out["failed"] == 3 and out["tagged"] == 7 and out["reused"] == 0
    reasons = dict(out["failures"])
    assert reasons[bad["corrupt"][0]].startswith("decode:") and reasons[bad["truncated"][0]].startswith("decode:")
    assert reasons[bad["missing"][0]].startswith("read:")
    good_shas = [s for s, _ in good]

    views = {v: load_tags(p) for v, p in out["tags_paths"].items()}
    for vocabulary, (names, probs, shas) in views.items():
        assert shas == good_shas, vocabulary  # snapshot order, broken images left out
        assert probs.dtype == np.float32 and probs.shape == (7, len(names))
        assert (probs >= 0).all() and (probs <= 1 + 1e-6).all()
    np.testing.assert_allclose(views["imagenet"][1].sum(1), 1.0, atol=1e-3)
    np.testing.assert_allclose(views["obj"][1].sum(1), 1.0, atol=1e-3)
    assert views["attr"][0] == list(ATTRIBUTE_NAMES) and views["imagenet"][0] == list(imagenet_class_names())
    assert views["obj+attr"][0] == views["obj"][0] + views["attr"][0]
    np.testing.assert_array_equal(views["obj+attr"][1], np.hstack([views["obj"][1], views["attr"][1]]))
    # The transparent PNG was composited on white, not black.
    attr = dict(zip(views["attr"][0], views["attr"][1][good_shas.index(good[-1][0])]))
    assert attr["white"] == 1.0

    # Error rows are in the view files with their reasons, and left out by load_tags.
    table = pq.read_table(out["tags_paths"]["obj"]).to_pandas()
    assert set(table[table.status == "error"].image_sha256) == {s for s, _ in bad.values()}
    assert table[table.status == "error"].error.notna().all()
    _, with_errors, _ = load_tags(out["tags_paths"]["obj"], include_errors=True)
    assert with_errors.shape[0] == 10

    # Determinism: a fresh store gives the same numbers.
    again = extract_tags(snap, store, tmp_path / "tags-2", tmp_path / "views-2", device="cpu", batch_size=4,
                         progress=False)
    for vocabulary in VOCABULARIES:
        np.testing.assert_allclose(load_tags(again["tags_paths"][vocabulary])[1], views[vocabulary][1], atol=1e-6)

    # Search tags one file the way the stage does, in the model's vocabulary.
    tagger = Tagger.for_tag_names(views["obj+attr"][0], device="cpu")
    single = tagger.tag_file(store / good[0][1])
    np.testing.assert_allclose(single, views["obj+attr"][1][0], atol=2e-2)


def test_a_new_snapshot_tags_only_images_not_in_the_store(tmp_path):
    store = tmp_path / "objects"
    first = [put(store, jpeg_bytes(i)) for i in range(40)]
    new = [put(store, jpeg_bytes(100 + i)) for i in range(4)]  # 10 % new images
    views = tmp_path / "views"
    MeanColourBackend.seen = 0
    one = extract_tags(write_snapshot(tmp_path / "snap-1", first), store, tmp_path / "tags", views / "1",
                       backend="test-mean-colour", batch_size=8, progress=False)
    assert one["attempted"] == 40 and MeanColourBackend.seen == 40

    MeanColourBackend.seen = 0
    second = write_snapshot(tmp_path / "snap-2", first[4:] + new)  # some images left, some came
    two = extract_tags(second, store, tmp_path / "tags", views / "2", backend="test-mean-colour", batch_size=8,
                       progress=False)
    assert two["attempted"] == 4 and two["tagged"] == 4 and two["reused"] == 36 and MeanColourBackend.seen == 4
    names, probs, shas = load_tags(two["tags_paths"]["obj+attr"])
    assert shas == [s for s, _ in first[4:] + new] and names == ["red thing", "green thing", "blue thing", "bright"]
    # The reused rows are the stored ones: the first snapshot's view agrees for the shared images.
    _, probs_one, shas_one = load_tags(one["tags_paths"]["obj+attr"])
    np.testing.assert_array_equal(probs[:36], probs_one[4:])
    assert set(two["tags_paths"]) == {"obj", "attr", "obj+attr"}  # no ImageNet head, no imagenet view

    MeanColourBackend.seen = 0
    three = extract_tags(second, store, tmp_path / "tags", views / "3", backend="test-mean-colour", progress=False)
    assert three["attempted"] == 0 and MeanColourBackend.seen == 0


def test_unreadable_images_are_retried_undecodable_ones_are_not(images, tmp_path):
    store, good, bad = images
    snap = write_snapshot(tmp_path / "snap", good + list(bad.values()))
    kwargs = dict(backend="test-mean-colour", progress=False)
    first = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v1", **kwargs)
    assert first["failed"] == 3
    # The missing object arrives; the broken files stay broken and are not tried again.
    missing_sha, missing_rel = bad["missing"]
    data = jpeg_bytes(7)
    (store / missing_rel).parent.mkdir(parents=True, exist_ok=True)
    (store / missing_rel).write_bytes(data)
    second = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v2", **kwargs)
    assert second["attempted"] == 1 and second["tagged"] == 1 and second["failed"] == 0
    assert missing_sha in load_tags(second["tags_paths"]["obj"])[2]
    third = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v3", retry_errors=True, **kwargs)
    assert third["attempted"] == 2 and third["failed"] == 2


def test_a_crashed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    store = tmp_path / "objects"
    items = [put(store, jpeg_bytes(i)) for i in range(12)]
    snap = write_snapshot(tmp_path / "snap", items)
    calls = {"n": 0}
    real = MeanColourBackend.__call__

    def crashing(self, pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(self, pixels)

    monkeypatch.setattr(MeanColourBackend, "__call__", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_tags(snap, store, tmp_path / "tags", tmp_path / "v", backend="test-mean-colour", batch_size=4,
                     checkpoint_every=4, progress=False)
    monkeypatch.setattr(MeanColourBackend, "__call__", real)
    again = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v", backend="test-mean-colour", batch_size=4,
                         progress=False)
    assert again["reused"] == 8 and again["attempted"] == 4
    assert load_tags(again["tags_paths"]["obj"])[2] == [s for s, _ in items]


def test_the_store_refuses_parts_of_another_tagger(tmp_path):
    from modeling.tags.store import TagStore

    a = TagStore(tmp_path, "x-v1", {"obj": ["a", "b"]}, "m")
    a.append(["s1"], [None], {"obj": np.array([[0.2, 0.8]], np.float32)})
    b = TagStore(tmp_path, "x-v1", {"obj": ["a", "c"]}, "m")
    with pytest.raises(ValueError, match="another tagger"):
        b.statuses()
    a.append(["s2", "s1"], [None, "decode: bad"], {"obj": np.array([[1, 0], [0, 0]], np.float32)})
    assert a.statuses() == {"s1": ("error", "decode: bad"), "s2": ("ok", None)}
    assert a.compact() == 2 and len(a.parts()) == 1
    assert a.rows(["s2", "s1"]).column("status").to_pylist() == ["ok", "error"]


# ------------------------------------------------------------------ store reads and compaction
def stored_parts(n_parts: int, per_part: int, tmp_path):
    """A store of ``n_parts`` appended parts; the last one holds a newer row for an image of the first."""
    from modeling.tags.store import TagStore

    store = TagStore(tmp_path / "tags", "x-v1", {"obj": ["a", "b"], "attr": ["bright"]}, "m")
    rng = np.random.default_rng(0)
    shas = [hashlib.sha256(f"img-{i}".encode()).hexdigest() for i in range(n_parts * per_part)]
    for k in range(n_parts):
        chunk = shas[k * per_part:(k + 1) * per_part]
        errors = [("decode: bad" if (k == 0 and i == 0) else None) for i in range(len(chunk))]
        store.append(chunk, errors, {"obj": rng.random((len(chunk), 2), dtype=np.float32),
                                     "attr": rng.random((len(chunk), 1), dtype=np.float32)})
    store.append([shas[0]], [None], {"obj": np.array([[0.25, 0.75]], np.float32), "attr": np.array([[0.5]], np.float32)})
    return store, shas


def visible_rows(store, shas) -> dict:
    table = store.rows(shas)
    return {s: (st, e, o, a) for s, st, e, o, a in zip(*(table.column(c).to_pylist()
                                                        for c in ("image_sha256", "status", "error", "obj", "attr")))}


def test_store_reads_only_the_row_groups_and_columns_asked_for(tmp_path, monkeypatch):
    import modeling.tags.store as store_module

    monkeypatch.setattr(store_module, "ROW_GROUP_ROWS", 4)
    store, shas = stored_parts(2, 16, tmp_path)
    for part in store.parts():
        meta = pq.ParquetFile(part).metadata
        ranges = [(meta.row_group(g).column(0).statistics.min, meta.row_group(g).column(0).statistics.max)
                  for g in range(meta.num_row_groups)]
        # Sorted by sha256 in row groups of disjoint ranges: a read of one image matches one row group.
        assert all(hi < lo for (_, hi), (lo, _) in zip(ranges, ranges[1:])), ranges
    assert pq.ParquetFile(store.parts()[0]).metadata.num_row_groups == 4

    wanted = [shas[20], shas[0], "0" * 64]  # one of each appended part, and one the store lacks
    rows = store.rows(wanted, heads=["attr"])
    assert rows.column_names == ["image_sha256", "status", "error", "attr"]
    assert rows.column("image_sha256").to_pylist() == wanted[:2]
    assert rows.column("status").to_pylist() == ["ok", "ok"]  # the newest row of shas[0] wins over its error
    assert rows.column("attr").to_pylist()[1] == [0.5]
    assert store.statuses(wanted) == {shas[20]: ("ok", None), shas[0]: ("ok", None)}
    with pytest.raises(ValueError, match="no heads"):
        store.rows(wanted, heads=["colour"])


def test_compaction_keeps_every_row_once_and_reads_stay_the_same(tmp_path, monkeypatch):
    import modeling.tags.store as store_module

    monkeypatch.setattr(store_module, "ROW_GROUP_ROWS", 8)
    monkeypatch.setattr(store_module, "COMPACT_ROWS_PER_PASS", 10)  # several sha256 ranges, bounded memory
    store, shas = stored_parts(4, 9, tmp_path)
    before = visible_rows(store, shas)
    assert store.compact() == 5
    (part,) = store.parts()
    merged = pq.read_table(part)
    assert merged.num_rows == len(shas) and merged.column("image_sha256").to_pylist() == sorted(shas)
    assert visible_rows(store, shas) == before and before[shas[0]][:2] == ("ok", None)
    assert store.compact() == 0  # one part: nothing to do


def test_a_reader_survives_a_compaction_that_removes_its_parts(tmp_path):
    from modeling.tags.store import TagStore

    store, shas = stored_parts(3, 5, tmp_path)
    before = visible_rows(store, shas)
    reader = TagStore(tmp_path / "tags", "x-v1", store.heads, "m")
    real_scan, calls = reader._scan, []

    def scan_then_compact():
        found = real_scan()
        if not calls:  # the parts just listed are removed before the reader opens them
            calls.append(store.compact())
        return found

    reader._scan = scan_then_compact
    assert visible_rows(reader, shas) == before and calls == [4]


KILL_COMPACTION = r"""
import os, signal, sys
import modeling.tags.store as store_module
from modeling.tags.store import TagStore

point = sys.argv[2]
store = TagStore(sys.argv[1], "x-v1", {"obj": ["a", "b"], "attr": ["bright"]}, "m")
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if point == "before the merged part is in place":
    store_module.os.replace = die
else:
    real_rm, removed = store.fs.rm, []
    def rm(path, *args, **kwargs):
        if len(removed) == (0 if point == "before removing the old parts" else 2):
            die()
        removed.append(path)
        return real_rm(path, *args, **kwargs)
    store.fs.rm = rm
store.compact()
"""


@pytest.mark.parametrize("point", ["before the merged part is in place", "before removing the old parts",
                                   "while removing the old parts"])
def test_a_compaction_killed_midway_loses_no_row_and_shows_none_twice(point, tmp_path):
    import os
    import subprocess
    import sys
    import time

    store, shas = stored_parts(4, 6, tmp_path)
    before, parts_before = visible_rows(store, shas), store.parts()
    killed = subprocess.run([sys.executable, "-c", KILL_COMPACTION, str(tmp_path / "tags"), point],
                            cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]

    # Readers see the newest row of every image, and no row twice that was not twice before (shas[0] has an
    # older error row: the merged part holds it once).
    visible = store.parts()
    stored = sum(pq.ParquetFile(p).metadata.num_rows for p in visible)
    assert stored == (len(shas) + 1 if point == "before the merged part is in place" else len(shas))
    assert visible_rows(store, shas) == before
    files = sorted(p.name for p in (tmp_path / "tags" / "x-v1").iterdir())
    if point == "before the merged part is in place":
        assert visible == parts_before
        (leftover,) = [tmp_path / "tags" / "x-v1" / f for f in files if ".tmp-" in f]  # never read
        old = time.time() - 2 * 24 * 3600
        os.utime(leftover, (old, old))
    else:
        assert len(visible) == 1 and visible[0] not in parts_before
        assert len(files) == (1 + 5 if point == "before removing the old parts" else 1 + 3)

    # The next compaction finishes the work: one part, no leftovers, the same rows.
    store.compact()
    assert [p.name for p in (tmp_path / "tags" / "x-v1").iterdir()] == [Path(store.parts()[0]).name]
    assert visible_rows(store, shas) == before


def test_the_stage_compacts_a_store_of_many_parts(tmp_path, monkeypatch):
    import modeling.tags.pipeline as pipeline

    monkeypatch.setattr(pipeline, "COMPACT_ABOVE_PARTS", 2)
    store = tmp_path / "objects"
    items = [put(store, jpeg_bytes(i)) for i in range(12)]
    snap = write_snapshot(tmp_path / "snap", items)
    kwargs = dict(backend="test-mean-colour", batch_size=4, checkpoint_every=4, progress=False)
    first = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v1", compact=False, **kwargs)
    parts = sorted((tmp_path / "tags" / first["tagger"]).glob("part-*.parquet"))
    assert len(parts) == 3 and first["compacted_parts"] == 0
    second = extract_tags(snap, store, tmp_path / "tags", tmp_path / "v2", **kwargs)  # 3 parts > 2: compacted
    assert second["attempted"] == 0 and second["compacted_parts"] == 3
    assert len(list((tmp_path / "tags" / first["tagger"]).glob("part-*.parquet"))) == 1
    for vocabulary in ("obj", "attr"):
        a, b = load_tags(first["tags_paths"][vocabulary]), load_tags(second["tags_paths"][vocabulary])
        assert a[0] == b[0] and a[2] == b[2] == [s for s, _ in items]
        np.testing.assert_array_equal(a[1], b[1])


def test_unknown_backend_and_vocabulary_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tag backend 'nope'; known: .*efficientnet-lite0"):
        make_backend("nope")
    with pytest.raises(ValueError, match="unknown vocabulary"):
        Tagger("colours", backend="test-mean-colour")


# ------------------------------------------------------------------ Faster R-CNN backend
@pytest.fixture(scope="module")
def region_checkpoint(tmp_path_factory):
    from modeling.tags.backends import _region_tagger, save_region_checkpoint

    torch.manual_seed(0)
    objects, attributes = ["dog", "tree", "car", "sky"], ["red", "wooden", "shiny"]
    module = _region_tagger("fasterrcnn_mobilenet_v3_large_320_fpn", len(objects), len(attributes), 320)
    path = tmp_path_factory.mktemp("frcnn") / "tiny.pt"
    save_region_checkpoint(path, module, arch="fasterrcnn_mobilenet_v3_large_320_fpn", objects=objects,
                           attributes=attributes, image_size=320)
    return path, objects, attributes


def test_faster_rcnn_backend_from_a_checkpoint(region_checkpoint, images, tmp_path):
    path, objects, attributes = region_checkpoint
    backend = make_backend("faster-rcnn", checkpoint=path, device="cpu")
    assert backend.heads == {"obj": objects, "attr": attributes} and backend.version.startswith("1-")
    pixels = torch.randint(0, 256, (3, 3, 320, 320), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    heads = backend(pixels)
    again = make_backend("faster-rcnn", checkpoint=path, device="cpu")(pixels)
    assert heads["obj"].shape == (3, 4) and heads["attr"].shape == (3, 3)
    for h in heads:
        assert (heads[h] >= 0).all() and (heads[h] <= 1).all()
        torch.testing.assert_close(heads[h], again[h])

    store, good, _ = images
    out = extract_tags(write_snapshot(tmp_path / "snap", good[:3]), store, tmp_path / "tags", tmp_path / "v",
                       backend="faster-rcnn", backend_options={"checkpoint": path}, device="cpu", progress=False)
    assert set(out["tags_paths"]) == {"obj", "attr", "obj+attr"} and out["tagger"] == f"faster-rcnn-v{backend.version}"
    names, probs, _ = load_tags(out["tags_paths"]["obj+attr"])
    assert names == objects + attributes and probs.shape == (3, 7)

    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_backend("faster-rcnn")


# ------------------------------------------------------------------ GPU
def test_cpu_and_gpu_agree(images, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: CPU/GPU agreement of the tags is not checked")
    store, good, _ = images
    snap = write_snapshot(tmp_path / "snap", good)
    cpu = extract_tags(snap, store, tmp_path / "cpu", tmp_path / "vc", device="cpu", precision="fp32", progress=False)
    for decode in ("cpu", "gpu"):
        gpu = extract_tags(snap, store, tmp_path / f"gpu-{decode}", tmp_path / f"vg-{decode}", device="cuda",
                           decode=decode, progress=False)
        # bf16/fp16 on the GPU, fp32 on the CPU; nvJPEG and PIL resample slightly differently.
        for vocabulary, tolerance in (("imagenet", 0.05), ("obj", 0.05), ("attr", 0.05)):
            np.testing.assert_allclose(load_tags(gpu["tags_paths"][vocabulary])[1],
                                       load_tags(cpu["tags_paths"][vocabulary])[1], atol=tolerance)


# ------------------------------------------------------------------ Airflow wiring
DAG_PROBE = r"""
import json
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder="dags/train.py").dags["train"]
params = dag.params
defaults = {"vocabularies": params["tag_vocabularies"], "device": params["device"]}
refused = {}
for key, bad in (("tag_vocabularies", ["colours"]), ("tag_vocabularies", ["obj", "attr"]), ("device", "tpu"),
                 ("device", "cuda:1")):
    try:
        params.get_param(key).resolve(bad)
        refused[f"{key}={bad!r}"] = False
    except Exception:
        refused[f"{key}={bad!r}"] = True
print(json.dumps({"pool": dag.get_task("extract_tags").pool, **defaults, "refused": refused}))
"""


def test_train_dag_tags_in_the_accelerator_pool_with_validated_params(tmp_path):
    import subprocess
    import sys

    from image2song.airflow_env import airflow_environment
    from image2song.settings import PROJECT_ROOT, Settings

    env = airflow_environment(Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)}))
    result = subprocess.run([sys.executable, "-c", DAG_PROBE], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["pool"] == "accelerator" and found["vocabularies"] == ["obj+attr", "obj", "attr"] and found["device"] == "auto"
    assert found["refused"] == {"tag_vocabularies=['colours']": True, "tag_vocabularies=['obj', 'attr']": False,
                                "device='tpu'": True, "device='cuda:1'": False}


@pytest.mark.slow
def test_the_cli_creates_the_accelerator_pool_once(tmp_path):
    from image2song.airflow_env import airflow_command, ensure_pools
    from image2song.settings import Settings

    settings = Settings.from_env({"IMAGE2SONG_HOME": str(tmp_path)})
    airflow_command(settings, ["db", "migrate"], capture=True)
    ensure_pools(settings)
    airflow_command(settings, ["pools", "set", "accelerator", "3", "an operator's choice"], capture=True)
    ensure_pools(settings)  # leaves the operator's slots alone
    listed = json.loads(airflow_command(settings, ["pools", "get", "accelerator", "--output", "json"],
                                        capture=True).stdout)
    assert listed[0]["pool"] == "accelerator" and int(listed[0]["slots"]) == 3
