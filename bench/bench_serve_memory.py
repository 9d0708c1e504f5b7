"""Service memory over many valid requests: RSS must stay flat after warm-up (issue: a service you
can leave running).

    HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py                     # 5,000 requests, tiny model
    HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py --tracemalloc       # + top Python allocation growth

The real service runs around the tiny random model on 127.0.0.1: by default as a separate
``threadsum serve`` process (RSS is that process's, clients excluded); ``--in-process`` runs it in
this process (needed for ``--tracemalloc``). ``--clients`` threads post ``--requests`` valid single-thread requests (varied lengths, a
bounded loop). RSS is sampled every ``--every`` requests after ``--warmup`` requests. Prints a table
and appends a section to bench/results_serve.md; exit 1 when RSS grows more than ``--max-growth``
(default 10 %) from the first to the last sample, or any request is not 200.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from threadsum.config import ServeConfig  # noqa: E402
from threadsum.inference.summarizer import Summarizer, quiet_loading  # noqa: E402
from threadsum.inference.tiny import build_tiny_model_dir, sample_thread  # noqa: E402
from threadsum.serve.app import create_app, serve_in_thread  # noqa: E402


def rss_mib(pid: int | None = None) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@contextmanager
def serve_process(model_dir: Path, max_batch_size: int, max_wait_ms: float):
    """``threadsum serve`` in a child process; yields (base URL, pid) once /readyz is 200."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "threadsum", "serve", "--model", str(model_dir), "--port", str(port),
           f"serve.max_batch_size={max_batch_size}", f"serve.max_wait_ms={max_wait_ms}", "serve.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one torch thread, as the in-process mode
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"threadsum serve did not become ready: {' '.join(cmd)}")
            time.sleep(0.3)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--tracemalloc", action="store_true", help="Print the 15 largest Python allocation growths "
                    "(implies --in-process).")
    ap.add_argument("--in-process", action="store_true", help="Run the service in this process.")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results_serve.md"))
    args = ap.parse_args(argv)

    quiet_loading()
    torch.set_num_threads(1)
    rng = random.Random(0)
    bodies = [sample_thread(i, n_emails=rng.randint(1, 5), words=rng.randint(5, 80)) for i in range(997)]
    lat: list[float] = []
    codes: dict[int, int] = {}
    samples: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model_dir(Path(tmp) / "m")
        if args.in_process or args.tracemalloc:
            s = Summarizer.from_pretrained(str(model_dir), device="cpu")
            server = serve_in_thread(create_app(s, ServeConfig(max_batch_size=8, max_wait_ms=10, queue_size=256)))
            pid = None
        else:
            server = serve_process(model_dir, max_batch_size=8, max_wait_ms=10)
        with server as started, \
                httpx.Client(base_url=started if isinstance(started, str) else started[0], timeout=60,
                             limits=httpx.Limits(max_connections=args.clients + 2)) as client:
            if not isinstance(started, str):
                pid = started[1]
            def call(i: int) -> None:
                t0 = time.perf_counter()
                r = client.post("/v1/summarize", json=bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t0)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

            with cf.ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(call, range(args.warmup)))
                lat.clear()
                codes.clear()
                if args.tracemalloc:
                    tracemalloc.start(12)
                    snap0 = tracemalloc.take_snapshot()
                samples.append((0, rss_mib(pid)))
                t0 = time.perf_counter()
                for start in range(0, args.requests, args.every):
                    n = min(args.every, args.requests - start)
                    list(pool.map(call, range(args.warmup + start, args.warmup + start + n)))
                    samples.append((start + n, rss_mib(pid)))
                    print(f"{start + n:6d} requests  RSS {samples[-1][1]:7.1f} MiB", flush=True)
                wall = time.perf_counter() - t0
            if args.tracemalloc:
                top = tracemalloc.take_snapshot().compare_to(snap0, "traceback")[:15]
                for stat in top:
                    print(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:+7d} blocks")
                    for line in stat.traceback.format()[-8:]:
                        print("    " + line)
            status = client.get("/v1/status")
            stats = (status if status.status_code == 200 else client.get("/healthz")).json()["batching"]
    start_mib, end_mib = samples[0][1], samples[-1][1]
    growth = (end_mib - start_mib) / start_mib
    lat.sort()
    n5xx = sum(v for k, v in codes.items() if k >= 500)
    ok = growth <= args.max_growth and set(codes) == {200}
    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M')} · memory over {args.requests} requests · {os.cpu_count()} CPUs",
        "",
        f"`HF_HUB_OFFLINE=1 python bench/bench_serve_memory.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"tiny model, service {'in this process' if args.in_process or args.tracemalloc else 'as `threadsum serve` (its RSS)'}, {args.clients} clients, {args.warmup} warm-up requests, then {args.requests} valid requests "
        f"in {wall:.0f} s ({args.requests / wall:.1f} req/s); mean batch {stats['mean_batch_size']}.",
        "",
        "| requests after warm-up | " + " | ".join(str(n) for n, _ in samples) + " |",
        "|---|" + "---|" * len(samples),
        "| RSS MiB | " + " | ".join(f"{m:.0f}" for _, m in samples) + " |",
        "",
        f"RSS {start_mib:.0f} -> {end_mib:.0f} MiB ({growth:+.1%}, limit +{args.max_growth:.0%}); "
        f"p50 {1000 * statistics.median(lat):.0f} ms, p99 {1000 * lat[int(0.99 * (len(lat) - 1))]:.0f} ms; "
        f"status codes {dict(sorted(codes.items()))}; 5xx = {n5xx}. **{'flat' if ok else 'NOT flat'}**",
    ]
    print("\n".join(lines))
    if not args.tracemalloc:
        out = Path(args.out)
        old = out.read_text() if out.exists() else ""
        head, _, rest = old.partition("\n\n")
        rest2 = rest.split("\n\n", 1)
        out.write_text(head + "\n\n" + rest2[0] + "\n\n" + "\n".join(lines) + "\n\n" + (rest2[1] if len(rest2) > 1 else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
