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
- Grounded reranking on a trained model's held-out threads: rerank none vs grounding over the beams
  the model already searches, and over ``--candidates`` (the beam width raised to that many):
  unsupported claims per summary, share with any, ROUGE-L, important facts carried, seconds per
  summary; and what the rule had to choose from: distinct candidates per thread, unsupported claims
  of the top beam and of the best candidate (no rule over these candidates can do better), seconds
  spent choosing.
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


def _scores(idxs, preds, rows) -> dict:
    from threadsum.evaluate.metrics import rouge_scores

    bad = [sum(not c.supported for c in check_indexed(ix, p)) for ix, p in zip(idxs, preds)]
    shares = []
    for ix, p in zip(idxs, preds):
        imp = [f for f in coverage_indexed(ix, p) if f.important]
        if imp:
            shares.append(sum(f.carried for f in imp) / len(imp))
    rl = rouge_scores(preds, [r["summary"] for r in rows])["rougeL"]
    return {"unsupported_per_summary": sum(bad) / len(rows), "flagged_share": sum(b > 0 for b in bad) / len(rows),
            "rougeL": float(rl.mean()), "carried_share": sum(shares) / max(len(shares), 1)}


def _sampled(summarizer, rows, idxs, k: int, top: list) -> dict:
    """What real choice would give: the top beam plus ``k`` nucleus samples (top_p 0.9, seed 0) per thread,
    the grounded rule over them. Not a decoding mode of threadsum (sampling is not reproducible across
    batchings); it bounds what more varied candidates could buy with this model."""
    import torch

    from threadsum.verify.rerank import choose_grounded

    gen, tok, model = summarizer.cfg.eval.generation, summarizer.engine.tokenizer, summarizer.engine.model
    torch.manual_seed(0)
    t0 = time.perf_counter()
    picked, per = [], []
    for r, ix, best in zip(rows, idxs, top):
        enc = summarizer.source_tokenizer([r["source"]], truncation=True, max_length=summarizer.max_source_tokens,
                                          return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**enc, do_sample=True, top_p=0.9, num_beams=1, num_return_sequences=k,
                                 max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens,
                                 no_repeat_ngram_size=gen.no_repeat_ngram_size)
            ids = summarizer.family.new_tokens(ids, enc["input_ids"].shape[1])
        cands = [best] + [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
        picked.append(cands[choose_grounded(ix, cands)])
        per.append([sum(not c.supported for c in check_indexed(ix, t)) for t in cands])
    res = _scores(idxs, picked, rows)
    res.update({"distinct_candidates": sum(len(set(p)) for p in per) / len(per),
                "unsupported_best_candidate": sum(min(p) for p in per) / len(per),
                "sampling_seconds_per_summary": (time.perf_counter() - t0) / len(rows)})
    return res


def rerank(model: str, test: Path, n_threads: int, candidates: int, sampled: int = 0) -> dict:
    import torch

    import threadsum.verify.rerank as rr
    from threadsum.inference.summarizer import Summarizer

    torch.set_num_threads(2)
    rows = [json.loads(line) for line in test.read_text().splitlines() if line.strip()][:n_threads]
    summarizer = Summarizer.from_pretrained(model, device="cpu")
    base = summarizer.cfg.eval.generation
    idxs = [index_thread(rr.rendered_thread(r["source"])) for r in rows]
    out = {}
    summarizer.generate([rows[0]["source"]], batch_size=1)  # warm-up
    seen: list[tuple] = []  # (thread index, candidates) of every choice, and the time choosing took
    choose_grounded = rr.choose_grounded

    def recording(idx, cands, scores=()):
        t = time.perf_counter()
        k = choose_grounded(idx, cands, scores)
        seen.append((idx, list(cands), time.perf_counter() - t))
        return k

    rr.choose_grounded = recording
    # "none" keeps the model's beams; "grounding" at the model's beam width reranks the beams it already
    # searches (no extra generation); at ``candidates`` the beam width is raised to that many
    modes = [("none", "none", candidates), (f"grounding ({base.num_beams} candidates = beams)", "grounding",
             max(2, base.num_beams)), (f"grounding ({candidates} candidates)", "grounding", candidates)]
    preds: dict[str, list[str]] = {name: [] for name, _, _ in modes}
    seconds = dict.fromkeys(preds, 0.0)
    chosen_from: dict[str, list[tuple]] = {name: [] for name in preds}
    try:
        # modes take turns on chunks of threads, so a change in the machine's load falls on all of them alike
        for c in range(0, len(rows), 8):
            chunk = [r["source"] for r in rows[c:c + 8]]
            for name, mode, n in modes:
                summarizer.cfg.eval.generation = base.model_copy(update={"rerank": mode, "rerank_candidates": n})
                seen.clear()
                t0 = time.perf_counter()
                preds[name] += summarizer.generate(chunk)
                seconds[name] += time.perf_counter() - t0
                chosen_from[name] += seen
    finally:
        rr.choose_grounded = choose_grounded
        summarizer.cfg.eval.generation = base
    for name in preds:
        out[name] = _scores(idxs, preds[name], rows)
        out[name]["seconds_per_summary"] = seconds[name] / len(rows)
        seen = chosen_from[name]
        if seen:  # what the rule had to choose from
            per = [[sum(not c.supported for c in check_indexed(ix, t)) for t in cands] for ix, cands, _ in seen]
            out[name].update({"distinct_candidates": sum(len(set(c)) for _, c, _ in seen) / len(seen),
                              "unsupported_top_beam": sum(p[0] for p in per) / len(per),
                              "unsupported_best_candidate": sum(min(p) for p in per) / len(per),
                              "choose_seconds_per_summary": sum(t for _, _, t in seen) / len(seen)})
    if sampled:
        out[f"sampled (top beam + {sampled} samples)"] = _sampled(summarizer, rows, idxs, sampled, preds["none"])
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
    ap.add_argument("--sampled", type=int, default=8, help="samples beside the top beam for the bound (0: skip)")
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
        # the rules were designed on the synthetic corpus and the first five real threads; the last five are held out
        res["real_salience_first5"], res["real_salience_last5"] = salience(real[:5]), salience(real[5:])
    res["coverage_seconds"] = time.perf_counter() - t0
    if Path(a.model).is_dir() and a.test.is_file():
        res["rerank"] = rerank(a.model, a.test, a.rerank_threads, a.candidates, a.sampled)
    res["machine"] = _cpu()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
