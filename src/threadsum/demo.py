"""`threadsum demo`: the whole job, offline, on a CPU, in minutes.

synthetic Kaggle-format corpus -> prepare -> train the tiny recipe -> evaluate (ROUGE next to
baselines on held-out threads) -> summarize one held-out thread. Every step is the real code path
a user takes with their own data; only the corpus and the model size are small.
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.table import Table

from threadsum.config import Config, ConfigError, load_config

DEMO_THREADS = 900
"""Enough threads for the tiny model to learn the summary style in a few CPU minutes."""


def packaged_config(name: str) -> Path:
    """Path of a recipe shipped inside the package (configs/ in the repository)."""
    return Path(str(resources.files("threadsum") / "configs" / f"{name}.yaml"))


DEMO_RECIPES = {"seq2seq": "tiny", "causal": "tiny-causal"}
"""The packaged recipe the demo trains for each model family."""


def demo_config(out_dir: Path, overrides: list[str], family: str = "seq2seq") -> Config:
    """The packaged ``tiny`` (or, ``family='causal'``, ``tiny-causal``) config with the corpus,
    prepared data and run placed under ``out_dir``.

    Args:
        out_dir: the demo's output folder (raw/, prepared/, run/ go under it).
        overrides: ``section.key=value`` strings applied after those three paths.
        family: 'seq2seq' (a tiny BART) or 'causal' (a tiny decoder-only Llama with a chat template).

    Raises:
        ConfigError: an override is malformed or names an unknown setting (from ``load_config``).
    """
    out_dir = Path(out_dir)
    base = [
        f"data.source={out_dir / 'raw'}",
        f"data.prepared_dir={out_dir / 'prepared'}",
        f"train.output_dir={out_dir / 'run'}",
    ]
    if family not in DEMO_RECIPES:
        raise ConfigError(f"demo --family '{family}' is not known; use one of {', '.join(DEMO_RECIPES)}")
    return load_config(packaged_config(DEMO_RECIPES[family]), base + list(overrides))


def run_demo(out_dir: Path, threads: Optional[int] = None, overrides: Optional[list[str]] = None,
             family: str = "seq2seq") -> int:
    """Run the whole demo (synthetic corpus, prepare, train, evaluate, summarize one test thread),
    print the ROUGE table next to the baselines and write ``demo.json`` under ``out_dir``.

    Args:
        out_dir: the output folder.
        threads: number of synthetic threads (default ``DEMO_THREADS``).
        overrides: config overrides (``section.key=value``) for ``demo_config``.
        family: which tiny model to train ('seq2seq' or 'causal', see ``demo_config``).

    Returns:
        0, the CLI exit code; the steps' own errors propagate.
    """
    from threadsum.data.prepare import prepare
    from threadsum.data.synth import write_kaggle_csv
    from threadsum.evaluate.report import grounding_line
    from threadsum.evaluate.run import evaluate
    from threadsum.inference.summarizer import Summarizer
    from threadsum.train.loop import train

    console = Console()
    out_dir = Path(out_dir)
    n_threads = threads or DEMO_THREADS
    cfg = demo_config(out_dir, overrides or [], family)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    console.rule("[bold]1/5 synthetic corpus (Kaggle CSV format)")
    t = time.perf_counter()
    details, summaries = write_kaggle_csv(out_dir / "raw", n_threads, seed=0)
    timings["synth"] = time.perf_counter() - t
    console.print(f"wrote {details} and {summaries} ({n_threads} threads)")

    console.rule("[bold]2/5 prepare")
    t = time.perf_counter()
    counts = prepare(cfg)
    timings["prepare"] = time.perf_counter() - t
    console.print(f"prepared dataset in {cfg.data.prepared_dir} (report: {Path(cfg.data.prepared_dir) / 'report.md'})")

    console.rule(f"[bold]3/5 train (tiny random-init {cfg.model.tiny.architecture}, CPU)")
    t = time.perf_counter()
    record = train(cfg)
    timings["train"] = time.perf_counter() - t
    model_dir = Path(cfg.train.output_dir) / "model"
    console.print(f"model in {model_dir}")

    console.rule("[bold]4/5 evaluate on held-out test threads")
    t = time.perf_counter()
    metrics = evaluate(cfg, str(model_dir), split="test")
    timings["evaluate"] = time.perf_counter() - t

    console.rule("[bold]5/5 summarize one held-out thread")
    from threadsum.data.prepared import open_prepared

    example = next(open_prepared(cfg.data.prepared_dir).threads("test"))
    summarizer = Summarizer.from_pretrained(str(model_dir), device="cpu")
    t = time.perf_counter()
    summary = summarizer.generate([example["source"]])[0]  # source is already cleaned and rendered
    timings["summarize"] = time.perf_counter() - t
    console.print(f"[bold]thread {example['thread_id']}[/bold] (subject: {example.get('subject', '')})")
    console.print(f"[bold]reference:[/bold] {example['summary']}")
    console.print(f"[bold]model:[/bold]     {summary}")

    total = time.perf_counter() - t_start
    table = Table(title=f"held-out ROUGE ({metrics.get('n_threads', '?')} test threads, F1 x 100)")
    table.add_column("system")
    for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        table.add_column(k, justify="right")
    rows = [("threadsum tiny model", metrics["model"])]
    for name, scores in metrics.get("baselines", {}).items():
        rows.append((f"baseline: {name}", scores))
    for name, scores in rows:
        table.add_row(name, *[f"{100 * _f1(scores, k):.1f}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")])
    console.print(table)
    console.print(grounding_line(metrics.get("grounding") or {}))

    lead = metrics.get("baselines", {}).get("lead3")
    model_l = _f1(metrics["model"], "rougeL")
    summary_out = {
        "wall_seconds": round(total, 1),
        "timings_seconds": {k: round(v, 1) for k, v in timings.items()},
        "threads": n_threads,
        "prepare_counts": counts,
        "train": {k: record.get(k) for k in ("status", "steps", "epochs", "tokens_per_second", "final_val_loss") if isinstance(record, dict)},
        "rougeL_model": model_l,
        "rougeL_lead3": _f1(lead, "rougeL") if lead else None,
        "grounding": {name: {k: g[k] for k in ("flagged_share", "unsupported_per_summary_total", "attribution_errors")}
                      for name, g in (metrics.get("grounding") or {}).items()},
        "example": {"thread_id": example["thread_id"], "reference": example["summary"], "prediction": summary},
        "outputs": {
            "raw": str(out_dir / "raw"),
            "prepared": cfg.data.prepared_dir,
            "run": cfg.train.output_dir,
            "model": str(model_dir),
            "evaluation": metrics.get("output_dir"),
        },
    }
    (out_dir / "demo.json").write_text(json.dumps(summary_out, indent=2, default=str))
    outputs = Table(title="where everything went", show_header=False)
    for k, v in summary_out["outputs"].items():
        outputs.add_row(k, str(v))
    outputs.add_row("demo summary", str(out_dir / "demo.json"))
    console.print(outputs)
    verdict = "beats" if lead and model_l > _f1(lead, "rougeL") else "does NOT beat"
    console.print(
        f"[bold]held-out ROUGE-L: model {100 * model_l:.1f} {verdict} lead-3 baseline "
        f"{100 * _f1(lead, 'rougeL'):.1f}[/bold]" if lead else f"held-out ROUGE-L: {100 * model_l:.1f}"
    )
    console.print(f"demo finished in {total:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    return 0


def _f1(scores, key: str) -> float:
    """Scores are stored as {'rougeL': {'mean': x, 'ci95': [lo, hi]}}."""
    if scores is None:
        return float("nan")
    return float(scores[key]["mean"])
