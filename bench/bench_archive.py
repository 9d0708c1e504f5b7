"""Threads per second of the archive job: local mode at 1, 2 and all cores, ``--ray local``, and the
engine's own batched throughput on the same threads.

One synthetic archive (``threadsum.data.synth.write_mail_archive``: mbox, .eml files and JSONL) and
one model folder: a random-init BART-base shape (768 wide, 6+6 layers) with the tiny byte-level BPE,
exported with ``threadsum export`` to CTranslate2 int8 (the engine local mode picks for such a
folder), decoding greedily up to 64 new tokens (an untrained model rarely stops early, so summaries run
near the limit; 4 beams and 128 tokens cost ~8x more per thread and shrink the job's share further, but
do not fit a run of all rows on 2 shared cores). Every row runs the real
command line in a fresh process (``threadsum summarize INPUT... --out DIR``) and reads the run's
``summary.json``; the engine row loads the same Summarizer, cleans and renders the same threads
outside the clock and times only ``Engine.generate_texts`` over them, with the job's batch size.

Rows: ``engine N``: the engine alone at N threads; ``local N``: the job at ``--cores N``;
``ray A x C``: ``--ray local`` with A actors of C cores. Ratios: local / engine at equal cores (goal
>= 0.9 on 2 cores) and ray / local on 2 cores (goal >= 0.7), both end to end (the job's wall time,
model loading and Ray start included) and after the first shard (the rate a long job sees).

    python bench/bench_archive.py --threads 24 --out bench/results_archive.md

Never a timed test: run it by hand, alone if possible (the load average is recorded per row).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = {"model.tiny.d_model": 768, "model.tiny.encoder_layers": 6, "model.tiny.decoder_layers": 6,
         "model.tiny.attention_heads": 12, "model.tiny.ffn_dim": 3072, "model.tiny.vocab_size": 8000,
         "model.tiny.max_position_embeddings": 1024, "data.max_source_tokens": 1024, "data.max_target_tokens": 256,
         "eval.generation.num_beams": 1, "eval.generation.max_new_tokens": 64, "eval.generation.min_new_tokens": 10,
         "eval.generation.no_repeat_ngram_size": 3, "eval.generation.batch_size": 16}


def cpu_description() -> str:
    """CPU model, cores and the flags that decide CPU inference speed."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8") if f in flags]
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def build(work: Path, n_threads: int) -> tuple[Path, list[Path]]:
    """The archive and the exported int8 model folder (built once per work folder)."""
    from threadsum.data.synth import write_mail_archive
    from threadsum.inference.export import export_model
    from threadsum.inference.tiny import build_tiny_model_dir

    inputs = write_mail_archive(work / "archive", n_threads, seed=5)
    ct2 = work / "model-int8"
    if not ct2.exists():
        export_model(str(build_tiny_model_dir(work / "model", overrides=SHAPE)), str(ct2), "ctranslate2", "int8")
    return ct2, inputs


ENGINE_SNIPPET = r"""
import json, sys, time
from threadsum.archive.job import resolve_config
from threadsum.archive.sources import read_archive
from threadsum.archive.work import load_summarizer
from pathlib import Path
model, cores, inputs = sys.argv[1], int(sys.argv[2]), [Path(p) for p in sys.argv[3:]]
config = resolve_config(model, [])
summarizer = load_summarizer(model, config, "cpu", cores)
threads = [t for _, r in read_archive(inputs, config["data"]["max_body_chars"]).units for t in r.threads]
texts = [summarizer.prepare(t).text for t in threads]
ids = summarizer.source_tokenizer(texts, truncation=True, max_length=summarizer.max_source_tokens)["input_ids"]
gen = summarizer.cfg.eval.generation
summarizer.engine.generate_texts(ids[:2], gen)  # warm-up, as the job's first shard pays it too
t0 = time.perf_counter()
summarizer.engine.generate_texts(ids, gen)
print(json.dumps({"threads": len(ids), "seconds": time.perf_counter() - t0}))
"""


def engine_row(model: Path, inputs: list[Path], cores: int) -> dict:
    load0 = os.getloadavg()[0]
    out = subprocess.run([sys.executable, "-c", ENGINE_SNIPPET, str(model), str(cores), *map(str, inputs)],
                         env=env(), capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    rate = got["threads"] / got["seconds"]
    return {"row": f"engine {cores}", "cores": cores, "threads": got["threads"], "seconds": got["seconds"],
            "tps": rate, "tps_after_first": rate, "load": (load0, os.getloadavg()[0])}


def job_row(model: Path, inputs: list[Path], work: Path, name: str, extra: list[str]) -> dict:
    out = work / f"job-{name.replace(' ', '-')}"
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "threadsum", "summarize", *map(str, inputs), "-m", str(model),
                    "--out", str(out), "--device", "cpu", "--restart", "--shard-size", "8", *extra],
                   env=env(), capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    run = json.loads((out / "summary.json").read_text())["run"]
    return {"row": name, "threads": run["threads_run"], "seconds": run["seconds"], "process_seconds": wall,
            "tps": run["threads_per_second"], "tps_after_first": run["threads_per_second_after_first_shard"],
            "first_shard_seconds": run["first_shard_seconds"], "load": (load0, os.getloadavg()[0])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=24, help="Threads in the archive (a third per format).")
    ap.add_argument("--work", type=Path, default=None, help="Folder for the archive, model and jobs (default: a temp dir).")
    ap.add_argument("--no-ray", action="store_true", help="Skip the --ray local rows.")
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to append the results to.")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-archive-"))
    work.mkdir(parents=True, exist_ok=True)
    model, inputs = build(work, args.threads)
    all_cores = len(os.sched_getaffinity(0))
    core_counts = sorted({1, 2, all_cores} & set(range(1, all_cores + 1)))
    rows = []
    for c in core_counts:
        rows.append(engine_row(model, inputs, c))
        print(rows[-1], flush=True)
        rows.append(job_row(model, inputs, work, f"local {c}", ["--cores", str(c)]))
        print(rows[-1], flush=True)
    if not args.no_ray:
        shapes = {(1, min(2, all_cores)), (min(2, all_cores), 1)}
        for actors, cores in sorted(shapes):
            rows.append(job_row(model, inputs, work, f"ray {actors} x {cores}",
                                ["--ray", "local", "--actors", str(actors), "--cores", str(cores)]))
            print(rows[-1], flush=True)
    by = {r["row"]: r for r in rows}
    lines = [f"## Archive job, {time.strftime('%Y-%m-%d %H:%M')}", "",
             f"CPU: {cpu_description()}; Python {platform.python_version()}; archive: {args.threads} synthetic "
             f"threads (mbox, .eml, JSONL); model: BART-base shape, random init, CTranslate2 int8, greedy, "
             f"<= 64 new tokens, batch 16; shards of 8.", "",
             "| row | threads | seconds | threads/s end to end | threads/s after the first shard | first shard (s) | load avg before -> after |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        first = f"{r['first_shard_seconds']:.1f}" if r.get("first_shard_seconds") else "-"
        after = f"{r['tps_after_first']:.3f}" if r.get("tps_after_first") else "-"
        lines.append(f"| {r['row']} | {r['threads']} | {r['seconds']:.1f} | {r['tps']:.3f} | {after} | {first} | "
                     f"{r['load'][0]:.2f} -> {r['load'][1]:.2f} |")
    lines.append("")
    for c in core_counts:
        e, j = by[f"engine {c}"], by[f"local {c}"]
        lines.append(f"- local / engine at {c} core(s): {j['tps'] / e['tps']:.2f}x end to end, "
                     f"{(j['tps_after_first'] or 0) / e['tps']:.2f}x after the first shard (goal >= 0.9 at 2 cores)")
    two = by.get(f"local {min(2, all_cores)}")
    for name in (n for n in by if n.startswith("ray")):
        r = by[name]
        lines.append(f"- {name} / local {min(2, all_cores)}: {r['tps'] / two['tps']:.2f}x end to end, "
                     f"{(r['tps_after_first'] or 0) / (two['tps_after_first'] or two['tps']):.2f}x after the first "
                     f"shard (goal >= 0.7)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with args.out.open("a") as fh:
            fh.write("\n" + text)


if __name__ == "__main__":
    main()
