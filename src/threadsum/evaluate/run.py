"""`threadsum evaluate`: generate summaries for a prepared split, score them, write the report.

    evaluate(cfg, "outputs/run/model", split="test")
      -> outputs/run/eval-test/{predictions.jsonl, metrics.json, report.md, *.png}

Generation runs in length-sorted batches (longest first, so an out-of-memory shows up in the
first batch, not after an hour) under ``torch.inference_mode`` and never asks ``generate`` for
scores: only token ids leave the model, so memory stays flat however large the split is.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from threadsum.config import Config
from threadsum.data.prepared import SPLITS, PreparedDataError, open_prepared
from threadsum.data.tokenizer_check import check_tokenizer_matches
from threadsum.family import check_prepared_family
from threadsum.data.types import Thread
from threadsum.deps import require
from threadsum.errors import UserError
from threadsum.evaluate import metrics as M
from threadsum.generation import generate_batches  # noqa: F401 - re-exported for callers of evaluate.run
from threadsum.verify import Claim, check_indexed, coverage_indexed, grounding_stats, index_thread
from threadsum.verify.rerank import grounded_chooser, rendered_thread

if TYPE_CHECKING:  # pragma: no cover
    from threadsum.inference.engine import Engine

log = logging.getLogger(__name__)


class EvaluationError(UserError):
    """Evaluation cannot run with these inputs; the message says what to change."""


# ---------------------------------------------------------------------------------- grounding
def source_thread(record: dict) -> Thread:
    """The thread as the model read it (the prepared record's cleaned, rendered source) for grounding.

    The rendered From:/To:/Date: lines stay in the one body, where ``threadsum.verify`` finds each
    email's author again; facts cut by truncation count as unsupported, as the model never saw them.
    """
    return rendered_thread(record.get("source") or "", str(record.get("thread_id")), record.get("subject") or "")


def grounding(records: Sequence[dict], systems: dict[str, Sequence[str]]) -> tuple[dict, dict[str, list[list[Claim]]]]:
    """Check every system's summaries against their threads.

    Returns ({system: grounding_stats(...)}, {system: [claims of summary i]}); ``systems`` maps a
    name ('model', 'lead3', 'reference', ...) to one summary per record.
    """
    indexes = [index_thread(source_thread(r)) for r in records]
    claims = {name: [check_indexed(ix, text or "") for ix, text in zip(indexes, texts)] for name, texts in systems.items()}
    stats = {name: grounding_stats(c) for name, c in claims.items()}
    for name, texts in systems.items():
        stats[name].update(coverage_stats([coverage_indexed(ix, text or "") for ix, text in zip(indexes, texts)]))
    return stats, claims


def coverage_stats(facts_per_summary: Sequence[Sequence]) -> dict[str, Any]:
    """{"carried_share": mean over summaries of the share of the thread's important facts carried (0-1;
    threads with none left out of the mean), "left_out_per_summary": mean important facts not carried,
    "least_covered": [(position, share, [left-out fact texts])] for the five lowest shares}."""
    shares, left = [], []
    for i, facts in enumerate(facts_per_summary):
        important = [f for f in facts if f.important]
        left.append(sum(not f.carried for f in important))
        if important:
            shares.append((sum(f.carried for f in important) / len(important), i,
                           [f.text[:80] for f in important if not f.carried]))
    worst = sorted(shares, key=lambda s: (s[0], s[1]))[:5]
    return {"carried_share": sum(s for s, _, _ in shares) / len(shares) if shares else float("nan"),
            "left_out_per_summary": sum(left) / len(left) if left else float("nan"),
            "least_covered": [(i, share, texts) for share, i, texts in worst]}


# -------------------------------------------------------------------------------------- main
def default_output_dir(model_dir: str, split: str) -> Path:
    """Where ``evaluate`` writes when no output folder is given: ``eval-<split>`` next to an existing
    model folder, else ``outputs/eval-<model name>-<split>`` (for a hub id).
    """
    p = Path(model_dir)
    if p.exists():
        return p.resolve().parent / f"eval-{split}"
    return Path("outputs") / f"eval-{p.name or 'model'}-{split}"


def _load(model_dir: str, cfg: Config, prepared_tokenizer_dir: Path) -> "Engine":
    """The engine for ``model_dir`` (``inference.engine``; auto: ctranslate2 for an exported folder)."""
    require("torch", "train")
    require("transformers", "train")
    from threadsum.inference.engine import load_engine
    from threadsum.model import load_tokenizer

    tokenizer = None
    if Path(model_dir).is_dir() and not any((Path(model_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        log.warning("%s holds no tokenizer; using the prepared data's tokenizer %s", model_dir, prepared_tokenizer_dir)
        tokenizer = load_tokenizer(str(prepared_tokenizer_dir))
    return load_engine(model_dir, cfg.inference.engine, cfg.eval.device, cfg.eval.dtype, tokenizer=tokenizer,
                       threads=cfg.inference.threads)


def _trained_on(model_dir: str) -> Optional[str]:
    """data.prepared_dir of the config saved with the model, if any."""
    try:
        import yaml

        saved = yaml.safe_load((Path(model_dir) / "config.yaml").read_text()) or {}
        return (saved.get("data") or {}).get("prepared_dir")
    except (OSError, ValueError, AttributeError):
        return None


def _read_split(cfg: Config, split: str, model_dir: str = "") -> tuple[Any, list[list[int]], list[dict]]:
    try:
        prepared = open_prepared(cfg.data.prepared_dir)
    except PreparedDataError as exc:
        trained_on = _trained_on(model_dir)
        if trained_on and trained_on != cfg.data.prepared_dir:
            raise PreparedDataError(f"{exc}\nThe model in {model_dir} was trained on data.prepared_dir={trained_on}: "
                                    f"pass its config (-c {Path(model_dir) / 'config.yaml'}) or the override "
                                    f"data.prepared_dir={trained_on}") from None
        raise
    dsd = prepared.datasets()
    if split not in dsd:
        raise EvaluationError(f"split '{split}' is not in {prepared.tokenized_dir} (it has: {', '.join(dsd.keys())})")
    ds = dsd[split]
    if len(ds) == 0:
        raise EvaluationError(f"split '{split}' of {cfg.data.prepared_dir} is empty; raise data.{split}_fraction "
                              f"(or data.test_fraction) and prepare again")
    by_id = {str(r["thread_id"]): r for r in prepared.threads(split)}
    ids, seqs, records = ds["thread_id"], ds["input_ids"], []
    sequences: list[list[int]] = []
    missing = 0
    for tid, seq in zip(ids, seqs):
        rec = by_id.get(str(tid))
        if rec is None:
            missing += 1
            continue
        records.append(rec)
        sequences.append(seq)
        if cfg.eval.max_threads and len(records) >= cfg.eval.max_threads:
            break
    if missing:
        log.warning("%d tokenized threads of split '%s' have no record in %s; they are skipped",
                    missing, split, prepared.threads_file(split))
    if not records:
        raise EvaluationError(f"no thread of split '{split}' has both tokens and a record; prepare the data again")
    return prepared, sequences, records


def evaluate(cfg: Config, model_dir: str, split: str = "test", output_dir: Optional[str] = None) -> dict:
    """Score ``model_dir`` on a prepared split against the baselines; write predictions, metrics and report."""
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    from threadsum.track import RunTracker

    out = Path(output_dir) if output_dir else default_output_dir(model_dir, split)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(model_dir).resolve().parent if Path(model_dir).exists() else None

    # results go onto the training run when the model sits in a run folder, else a run of their own
    tracker = RunTracker(cfg, run_dir, kind="train") if run_dir is not None else None
    attached = tracker is not None and tracker.attach()
    if not attached:
        tracker = RunTracker(cfg, out, kind="evaluate")
        tracker.start()
        tracker.log_params({"eval.model_dir": str(model_dir), "eval.split_evaluated": split})
    try:
        result = _evaluate(cfg, model_dir, split, out, run_dir)
    except BaseException as exc:
        if not attached:
            from threadsum.track import classify_failure

            status, cause = classify_failure(exc)
            tracker.finish(status, cause=cause)
        raise

    flat = {f"{split}/{k}": v for k, v in _flat_scores(result).items()}
    step = int(tracker.record.get("last_step") or 0)
    tracker.log_metrics(flat, step=step)
    for name in ("report.md", "metrics.json", *sorted(p.name for p in out.glob("*.png"))):
        tracker.log_artifact(out / name)
    card = Path(model_dir) / "README.md"
    if attached and card.exists():
        tracker.log_artifact(card)
    tracker.update_summary({"eval": {split: {**_flat_scores(result), "n_threads": result["n_threads"],
                                             "threads_per_s": result["speed"]["threads_per_s"], "output_dir": str(out)}}})
    if attached:
        tracker.close()
    else:
        tracker.finish("FINISHED", last_step=step)
    result["tracking"] = {"run_record": str(tracker.record_path), "mlflow_run_id": tracker.run_id}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _flat_scores(result: dict) -> dict[str, float]:
    flat = {k: v["mean"] for k, v in result["model"].items()}
    for name, scores in result["baselines"].items():
        flat.update({f"baseline.{name}.{k}": v["mean"] for k, v in scores.items()})
    return flat


def _evaluate(cfg: Config, model_dir: str, split: str, out: Path, run_dir: Optional[Path]) -> dict:
    from threadsum.evaluate.report import write_report

    prepared, sequences, records = _read_split(cfg, split, model_dir)
    engine = _load(model_dir, cfg, prepared.tokenizer_dir)
    check_prepared_family(prepared.root, engine.family)  # prompts for a causal model, sources for seq2seq
    trained_on = _trained_on(model_dir)
    check_tokenizer_matches(
        prepared.root, engine.tokenizer, model_tokenizer=str(model_dir),
        fix=("Fix: point data.prepared_dir at the data the model was trained on"
             + (f" (its config.yaml says data.prepared_dir={trained_on})" if trained_on else "")
             + f", or prepare this data again for it with model.tokenizer={model_dir}"),
    )
    vocab = engine.vocab_size
    top = max((max(s) for s in sequences if s), default=0)
    if top >= vocab:
        raise EvaluationError(
            f"the prepared data has token id {top} but the model's vocabulary has {vocab} entries: "
            f"{cfg.data.prepared_dir} was tokenized with a different tokenizer than {model_dir}. "
            f"Point data.prepared_dir at the data the model was trained on (or prepare again with model.tokenizer={model_dir})"
        )

    gen = cfg.eval.generation
    n = len(records)
    predictions: list[str] = [""] * n
    pred_tokens: list[int] = [0] * n
    t0 = time.perf_counter()
    done = 0
    # rerank: grounding keeps, of each thread's candidates, the one its thread supports best (verify.rerank)
    choose = grounded_chooser([source_thread(r) for r in records]) if gen.rerank == "grounding" else None
    for batch in engine.generate_batches(sequences, gen, choose=choose):
        idx = batch.indices
        for i, text, c in zip(idx, batch.texts, batch.n_tokens):
            predictions[i] = text
            pred_tokens[i] = c
        done += len(idx)
        log.info("generated %d/%d threads", done, n)
    seconds = time.perf_counter() - t0

    references = [r.get("summary") or "" for r in records]
    model_scores = M.rouge_scores(predictions, references)
    baseline_texts = M.baseline_predictions(records, k=cfg.eval.lead_k)
    baseline_scores = {name: M.rouge_scores(texts, references) for name, texts in baseline_texts.items()}
    t_ground = time.perf_counter()
    ground, claims = grounding(records, {"model": predictions, **baseline_texts, "reference": references})
    log.info("grounding checked for %d systems in %.1f s", len(ground), time.perf_counter() - t_ground)
    B, seed = cfg.eval.bootstrap_samples, cfg.eval.seed
    source_tokens = [int(r.get("source_tokens") or len(s)) for r, s in zip(records, sequences)]

    result: dict[str, Any] = {
        "model_dir": str(model_dir),
        "output_dir": str(out),
        "split": split,
        "n_threads": n,
        "model": M.summarize_scores(model_scores, B, seed),
        "baselines": {name: M.summarize_scores(s, B, seed) for name, s in baseline_scores.items()},
        "lengths": {
            "prediction_words": M.length_stats(M.word_count(p) for p in predictions),
            "reference_words": M.length_stats(M.word_count(r) for r in references),
            "prediction_tokens": M.length_stats(pred_tokens),
            "source_tokens": M.length_stats(source_tokens),
            **{f"{name}_words": M.length_stats(M.word_count(t) for t in texts) for name, texts in baseline_texts.items()},
        },
        "grounding": ground,
        "empty_predictions": sum(1 for p in predictions if not p.strip()),
        "speed": {
            "seconds": seconds,
            "threads_per_s": n / seconds if seconds > 0 else float("inf"),
            "generated_tokens_per_s": sum(pred_tokens) / seconds if seconds > 0 else float("inf"),
        },
        "engine": engine.name,
        "device": str(engine.device),
        "dtype": engine.describe()["dtype"],
        "generation": gen.model_dump(),
        "bootstrap_samples": B,
        "lead_k": cfg.eval.lead_k,
    }

    with (out / "predictions.jsonl").open("w", encoding="utf-8") as fh:
        for i, r in enumerate(records):
            fh.write(json.dumps({
                "thread_id": r["thread_id"], "reference": references[i], "prediction": predictions[i],
                "rougeL": round(float(model_scores["rougeL"][i]), 6), "source_tokens": source_tokens[i],
                "prediction_tokens": pred_tokens[i],
                "unsupported_claims": [c.to_dict() for c in claims["model"][i] if not c.supported],
            }, ensure_ascii=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2))

    rows = [{
        "thread_id": r["thread_id"], "source_tokens": source_tokens[i],
        "prediction_words": M.word_count(predictions[i]), "reference_words": M.word_count(references[i]),
        "prediction": predictions[i], "reference": references[i],
        **{k: float(model_scores[k][i]) for k in M.ROUGE_KEYS},
        **{f"{name}.{k}": float(s[k][i]) for name, s in baseline_scores.items() for k in M.ROUGE_KEYS},
        "unsupported": [c for c in claims["model"][i] if not c.supported],
    } for i, r in enumerate(records)]
    metrics_file = run_dir / "metrics.jsonl" if run_dir is not None else None
    write_report(result, rows, out, metrics_file if metrics_file is not None and metrics_file.exists() else None)
    return result


# ---------------------------------------------------------------------------------------- CLI
def evaluate_command(cfg: Config, model_dir: str, split: str = "test", output_dir: Optional[str] = None) -> dict:
    """Run ``evaluate`` and print the model against the baselines."""
    from rich.console import Console
    from rich.table import Table

    result = evaluate(cfg, model_dir, split=split, output_dir=output_dir)
    console = Console()
    table = Table(title=f"model vs baselines: ROUGE F1 x100 and 95% CI on '{split}' ({result['n_threads']} threads)")
    table.add_column("system", no_wrap=True)
    for k in M.ROUGE_KEYS:
        table.add_column(k, justify="right")
    table.add_column("words", justify="right")

    def cells(scores: dict) -> list[str]:
        # the interval on a second line keeps the table inside an 80-column terminal
        return [f"{100 * s['mean']:.2f}\n{100 * s['ci95'][0]:.1f}-{100 * s['ci95'][1]:.1f}" for s in (scores[k] for k in M.ROUGE_KEYS)]

    table.add_row("model", *cells(result["model"]), f"{result['lengths']['prediction_words'].get('mean', 0):.0f}", style="bold")
    table.add_section()
    for name, scores in result["baselines"].items():
        table.add_row(name, *cells(scores), f"{result['lengths'][f'{name}_words'].get('mean', 0):.0f}")
    console.print(table)
    from threadsum.evaluate.report import grounding_line

    console.print(grounding_line(result.get("grounding") or {}))
    sp = result["speed"]
    out = Path(output_dir) if output_dir else default_output_dir(model_dir, split)
    console.print(f"reference words: {result['lengths']['reference_words'].get('mean', 0):.0f} mean; "
                  f"speed: {sp['threads_per_s']:.2f} threads/s, {sp['generated_tokens_per_s']:.0f} generated tokens/s "
                  f"on {result['device']} ({result['dtype']})")
    console.print(f"report: {out / 'report.md'}")
    return result
