"""Summaries per second: Hugging Face ``generate`` (torch fp32) against the CTranslate2 engine (float32, int8).

BART-base and BART-large shapes, random init with BART's real 50,265-token vocabulary, exported with
``threadsum export`` (the code users run). Every summary is forced to the same length
(min = max new tokens) so every engine does the same work; sources are email-like lengths (median
about 600 tokens, seeded). For each shape and engine, in a fresh process (so peak RSS is its own):

- batched throughput: all threads in one call, ``batch_size`` = number of threads (threads/s);
- batch-1 latency: the first ``--latency-threads`` threads one at a time (seconds per thread);

at beams 4 and greedy. Both engines get the same number of CPU threads (``--cpu-threads``).

    python bench/bench_inference.py --out bench/results_inference.md

``--family causal`` measures a decoder-only model instead: a random-init Llama (hidden 768, 8 layers,
12 heads / 4 key-value heads, MLP 2048, vocabulary 32,000, tied embeddings), prompts of about 600
tokens, ``--new-tokens`` forced (min = max new tokens), batch-1 latency only, at greedy and beams 2:
torch fp32, torch bf16 (only where the CPU has native bf16: ``avx512_bf16`` or ``amx_bf16``; else the
row is skipped and said so) and CTranslate2 int8 (a ``Generator``).

    python bench/bench_inference.py --family causal --new-tokens 64 --out bench/results_inference_causal.md

``--ct2-tuning`` adds the CTranslate2 engine settings (inter/intra threads, ``batch_type`` examples or
tokens, ``max_batch_size``) on the BART-base int8 export, each in its own process, with the share of
summaries equal to the one-call setting's. Every table has a "same output as torch fp32" column (token
for token, batched): ``dtype=auto`` is meant to pick the fastest option whose output equals fp32's.
torch bf16 is timed only where the CPU has native bf16 (``--bf16-emulated`` forces it).

    python bench/bench_inference.py --shapes base --ct2-tuning --out bench/results_inference.md

Never a timed test: run it by hand, alone if possible (the load average is recorded).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, attention_heads=12, ffn_dim=3072),
    "large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, attention_heads=16, ffn_dim=4096),
}
VOCAB = 50265
ENGINES = ("torch-fp32", "torch-bf16", "ct2-float32", "ct2-int8")
CAUSAL_SHAPE = dict(hidden=768, layers=8, heads=12, kv_heads=4, ffn=2048, vocab=32000, positions=2048)
CAUSAL_ENGINES = ("torch-fp32", "torch-bf16", "ct2-int8")


def source_lengths(n: int, seed: int = 0) -> list[int]:
    """Email-like source lengths: log-normal around 600 tokens, cut to [80, 1024]."""
    rng = random.Random(seed)
    return [max(80, min(1024, int(rng.lognormvariate(6.4, 0.45)))) for _ in range(n)]


def sources(n: int, seed: int = 0, vocab: int = VOCAB, bos: int | None = 0, eos: int | None = 2) -> list[list[int]]:
    """Random token ids of :func:`source_lengths` lengths, framed by ``bos``/``eos`` where given."""
    rng = random.Random(seed + 1)
    head, tail = [bos] if bos is not None else [], [eos] if eos is not None else []
    return [head + [rng.randrange(5, vocab) for _ in range(k - len(head) - len(tail))] + tail
            for k in source_lengths(n, seed)]


def build_model(shape: str, root: Path) -> Path:
    """A random-init BART of ``shape`` with a 50,265-entry word-level tokenizer, saved for from_pretrained."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    from threadsum.config import Config

    out = root / f"bart-{shape}"
    if (out / "config.json").is_file():
        return out
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), VOCAB - 1)})
    vocab["<mask>"] = VOCAB - 1
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                  bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                  mask_token="<mask>")
    s = SHAPES[shape]
    cfg = BartConfig(vocab_size=VOCAB, d_model=s["d_model"], encoder_layers=s["encoder_layers"],
                     decoder_layers=s["decoder_layers"], encoder_attention_heads=s["attention_heads"],
                     decoder_attention_heads=s["attention_heads"], encoder_ffn_dim=s["ffn_dim"],
                     decoder_ffn_dim=s["ffn_dim"], max_position_embeddings=1024, pad_token_id=1, bos_token_id=0,
                     eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    Config().save(out)
    return out


def cpu_flags() -> set[str]:
    """The CPU's feature flags (threadsum.devices reads /proc/cpuinfo once)."""
    from threadsum.devices import cpu_flags as flags

    return set(flags())


def native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere torch emulates it."""
    from threadsum.devices import cpu_has_native_bf16

    return cpu_has_native_bf16()


def build_causal_model(root: Path) -> Path:
    """A random-init Llama of :data:`CAUSAL_SHAPE` with a word-level 32k tokenizer, saved for from_pretrained."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from threadsum.config import config_from_dict

    out = root / "llama-bench"
    if (out / "config.json").is_file():
        return out
    s = CAUSAL_SHAPE
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), s["vocab"])})
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<|endoftext|>")),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      max_position_embeddings=s["positions"], tie_word_embeddings=True, pad_token_id=0,
                      eos_token_id=2, bos_token_id=None)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = [2, 0]
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    config_from_dict({"model": {"family": "causal"}}, origin="bench").save(out)
    return out


def causal_child(args: argparse.Namespace) -> None:
    """Batch-1 latency of one engine on the causal model: prints a JSON line."""
    import torch

    from threadsum.config import GenerationConfig
    from threadsum.inference.engine import load_engine

    torch.set_num_threads(args.cpu_threads)
    kind = "ctranslate2" if args.engine.startswith("ct2") else "torch"
    dtype = {"torch-fp32": "fp32", "torch-bf16": "bf16"}.get(args.engine)
    engine = load_engine(args.model, kind, "cpu", dtype, threads=args.cpu_threads)
    seqs = sources(args.latency_threads, vocab=CAUSAL_SHAPE["vocab"], bos=None, eos=None)
    out = {"engine": args.engine, "shape": "llama", "describe": engine.describe(), "loadavg_start": os.getloadavg()}
    for beams in (1, 2):
        gen = GenerationConfig(num_beams=beams, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                               no_repeat_ngram_size=0, batch_size=1)
        engine.generate_texts(seqs[:1], gen, batch_size=1)  # warm-up
        lat, tokens = [], 0
        c0 = time.process_time()
        for s in seqs:
            t0 = time.perf_counter()
            tokens += sum(sum(b.n_tokens) for b in engine.generate_batches([s], gen, batch_size=1))
            lat.append(time.perf_counter() - t0)
        out[f"beams{beams}"] = {"latency_s": lat, "latency_mean_s": sum(lat) / len(lat),
                                "latency_median_s": sorted(lat)[len(lat) // 2], "generated_tokens": tokens,
                                "latency_cpu_s_per_thread": (time.process_time() - c0) / len(lat)}
    out["peak_rss_gb"] = peak_rss_gb()
    out["loadavg_end"] = os.getloadavg()
    print("RESULT " + json.dumps(out), flush=True)


def causal_main(args: argparse.Namespace) -> None:
    """Build and export the causal model, time each engine in its own process, write the results."""
    from threadsum.inference.export import export_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    model = build_causal_model(work)
    ct2 = work / "llama-bench-ct2-int8"
    if not (ct2 / "model.bin").is_file():
        export_model(str(model), str(ct2), "ctranslate2", "int8", force=True)
    engines = [e for e in CAUSAL_ENGINES if e != "torch-bf16" or native_bf16()]
    results = []
    for engine in engines:
        cmd = [sys.executable, __file__, "--child", "--family", "causal", "--engine", engine, "--model",
               str(ct2 if engine.startswith("ct2") else model), "--latency-threads", str(args.latency_n),
               "--new-tokens", str(args.new_tokens), "--cpu-threads", str(args.cpu_threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(line[len("RESULT "):])
        results.append(res)
        print(f"llama {engine}: greedy {res['beams1']['latency_mean_s']:.2f} s, beams2 "
              f"{res['beams2']['latency_mean_s']:.2f} s, rss {res['peak_rss_gb']:.2f} GB", flush=True)
    write_causal(results, args, (load0, os.getloadavg()), time.perf_counter() - t0)


def write_causal(results: list[dict], args: argparse.Namespace, load: tuple, seconds: float) -> None:
    """The causal results as markdown at ``args.out``."""
    by = {r["engine"]: r for r in results}
    flags = cpu_flags()
    shown = " ".join(sorted(f for f in flags if "bf16" in f or "vnni" in f or f.startswith("amx"))) or "none"
    lens = source_lengths(args.latency_n)
    s = CAUSAL_SHAPE
    lines = ["# Inference, decoder-only model: torch generate vs the CTranslate2 Generator (CPU, batch 1)", "",
             f"Command: `python bench/bench_inference.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; bf16/VNNI/AMX flags: {shown}; {args.cpu_threads} CPU threads per engine. "
             f"Versions: {versions()}.", "",
             f"Load average (1/5/15 min) before: {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f}; after: "
             f"{load[1][0]:.2f} {load[1][1]:.2f} {load[1][2]:.2f}. Wall time {seconds / 60:.1f} min.", "",
             f"Model: random-init Llama, hidden {s['hidden']}, {s['layers']} layers, {s['heads']} heads / "
             f"{s['kv_heads']} key-value heads, MLP {s['ffn']}, vocabulary {s['vocab']}, tied embeddings "
             f"({s['vocab'] * s['hidden'] / 1e6:.0f}M of the parameters in the embedding). Work: {args.latency_n} "
             f"prompts one at a time (lengths median {sorted(lens)[len(lens) // 2]}, min {min(lens)}, max {max(lens)} "
             f"tokens), every summary forced to {args.new_tokens} new tokens (min_new_tokens = max_new_tokens), "
             f"so both engines do the same work.", "",
             "| engine | beams | batch-1 latency mean s | median s | speed-up vs torch fp32 | CPU s per thread | peak RSS GB |",
             "|---|---|---|---|---|---|---|"]
    ref = by.get("torch-fp32")
    for beams in (1, 2):
        for engine in CAUSAL_ENGINES:
            r = by.get(engine)
            if r is None:
                continue
            b = r[f"beams{beams}"]
            sp = ref[f"beams{beams}"]["latency_mean_s"] / b["latency_mean_s"] if ref else float("nan")
            lines.append(f"| {engine} | {beams} | {b['latency_mean_s']:.2f} | {b['latency_median_s']:.2f} | {sp:.2f}x | "
                         f"{b['latency_cpu_s_per_thread']:.2f} | {r['peak_rss_gb']:.2f} |")
    if "torch-bf16" not in by:
        lines += ["", "torch bf16: not measured; this CPU has no native bf16 (no avx512_bf16 / amx_bf16), where "
                  "torch emulates bf16 and runs slower than fp32, so the bf16 goal does not apply here."]
    fast = by.get("ct2-int8")
    if fast and ref:
        g = ref["beams1"]["latency_mean_s"] / fast["beams1"]["latency_mean_s"]
        b2 = ref["beams2"]["latency_mean_s"] / fast["beams2"]["latency_mean_s"]
        lines += ["", f"CT2 int8 vs torch fp32, batch-1 latency: greedy {g:.2f}x, beams 2 {b2:.2f}x. Goal >= 3x: "
                  f"greedy {'met' if g >= 3 else 'NOT met'}, beams 2 {'met' if b2 >= 3 else 'NOT met'}."]
    lines += ["", "Raw results:", "", "```json", json.dumps(results, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))


def child(args: argparse.Namespace) -> None:
    """One engine on one model folder: prints a JSON line with the timings and this process's peak RSS."""
    import torch

    from threadsum.config import GenerationConfig
    from threadsum.inference.engine import load_engine

    torch.set_num_threads(args.cpu_threads)
    dtype = {"torch-fp32": "fp32", "torch-bf16": "bf16"}.get(args.engine)
    engine = load_engine(args.model, "ctranslate2" if args.engine.startswith("ct2") else "torch", "cpu", dtype,
                         threads=args.cpu_threads)
    seqs = sources(args.threads)
    out = {"engine": args.engine, "shape": args.shape, "describe": engine.describe(),
           "loadavg_start": os.getloadavg()}
    for beams in (4, 1):
        gen = GenerationConfig(num_beams=beams, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                               no_repeat_ngram_size=0, batch_size=len(seqs))
        engine.generate_texts(seqs[:1], gen, batch_size=1)  # warm-up (lazy initialisation, allocator)
        t0, c0 = time.perf_counter(), time.process_time()
        texts = [""] * len(seqs)
        tokens = 0
        for b in engine.generate_batches(seqs, gen):
            tokens += sum(b.n_tokens)
            for i, t in zip(b.indices, b.texts):
                texts[i] = t
        batched, batched_cpu = time.perf_counter() - t0, time.process_time() - c0
        lat = []
        c0 = time.process_time()
        for s in seqs[: args.latency_threads]:
            t0 = time.perf_counter()
            engine.generate_texts([s], gen, batch_size=1)
            lat.append(time.perf_counter() - t0)
        lat_cpu = (time.process_time() - c0) / max(1, len(lat))
        out[f"beams{beams}"] = {"batched_s": batched, "threads_per_s": len(seqs) / batched,
                                "generated_tokens": tokens, "latency_s": lat, "batched_cpu_s": batched_cpu,
                                "latency_cpu_s_per_thread": lat_cpu,
                                "latency_mean_s": sum(lat) / len(lat), "texts": texts}
    out["peak_rss_gb"] = peak_rss_gb()
    out["loadavg_end"] = os.getloadavg()
    print("RESULT " + json.dumps(out), flush=True)


def peak_rss_gb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(engine: str, shape: str, model: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--shape", shape, "--model", str(model),
           "--threads", str(args.threads), "--latency-threads", str(args.latency[shape]),
           "--new-tokens", str(args.new_tokens), "--cpu-threads", str(args.cpu_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{engine} {shape} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(line[len("RESULT "):])
    print(f"{shape} {engine}: beams4 {res['beams4']['threads_per_s']:.3f} thr/s, lat {res['beams4']['latency_mean_s']:.2f} s; "
          f"greedy {res['beams1']['threads_per_s']:.3f} thr/s, lat {res['beams1']['latency_mean_s']:.2f} s; "
          f"rss {res['peak_rss_gb']:.2f} GB", flush=True)
    return res


def versions() -> str:
    import ctranslate2
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, ctranslate2 {ctranslate2.__version__}"


def machine() -> str:
    model = "unknown CPU"
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{os.cpu_count()} vCPU {model} ({isa}), {platform.system()} {platform.release()}"


def _load(r: dict) -> str:
    if "loadavg_start" not in r:
        return "n/a"
    return f"{r['loadavg_start'][0]:.1f}-{r['loadavg_end'][0]:.1f}"


def write(results: list[dict], args: argparse.Namespace, load: tuple, seconds: float) -> None:
    by = {(r["shape"], r["engine"]): r for r in results}
    lines = ["# Inference: torch generate vs the CTranslate2 engine (CPU)", "",
             f"Command: `python bench/bench_inference.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}; {args.cpu_threads} CPU threads per engine. Versions: {versions()}.", "",
             f"Load average (1/5/15 min) before: {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f}; after: "
             f"{load[1][0]:.2f} {load[1][1]:.2f} {load[1][2]:.2f} (the machine is shared). Wall time {seconds / 60:.1f} min.", "",
             f"Work: {args.threads} threads, source lengths median {sorted(source_lengths(args.threads))[args.threads // 2]} "
             f"tokens (min {min(source_lengths(args.threads))}, max {max(source_lengths(args.threads))}); every summary "
             f"forced to {args.new_tokens} new tokens (min = max). Random-init weights, vocabulary {VOCAB}. Batched: all "
             f"threads in one call. Batch-1 latency: mean over the first N threads one at a time "
             f"(N = {args.latency['base']} base, {args.latency['large']} large). Peak RSS: the engine's own process "
             f"(model load included).", "",
             "| shape | engine | beams | batched threads/s | speed-up | batch-1 latency s | speed-up | same output as torch fp32 | peak RSS GB | load avg start-end |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for shape in args.shapes:
        for beams in (4, 1):
            ref = by.get((shape, "torch-fp32"))
            for engine in ENGINES:
                r = by.get((shape, engine))
                if r is None:
                    continue
                b = r[f"beams{beams}"]
                sp = b["threads_per_s"] / ref[f"beams{beams}"]["threads_per_s"] if ref else float("nan")
                sl = ref[f"beams{beams}"]["latency_mean_s"] / b["latency_mean_s"] if ref else float("nan")
                lines.append(f"| {shape} | {engine} | {beams} | {b['threads_per_s']:.3f} | {sp:.2f}x | "
                             f"{b['latency_mean_s']:.2f} | {sl:.2f}x | {same_output(b, ref, beams)} | "
                             f"{r['peak_rss_gb']:.2f} | {_load(r)} |")
    if not native_bf16() and not args.bf16_emulated:
        lines += ["", "torch bf16: not timed; this CPU has no native bf16 (no avx512_bf16 / amx_bf16), where torch "
                  "emulates bf16 matmuls (~50x slower than fp32 here), so `dtype=auto` keeps fp32 and the bf16 goal "
                  "does not apply. `--bf16-emulated` times it anyway."]
    for shape in args.shapes:
        lines += ["", auto_choice(by, shape)]
    big, ref = by.get(("large", "ct2-int8")), by.get(("large", "torch-fp32"))
    if big and ref:
        thr = big["beams4"]["threads_per_s"] / ref["beams4"]["threads_per_s"]
        lat = ref["beams4"]["latency_mean_s"] / big["beams4"]["latency_mean_s"]
        lines += ["", f"CT2 int8 vs torch fp32 (BART-large shape, CPU, beams 4, batched): {thr:.2f}x", "",
                  f"CT2 int8 vs torch fp32 (BART-large shape, CPU, beams 4, batch-1 latency): {lat:.2f}x", "",
                  f"Goals (>= 5x batched, >= 3x batch-1 latency, lower peak memory): batched "
                  f"{'met' if thr >= 5 else 'NOT met'}, latency {'met' if lat >= 3 else 'NOT met'}, memory "
                  f"{'lower' if big['peak_rss_gb'] < ref['peak_rss_gb'] else 'NOT lower'} "
                  f"({big['peak_rss_gb']:.2f} vs {ref['peak_rss_gb']:.2f} GB)."]
    for shape in args.shapes:
        bf, int8 = by.get((shape, "torch-bf16")), by.get((shape, "ct2-int8"))
        if bf and int8:
            b4 = int8["beams4"]["threads_per_s"] / bf["beams4"]["threads_per_s"]
            b1 = bf["beams4"]["latency_mean_s"] / int8["beams4"]["latency_mean_s"]
            lines += ["", f"CT2 int8 vs torch bf16 ({shape}, beams 4): batched {b4:.2f}x, batch-1 {b1:.2f}x "
                      f"(goals >= 4x batched, >= 2.5x batch 1{'' if native_bf16() else '; not claimed: bf16 emulated here'})."]
    if getattr(args, "tuning_results", None):
        lines += tuning_lines(args.tuning_results)
    raw = [{**r, **{k: {kk: vv for kk, vv in v.items() if kk != "texts"} for k, v in r.items() if k.startswith("beams")}}
           for r in results]
    lines += ["", "Raw results (summaries left out):", "", "```json", json.dumps(raw, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[-8:-6]), flush=True)


def same_output(b: dict, ref: dict | None, beams: int) -> str:
    """How many threads' batched summaries equal torch fp32's, token for token ("k/n")."""
    if ref is None or "texts" not in b or "texts" not in ref[f"beams{beams}"]:
        return "-"
    mine, theirs = b["texts"], ref[f"beams{beams}"]["texts"]
    return f"{sum(x == y for x, y in zip(mine, theirs))}/{len(theirs)}"


def auto_choice(by: dict, shape: str) -> str:
    """The engine and dtype the rule 'fastest whose output equals fp32 on every test thread' picks (beams 4, batched)."""
    ref = by.get((shape, "torch-fp32"))
    if ref is None:
        return ""
    equal = []
    for engine in ENGINES:
        r = by.get((shape, engine))
        if r is None:
            continue
        n = len(ref["beams4"]["texts"])
        if same_output(r["beams4"], ref, 4) == f"{n}/{n}" and same_output(r["beams1"], ref, 1) == f"{n}/{n}":
            equal.append((r["beams4"]["threads_per_s"], engine))
    best = max(equal)[1] if equal else "torch-fp32"
    return (f"{shape}: fastest option whose output equals torch fp32's on all test threads (beams 4 and greedy): "
            f"**{best}** (equal: {', '.join(e for _, e in sorted(equal, reverse=True))}).")


# CTranslate2 engine settings for throughput: each one in its own process, CT2 int8, beams 4, batched
TUNING = [
    {"inter": 1, "intra": 0, "batch_type": "examples", "max_batch_size": 0},  # threadsum's engine today: one call
    {"inter": 1, "intra": 0, "batch_type": "examples", "max_batch_size": 8},
    {"inter": 2, "intra": 1, "batch_type": "examples", "max_batch_size": 8},
    {"inter": 2, "intra": 1, "batch_type": "examples", "max_batch_size": 16},
    {"inter": 1, "intra": 0, "batch_type": "tokens", "max_batch_size": 8192},
    {"inter": 2, "intra": 1, "batch_type": "tokens", "max_batch_size": 4096},
    {"inter": 2, "intra": 1, "batch_type": "tokens", "max_batch_size": 8192},
]
"""intra 0: every core (as ``inference.threads=0``); inter 2 x intra 1: two replicas on the two cores,
each running one sub-batch of ``max_batch_size`` (examples, or source tokens with ``batch_type=tokens``)."""


def tuning_child(args: argparse.Namespace) -> None:
    """One CTranslate2 setting: all threads in one ``translate_batch`` call (length-sorted, as threadsum
    sorts them), then batch-1 latency; prints a JSON line."""
    import ctranslate2
    from transformers import GenerationConfig as HFGenerationConfig

    from threadsum.config import GenerationConfig
    from threadsum.generation import SpecialTokens, translate_options, translate_prefix
    from threadsum.inference.engine import usable_cores
    from threadsum.model import load_tokenizer

    setting = json.loads(args.tune)
    tr = ctranslate2.Translator(args.model, device="cpu", compute_type="int8", inter_threads=setting["inter"],
                                intra_threads=setting["intra"] or usable_cores())
    tok = load_tokenizer(args.model)
    special = SpecialTokens.of(HFGenerationConfig.from_pretrained(args.model))
    gen = GenerationConfig(num_beams=4, min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens,
                           no_repeat_ngram_size=0, batch_size=args.threads)
    options, prefix = translate_options(gen, special), translate_prefix(tok, special)
    seqs = sources(args.threads)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    src = [tok.convert_ids_to_tokens(seqs[i]) for i in order]

    def call(batch):
        return tr.translate_batch(batch, target_prefix=[prefix] * len(batch) if prefix else None,
                                  max_batch_size=setting["max_batch_size"], batch_type=setting["batch_type"], **options)

    call(src[:1])  # warm-up
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    res = call(src)
    batched = time.perf_counter() - t0
    texts = [""] * len(seqs)
    for i, r in zip(order, res):
        texts[i] = " ".join(r.hypotheses[0])
    lat = []
    for s in seqs[: args.latency_threads]:
        t1 = time.perf_counter()
        call([tok.convert_ids_to_tokens(s)])
        lat.append(time.perf_counter() - t1)
    print("RESULT " + json.dumps({"setting": setting, "threads_per_s": len(seqs) / batched, "batched_s": batched,
                                  "latency_mean_s": sum(lat) / len(lat), "texts": texts, "peak_rss_gb": peak_rss_gb(),
                                  "load": [load0, os.getloadavg()[0]]}), flush=True)


def run_tuning(folder: Path, args: argparse.Namespace) -> list[dict]:
    out = []
    for setting in TUNING:
        cmd = [sys.executable, __file__, "--child", "--tune", json.dumps(setting), "--model", str(folder),
               "--threads", str(args.threads), "--latency-threads", str(args.latency["base"]),
               "--new-tokens", str(args.new_tokens)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"tuning {setting} failed:\n{proc.stderr[-3000:]}")
        out.append(json.loads(line[len("RESULT "):]))
        print(f"tuning {setting}: {out[-1]['threads_per_s']:.3f} thr/s, latency {out[-1]['latency_mean_s']:.2f} s",
              flush=True)
    return out


def tuning_lines(results: list[dict]) -> list[str]:
    base = results[0]
    lines = ["", "## CTranslate2 engine settings (BART-base shape, int8, beams 4, all threads in one call)", "",
             "| inter_threads | intra_threads | batch_type | max_batch_size | batched threads/s | vs one call | "
             "batch-1 latency s | same output | peak RSS GB | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["setting"]
        same = sum(a == b for a, b in zip(r["texts"], base["texts"]))
        lines.append(f"| {s['inter']} | {s['intra'] or 'all cores'} | {s['batch_type']} | {s['max_batch_size'] or 'one batch'} | "
                     f"{r['threads_per_s']:.3f} | {r['threads_per_s'] / base['threads_per_s']:.2f}x | "
                     f"{r['latency_mean_s']:.2f} | {same}/{len(base['texts'])} | {r['peak_rss_gb']:.2f} | "
                     f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", default="torch-fp32")
    p.add_argument("--shape", default="base")
    p.add_argument("--model", default="")
    p.add_argument("--shapes", default="large,base", help="Comma-separated: base, large.")
    p.add_argument("--threads", type=int, default=32, help="Threads summarized per measurement.")
    p.add_argument("--latency-threads", default="8,4", help="Threads timed one at a time: base,large.")
    p.add_argument("--new-tokens", type=int, default=32, help="Every summary's length in tokens.")
    p.add_argument("--cpu-threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "bench_inference"))
    p.add_argument("--out", default="bench/results_inference.md")
    p.add_argument("--tune", default="", help=argparse.SUPPRESS)
    p.add_argument("--ct2-tuning", action="store_true", help="Also time CTranslate2 settings (inter/intra threads, "
                   "batch_type, max_batch_size) on the BART-base int8 export.")
    p.add_argument("--bf16-emulated", action="store_true", help="Time torch bf16 even where the CPU emulates it.")
    p.add_argument("--family", default="seq2seq", choices=["seq2seq", "causal"],
                   help="seq2seq: the BART shapes; causal: a Llama-shape decoder-only model at batch 1.")
    args = p.parse_args()
    if args.child and args.family == "causal":
        args.latency_threads = int(args.latency_threads)
        return causal_child(args)
    if args.family == "causal":
        args.latency_n = int(args.latency_threads.split(",")[0])
        return causal_main(args)
    if args.child:
        args.latency_threads = int(args.latency_threads)
        return tuning_child(args) if args.tune else child(args)
    args.shapes = [s for s in args.shapes.split(",") if s]
    base_l, large_l = (int(x) for x in args.latency_threads.split(","))
    args.latency = {"base": base_l, "large": large_l}
    from threadsum.inference.export import export_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load0, t0 = os.getloadavg(), time.perf_counter()
    results = []
    for shape in args.shapes:
        model = build_model(shape, work)
        folders = {"torch-fp32": model, "torch-bf16": model}
        for q in ("float32", "int8"):
            folders[f"ct2-{q}"] = work / f"bart-{shape}-ct2-{q}"
            if not (folders[f"ct2-{q}"] / "model.bin").is_file():
                export_model(str(model), str(folders[f"ct2-{q}"]), "ctranslate2", q, force=True)
        for engine in ENGINES:
            if engine == "torch-bf16" and not (native_bf16() or args.bf16_emulated):
                continue  # emulated bf16: the record says why it is not timed
            results.append(run_child(engine, shape, folders[engine], args))
            write(results, args, (load0, os.getloadavg()), time.perf_counter() - t0)  # partial results survive
        if args.ct2_tuning and shape == "base":
            args.tuning_results = run_tuning(folders["ct2-int8"], args)
            write(results, args, (load0, os.getloadavg()), time.perf_counter() - t0)


if __name__ == "__main__":
    main()
