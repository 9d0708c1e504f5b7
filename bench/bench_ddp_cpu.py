"""2-process DDP (gloo) against 1 process at the same global batch, on this CPU.

    python bench/bench_ddp_cpu.py [--steps 30] [--out bench/results_ddp.md]

Same config, same data, same global step (2 x 1024-token micro-batches): one process accumulates
both (with 1 thread and with 2 threads), two ranks take one each (1 thread each) and all-reduce.
Throughput is real (non-padding) tokens per second of training time from the run record; wall time
includes process start, model build and the model export. The machine load is recorded with the
numbers because the cores are shared.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))


def _run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results_ddp.md"))
    args = ap.parse_args()
    from train_fixture import make_prepared, tiny_config

    tmp = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    prepared = make_prepared(tmp / "prepared", n_train=96)
    rows = []
    load_before = os.getloadavg()
    for label, nproc, threads in [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
                                  ("2 processes DDP (gloo), 1 thread each", 2, 1)]:
        out = tmp / f"run-{nproc}-{threads}"
        cfg = tiny_config(prepared, out, max_steps=args.steps, checkpoint_every_steps=0, log_every_steps=10,
                          strategy="ddp" if nproc > 1 else "auto")
        path = cfg.save(tmp, filename=f"{out.name}.yaml")
        if nproc == 1:
            wall = _run([sys.executable, "-m", "threadsum.train.loop", str(path)], threads)
        else:
            wall = _run([sys.executable, "-m", "threadsum.train.launch", str(nproc), str(path)], threads)
        summary = json.loads((out / "run.json").read_text())["summary"]
        rows.append((label, summary["real_tokens_per_s"], summary["train_seconds"], wall, summary["final_loss"]))
        print(rows[-1], flush=True)
    load_after = os.getloadavg()
    base = rows[0][1]
    lines = [
        "# DDP overhead on CPU: 2 processes vs 1 at the same global batch",
        "",
        f"`python bench/bench_ddp_cpu.py --steps {args.steps}`; tiny BART (d_model 64, 2+2 layers, fixture data, "
        "2 x 1024-token micro-batches per optimizer step, fp32), {} CPU cores, torch {}.".format(
            os.cpu_count(), __import__("torch").__version__),
        f"Machine load (1-min average) before/after: {load_before[0]:.1f} / {load_after[0]:.1f} "
        "(the cores are shared with other jobs: read ratios, not absolute numbers).",
        "",
        "| setup | real tokens/s (training) | vs 1 process 1 thread | training s | wall s (incl. start/export) | final loss |",
        "|---|---|---|---|---|---|",
    ]
    for label, tps, secs, wall, loss in rows:
        lines.append(f"| {label} | {tps:,.0f} | {tps / base:.2f}x | {secs:.1f} | {wall:.1f} | {loss:.5f} |")
    lines += ["", "The global batch and its micro-batches are identical on every row; the final losses differ in the "
              "4th digit only because this config keeps dropout 0.1 and each rank draws its own masks "
              "(tests/integration/test_distributed_equivalence.py pins the dropout-free trajectories to 1e-5).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
