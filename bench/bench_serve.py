"""Serving throughput: micro-batching vs one-request-at-a-time, same model, same machine.

    HF_HUB_OFFLINE=1 python bench/bench_serve.py                      # small random model, CPU
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --model outputs/run/model --requests 64
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --preset bart-large --device cuda --beams 4 \
        --max-new-tokens 128 --batch 32 --concurrency 64 --requests 256          # the GPU anchor shape
    HF_HUB_OFFLINE=1 python bench/bench_serve.py --preset demo --engine ctranslate2 --traffic varied \
        --concurrency 24 --torch-threads 1 --beams 2 --max-new-tokens 96 --max-source 512 --requests 96

Both modes run the real HTTP service with ``concurrency`` clients posting ``requests`` threads; only
serve.max_batch_size / serve.max_wait_ms differ (1 / 0 ms for one-at-a-time). ``--server process``
(default) runs it as users do, ``threadsum serve`` in its own process with the same settings as
``--set`` overrides, so the client threads do not share the service's interpreter; ``--server
thread`` runs uvicorn in a thread of the benchmark's process (the earlier setup: 24 client threads
and the service then contend for one GIL). A random-init model never learned when to stop, so min_new_tokens is set to
max_new_tokens: every summary is exactly max_new_tokens long in both modes and the two runs do
identical work per thread. Also reports raw ``Summarizer.generate`` threads/s on the same threads at
batch 1, 4, 8 and ``--batch`` (no HTTP): the best of them is the engine's own batched throughput, the
ceiling the service can approach. Goals: the service >= 0.85x that best and >= 2x one-at-a-time.
Beside it, ``Summarizer.summarize_detailed`` at the same batch sizes: the same work per thread as the
service (cleaning, rendering, generation and the grounding check of claims and coverage) without
HTTP or batching, so service / API isolates what the service itself costs.

``--engine ctranslate2`` exports the model with ``threadsum export --quantization int8`` and serves
that; ``--traffic varied`` posts threads shaped like real mail (1-5 emails of 1-4 sentences,
:func:`threadsum.inference.tiny.varied_thread`) instead of alike ones; ``--preset demo`` is the
packaged tiny recipe's shape (the memory benchmark's model).

Writes a markdown section to bench/results_serve.md (``--out``).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import torch  # noqa: E402

from threadsum.config import Config, ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer, load_saved_config, quiet_loading  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread, varied_thread  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402

PRESETS = {
    "tiny": None,  # the service tests' model (threadsum.inference.tiny): per-call overhead dominates
    "demo": "demo",  # the packaged tiny recipe's shape (bench_serve_memory.demo_shape), its own vocabulary
    # d_model, encoder/decoder layers, heads, ffn, vocab (BART-large's real vocabulary size matters:
    # the LM head is a d_model x vocab matmul per generated token)
    "small": dict(d_model=256, layers=2, heads=4, ffn=1024, vocab=4000),
    "bart-base": dict(d_model=768, layers=6, heads=12, ffn=3072, vocab=50265),
    "bart-large": dict(d_model=1024, layers=12, heads=16, ffn=4096, vocab=50265),
}


def build_preset(out: Path, preset: str, max_source: int) -> Path:
    """A random-init model of the preset's shape with the tiny tokenizer (ids fit any vocab)."""
    from transformers import BartConfig, BartForConditionalGeneration

    from threadsum.model import load_tokenizer

    p = PRESETS[preset]
    if p == "demo":
        from bench_serve_memory import demo_shape

        return build_tiny_model_dir(out, overrides={**demo_shape(), "data.max_source_tokens": max_source})
    build_tiny_model_dir(out, overrides={"data.max_source_tokens": max_source,
                                         "model.tiny.max_position_embeddings": max(1024, max_source)})
    if p is None:
        return out
    tok = load_tokenizer(str(out))
    cfg = BartConfig(
        vocab_size=max(p["vocab"], len(tok)), d_model=p["d_model"], encoder_layers=p["layers"], decoder_layers=p["layers"],
        encoder_attention_heads=p["heads"], decoder_attention_heads=p["heads"], encoder_ffn_dim=p["ffn"],
        decoder_ffn_dim=p["ffn"], max_position_embeddings=max(1024, max_source), dropout=0.0,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_bos_token_id=tok.bos_token_id, forced_eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).save_pretrained(str(out))
    return out


def make_summarizer(args, work: Path) -> tuple[Summarizer, str]:
    """The benchmark's Summarizer and the model folder it loaded (what ``--server process`` serves)."""
    model_dir = args.model
    if args.model:
        base = Summarizer.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        cfg = base.cfg.model_copy(deep=True)
    else:
        model_dir = build_preset(work / "model", args.preset, args.max_source)
        if args.engine == "ctranslate2":
            from threadsum.inference.export import export_model

            model_dir = export_model(str(model_dir), str(work / "model-int8"), "ctranslate2", "int8")
        saved = load_saved_config(str(model_dir))
        saved.inference.threads = args.torch_threads
        base = Summarizer.from_pretrained(str(model_dir), device=args.device, dtype=args.dtype, config=saved)
        cfg = base.cfg.model_copy(deep=True)
    g = cfg.eval.generation
    g.num_beams = args.beams
    g.max_new_tokens = args.max_new_tokens
    g.min_new_tokens = args.max_new_tokens if not args.model else min(g.min_new_tokens, args.max_new_tokens)
    g.no_repeat_ngram_size = 0 if not args.model else g.no_repeat_ngram_size
    cfg.data.max_source_tokens = args.max_source
    if not args.model and base.model is not None and PRESETS[args.preset] != "demo":
        # a random model may emit only ids the tiny tokenizer has no text for (the preset's vocab is
        # larger) or special tokens: both decode to an empty summary, a 500 by design. Suppressing
        # them (one logits mask per step, in both modes) keeps the summaries non-empty
        tok = base.tokenizer
        keep = {tok.eos_token_id, tok.bos_token_id}  # forced at the ends
        vocab = base.model.config.vocab_size
        base.model.generation_config.suppress_tokens = (
            [i for i in tok.all_special_ids if i not in keep] + list(range(len(tok), vocab)))
    return Summarizer(base.model, base.tokenizer, Config.model_validate(cfg.to_dict()), base.device, name=base.name,
                      engine=base.engine), str(model_dir)


def server_overrides(args) -> list[str]:
    """The settings make_summarizer gives the in-process Summarizer, as ``threadsum serve`` overrides."""
    out = [f"eval.generation.num_beams={args.beams}", f"eval.generation.max_new_tokens={args.max_new_tokens}",
           f"data.max_source_tokens={args.max_source}", f"serve.dtype={args.dtype}"]
    if not args.model:
        out += [f"eval.generation.min_new_tokens={args.max_new_tokens}", "eval.generation.no_repeat_ngram_size=0"]
    if args.torch_threads:
        out.append(f"inference.threads={args.torch_threads}")
    return out


def threads_for(n: int, words: int, traffic: str = "alike") -> list[dict]:
    if traffic == "varied":  # 1-5 emails of 1-4 sentences of 3-30 words, every one different
        return [varied_thread(i) for i in range(n)]
    # 2..6 emails of ~words words each
    return [sample_thread(i, n_emails=2 + i % 5, words=words) for i in range(n)]


def run_service(s: Summarizer, threads: list[dict], concurrency: int, batch: int, wait_ms: float,
                server: str = "thread", model_dir: str = "", overrides: tuple[str, ...] = ()) -> dict:
    """Post ``threads`` from ``concurrency`` client threads to a service of ``s`` (``server="thread"``)
    or to ``threadsum serve`` of ``model_dir`` with ``overrides`` in a child process (``"process"``)."""
    queue = max(256, len(threads))
    if server == "process":
        from bench_serve_memory import serve_process

        extra = [f"serve.max_batch_size={batch}", f"serve.max_wait_ms={wait_ms}", f"serve.queue_size={queue}"]
        log = Path(tempfile.gettempdir()) / f"bench_serve_{os.getpid()}_{batch}.log"
        with serve_process(Path(model_dir), [*overrides, *extra], {"TOKENIZERS_PARALLELISM": "false"}, log) as (url, _):
            return _post_all(url, threads, concurrency)
    cfg = ServeConfig(max_batch_size=batch, max_wait_ms=wait_ms, queue_size=queue, max_batch_threads=64)
    with serve_in_thread(create_app(s, cfg)) as url:
        return _post_all(url, threads, concurrency)


def _post_all(url: str, threads: list[dict], concurrency: int) -> dict:
    """Warm-up, then every thread posted once by ``concurrency`` client threads; throughput and latency."""
    client = httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency + 4))
    # warm both paths' shapes before the clock starts
    for t in threads[: min(4, len(threads))]:
        client.post("/v1/summarize", json=t).raise_for_status()

    def one(t):
        t0 = time.perf_counter()
        r = client.post("/v1/summarize", json=t)
        return r.status_code, time.perf_counter() - t0

    before = client.get("/v1/status").json()["batching"]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, threads))
    wall = time.perf_counter() - t0
    after = client.get("/v1/status").json()["batching"]
    client.close()
    mean_batch = (after["threads"] - before["threads"]) / max(1, after["batches"] - before["batches"])
    codes = [c for c, _ in results]
    lat = sorted(l for _, l in results)
    return {
        "ok": sum(c == 200 for c in codes), "errors": sum(c != 200 for c in codes), "wall_s": wall,
        "threads_per_s": len(threads) / wall, "p50_ms": 1000 * statistics.median(lat),
        "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))], "mean_batch": mean_batch,
    }


def run_generate(s: Summarizer, texts: list[str], batch: int) -> dict:
    s.generate(texts[: min(batch, len(texts))], batch_size=batch)  # warm-up
    if str(s.device).startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    s.generate(texts, batch_size=batch)
    if str(s.device).startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return {"batch": batch, "threads_per_s": len(texts) / wall, "wall_s": wall}


def run_detailed(s: Summarizer, threads: list[dict], batch: int) -> dict:
    """``summarize_detailed`` (clean, render, generate, check claims and coverage) of ``threads`` at ``batch``."""
    s.summarize_detailed(threads[: min(batch, len(threads))], batch_size=batch)  # warm-up
    t0 = time.perf_counter()
    s.summarize_detailed(threads, batch_size=batch)
    wall = time.perf_counter() - t0
    return {"batch": batch, "threads_per_s": len(threads) / wall, "wall_s": wall}


def machine() -> str:
    from bench_serve_memory import cpu_line

    return f"{cpu_line()} at start, torch threads {torch.get_num_threads()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="A trained model folder (default: a random model of --preset).")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="small")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16, help="serve.max_batch_size of the micro-batching run.")
    ap.add_argument("--wait-ms", type=float, default=20.0)
    ap.add_argument("--beams", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--max-source", type=int, default=512)
    ap.add_argument("--words", type=int, default=60, help="Words per email of the generated threads.")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default). On a shared CPU use 1: two spinning "
                         "OpenMP threads on an oversubscribed machine made one generation 17x slower here.")
    ap.add_argument("--skip-generate", action="store_true", help="Only the HTTP comparison.")
    ap.add_argument("--engine", choices=("torch", "ctranslate2"), default="torch",
                    help="ctranslate2: serve the model exported with int8 weights.")
    ap.add_argument("--traffic", choices=("alike", "varied"), default="alike")
    ap.add_argument("--server", choices=("process", "thread"), default="process",
                    help="process: `threadsum serve` in a child process (as deployed); thread: uvicorn in this process.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results_serve.md"))
    args = ap.parse_args(argv)

    quiet_loading()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    started_on = machine()
    print(started_on, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        s, model_dir = make_summarizer(args, Path(tmp))
        if args.server == "process" and args.device not in ("auto", "cpu"):
            ap.error("--server process serves on the CPU (serve.device=cpu); use --server thread for another device")
        served = dict(server=args.server, model_dir=model_dir, overrides=tuple(server_overrides(args)))
        threads = threads_for(args.requests, args.words, args.traffic)
        src_tokens = [len(s.tokenizer(s.prepare(t).text)["input_ids"]) for t in threads]
        desc = (f"model {args.model or args.preset + ' (random init)'}: {s.info()['parameters'] / 1e6:.1f}M "
                f"params, engine {s.info()['engine']}, {s.info()['dtype']} on {s.device}; {args.traffic} traffic, {args.requests} threads of {min(src_tokens)}-{max(src_tokens)} "
                f"(mean {statistics.mean(src_tokens):.0f}) source tokens; beams {args.beams}, "
                f"{args.max_new_tokens} new tokens; {args.concurrency} concurrent clients; service in "
                f"{'its own process' if args.server == 'process' else 'a thread of the clients’ process'}")
        print(desc, flush=True)
        single = run_service(s, threads, args.concurrency, batch=1, wait_ms=0, **served)
        print(f"one-at-a-time: {single}", flush=True)
        batched = run_service(s, threads, args.concurrency, batch=args.batch, wait_ms=args.wait_ms, **served)
        print(f"micro-batched: {batched}", flush=True)
        gens, apis = [], []
        if not args.skip_generate:
            texts = [s.prepare(t).text for t in threads]
            for b in sorted({1, 4, 8, args.batch}):
                gens.append(run_generate(s, texts, b))
                print(f"generate batch {b}: {gens[-1]}", flush=True)
                apis.append(run_detailed(s, threads, b))
                print(f"summarize_detailed batch {b}: {apis[-1]}", flush=True)

    speedup = batched["threads_per_s"] / single["threads_per_s"]
    cmd = "python bench/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} · {started_on}, load avg {os.getloadavg()[0]:.1f} at the end",
        "",
        f"`HF_HUB_OFFLINE=1 {cmd.strip()}`",
        "",
        desc + ".",
        "",
        "| mode | serve.max_batch_size | max_wait_ms | threads/s | p50 ms | p95 ms | mean batch | non-200 |",
        "|---|---|---|---|---|---|---|---|",
        f"| one-at-a-time | 1 | 0 | {single['threads_per_s']:.2f} | {single['p50_ms']:.0f} | {single['p95_ms']:.0f} | {single['mean_batch']:.2f} | {single['errors']} |",
        f"| micro-batched | {args.batch} | {args.wait_ms:g} | {batched['threads_per_s']:.2f} | {batched['p50_ms']:.0f} | {batched['p95_ms']:.0f} | {batched['mean_batch']:.2f} | {batched['errors']} |",
        "",
        f"**Micro-batched / one-at-a-time {speedup:.2f}x** (goal >= 2x).",
    ]
    if gens:
        best = max(gens, key=lambda g: g["threads_per_s"])
        lines += ["", "Raw `Summarizer.generate` on the same threads (no HTTP): " + ", ".join(
            f"batch {g['batch']}: {g['threads_per_s']:.2f} threads/s" for g in gens) + ".",
            "", f"**Micro-batched service / the engine's best batched ({best['threads_per_s']:.2f} threads/s at batch "
            f"{best['batch']}) {batched['threads_per_s'] / best['threads_per_s']:.2f}x** (goal >= 0.85x); "
            f"raw batch {best['batch']} / batch 1 {best['threads_per_s'] / gens[0]['threads_per_s']:.2f}x."]
        api = max(apis, key=lambda g: g["threads_per_s"])
        lines += ["", "`Summarizer.summarize_detailed` on the same threads (the service's work without HTTP: cleaning, "
                  "rendering, generation, claims and coverage): " + ", ".join(
                      f"batch {g['batch']}: {g['threads_per_s']:.2f} threads/s" for g in apis) + ".",
                  "", f"**Micro-batched service / the same work through the Python API at its best batch "
                  f"({api['threads_per_s']:.2f} threads/s at batch {api['batch']}) {batched['threads_per_s'] / api['threads_per_s']:.2f}x**."]
    out = Path(args.out)
    header = "# Serving benchmark results\n\nWritten by `bench/bench_serve.py` and `bench/bench_serve_memory.py`; newest first.\n\n"
    old = out.read_text().split("\n\n", 2)[-1] if out.exists() and out.read_text().startswith("# Serving") else ""
    out.write_text(header + "\n".join(lines) + "\n\n" + old)
    print("\n".join(lines[-3:]))
    print(f"speed-up {speedup:.2f}x; wrote {out}")
    return 0 if single["errors"] == 0 and batched["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
