"""bench/crawl: this crawler's image stage against img2dataset, on the same URL list, in one run.

    .venv/bin/python bench/crawl.py [--images 20000] [--heavy 8] [--processes N] [--threads 8]

1. Makes (once; cached in bench/.data-crawl/) ``--images`` distinct JPEGs of 20–100 KB: random crops,
   flips, colour shifts and sizes of scikit-image's bundled photos, and ``--heavy`` decompression-heavy
   PNGs (about 150 KB each that decode to 6000×6600 RGBA, just under the 40-megapixel guard).
2. Serves them with Debian's nginx on loopback (a config written to a temp folder; robots.txt allows
   /images/ and disallows /private/).
3. Runs, each as its own subprocess, in two configurations:
   - as-is: img2dataset ``--resize_mode no --skip_reencode True`` (it still decodes every image) vs our
     ``stages.fetch_images`` storing the bytes as they are;
   - resized to 256: img2dataset's default resize (``--image_size 256``, border, JPEG quality 95) vs ours
     with ``resize=256, quality=95`` (longest side 256, aspect kept).
   Ours runs with robots.txt obeyed, the egress policy checking every URL (loopback allowed by setting),
   the shared per-host pace booked in the catalog (loopback is exempt from the default delay, so no
   booking is made unless a host slows us down), full validation (magic bytes, bomb guard, a full decode
   within the pixel budget), sha256 content addressing into the object store, pHash near-duplicate
   linking, and the catalog written in batches; 256 connections per host.
   Our input is a catalog that already lists the image URLs (as after the post crawl); img2dataset's
   input is the same URLs in a text file. Both timings are the whole subprocess (start-up included).
4. Prints images/s and peak memory (sum of RSS over the process tree, sampled every 0.1 s) and ratios,
   with the machine's load average before and after (the machine may be shared: read ratios, measured
   side by side in one run, rather than absolute figures).

img2dataset (1.47, from PyPI) lives in its own throwaway venv, bench/.venv-img2dataset (created on first
use), so that its pins never touch the project's environment.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = HERE / ".data-crawl"
I2D_VENV = HERE / ".venv-img2dataset"
CONTACT = "bench@example.invalid"


# --- data --------------------------------------------------------------------------------------

def _make_batch(args):
    seed, paths = args
    import numpy as np
    from PIL import Image, ImageEnhance
    from skimage import data as samples

    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
             "colorwheel", "retina", "logo", "camera", "moon", "page", "text", "coins", "grass", "gravel", "brick"]
    photos = []
    for name in names:
        try:
            array = getattr(samples, name)()
        except Exception:  # a sample that needs a download: skip it
            continue
        image = Image.fromarray(np.asarray(array)).convert("RGB")
        photos.append(image)
    rng = random.Random(seed)
    for path in paths:
        for _ in range(20):
            base = rng.choice(photos)
            w, h = base.size
            cw, ch = int(w * rng.uniform(0.35, 1.0)), int(h * rng.uniform(0.35, 1.0))
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = base.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            image = ImageEnhance.Color(image).enhance(rng.uniform(0.3, 1.7))
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
            side = rng.randint(320, 760)
            scale = side / max(image.size)
            image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=rng.randint(70, 95))
            if 20_000 <= buffer.tell() <= 100_000:
                path.write_bytes(buffer.getvalue())
                break
        else:
            path.write_bytes(buffer.getvalue())


def make_images(count: int) -> list[str]:
    folder = DATA / "images"
    paths = [folder / f"{i // 1000:03d}" / f"{i:06d}.jpg" for i in range(count)]
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"making {len(missing)} JPEGs in {DATA.relative_to(ROOT)} (once)…", flush=True)
        for p in {p.parent for p in missing}:
            p.mkdir(parents=True, exist_ok=True)
        batches = [(i, missing[i:i + 200]) for i in range(0, len(missing), 200)]
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_make_batch, batches))
    (DATA / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    return [str(p.relative_to(DATA)) for p in paths]


def make_heavy_pngs(count: int) -> list[str]:
    """Decompression-heavy PNGs: ~150 KB files of 6000×6600 RGBA (39.6 Mpx, under the 40 Mpx guard),
    each a different flat colour with a few lines (distinct bytes and hashes)."""
    from PIL import Image, ImageDraw

    folder = DATA / "heavy"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        path = folder / f"heavy-{i:03d}.png"
        if not path.exists():
            image = Image.new("RGBA", (6000, 6600), (i * 37 % 256, i * 91 % 256, i * 13 % 256, 255))
            draw = ImageDraw.Draw(image)
            for k in range(8):
                draw.line((0, 800 * k + i * 7, 6000, 6600 - 800 * k), fill=(255 - i, k * 30, 128, 255), width=40)
            image.save(path, "PNG")
        names.append(str(path.relative_to(DATA)))
    return names


# --- nginx -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        sys.exit("nginx is missing: apt-get install -y nginx-light")
    port = free_port()
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir(parents=True, exist_ok=True)
    user = "user root;" if os.geteuid() == 0 else ""
    (work / "nginx.conf").write_text(f"""{user}
worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120;
    types {{ image/jpeg jpg; image/png png; text/plain txt; }}
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
    }}
}}
""")
    process = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, base
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"nginx did not start: {process.stderr.read().decode()[:500]}")


# --- measuring ---------------------------------------------------------------------------------

def run_measured(command: list[str], env: dict | None = None, log: Path | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS of the whole process tree in bytes, return code)."""
    import psutil

    handle = open(log, "wb") if log else subprocess.DEVNULL
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    parent, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        total = 0
        try:
            for proc in [parent] + parent.children(recursive=True):
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(0.1)
    wall = time.perf_counter() - start
    if log:
        handle.close()
    return wall, peak, process.returncode


def ensure_img2dataset() -> Path:
    binary = I2D_VENV / "bin" / "img2dataset"
    if not binary.exists():
        print("creating bench/.venv-img2dataset with img2dataset 1.47 (once)…", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(I2D_VENV)], check=True)
        subprocess.run([str(I2D_VENV / "bin" / "pip"), "install", "-q", "img2dataset==1.47.0"], check=True)
    return binary


def run_img2dataset(binary: Path, url_file: Path, out: Path, resize: bool, processes: int, threads: int,
                    log: Path) -> dict:
    command = [str(binary), "--url_list", str(url_file), "--input_format", "txt", "--output_folder", str(out),
               "--output_format", "files", "--processes_count", str(processes), "--thread_count", str(threads),
               "--timeout", "10", "--retries", "0", "--enable_wandb", "False", "--number_sample_per_shard", "2500"]
    command += ["--image_size", "256"] if resize else ["--resize_mode", "no", "--skip_reencode", "True"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    wall, peak, code = run_measured(command, env, log)
    stored = sum(1 for path in out.rglob("*") if path.suffix in (".jpg", ".png", ".webp"))
    return {"wall_s": wall, "peak_rss": peak, "stored": stored, "rc": code}


def prepare_catalog(urls: list[str], path: Path) -> None:
    from sqlalchemy import insert

    from curation.catalog import Image, session_scope, upgrade

    url = f"sqlite:///{path}"
    upgrade(url)
    with session_scope(url) as session:
        for start in range(0, len(urls), 2000):
            session.execute(insert(Image), [{"url": u, "status": "pending", "attempts": 0}
                                            for u in urls[start:start + 2000]])
    from curation.catalog import engine_for

    engine_for(url).dispose()  # checkpoints the WAL: the file alone holds the catalog


def run_ours(template: Path, work: Path, resize: bool, processes: int, threads: int, log: Path) -> dict:
    work.mkdir(parents=True)
    catalog = work / "catalog.sqlite"
    shutil.copy(template, catalog)
    env = {**os.environ, "IMAGE2SONG_HOME": str(work), "IMAGE2SONG_DB_URL": f"sqlite:///{catalog}",
           "IMAGE2SONG_OBJECT_STORE": str(work / "objects"), "IMAGE2SONG_CONTACT": CONTACT,
           "IMAGE2SONG_ALLOW_NETWORKS": "127.0.0.0/8",
           "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--ours", "--resize", str(256 if resize else 0),
               "--processes", str(processes), "--threads", str(threads)]
    wall, peak, code = run_measured(command, env, log)
    counts = {}
    if code == 0:
        counts = json.loads(log.read_text().strip().splitlines()[-1])
    stored = sum(1 for path in (work / "objects").rglob("*") if path.is_file())
    return {"wall_s": wall, "peak_rss": peak, "stored": stored, "rc": code, "counts": counts}


def ours_child(args) -> None:
    """In the measured subprocess: the real image stage as a refresh runs it (egress policy, shared
    pacing through the catalog, pixel budget), with 256 connections per host."""
    import logging

    from image2song import stages
    from image2song.settings import Settings

    logging.basicConfig(level=logging.WARNING)
    counts = stages.fetch_images(Settings.from_env(), workers=args.threads, processes=args.processes or None,
                                 resize=args.resize or None, quality=95, per_host=256)
    from curation.catalog import Image, session_scope
    from sqlalchemy import func, select

    with session_scope(Settings.from_env().db_url) as session:
        counts.update({f"catalog:{s}": n for s, n in session.execute(
            select(Image.status, func.count()).group_by(Image.status))})
        counts["catalog:duplicates_linked"] = session.scalar(
            select(func.count()).select_from(Image).where(Image.duplicate_of.is_not(None)))
    print(json.dumps(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--heavy", type=int, default=8, help="decompression-heavy PNGs added to the set")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="both tools (default: cores)")
    parser.add_argument("--threads", type=int, default=8, help="our downloads in flight per process (loopback needs few)")
    parser.add_argument("--i2d-threads", type=int, default=64, help="img2dataset --thread_count")
    parser.add_argument("--only", choices=["as-is", "resized"], help="run one configuration")
    parser.add_argument("--ours", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--resize", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours:
        return ours_child(args)

    sys.path.insert(0, str(ROOT))
    binary = ensure_img2dataset()
    names = make_images(args.images) + make_heavy_pngs(args.heavy)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-crawl-"))
    nginx, base = start_nginx(DATA, work / "nginx")
    try:
        urls = [f"{base}/{name}" for name in names]
        (work / "urls.txt").write_text("\n".join(urls) + "\n")
        template = work / "template.sqlite"
        prepare_catalog(urls, template)
        sizes = [os.path.getsize(DATA / n) for n in names if n.endswith(".jpg")]
        print(f"{len(sizes)} JPEGs, {min(sizes) // 1000}–{max(sizes) // 1000} KB (mean {sum(sizes) / len(sizes) / 1000:.0f} KB), "
              f"{args.heavy} decompression-heavy PNGs (6000×6600, ~150 KB each), "
              f"nginx on {base}; {os.cpu_count()} cores; processes {args.processes}, our threads {args.threads}/process, "
              f"img2dataset threads {args.i2d_threads}", flush=True)
        rows = []
        for config in ("as-is", "resized"):
            if args.only and args.only != config:
                continue
            resize = config == "resized"
            theirs = run_img2dataset(binary, work / "urls.txt", work / f"i2d-{config}", resize, args.processes,
                                     args.i2d_threads, work / f"i2d-{config}.log")
            ours = run_ours(template, work / f"ours-{config}", resize, args.processes, args.threads,
                            work / f"ours-{config}.log")
            for name, result in (("img2dataset", theirs), ("image2song", ours)):
                if result["rc"] != 0:
                    log = work / (f"i2d-{config}.log" if name == "img2dataset" else f"ours-{config}.log")
                    print(f"{name} {config} failed (rc {result['rc']}):\n{log.read_text()[-3000:]}")
            rate_t, rate_o = theirs["stored"] / theirs["wall_s"], ours["counts"].get("stored", 0) / ours["wall_s"]
            rows.append((config, theirs, ours, rate_t, rate_o))
            print(f"\n[{config}]\n  img2dataset  {theirs['stored']:>6} stored in {theirs['wall_s']:6.1f} s = "
                  f"{rate_t:7.0f} images/s, peak memory {theirs['peak_rss'] / 2**20:6.0f} MiB\n"
                  f"  image2song   {ours['counts'].get('stored', 0):>6} stored in {ours['wall_s']:6.1f} s = "
                  f"{rate_o:7.0f} images/s, peak memory {ours['peak_rss'] / 2**20:6.0f} MiB  "
                  f"(objects written {ours['stored']}; {json.dumps(ours['counts'])})\n"
                  f"  ratio        {rate_o / rate_t:.2f}x images/s, {ours['peak_rss'] / max(1, theirs['peak_rss']):.2f}x memory",
                  flush=True)
        print(f"\nload average (1, 5, 15 min): before {' '.join(f'{x:.1f}' for x in load_before)}, "
              f"after {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
        print("images/s counts every URL handled (ours: stored or linked; img2dataset: files written), "
              "whole subprocess wall time; memory: peak RSS summed over each process tree.")
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
