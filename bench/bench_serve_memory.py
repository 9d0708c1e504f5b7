"""Service memory under traffic that looks like real mail: RSS of `threadsum serve` must stay flat.

    HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py                          # torch and CTranslate2 int8
    HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py --engine torch --allocator jemalloc
    HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py --set serve.malloc_trim_interval_s=0   # trimming off

The real service runs as a separate ``threadsum serve`` process on 127.0.0.1 around a random-init
model of the shape and decoding settings of the packaged ``tiny`` recipe (what ``threadsum demo``
trains: 2 + 2 layers, d_model 128, 512 source tokens, beams 2, up to 96 new tokens; ``--shape test``
is the service tests' smaller model, whose tensors are too small to fragment the heap), and for
``ctranslate2`` around the same model exported by ``threadsum export --quantization int8``; RSS is that process's alone (clients excluded). ``--clients``
client threads post single-thread requests, every one a different thread of 1-5 emails of 1-4
sentences of 3-30 words (:func:`threadsum.inference.tiny.varied_thread`), so source lengths and batch
compositions change all the time, as they do in real traffic (a benchmark of alike requests hides
heap fragmentation: the padded tensor shapes never change). ``--warmup-rounds`` rounds of
``--per-round`` requests run first, then ``--rounds`` measured rounds; RSS is read after each round.
Both engines see the same threads.

Prints a table per engine and prepends a section to bench/results_serve.md. Exit 1 when, for any
engine, RSS grows more than ``--max-growth`` (10 %) from the first to the last measured round, or a
request is answered with anything but 200.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import psutil  # noqa: E402

from threadsum.devices import hardware_description  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, varied_thread  # noqa: E402

ALLOCATORS = {
    "glibc": None,
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so"),
}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def find_allocator(name: str) -> str | None:
    """The shared library to LD_PRELOAD for ``name`` (None for glibc's own malloc); exits 2 if absent."""
    if ALLOCATORS[name] is None:
        return None
    for d in LIB_DIRS:
        for lib in ALLOCATORS[name]:
            if (Path(d) / lib).is_file():
                return str(Path(d) / lib)
    raise SystemExit(f"--allocator {name}: none of {', '.join(ALLOCATORS[name])} found in {', '.join(LIB_DIRS)}; "
                     f"install it (Debian: apt-get install {'libjemalloc2' if name == 'jemalloc' else 'libtcmalloc-minimal4'})")


def cpu_line() -> str:
    """CPU model, cores and the flags that decide CPU inference speed, plus the load average now."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    have = ",".join(f for f in wanted if f in flags) or "none of " + ",".join(wanted)
    return f"{hardware_description()}; flags {have}; load avg {os.getloadavg()[0]:.1f}"


def demo_shape() -> dict:
    """Overrides that give :func:`build_tiny_model_dir` the packaged ``tiny`` recipe's model shape,
    source/target windows and decoding settings (random weights: its summaries run to any length)."""
    from threadsum.config import load_config
    from threadsum.demo import packaged_config

    rec = load_config(packaged_config("tiny"))
    out = {f"model.tiny.{k}": v for k, v in rec.model.tiny.model_dump().items()}
    out.update({f"eval.generation.{k}": v for k, v in rec.eval.generation.model_dump().items()})
    out.update({"data.max_source_tokens": rec.data.max_source_tokens, "data.max_target_tokens": rec.data.max_target_tokens})
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_process(model_dir: Path, overrides: list[str], env_extra: dict[str, str], log_path: Path):
    """``threadsum serve`` in a child process; yields (base URL, pid) once /readyz is 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "threadsum", "serve", "--model", str(model_dir), "--port", str(port),
           "serve.device=cpu", *overrides]
    env = {**os.environ, **env_extra}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"threadsum serve did not become ready: {' '.join(cmd)}\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_engine(engine: str, model_dir: Path, args, env_extra: dict[str, str], log_path: Path) -> dict:
    """Warm-up and measured rounds against one server; RSS (MiB) after each round."""
    overrides = [f"serve.max_batch_size={args.batch}", f"serve.queue_size={max(256, 4 * args.clients)}",
                 f"inference.threads={args.threads}", *args.set]
    codes: dict[int, int] = {}
    lat: list[float] = []
    rounds: list[dict] = []
    with serve_process(model_dir, overrides, env_extra, log_path) as (url, pid), \
            httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=args.clients + 2)) as client:
        proc = psutil.Process(pid)
        start_rss = proc.memory_info().rss / 2**20

        def call(seed: int) -> None:
            t0 = time.perf_counter()
            r = client.post("/v1/summarize", json=varied_thread(seed))
            lat.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

        with cf.ThreadPoolExecutor(args.clients) as pool:
            for k in range(args.warmup_rounds + args.rounds):
                seeds = range(k * args.per_round, (k + 1) * args.per_round)
                before = client.get("/v1/status").json()["batching"]
                t0 = time.perf_counter()
                list(pool.map(call, seeds))
                wall = time.perf_counter() - t0
                after = client.get("/v1/status").json()["batching"]
                batches = max(1, after["batches"] - before["batches"])
                rounds.append({"warmup": k < args.warmup_rounds, "rss": proc.memory_info().rss / 2**20,
                               "req_s": args.per_round / wall,
                               "mean_batch": (after["threads"] - before["threads"]) / batches})
                label = "warm-up" if k < args.warmup_rounds else f"round {k - args.warmup_rounds + 1}"
                print(f"  {engine:11s} {label:8s} RSS {rounds[-1]['rss']:7.1f} MiB  {rounds[-1]['req_s']:5.1f} req/s  "
                      f"mean batch {rounds[-1]['mean_batch']:.1f}", flush=True)
        info = client.get("/v1/status").json()
    measured = [r for r in rounds if not r["warmup"]]
    first, last = measured[0]["rss"], measured[-1]["rss"]
    lat.sort()
    return {"engine": engine, "start_rss": start_rss, "rounds": rounds, "growth": (last - first) / first,
            "codes": dict(sorted(codes.items())), "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "dtype": info.get("dtype"),
            "peak": max(r["rss"] for r in measured), "memory": info.get("memory", {})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("demo", "test"), default="demo",
                    help="demo: the packaged tiny recipe's shape and decoding; test: the service tests' model.")
    ap.add_argument("--engine", choices=("torch", "ctranslate2", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=5, help="Measured rounds (after the warm-up rounds).")
    ap.add_argument("--warmup-rounds", type=int, default=1)
    ap.add_argument("--per-round", type=int, default=600, help="Requests per round.")
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--batch", type=int, default=16, help="serve.max_batch_size.")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of either engine (OMP_NUM_THREADS for "
                    "torch, inference.threads for CTranslate2); 1 on a shared 2-core machine.")
    ap.add_argument("--allocator", choices=sorted(ALLOCATORS), default="glibc",
                    help="malloc of the server process: glibc's own, or jemalloc/tcmalloc through LD_PRELOAD.")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="A config override for the server (repeatable), e.g. serve.malloc_trim_interval_s=0.")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="An environment variable of the server process (repeatable), e.g. MALLOC_ARENA_MAX=2.")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results_serve.md"))
    args = ap.parse_args(argv)
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (growth is measured from the first to the last measured round)")

    machine_before = cpu_line()
    print(machine_before, flush=True)
    env_extra = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    env_extra.update(dict(e.split("=", 1) for e in args.env))
    preload = find_allocator(args.allocator)
    if preload:
        env_extra["LD_PRELOAD"] = preload
    engines = ["torch", "ctranslate2"] if args.engine == "both" else [args.engine]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        src = build_tiny_model_dir(Path(tmp) / "model", overrides=demo_shape() if args.shape == "demo" else None)
        dirs = {"torch": src}
        if "ctranslate2" in engines:
            from threadsum.inference.export import export_model

            dirs["ctranslate2"] = export_model(str(src), str(Path(tmp) / "model-int8"), "ctranslate2", "int8")
        for engine in engines:
            results.append(run_engine(engine, Path(dirs[engine]), args, env_extra, Path(tmp) / f"{engine}.log"))
    machine_after = f"load avg {os.getloadavg()[0]:.1f} at the end"

    n = args.warmup_rounds + args.rounds
    cols = [f"warm-up {i + 1}" for i in range(args.warmup_rounds)] + [f"round {i + 1}" for i in range(args.rounds)]
    shape_name = "packaged tiny recipe's" if args.shape == "demo" else "service tests'"
    cmd = "python bench/bench_serve_memory.py " + " ".join(argv if argv is not None else sys.argv[1:])
    setup = ", ".join(filter(None, [f"allocator {args.allocator}" + (f" ({preload})" if preload else ""),
                                    " ".join(args.set), " ".join(args.env)]))
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} · service memory, varied mail · {machine_before}, {machine_after}",
        "",
        f"`HF_HUB_OFFLINE=1 {cmd.strip()}`",
        "",
        f"random-init model of the {shape_name} shape as `threadsum serve` (its RSS), {args.clients} clients, {args.per_round} different threads a round "
        f"(1-5 emails of 1-4 sentences of 3-30 words), serve.max_batch_size={args.batch}, {args.threads} CPU thread(s); {setup}.",
        "",
        "| engine | at start | " + " | ".join(cols) + " | first -> last measured | req/s | mean batch | p50 / p99 ms | status codes | allocator, trims (s) |",
        "|---|---|" + "---|" * n + "---|---|---|---|---|---|",
    ]
    ok = True
    for r in results:
        flat = r["growth"] <= args.max_growth and set(r["codes"]) == {200}
        ok &= flat
        measured = [x for x in r["rounds"] if not x["warmup"]]
        lines.append(
            f"| {r['engine']} ({r['dtype']}) | {r['start_rss']:.0f} | " + " | ".join(f"{x['rss']:.0f}" for x in r["rounds"])
            + f" | {r['growth']:+.1%} **{'flat' if flat else 'NOT flat'}** | "
            f"{statistics.mean(x['req_s'] for x in measured):.1f} | {statistics.mean(x['mean_batch'] for x in measured):.1f} | "
            f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['codes']} | {r['memory'].get('allocator', '?')}, "
            f"{r['memory'].get('trims', 0)} ({r['memory'].get('trim_seconds', 0):.2f}) |")
    lines += ["", f"RSS in MiB after each round; goal: within +{args.max_growth:.0%} from the first to the last measured round."]
    print("\n".join(lines))
    out = Path(args.out)
    header = "# Serving benchmark results\n\nWritten by `bench/bench_serve.py` and `bench/bench_serve_memory.py`; newest first.\n\n"
    old = out.read_text().split("\n\n", 2)[-1] if out.exists() and out.read_text().startswith("# Serving") else ""
    out.write_text(header + "\n".join(lines) + "\n\n" + old)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
