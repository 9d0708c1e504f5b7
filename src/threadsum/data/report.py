"""The data report of `prepare`: report.md plus PNG plots (matplotlib, headless Agg backend)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def _pct(xs: list[int], q: float) -> int:
    if not xs:
        return 0
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def _plots(out: Path, records: dict, final_tokens: list[int], raw_sample: list[int], clean_tokens: list[int],
           target_lengths: list[int], reasons: Counter, max_source: int, max_target: int) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the report still has every number without the pictures
        return []
    made = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append(name)

    # np.histogram on the lengths already in memory, drawn as one filled step artist per series
    # (ax.hist draws one rectangle per bin; the same picture costs ~2x the CPU)
    import numpy as np

    n_emails = [r["n_emails"] for recs in records.values() for r in recs]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(*np.histogram(n_emails, bins=range(1, max(n_emails + [2]) + 2)), fill=True, color="#4c72b0")
    ax.set(title="emails per thread (after cleaning)", xlabel="emails", ylabel="threads")
    save(fig, "emails_per_thread.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    hi = max(raw_sample + clean_tokens + [max_source]) if (raw_sample or clean_tokens) else max_source
    bins = [i * hi / 40 for i in range(41)]
    if raw_sample:
        ax.stairs(*np.histogram(raw_sample, bins=bins, density=True), fill=True, alpha=0.5, label="raw (sample)")
    ax.stairs(*np.histogram(clean_tokens, bins=bins, density=True), fill=True, alpha=0.5, label="cleaned")
    ax.axvline(max_source, color="k", ls="--", lw=1, label=f"budget {max_source}")
    ax.set(title="source tokens per thread", xlabel="tokens", ylabel="density")
    ax.legend()
    save(fig, "source_tokens.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.stairs(*np.histogram(target_lengths, bins=30), fill=True, color="#55a868")
    ax.axvline(max_target, color="k", ls="--", lw=1, label=f"budget {max_target}")
    ax.set(title="summary tokens", xlabel="tokens", ylabel="threads")
    ax.legend()
    save(fig, "target_tokens.png")

    if reasons:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(reasons)))
        items = reasons.most_common()
        ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#c44e52")
        ax.set(title="rejects by reason", xlabel="count")
        save(fig, "rejects.png")
    return made


def _audit_lines(steps: dict[str, Any]) -> list[str]:
    """The cleaning audit: what each step removed, how much of it was found nowhere else in the thread
    (unique), and whether a specific boilerplate pattern matched every unique removal."""
    L = ["", "### What each step removed (audit)", "",
         "Unique: found nowhere else in the thread after the step. A step may remove unique text only as a whole "
         "block matched by a specific pattern (disclaimer, signature, mobile footer, quoted header, recipient list "
         "cut, ...); 'unique outside blocks' must be 0.", "",
         "| step | chars removed | unique chars removed | unique words removed | unique words outside blocks | "
         "matched blocks |", "|---|---:|---:|---:|---:|---|"]
    examples = []
    for name, st in steps.items():
        a = st.get("audit")
        if not a or not st["enabled"]:
            continue
        blocks = ", ".join(f"{k} {v:,}" for k, v in sorted(a["blocks"].items())) or "-"
        L.append(f"| {name} | {a['removed_chars']:,} | {a['unique_chars']:,} | {a['unique_words']:,} | "
                 f"{a['unique_words_unmatched']:,} | {blocks} |")
        for ex in a["unmatched_examples"] + a["examples"]:
            examples.append((name, ex))
    if examples:
        L += ["", "First unique removals per step (thread, email index, field, matched block):", ""]
        seen = set()
        for name, ex in examples:
            key = (name, ex["thread_id"], ex["email"], ex["text"])
            if key in seen:
                continue
            seen.add(key)
            text = " ".join(ex["text"].split())[:160].replace("|", "\\|")
            L.append(f"- `{name}` thread {ex['thread_id']}, email {ex['email']}, {ex['field']}, "
                     f"{ex['block'] or 'NO PATTERN'}: \"{text}\"")
    return L


def _audit_warning_lines(info: dict[str, Any]) -> list[str]:
    """A warning section when some step removed unique text outside matched blocks (none otherwise)."""
    n = (info.get("warnings") or {}).get("unique_text_removed", 0)
    if not n:
        return []
    L = ["", f"**Warning: cleaning removed unique text outside matched blocks {n:,} time(s)** (every one in "
         "`warnings.jsonl`, reason `unique_text_removed`; `data.strict` fails on it). The first:", ""]
    for w in info.get("audit_warnings", []):
        words = " ".join(w["words"].split())[:160].replace("|", "\\|")
        L.append(f"- thread {w['thread_id']}, `{w['step']}`, email {w['email']}, {w['field']}: \"{words}\"")
    return L


def write_report(out: Path, info: dict[str, Any], records: dict, final_tokens: list[int], raw_sample: list[int],
                 target_lengths: list[int], rejects: list[dict]) -> None:
    """Write ``report.md`` into ``out``: counts (input = kept + rejected), rejects by reason, repaired
    rows, per-step cleaning figures, token lengths, truncation and provenance, with plots (emails per
    thread, source and target tokens, rejects) when matplotlib is installed.

    Args:
        out: the prepared folder.
        info: the prepare summary (counts, truncation limits, cleaning stats, splits, warnings).
        records: per split, one record per thread with its token counts.
        final_tokens: source length of each thread after cleaning and truncation, in tokens.
        raw_sample: source lengths of a sample of threads before cleaning, in tokens.
        target_lengths: summary lengths, in tokens.
        rejects: the reject records (``level``, ``reason``, ...).
    """
    clean_tokens = [r["clean_tokens"] for recs in records.values() for r in recs]
    reasons = Counter(f"{r['level']}: {r['reason']}" for r in rejects)
    tr = info["truncation"]
    plots = _plots(out, records, final_tokens, raw_sample, clean_tokens, target_lengths, reasons,
                   tr["max_source_tokens"], tr["max_target_tokens"])
    L = [f"# Data report: {info['source']}", ""]
    L += ["## Counts (input = kept + rejected)", "", "| | input | kept | rejected |", "|---|---:|---:|---:|"]
    for what in ("threads", "emails"):
        c = info[what]
        ok = "" if c["input"] == c["kept"] + c["rejected"] else " (does not add up!)"
        L.append(f"| {what} | {c['input']} | {c['kept']} | {c['rejected']}{ok} |")
    s = info["summaries"]
    L.append(f"| summary rows | {s['input']} | {s['kept']} | {s['input'] - s['kept']} |")
    L += ["", f"A summary row is kept when it is paired with a kept thread: {s['rejected']:,} rejected as rows "
          f"(see below), {s['unpaired']:,} valid but without a kept thread (no emails for its thread id, or the "
          f"thread was rejected)."]
    L += ["", "Splits: " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()), ""]
    if reasons:
        L += ["## Rejects by reason", "", "| level: reason | count |", "|---|---:|"]
        L += [f"| {k} | {v} |" for k, v in reasons.most_common()]
        L += ["", "Every rejected row/thread is in `rejects.jsonl` with its reason and location.", ""]
    if info.get("warnings"):
        L += ["## Repaired (kept) rows", "", "| reason | count |", "|---|---:|"]
        L += [f"| {k} | {v} |" for k, v in info["warnings"].items()]
        L += ["", "Details in `warnings.jsonl`.", ""]
    cl = info["cleaning"]
    L += ["## Cleaning, step by step (over the whole corpus)", "",
          "Words are whitespace-separated tokens (the model tokenizer is trained after cleaning).", "",
          "| step | on | chars before | chars after | words before | words after | emails changed |",
          "|---|---|---:|---:|---:|---:|---:|"]
    for name, st in cl["steps"].items():
        L.append(f"| {name} | {'yes' if st['enabled'] else 'no'} | {st['chars_before']:,} | {st['chars_after']:,} | "
                 f"{st['words_before']:,} | {st['words_after']:,} | {st['emails_changed']:,} |")
    L += _audit_lines(cl["steps"])
    L += _audit_warning_lines(info)
    qb = cl["quoted_blocks"]
    L += ["", f"Quoted blocks removed as duplicates of thread text: {qb['removed']:,}; "
          f"kept because their content exists nowhere else in the thread: {qb['kept_unique']:,}. "
          f"Exact-duplicate emails dropped: {cl['duplicate_emails']:,}.", ""]
    tk = info["tokens"]
    L += ["## Lengths (model tokenizer)", "",
          "| | median | p90 | p99 | max |", "|---|---:|---:|---:|---:|"]
    for label, xs in (("source, raw (sample)", raw_sample), ("source, cleaned", clean_tokens),
                      ("source, final (after truncation)", final_tokens), ("summary", target_lengths)):
        L.append(f"| {label} | {_pct(xs, .5)} | {_pct(xs, .9)} | {_pct(xs, .99)} | {max(xs) if xs else 0} |")
    if tk["source_raw_sample_total"]:
        L += ["", f"On a sample of {tk['source_raw_sample_threads']} threads cleaning kept "
              f"{tk['source_clean_sample_total'] / tk['source_raw_sample_total']:.0%} of the raw tokens."]
    L += ["", "## Truncation", "",
          f"- policy `{tr['policy']}`, budget {tr['max_source_tokens']} tokens: {tr['threads_truncated']} threads "
          f"truncated ({tr['share_truncated']:.1%}); {tr['tokens_kept_share']:.1%} of cleaned source tokens kept; "
          f"{tr['emails_dropped']} emails left out of the middle of long threads.",
          f"- summaries longer than {tr['max_target_tokens']} tokens: {tr['targets_truncated']}.", ""]
    if plots:
        L += ["## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots] + [""]
    hit = info["cache"]
    L += ["## Provenance", "", f"- cache key `{hit['key']}`", f"- tokenizer: {info['tokenizer']['source']} "
          f"(vocab {info['tokenizer']['vocab_size']})",
          "- timings (s): " + ", ".join(f"{k} {v}" for k, v in info["timings_s"].items()), ""]
    (out / "report.md").write_text("\n".join(L), encoding="utf-8")
