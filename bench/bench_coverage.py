"""Coverage and grounded reranking, measured in one run.

    python bench/bench_coverage.py [--threads 200] [--seed 7] [--sample /work/shared/data/kaggle_sample]
        [--model /tmp/demo_mail/run/model --test /tmp/demo_mail/prepared/threads/test.jsonl --rerank-threads 40]

- Omission recall: each sentence of a reference (synthetic corpus, and the public real sample) is
  removed in turn; a removal counts when the intact reference carried an important fact
  (``verify.coverage``) that the reduced one no longer carries. Sentences that carry no important
  fact of the thread are not fact-bearing and are counted apart (on the synthetic corpus: "X agrees
  to do it", which states no fact in the thread's words). Goal >= 90%.
- False "left out" on intact synthetic references: important facts reported left out / important
  facts (the synthetic reference states every fact of its plot; chatter is not). Goal <= 10%.
- Salience on the real sample: share of the top-5 facts of each thread that its reference carries
  (goal >= 60%), and of the important facts the reference carries, the share ranked in the top 5.
- Grounded reranking on a trained model's held-out threads: rerank none vs grounding (same beams
  raised to ``rerank_candidates``), unsupported claims per summary, share with any, ROUGE-L,
  important facts carried, seconds per summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from threadsum.data.readers import read_kaggle  # noqa: E402
from threadsum.data.synth import write_kaggle_csv  # noqa: E402
from threadsum.verify import check_indexed, coverage_indexed, index_thread  # noqa: E402

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _cpu() -> str:
    try:
        info = open("/proc/cpuinfo").read().splitlines()
        model = next(ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name"))
        flags = set(next(ln.split(":", 1)[1] for ln in info if ln.startswith("flags")).split())
    except (OSError, StopIteration):
        model, flags = platform.machine(), set()
    has = [f for f in ("avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {os.cpu_count()} CPUs (flags: {', '.join(has) or 'none of avx512_bf16/amx/vnni'}; load average {load})"


def _key(f) -> tuple:
    return f.kind, str(f.key)


def omissions(threads) -> dict:
    removed = hit = no_fact = important = false_left = 0
    for t in threads:
        idx = index_thread(t)
        facts = coverage_indexed(idx, t.summary)
        imp = [f for f in facts if f.important]
        important += len(imp)
        false_left += sum(not f.carried for f in imp)
        carried = {_key(f) for f in imp if f.carried}
        sents = _SENT.split(t.summary.strip())
        for j in range(len(sents)):
            rest = " ".join(sents[:j] + sents[j + 1:])
            lost = carried - {_key(f) for f in coverage_indexed(idx, rest) if f.important and f.carried}
            alone = {_key(f) for f in coverage_indexed(idx, sents[j]) if f.important and f.carried}
            if not alone:
                no_fact += 1
                continue
            removed += 1
            hit += bool(lost)
    return {"removed": removed, "recall": hit / max(removed, 1), "not_fact_bearing": no_fact,
            "important": important, "false_left_out": false_left / max(important, 1)}


def salience(threads, k: int = 5) -> dict:
    top_hits = top_n = ref_facts = ref_in_top = 0
    for t in threads:
        facts = coverage_indexed(index_thread(t), t.summary)
        top = facts[:k]
        top_n += len(top)
        top_hits += sum(f.carried for f in top)
        carried = [f for f in facts if f.carried]
        ref_facts += len(carried)
        ref_in_top += sum(f in top for f in carried)
    return {"top_precision": top_hits / max(top_n, 1), "reference_recall_at_k": ref_in_top / max(ref_facts, 1),
            "k": k}


def rerank(model: str, test: Path, n_threads: int, candidates: int) -> dict:
    import torch

    from threadsum.evaluate.metrics import rouge_scores
    from threadsum.inference.summarizer import Summarizer
    from threadsum.verify.rerank import rendered_thread

    torch.set_num_threads(2)
    rows = [json.loads(line) for line in test.read_text().splitlines() if line.strip()][:n_threads]
    summarizer = Summarizer.from_pretrained(model, device="cpu")
    base = summarizer.cfg.eval.generation
    out = {}
    summarizer.generate([rows[0]["source"]], batch_size=1)  # warm-up
    for mode in ("none", "grounding"):
        summarizer.cfg.eval.generation = base.model_copy(update={"rerank": mode, "rerank_candidates": candidates})
        t0 = time.perf_counter()
        preds = summarizer.generate([r["source"] for r in rows])
        seconds = time.perf_counter() - t0
        idxs = [index_thread(rendered_thread(r["source"])) for r in rows]
        bad = [sum(not c.supported for c in check_indexed(ix, p)) for ix, p in zip(idxs, preds)]
        shares = []
        for ix, p in zip(idxs, preds):
            imp = [f for f in coverage_indexed(ix, p) if f.important]
            if imp:
                shares.append(sum(f.carried for f in imp) / len(imp))
        rl = rouge_scores(preds, [r["summary"] for r in rows])["rougeL"]
        out[mode] = {"unsupported_per_summary": sum(bad) / len(rows), "flagged_share": sum(b > 0 for b in bad) / len(rows),
                     "rougeL": float(rl.mean()), "carried_share": sum(shares) / max(len(shares), 1),
                     "seconds_per_summary": seconds / len(rows)}
    out["n"], out["beams"], out["candidates"] = len(rows), base.num_beams, candidates
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sample", type=Path, default=Path("/work/shared/data/kaggle_sample"))
    ap.add_argument("--model", default="/tmp/demo_mail/run/model")
    ap.add_argument("--test", type=Path, default=Path("/tmp/demo_mail/prepared/threads/test.jsonl"))
    ap.add_argument("--rerank-threads", type=int, default=40)
    ap.add_argument("--candidates", type=int, default=4)
    a = ap.parse_args()
    print("machine:", _cpu())
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        d, s = write_kaggle_csv(tmp, a.threads, seed=a.seed)
        synth = read_kaggle(d, s).threads
    res = {"synthetic": omissions(synth)}
    if (a.sample / "email_thread_details.csv").is_file():
        real = [t for t in read_kaggle(a.sample / "email_thread_details.csv",
                                       a.sample / "email_thread_summaries.csv").threads if t.summary]
        res["real"] = omissions(real)
        res["real_salience"] = salience(real)
    res["coverage_seconds"] = time.perf_counter() - t0
    if Path(a.model).is_dir() and a.test.is_file():
        res["rerank"] = rerank(a.model, a.test, a.rerank_threads, a.candidates)
    res["machine"] = _cpu()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
