"""Training throughput: time per epoch and pairs/s for the paper's model (BiLSTM, with and without tag
attention) and the MiniLM baseline, on a paper-size split and on 1,000,000 pairs, with and without mixed
precision. Prints figures; not a test.

    .venv/bin/python bench/train.py [--device auto] [--batches 20] [--sizes 2930 1000000]

The data are synthetic with the real shapes (what costs time does not depend on the words): lyrics of
``--words`` 10 to 160 tokens, uniform (the research-scale demo snapshot's cleaned lyrics run from 2 to 160
words, median 24; the model cuts at 200) over a 20,000-word vocabulary of 50-d frozen vectors,
1,000 tags, one song per 5 pairs (the paper's protocol), batches of 100. Each configuration runs the
harness's own loss and optimiser step (``modeling.harness.training._loss``, RMSprop, clipping) for
``--batches`` batches after 2 warm-up batches; the epoch time is the pairs of the split divided by the
measured pairs/s (the paper-size split is only 30 batches, so it is also measured whole). Mixed
precision: ``torch.autocast`` with bfloat16 on the CPU, float16 on CUDA. The MiniLM row trains the
projection only (the encoder is frozen and its song embeddings are computed once); the one-off
encoding of the lyrics is timed separately (chunks/s, 48-word chunks).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic(n_pairs: int, *, words=(10, 160), vocab: int = 20000, tags: int = 1000, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    n_songs = max(2, n_pairs // 5)
    probs = rng.dirichlet(np.full(tags, 0.05), size=min(n_pairs, 20000)).astype(np.float32)
    lengths = rng.integers(words[0], words[1] + 1, size=min(n_songs, 50000))
    songs = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
    return probs, songs, n_songs


def measure(module, inputs, probs, n_inputs: int, *, loss: str, batches: int, amp: bool, device) -> float:
    """Pairs per second over ``batches`` training steps (after 2 warm-up steps)."""
    import torch

    from modeling.harness.training import _loss

    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.RMSprop(params, lr=1e-3, alpha=0.9, eps=1e-7)
    gen = torch.Generator().manual_seed(0)
    probs_t = torch.from_numpy(probs).to(device)
    all_rows = torch.arange(n_inputs, device=device)
    train_rows = torch.randint(n_inputs, (len(probs),), generator=gen).to(device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16) if amp else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")

    def step():
        idx = torch.randint(len(probs), (100,), generator=gen).to(device)
        with cast:
            value = _loss(loss, module, inputs, train_rows[idx], probs_t[idx], all_rows=all_rows, train_probs=probs_t,
                          train_rows=train_rows, margin=0.2, negatives=5, temperature=0.05, gen=gen)
        opt.zero_grad(set_to_none=True)
        scaler.scale(value.float()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(batches):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 100 * batches / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, default=20, help="timed batches per configuration (default 20)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2930, 1_000_000], help="pairs per split")
    ap.add_argument("--words", type=int, nargs=2, default=[10, 160], metavar=("MIN", "MAX"), help="lyric length range")
    ap.add_argument("--encode", type=int, default=200, help="lyrics to encode with MiniLM for the one-off cost")
    args = ap.parse_args()

    import numpy as np
    import torch

    from modeling import resolve_device
    from modeling.models.baselines.minilm import MiniLMModule, chunks, load_encoder
    from modeling.models.paper import Image2SongModel, ImageSpace

    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for n_pairs in args.sizes:
        probs, songs, n_songs = synthetic(n_pairs, words=args.words)
        space = ImageSpace.fit(probs)
        emb = np.random.default_rng(1).normal(size=(20000, 50)).astype(np.float32)
        tag_emb = np.random.default_rng(2).normal(size=(1000, 50)).astype(np.float32)
        song_vecs = torch.nn.functional.normalize(torch.randn(len(songs), 384), dim=-1)
        configs = [
            ("paper, BiLSTM", lambda: Image2SongModel(emb, tag_emb, space, hidden=64, mlp_hidden=256), songs, "mse"),
            ("paper, BiLSTM + attention", lambda: Image2SongModel(emb, tag_emb, space, hidden=64, mlp_hidden=256, attention=True), songs, "mse"),
            ("MiniLM projection", lambda: MiniLMModule(1000, space), song_vecs, "infonce"),
        ]
        for name, build, inputs, loss in configs:
            for amp in (False, True):
                torch.manual_seed(0)
                try:
                    rate = measure(build(), inputs, probs, len(inputs), loss=loss, batches=args.batches, amp=amp, device=device)
                except RuntimeError as error:  # an op without a low-precision kernel on this device
                    print(f"{name} amp={amp}: {error}")
                    continue
                rows.append((n_pairs, name, "bf16/fp16" if amp else "fp32", rate, n_pairs / rate))
                print(f"{n_pairs:>9,} pairs | {name:<27} | {rows[-1][2]:<9} | {rate:>9,.0f} pairs/s | epoch {n_pairs / rate:>9,.1f} s",
                      flush=True)
    encoder = load_encoder(str(device))
    texts = [" ".join(f"w{t}" for t in s) for s in synthetic(args.encode * 5, words=args.words)[1][: args.encode]]
    pieces = [c for t in texts for c in chunks(t)]
    t0 = time.perf_counter()
    encoder.encode(pieces, batch_size=64, show_progress_bar=False)
    dt = time.perf_counter() - t0
    print(f"MiniLM one-off encoding: {len(pieces)} chunks of {len(texts)} lyrics in {dt:.1f} s "
          f"({len(pieces) / dt:,.0f} chunks/s, {len(texts) / dt:,.1f} lyrics/s)")
    print("\n| pairs | model | precision | pairs/s | epoch |\n|---:|---|---|---:|---:|")
    for n_pairs, name, prec, rate, epoch in rows:
        print(f"| {n_pairs:,} | {name} | {prec} | {rate:,.0f} | {epoch:,.1f} s |")


if __name__ == "__main__":
    main()
