"""Peak memory of one training step at BART-large shape on CPU: full fp32 logits vs the chunked loss.

    python bench/bench_loss_memory.py [--chunk 1024] [--out bench/results_loss_memory.md]

One optimizer-free step (forward + backward of ``threadsum.train.loss.seq2seq_loss_sum``) of a
random-init BART-large (vocabulary 50,265), batch 2 x (1,024 source + 256 target) tokens, fp32,
label smoothing 0.1. Each mode runs in its own process so its peak RSS (``ru_maxrss``) is its own;
the model's weights and gradients are in both, only the loss path differs. Goal (issue 18): the
chunked path's peak <= 0.9x the full-logits path's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(chunk: int) -> dict:
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from threadsum.train.loss import seq2seq_loss_sum

    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(vocab_size=50265, dropout=0.1)).train()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, 50265, (2, 1024), generator=g)
    dec = torch.randint(4, 50265, (2, 256), generator=g)
    labels = torch.randint(4, 50265, (2, 256), generator=g)
    t = time.perf_counter()
    loss = seq2seq_loss_sum(model, src, torch.ones_like(src), dec, labels, 0.1, chunk)
    (loss / labels.numel()).backward()
    return {"chunk_tokens": chunk, "loss_sum": float(loss), "seconds": round(time.perf_counter() - t, 1),
            "rss_after_init_gb": round(base_rss, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunk", type=int, default=1024, help="train.loss_chunk_tokens of the chunked run")
    ap.add_argument("--out", default=str(REPO / "bench" / "results_loss_memory.md"))
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child)), flush=True)
        return 0
    from threadsum.devices import hardware_description

    rows = []
    for chunk in (0, args.chunk):
        proc = subprocess.run([sys.executable, __file__, "--child", str(chunk)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(line[-1][7:]))
        print(rows[-1], flush=True)
    full, chunked = rows
    ratio = chunked["peak_rss_gb"] / full["peak_rss_gb"]
    lines = [
        "## Peak memory of one step, BART-large shape, CPU: full fp32 logits vs chunked loss", "",
        f"Command: `python bench/bench_loss_memory.py --chunk {args.chunk}`", "",
        f"Machine: {hardware_description()}; load average at the end {os.getloadavg()[0]:.1f}.",
        "Random-init BART-large (406M parameters, vocabulary 50,265), fp32, batch 2 x (1,024 + 256) tokens, "
        "label smoothing 0.1, forward + backward, each mode in its own process.", "",
        "| loss path | peak RSS GB | RSS after model init GB | step seconds | loss sum |",
        "|---|---:|---:|---:|---:|",
        *(f"| {'full fp32 logits' if r['chunk_tokens'] == 0 else 'chunked, %d tokens' % r['chunk_tokens']} | "
          f"{r['peak_rss_gb']:.2f} | {r['rss_after_init_gb']:.2f} | {r['seconds']} | {r['loss_sum']:.2f} |" for r in rows),
        "", f"Peak ratio chunked / full: **{ratio:.2f}x** (goal <= 0.90x: {'met' if ratio <= 0.9 else 'missed'}).", "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
