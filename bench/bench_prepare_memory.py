"""Benchmark: peak RSS of `threadsum prepare` on one huge email body, in each main input format.

For each format (eml, mbox, Kaggle CSV, JSONL) a corpus of one thread with one email whose body is
``--mib`` MiB of plain text (lines of words) is written to a temp folder, with the summary the
format carries (a ``summaries.csv`` sidecar for eml and mbox). ``threadsum prepare`` (tiny recipe,
tokenizer trained on the data) then runs on it in a child process of its own, and the child's peak
resident set size is read from ``os.wait4`` (``ru_maxrss`` of that child alone, KiB on Linux); a
child still running after ``--timeout`` seconds is killed and reported with its peak so far. A
run on a 1 KiB body gives the floor that the imports and the tokenizer cost anyway.

    python bench/bench_prepare_memory.py [--mib 200] [--formats eml,mbox,kaggle_csv,jsonl]
                                         [--limit-mib 1024] [--timeout 600] [--results FILE] [--keep DIR]

Goal: peak RSS <= 1 GiB for a 200 MiB body in every format (the body is cut to
``data.max_body_chars`` by the readers, so memory should follow that limit, not the file).
Exits 1 when a run is over ``--limit-mib`` or fails.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("eml", "mbox", "kaggle_csv", "jsonl")
SUMMARY = "The email thread is one very long message about quarterly gas trading volumes."
SUBJECT = "Quarterly volumes"
SENDER = "Ann Lee <ann@example.com>"
TO = "Bob Stone <bob@example.com>"
MESSAGE_ID = "<huge-body@example.com>"
CHUNK = 1 << 20  # bytes of body text written at a time


def _body_chunk(seed: int = 0) -> str:
    """About 1 MiB of plain text: lines of ~70 characters of words, a blank line every 8 lines."""
    rnd = random.Random(seed)
    words = ("gas power trading volume desk quarter contract price deal schedule report review "
             "meeting Houston Portland credit risk counterparty pipeline capacity storage").split()
    lines, size = [], 0
    while size < CHUNK:
        line = " ".join(rnd.choice(words) for _ in range(11))
        if len(lines) % 8 == 7:
            line += "\n"
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


def _write_body(fh, mib: int, escape=lambda s: s) -> None:
    chunk = escape(_body_chunk())
    written = 0
    while written < mib * CHUNK:
        fh.write(chunk)
        written += len(chunk)


def write_corpus(fmt: str, folder: Path, mib: int) -> Path:
    """The one-thread corpus of ``fmt`` in ``folder``; returns the path given to prepare."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt in ("eml", "mbox"):
        with (folder / "summaries.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([("thread_id", "summary"), (MESSAGE_ID.strip("<>"), SUMMARY)])
        name = "huge.eml" if fmt == "eml" else "huge.mbox"
        with (folder / name).open("w", newline="\n") as fh:
            if fmt == "mbox":
                fh.write("From ann@example.com Mon May 14 09:12:00 2001\n")
            fh.write(f"From: {SENDER}\nTo: {TO}\nSubject: {SUBJECT}\nDate: Mon, 14 May 2001 09:12:00 -0500\n"
                     f"Message-ID: {MESSAGE_ID}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
                     f"Content-Transfer-Encoding: 8bit\n\n")
            _write_body(fh, mib)
        return folder if fmt == "eml" else folder / name
    if fmt == "kaggle_csv":
        with (folder / "email_thread_summaries.csv").open("w", newline="") as fh:
            csv.writer(fh).writerows([("thread_id", "summary"), ("1", SUMMARY)])
        with (folder / "email_thread_details.csv").open("w", newline="") as fh:
            fh.write(f'thread_id,subject,timestamp,from,to,body\n1,{SUBJECT},2001-05-14 09:12:00,Ann Lee,'
                     f'"[\'Bob Stone\']","')
            _write_body(fh, mib, lambda s: s.replace('"', '""'))
            fh.write('"\n')
        return folder
    if fmt == "jsonl":
        with (folder / "threads.jsonl").open("w") as fh:
            fh.write(json.dumps({"thread_id": "1", "subject": SUBJECT, "summary": SUMMARY})[:-1]
                     + ', "emails": [{"from": "Ann Lee", "to": ["Bob Stone"], "date": "2001-05-14 09:12:00", '
                       '"body": "')
            _write_body(fh, mib, lambda s: json.dumps(s)[1:-1])
            fh.write('"}]}\n')
        return folder / "threads.jsonl"
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def run_prepare(source: Path, out: Path, timeout: float) -> dict:
    """``threadsum prepare`` on ``source`` in a child process: exit code, wall seconds, peak RSS (MiB).
    A child still running after ``timeout`` seconds is killed (exit code -9, its peak so far)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    cmd = [sys.executable, "-m", "threadsum", "prepare", "-c", str(ROOT / "configs" / "tiny.yaml"),
           "--source", str(source), f"data.prepared_dir={out}", "--force"]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        while True:
            # os.wait4 gives this child's own rusage (not the maximum over all children); Popen.wait
            # would reap it without one, so poll here
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t > timeout:
                proc.kill()
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    wall = time.perf_counter() - t
    warnings = {}
    info_path = out / "prepare.json"
    if info_path.exists():
        warnings = json.loads(info_path.read_text()).get("warnings", {})
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
            "warnings": warnings, "tail": output[-600:]}


def cpu_description() -> str:
    """The CPU model and the flags that matter for this project's benchmarks."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(shown) or 'none of avx2/avx512/amx'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=200, help="size of the one body, MiB")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--limit-mib", type=int, default=1024, help="the goal: peak RSS at most this, MiB")
    ap.add_argument("--results", default=None, help="append a markdown section to this file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one prepare may run before it is killed")
    ap.add_argument("--keep", default=None, help="write the corpora here and keep them (default: a temp dir)")
    args = ap.parse_args()
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_prepare_memory_"))
    print(f"cpu: {cpu_description()}\nload average before: {os.getloadavg()}", flush=True)
    rows, failed = [], False
    try:
        for fmt, mib in [("eml", 0)] + [(f, args.mib) for f in formats]:
            label = f"{fmt} ({'1 KiB floor' if mib == 0 else f'{mib} MiB body'})"
            folder = root / f"{fmt}_{mib}"
            t = time.perf_counter()
            if mib == 0:
                source = write_corpus(fmt, folder, 1)
                body = folder / "huge.eml"  # cut the 1 MiB body to 1 KiB
                head, _, text = body.read_text().partition("\n\n")
                body.write_text(head + "\n\n" + text[:1024])
            else:
                source = write_corpus(fmt, folder, mib)
            written = time.perf_counter() - t
            res = run_prepare(source, folder / "prepared", args.timeout)
            res.update(format=label, write_s=round(written, 1), load=round(os.getloadavg()[0], 2))
            over = res["rc"] != 0 or (mib and res["peak_rss_mib"] > args.limit_mib)
            failed |= bool(over)
            print(json.dumps({k: v for k, v in res.items() if k != "tail" or res["rc"]}), flush=True)
            rows.append(res)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    table = ["| input | prepare exit | peak RSS (MiB) | wall (s) | body cut warnings | load (1 min) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['format']} | {r['rc']} | {r['peak_rss_mib']:,} | {r['wall_s']} | "
                     f"{r['warnings'].get('body_cut_to_max_chars', 0)} | {r['load']} |")
    print("\n".join(table))
    print(f"load average after: {os.getloadavg()}; goal: <= {args.limit_mib} MiB: {'MISSED' if failed else 'met'}")
    if args.results:
        with open(args.results, "a") as fh:
            fh.write(f"## prepare peak RSS, one {args.mib} MiB body per format\n\n"
                     f"`python bench/bench_prepare_memory.py --mib {args.mib}` on {cpu_description()}\n\n"
                     + "\n".join(table) + "\n\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
