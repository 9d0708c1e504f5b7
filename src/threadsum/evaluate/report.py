"""The evaluation report: report.md plus PNG plots, written next to metrics.json.

Plots: ROUGE by source length (model vs lead-k), prediction vs reference lengths, and the
training/validation loss curves of the run when its metrics.jsonl is available.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from threadsum.deps import require
from threadsum.evaluate.metrics import ROUGE_KEYS
from threadsum.verify import KINDS

VAL_LOSS_KEYS = ("val_loss", "eval_loss", "validation_loss")


def _plt():
    require("matplotlib", "train")
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def read_loss_curves(metrics_file: Path) -> dict[str, list[tuple[int, float]]]:
    """{'loss': [(step, value)], 'val_loss': [...]} from a run's metrics.jsonl (bad lines skipped)."""
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "val_loss": []}
    with Path(metrics_file).open(encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash mid-write
            if not isinstance(rec, dict) or "step" not in rec:
                continue
            step = rec["step"]
            if isinstance(rec.get("loss"), (int, float)):
                curves["loss"].append((int(step), float(rec["loss"])))
            for k in VAL_LOSS_KEYS:
                if isinstance(rec.get(k), (int, float)):
                    curves["val_loss"].append((int(step), float(rec[k])))
                    break
    return curves


def plot_rouge_by_length(rows: Sequence[dict], path: Path, baseline: str, buckets: int = 5) -> Optional[Path]:
    """Bar chart of mean ROUGE-L F1 (x100) of the model and one baseline per source-length bucket.

    Buckets are quantiles of the source length in tokens (at most ``buckets``, fewer when
    lengths repeat); each bar label gives its thread count.

    Args:
        rows: per-thread records with ``source_tokens``, ``rougeL`` and ``<baseline>.rougeL`` (F1 in [0, 1]).
        path: the PNG to write.
        baseline: the baseline's name, e.g. ``lead3``.
        buckets: the number of length buckets wanted.

    Returns:
        ``path``, or None when ``rows`` is empty (nothing is written).

    Raises:
        MissingExtraError: matplotlib (the ``train`` extra) is not installed.
    """
    if not rows:
        return None
    plt = _plt()
    lengths = np.array([r["source_tokens"] for r in rows], dtype=float)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, min(buckets, len(rows)) + 1)))
    if edges.size < 2:
        edges = np.array([lengths.min(), lengths.max() + 1])
    which = np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, edges.size - 2)
    labels, model_means, base_means, counts = [], [], [], []
    for b in range(edges.size - 1):
        sel = which == b
        if not sel.any():
            continue
        labels.append(f"{int(edges[b])}-{int(edges[b + 1])}")
        model_means.append(100 * np.mean([rows[i]["rougeL"] for i in np.flatnonzero(sel)]))
        base_means.append(100 * np.mean([rows[i][f"{baseline}.rougeL"] for i in np.flatnonzero(sel)]))
        counts.append(int(sel.sum()))
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, model_means, 0.4, label="model")
    ax.bar(x + 0.2, base_means, 0.4, label=f"baseline: {baseline}")
    ax.set_xticks(x, [f"{lab}\n(n={c})" for lab, c in zip(labels, counts)], fontsize=8)
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel("ROUGE-L F1 x100")
    ax.set_title("ROUGE-L by source length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lengths(rows: Sequence[dict], path: Path) -> Optional[Path]:
    """Scatter plot and histograms of prediction vs reference length, in words.

    Args:
        rows: per-thread records with ``prediction_words`` and ``reference_words``.
        path: the PNG to write.

    Returns:
        ``path``, or None when ``rows`` is empty (nothing is written).

    Raises:
        MissingExtraError: matplotlib (the ``train`` extra) is not installed.
    """
    if not rows:
        return None
    plt = _plt()
    pred = np.array([r["prediction_words"] for r in rows], dtype=float)
    ref = np.array([r["reference_words"] for r in rows], dtype=float)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.scatter(ref, pred, s=8, alpha=0.6)
    top = max(pred.max(), ref.max(), 1.0)
    a.plot([0, top], [0, top], "k--", lw=1, label="same length")
    a.set_xlabel("reference words")
    a.set_ylabel("prediction words")
    a.set_title("prediction vs reference length")
    a.legend()
    bins = np.linspace(0, top, 30)
    b.hist(ref, bins=bins, alpha=0.6, label="reference")
    b.hist(pred, bins=bins, alpha=0.6, label="prediction")
    b.set_xlabel("words")
    b.set_ylabel("threads")
    b.set_title("length distribution")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> Optional[Path]:
    """Training and validation loss against optimizer step.

    Args:
        curves: ``{"loss": [(step, loss), ...], "val_loss": [...]}`` as ``read_loss_curves`` returns.
        path: the PNG to write.

    Returns:
        ``path``, or None when both curves are empty (nothing is written).

    Raises:
        MissingExtraError: matplotlib (the ``train`` extra) is not installed.
    """
    if not curves.get("loss") and not curves.get("val_loss"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label, style in (("loss", "train loss", "-"), ("val_loss", "validation loss", "o-")):
        pts = sorted(curves.get(key) or [])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label, ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("training curves")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt_score(s: dict) -> str:
    if s is None or math.isnan(s["mean"]):
        return "-"
    lo, hi = s["ci95"]
    return f"{100 * s['mean']:.2f} ({100 * lo:.1f}-{100 * hi:.1f})"


def _clip(text: str, n: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def grounding_line(ground: dict[str, dict]) -> str:
    """One line: per system, the share of summaries with >= 1 unsupported claim and claims per summary."""
    if not ground:
        return "grounding: not checked"
    parts = [f"{name} {100 * g['flagged_share']:.0f}% ({g['unsupported_per_summary_total']:.2f}/summary)"
             for name, g in ground.items() if g.get("n")]
    return "grounding, summaries with an unsupported claim (unsupported claims per summary): " + ", ".join(parts)


def _grounding_section(ground: dict[str, dict], rows: Sequence[dict]) -> list[str]:
    """report.md lines: the grounding table per system and the model's worst examples with flagged spans."""
    if not ground:
        return []
    kinds = [k for k in KINDS if any(g["unsupported_per_summary"].get(k, 0) > 0 for g in ground.values())]
    lines = ["", "## Grounding (threadsum.verify)", "",
             "Each summary's people, organisations, amounts, numbers, dates, times, weekdays and actions checked "
             "against the thread the model read (cleaned, rendered, truncated as for the model); deterministic, "
             "no model. Columns per kind: unsupported claims per summary. Attribution errors: an action whose "
             "person is in the thread but did not write what the summary says.", "",
             "| system | summaries with >= 1 unsupported claim | unsupported per summary | "
             + " | ".join(kinds) + (" | " if kinds else "") + "attribution errors |",
             "|---|---:|---:|" + "---:|" * len(kinds) + "---:|"]
    for name, g in ground.items():
        label = "**model**" if name == "model" else name if name == "reference" else f"baseline: {name}"
        lines.append(f"| {label} | {100 * g['flagged_share']:.1f}% | {g['unsupported_per_summary_total']:.2f} | "
                     + "".join(f"{g['unsupported_per_summary'][k]:.2f} | " for k in kinds)
                     + f"{g['attribution_errors']} |")
    worst = sorted((r for r in rows if r.get("unsupported")), key=lambda r: -len(r["unsupported"]))[:3]
    if worst:
        lines += ["", "### Model summaries with the most unsupported claims", ""]
        for r in worst:
            lines += [f"- thread {r['thread_id']}: {_clip(r['prediction'])}"]
            lines += [f"  - **{c.text}** ({c.kind}): {c.reason}" for c in r["unsupported"][:8]]
    return lines + _coverage_section(ground, rows)


def _coverage_section(ground: dict[str, dict], rows: Sequence[dict]) -> list[str]:
    """report.md lines: share of the thread's important facts each system carries
    (``threadsum.verify.coverage``) and the model summaries that leave out the most."""
    have = {n: g for n, g in ground.items() if "carried_share" in g}
    if not have:
        return []
    lines = ["", "## Coverage (threadsum.verify.coverage)", "",
             "Important facts of each thread (amounts, dates and deadlines, requests, decisions, attachments, "
             "ranked by salience) and the share the summary carries; deterministic, no model.", "",
             "| system | important facts carried | left out per summary |", "|---|---:|---:|"]
    for name, g in have.items():
        label = "**model**" if name == "model" else name if name == "reference" else f"baseline: {name}"
        lines.append(f"| {label} | {100 * g['carried_share']:.1f}% | {g['left_out_per_summary']:.2f} |")
    worst = have.get("model", {}).get("least_covered") or []
    if worst:
        lines += ["", "### Model summaries that leave out the most", ""]
        for i, share, texts in worst:
            if i < len(rows):
                lines += [f"- thread {rows[i]['thread_id']} ({100 * share:.0f}% carried): {_clip(rows[i]['prediction'])}"]
                lines += [f"  - left out: {t}" for t in texts[:6]]
    return lines


def write_report(result: dict[str, Any], rows: Sequence[dict], out_dir: str | Path,
                 metrics_file: Optional[Path] = None) -> Path:
    """Write report.md and its plots into ``out_dir``; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baselines = result.get("baselines", {})
    lead = next((b for b in baselines if b.startswith("lead")), None)
    plots: list[tuple[str, Path]] = []
    if lead and rows:
        p = plot_rouge_by_length(rows, out / "rouge_by_source_length.png", lead)
        if p:
            plots.append(("ROUGE-L by source length", p))
    p = plot_lengths(rows, out / "lengths.png")
    if p:
        plots.append(("Prediction vs reference length", p))
    if metrics_file is not None and Path(metrics_file).exists():
        p = plot_loss_curves(read_loss_curves(Path(metrics_file)), out / "loss_curves.png")
        if p:
            plots.append(("Training and validation loss", p))

    L = result.get("lengths", {})
    lines = [
        f"# Evaluation: `{result.get('model_dir')}` on `{result.get('split')}`",
        "",
        f"- threads scored: {result.get('n_threads')} (empty predictions: {result.get('empty_predictions', 0)})",
        f"- device: {result.get('device')} ({result.get('dtype')}); speed: "
        f"{result['speed']['threads_per_s']:.2f} threads/s, {result['speed']['generated_tokens_per_s']:.0f} generated tokens/s "
        f"({result['speed']['seconds']:.1f} s)" if "speed" in result else "- speed: n/a",
        "- generation: " + ", ".join(f"{k}={v}" for k, v in (result.get("generation") or {}).items()),
        f"- ROUGE: rouge-score F1 with Porter stemming, ROUGE-Lsum over regex-split sentences; "
        f"95% intervals from {result.get('bootstrap_samples')} bootstrap resamples of the threads",
        "",
        "## ROUGE (F1 x100, 95% CI)",
        "",
        "| system | " + " | ".join(ROUGE_KEYS) + " | mean words |",
        "|---|" + "---:|" * (len(ROUGE_KEYS) + 1),
        "| **model** | " + " | ".join(_fmt_score(result["model"].get(k)) for k in ROUGE_KEYS)
        + f" | {L.get('prediction_words', {}).get('mean', float('nan')):.0f} |",
    ]
    for name, scores in baselines.items():
        lines.append(f"| baseline: {name} | " + " | ".join(_fmt_score(scores.get(k)) for k in ROUGE_KEYS)
                     + f" | {L.get(f'{name}_words', {}).get('mean', float('nan')):.0f} |")
    lines.append(f"| reference | | | | | {L.get('reference_words', {}).get('mean', float('nan')):.0f} |")
    if lead:
        delta = 100 * (result["model"]["rougeL"]["mean"] - baselines[lead]["rougeL"]["mean"])
        lines += ["", f"ROUGE-L of the model minus {lead}: {delta:+.2f} points."]

    lines += _grounding_section(result.get("grounding") or {}, rows)

    lines += ["", "## Lengths", "", "| | mean | median | p10 | p90 | max |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in (("prediction_words", "prediction (words)"), ("reference_words", "reference (words)"),
                       ("prediction_tokens", "prediction (tokens)"), ("source_tokens", "source (tokens)")):
        s = L.get(key) or {}
        if s.get("n"):
            lines.append(f"| {label} | {s['mean']:.1f} | {s['median']:.0f} | {s['p10']:.0f} | {s['p90']:.0f} | {s['max']:.0f} |")

    if plots:
        lines += ["", "## Plots", ""]
        for title, p in plots:
            lines += [f"### {title}", "", f"![{title}]({p.name})", ""]

    if rows:
        ranked = sorted(rows, key=lambda r: r["rougeL"])
        picks = [("lowest ROUGE-L", ranked[0]), ("median ROUGE-L", ranked[len(ranked) // 2]), ("highest ROUGE-L", ranked[-1])]
        lines += ["## Examples", ""]
        for title, r in picks:
            lines += [f"### {title}: thread {r['thread_id']} (ROUGE-L {100 * r['rougeL']:.1f})", "",
                      f"- reference: {_clip(r['reference'])}", f"- prediction: {_clip(r['prediction']) or '(empty)'}", ""]

    lines += ["Files: `predictions.jsonl` (thread_id, reference, prediction), `metrics.json`."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
