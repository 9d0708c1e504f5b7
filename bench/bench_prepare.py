"""Benchmark: `prepare` on the full-scale synthetic corpus (4,167 threads) with a BART-large-size tokenizer.

A byte-level BPE trained here with BART-large's vocabulary size (50,265) stands in for
facebook/bart-large's (no hub access). The synthetic corpus has a small vocabulary, so the trained
tokenizer stops at a few thousand tokens (reported as ``tokenizer_vocab``): texts split into somewhat
more tokens than with the real one, so the tokenizing stages here are, if anything, pessimistic.

    python bench/bench_prepare.py [--threads 4167] [--out /tmp/bench_prepare] [--results FILE] [--cprofile FILE]

Reports wall and CPU time per stage, the load average around the run (the dev machine is shared;
CPU seconds are the number that load hardly changes) and peak RSS. The heavy imports (transformers,
datasets, matplotlib) are done and timed before `prepare` starts, so the stages measure the work; a
cold `threadsum prepare` adds ``imports_s``. ``--cprofile FILE`` profiles `prepare` with a CPU-time
clock and prints the CPU seconds of its main steps. Pin to two cores to compare with the goal
(<= 60 s): `taskset -c 0,1 python bench/bench_prepare.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# (label, function name as cProfile records it) for the CPU breakdown, in pipeline order
# (render_thread is the per-thread entry that earlier versions of prepare called)
STEPS = [("read", ("read_source",)), ("clean", ("clean_thread",)),
         ("render (incl. its tokenizer calls)", ("render_threads", "render_thread")),
         ("tokenize: summaries + Arrow datasets", ("_tokenize",)), ("save Arrow", ("save_to_disk",)),
         ("raw-token sample (report)", ("_raw_token_sample",)), ("report (md + plots)", ("write_report",)),
         ("tokenizer encode, all callers (Rust)", ("<method 'encode_batch' of 'tokenizers.Tokenizer' objects>",
                                                   "<method 'encode_batch_fast' of 'tokenizers.Tokenizer' objects>"))]


def _cpu_seconds() -> float:
    """All threads of this process (the tokenizer's Rust threads included) and its finished workers."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _cpu_breakdown(prof_path: str) -> dict[str, float]:
    import pstats

    stats = pstats.Stats(prof_path).stats  # (file, line, name) -> (cc, nc, tottime, cumtime, callers)
    out: dict[str, float] = {}
    for label, names in STEPS:
        # cumulative time over all calls of the function (cProfile counts recursion once)
        out[label] = round(sum(v[3] for k, v in stats.items() if k[2] in names), 2)
    out["total (prepare)"] = round(max(v[3] for k, v in stats.items() if k[2] == "prepare"), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=4167)
    ap.add_argument("--out", default="/tmp/bench_prepare")
    ap.add_argument("--results", default=None, help="append a markdown section here")
    ap.add_argument("--cprofile", default=None, help="profile prepare (CPU-time clock) into this file")
    ap.add_argument("--num-proc", type=int, default=1, help="data.num_proc (worker processes for cleaning)")
    args = ap.parse_args()

    t = time.perf_counter()
    import datasets  # noqa: F401  the imports a cold CLI run pays once
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoTokenizer  # noqa: F401
    t_imports = time.perf_counter() - t

    from threadsum.config import load_config
    from threadsum.data.prepare import prepare
    from threadsum.data.synth import write_kaggle_csv
    from threadsum.model import train_tokenizer

    out = Path(args.out)
    t = time.perf_counter()
    write_kaggle_csv(out / "corpus", args.threads, seed=0)
    t_synth = time.perf_counter() - t
    tok_dir = out / "bart-large-size-tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        import csv

        with (out / "corpus" / "email_thread_details.csv").open(newline="") as fh:
            bodies = [r["body"] for r in csv.DictReader(fh)]
        train_tokenizer(bodies, 50265, tok_dir)  # BART-large's vocabulary size
    cfg = load_config(None, [f"data.source={out / 'corpus'}", f"data.prepared_dir={out / 'prepared'}",
                             "model.init=pretrained", f"model.name_or_path={tok_dir}", f"model.tokenizer={tok_dir}",
                             f"data.num_proc={args.num_proc}"])
    load_before = os.getloadavg()
    cpu = _cpu_seconds()
    t = time.perf_counter()
    if args.cprofile:
        import cProfile

        prof = cProfile.Profile(time.process_time)
        info = prof.runcall(prepare, cfg, force=True)
        prof.dump_stats(args.cprofile)
    else:
        info = prepare(cfg, force=True)
    wall = time.perf_counter() - t
    cpu = _cpu_seconds() - cpu
    load_after = os.getloadavg()
    t = time.perf_counter()
    again = prepare(cfg)
    cached = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    res = {"threads": info["threads"]["kept"], "emails": info["emails"]["kept"], "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "cached_rerun_s": round(cached, 2), "cache_hit": again["cache"]["hit"],
           "peak_rss_mb": round(peak_mb), "cores": cores, "num_proc": cfg.data.num_proc,
           "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after],
           "stages_s": info["timings_s"], "stages_cpu_s": info.get("timings_cpu_s", {}),
           "imports_s": round(t_imports, 1), "synth_s": round(t_synth, 1),
           "tokenizer_vocab": info["tokenizer"]["vocab_size"], "truncation": info["truncation"],
           "machine": f"{platform.processor() or platform.machine()}, {cores} cores"}
    if args.cprofile:
        res["cpu_breakdown_s"] = _cpu_breakdown(args.cprofile)
    print(json.dumps(res, indent=2))
    if args.results:
        lines = [
            f"## prepare on the full-scale synthetic corpus ({res['threads']} threads, {res['emails']} emails)", "",
            f"`python bench/bench_prepare.py --num-proc {res['num_proc']}` on {res['machine']}; tokenizer: "
            f"byte-level BPE trained with vocab_size 50265 (reached {res['tokenizer_vocab']}), max_source_tokens "
            f"{info['truncation']['max_source_tokens']}; load average {res['loadavg_before'][0]} before, "
            f"{res['loadavg_after'][0]} after.", "",
            f"- wall time: **{res['wall_s']} s** (goal <= 60 s on 2 cores), CPU time {res['cpu_s']} s; "
            f"cached re-run {res['cached_rerun_s']} s; imports before the run {res['imports_s']} s",
            f"- peak RSS: {res['peak_rss_mb']} MB",
            "- stages, wall (s): " + ", ".join(f"{k} {v}" for k, v in res["stages_s"].items()),
            "- stages, CPU (s): " + ", ".join(f"{k} {v}" for k, v in res["stages_cpu_s"].items()),
            f"- truncated threads: {info['truncation']['threads_truncated']} "
            f"({info['truncation']['share_truncated']:.0%}), tokens kept {info['truncation']['tokens_kept_share']:.0%}",
        ]
        if "cpu_breakdown_s" in res:
            lines.append("- CPU seconds (cProfile, CPU clock): "
                         + ", ".join(f"{k} {v}" for k, v in res["cpu_breakdown_s"].items()))
        with open(args.results, "a") as fh:
            fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
