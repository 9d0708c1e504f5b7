"""`threadsum runs compare`: runs evaluated on the same test threads, side by side.

A run folder is a training output folder (``train.output_dir``: run.json, metrics.jsonl,
config.yaml, model/) holding the ``eval-<split>/`` folder that ``threadsum evaluate`` wrote
(predictions.jsonl, metrics.json). The comparison reads what those files recorded and adds:

- a paired bootstrap of each ROUGE F1 against the first run (:func:`threadsum.evaluate.metrics.paired_bootstrap`
  over the same thread ids, per-thread scores recomputed from the stored predictions and references);
- the planner's dollars per epoch on one SageMaker instance type (:func:`threadsum.train.cost.cost_table`
  with the run's config: an estimate from the planner's throughput model, not the run's measured speed);
- batch-1 latency and batched throughput measured now, on this machine, through
  :class:`threadsum.inference.Summarizer` (the same path as ``summarize`` and the service).

Runs scored on different threads are refused (:class:`CompareError`, exit 2): a difference in
ROUGE between different test sets says nothing about the models. Reading, checking and the table
are pure functions of the loaded files; only :func:`measure_speed` and :func:`compare_runs` touch
models or write files.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from threadsum.errors import ThreadsumError, UserError
from threadsum.evaluate import metrics as M
from threadsum.runs import format_duration, model_label

log = logging.getLogger(__name__)

DEFAULT_INSTANCE = "ml.g5.xlarge"
DEFAULT_LATENCY_THREADS = 8
PREDICTIONS_FILE, METRICS_FILE = "predictions.jsonl", "metrics.json"
OUTPUT_FILES = {"markdown": "compare.md", "json": "compare.json", "plot": "compare.png"}
ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}


class CompareError(UserError):
    """Runs cannot be compared as given (no evaluation, different test threads); the message says what to do."""


@dataclass
class EvaluatedRun:
    """One run folder and its evaluation, as read from disk (nothing computed yet)."""

    label: str
    """Short name shown in the table (the folder name, made unique)."""
    run_dir: Path
    eval_dir: Path
    metrics: dict[str, Any]
    """metrics.json of the evaluation."""
    predictions: list[dict[str, Any]]
    """predictions.jsonl rows in file order: thread_id, reference, prediction, unsupported_claims, ..."""
    config: dict[str, Any] = field(default_factory=dict)
    """config.yaml of the run as a plain mapping ({} when absent)."""
    record: dict[str, Any] = field(default_factory=dict)
    """run.json of the run ({} when absent)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """metrics.jsonl rows of the training run ([] when absent)."""

    @property
    def split(self) -> str:
        """The split the evaluation scored ('test' unless metrics.json says otherwise)."""
        return str(self.metrics.get("split") or "test")

    @property
    def model_dir(self) -> Path:
        """The model folder: metrics.json's ``model_dir`` when it still exists, else ``<run_dir>/model``."""
        recorded = self.metrics.get("model_dir")
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
        return self.run_dir / "model"


# ------------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path} ({exc}); evaluate the run again") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path} is not a JSON object; evaluate the run again")
    return data


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a predictions.jsonl written by ``threadsum evaluate`` (blank lines skipped).

    Raises:
        CompareError: a line is not a JSON object with a ``thread_id``.
    """
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict) or "thread_id" not in row:
                raise CompareError(f"{path} line {n} is not a prediction row (JSON with thread_id); evaluate the run again")
            rows.append(row)
    return rows


def _read_jsonl_loose(path: Path) -> list[dict[str, Any]]:
    """Rows of a training metrics.jsonl; a line cut by a crash is skipped."""
    rows = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        pass
    return rows


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def find_eval_dir(run_dir: str | Path, split: str = "test") -> tuple[Path, Path]:
    """(run folder, evaluation folder) for a training output folder or an evaluation folder itself.

    Looks for predictions.jsonl and metrics.json in: ``run_dir`` itself (then the run folder is its
    parent), ``<run_dir>/eval-<split>``, then the ``output_dir`` that run.json recorded for ``split``
    (an evaluation written elsewhere with ``--output``).

    Raises:
        CompareError: ``run_dir`` does not exist, or none of those holds an evaluation of ``split``
            (the message says to run ``threadsum evaluate -c <run_dir>/config.yaml`` first).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"no folder '{run_dir}': pass training output folders (train.output_dir), each evaluated "
                           f"with `threadsum evaluate`")

    def holds_eval(d: Path) -> bool:
        return (d / PREDICTIONS_FILE).is_file() and (d / METRICS_FILE).is_file()

    if holds_eval(run_dir) and not (run_dir / "model").is_dir():
        return run_dir.parent, run_dir
    # the default folder first: run.json keeps only the latest evaluation of a split, wherever it went
    candidates = [run_dir / f"eval-{split}"]
    record = run_dir / "run.json"
    if record.is_file():
        try:
            recorded = (((json.loads(record.read_text()).get("summary") or {}).get("eval") or {}).get(split) or {})
            if recorded.get("output_dir"):
                candidates.append(Path(recorded["output_dir"]))
        except (OSError, ValueError, AttributeError):
            pass
    for d in candidates:
        if holds_eval(d):
            return run_dir, d
    others = sorted(p.name for p in run_dir.glob("eval-*") if holds_eval(p))
    hint = f" (it has {', '.join(others)}: pass --split {others[0][len('eval-'):]})" if others else ""
    config = run_dir / "config.yaml"
    raise CompareError(f"{run_dir} holds no evaluation of split '{split}' (no eval-{split}/{PREDICTIONS_FILE}){hint}: "
                       f"run `threadsum evaluate -c {config if config.exists() else '<its config>'} --split {split}` first")


def load_run(run_dir: str | Path, split: str = "test", label: Optional[str] = None) -> EvaluatedRun:
    """Read one run folder and its evaluation of ``split`` (see :func:`find_eval_dir`).

    The config is the run's config.yaml, else the one saved in model/, else run.json's.

    Raises:
        CompareError: no evaluation (see :func:`find_eval_dir`), or unreadable predictions/metrics.
    """
    run, eval_dir = find_eval_dir(run_dir, split)
    metrics = _read_json(eval_dir / METRICS_FILE)
    predictions = read_predictions(eval_dir / PREDICTIONS_FILE)
    if not predictions:
        raise CompareError(f"{eval_dir / PREDICTIONS_FILE} holds no predictions; evaluate the run again")
    record = _read_json(run / "run.json") if (run / "run.json").is_file() else {}
    config = {}
    for path in (run / "config.yaml", run / "model" / "config.yaml"):
        if path.is_file():
            config = _read_yaml(path)
            break
    if not config and isinstance(record.get("config"), dict):
        config = record["config"]
    history = _read_jsonl_loose(run / "metrics.jsonl")
    return EvaluatedRun(label or run.resolve().name, run, eval_dir, metrics, predictions, config, record, history)


def unique_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Folder names of ``run_dirs``, with the parent folder added where two names are the same."""
    names = [Path(d).resolve().name for d in run_dirs]
    out = []
    for d, name in zip(run_dirs, names):
        if names.count(name) > 1:
            p = Path(d).resolve()
            name = f"{p.parent.name}/{p.name}"
        out.append(name)
    # the same folder given twice keeps one name per column
    seen: dict[str, int] = {}
    for i, name in enumerate(out):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            out[i] = f"{name} ({seen[name]})"
    return out


# ----------------------------------------------------------------------------------- checking
def check_same_threads(runs: Sequence[EvaluatedRun]) -> list[str]:
    """The thread ids every run was scored on, in the first run's order.

    Raises:
        CompareError: a run was evaluated on another split, on a different set of thread ids (the
            message gives how many differ and an example id), or on the same ids with different
            reference summaries (different prepared data); the fix is to evaluate every run on the
            same prepared split.
    """
    first = runs[0]
    ids = [str(r["thread_id"]) for r in first.predictions]
    refs = {str(r["thread_id"]): r.get("reference") for r in first.predictions}
    fix = (f"evaluate every run on the same prepared split (`threadsum evaluate -c <run>/config.yaml --split "
           f"{first.split}` with the same data.prepared_dir)")
    for run in runs[1:]:
        if run.split != first.split:
            raise CompareError(f"{run.label} was evaluated on split '{run.split}' but {first.label} on "
                               f"'{first.split}'; {fix}")
        other = {str(r["thread_id"]): r.get("reference") for r in run.predictions}
        only_first, only_other = sorted(set(refs) - set(other)), sorted(set(other) - set(refs))
        if only_first or only_other:
            example = (f"'{only_first[0]}' is only in {first.label}" if only_first
                       else f"'{only_other[0]}' is only in {run.label}")
            raise CompareError(f"{run.label} and {first.label} were evaluated on different {first.split} threads: "
                               f"{len(only_first) + len(only_other)} thread ids differ ({len(only_first)} only in "
                               f"{first.label}, {len(only_other)} only in {run.label}; e.g. {example}); {fix}")
        changed = [t for t in ids if other[t] != refs[t]]
        if changed:
            raise CompareError(f"{run.label} and {first.label} have the same {first.split} thread ids but {len(changed)} "
                               f"different reference summaries (e.g. thread '{changed[0]}'): they were evaluated on "
                               f"different prepared data; {fix}")
    return ids


# ----------------------------------------------------------------------------------- figures
def model_family(config: dict[str, Any], model_dir: Optional[Path] = None) -> Optional[str]:
    """'seq2seq' or 'causal' for a run, or None when nothing says.

    Order: ``model.family`` of the run's config when not 'auto'; the model folder itself
    (:func:`threadsum.family.family_of_folder`: export manifest or transformers config.json); for a
    random-init model ``model.tiny.architecture`` (:func:`threadsum.model.family_for`).
    """
    from threadsum.config import ModelConfig
    from threadsum.family import UNRESOLVED, family_of_folder
    from threadsum.model import family_for

    try:
        m = ModelConfig.model_validate(config.get("model") or {})
    except ValueError:
        return None
    if m.family != "auto":
        return m.family
    if model_dir is not None:
        found = family_of_folder(model_dir, default=UNRESOLVED)
        if found is not UNRESOLVED:
            return found.name
    return family_for(m).name if m.init == "random" else None


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _first(*values: Any) -> Optional[float]:
    return next((_num(v) for v in values if _num(v) is not None), None)


def training_figures(run: EvaluatedRun) -> dict[str, Any]:
    """What the training run recorded: parameters, time, speed and peak memory (None = not recorded).

    Returns:
        ``{"trainable_params", "total_params" (counts), "train_seconds" (s, optimizer steps only),
        "steps", "tokens_per_s" (real, unpadded training tokens per second), "peak_memory_gb" (GiB:
        ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on CPU), "memory_kind",
        "hardware"}``; run.json's summary first, then its params, then metrics.jsonl.
    """
    rec = run.record
    s = rec.get("summary") or {}
    params = rec.get("params") or {}
    hist = run.history

    def last(key: str) -> Any:
        return next((r[key] for r in reversed(hist) if _num(r.get(key)) is not None), None)

    peaks = [r["peak_mem_gb"] for r in hist if _num(r.get("peak_mem_gb")) is not None]
    device = str((rec.get("tags") or {}).get("device") or params.get("device") or "")
    memory_kind = ("max_memory_allocated" if device.startswith("cuda") else "peak RSS" if device == "cpu"
                   else "as recorded")
    steps = s.get("steps") if s.get("steps") is not None else rec.get("last_step")
    return {
        "trainable_params": _first(s.get("n_trainable_params"), params.get("n_trainable_params")),
        "total_params": _first(s.get("n_params"), params.get("n_params")),
        "train_seconds": _first(s.get("train_seconds"), last("train_seconds")),
        "steps": int(steps) if _num(steps) is not None else None,
        "tokens_per_s": _first(s.get("real_tokens_per_s"), s.get("tokens_per_s"), last("tokens_per_s")),
        "peak_memory_gb": _first(s.get("peak_mem_gb"), s.get("peak_memory_gb"), max(peaks) if peaks else None,
                                 (rec.get("metrics") or {}).get("peak_mem_gb")),
        "memory_kind": memory_kind,
        "hardware": s.get("hardware") or device or None,
    }


def prepared_threads(run: EvaluatedRun, ids: Sequence[str]) -> tuple[Optional[list[dict]], Optional[str]]:
    """The prepared thread records (``source`` is the rendered text the model read) of ``ids``, in
    that order, from the run's ``data.prepared_dir``; or (None, why not)."""
    prepared_dir = (run.config.get("data") or {}).get("prepared_dir")
    if not prepared_dir:
        return None, "the run's config names no data.prepared_dir"
    path = Path(prepared_dir) / "threads" / f"{run.split}.jsonl"
    if not path.is_file():
        return None, f"the prepared threads {path} are not on this machine"
    by_id = {}
    for row in _read_jsonl_loose(path):
        by_id[str(row.get("thread_id"))] = row
    missing = [t for t in ids if t not in by_id]
    if missing:
        return None, f"{len(missing)} scored threads are not in {path} (e.g. '{missing[0]}')"
    return [by_id[t] for t in ids], None


def grounding_figures(run: EvaluatedRun, records: Optional[Sequence[dict]] = None) -> dict[str, Any]:
    """Share of summaries with an unsupported claim and claims per summary (``threadsum.verify``).

    Taken from metrics.json's ``grounding.model`` as evaluate wrote it; else the claims are checked
    now against ``records`` (prepared threads in the order of ``run.predictions``); else the share
    comes from predictions.jsonl's ``unsupported_claims`` and claims per summary is None.

    Returns:
        ``{"flagged_share" (0..1), "claims_per_summary", "unsupported_per_summary", "source", "reason"}``;
        ``reason`` says why a figure is None.
    """
    g = (run.metrics.get("grounding") or {}).get("model")
    if isinstance(g, dict) and g.get("n"):
        return {"flagged_share": _num(g.get("flagged_share")), "claims_per_summary": _num(g.get("claims_per_summary")),
                "unsupported_per_summary": _num(g.get("unsupported_per_summary_total")), "source": METRICS_FILE,
                "reason": None}
    if records is not None:
        from threadsum.evaluate.run import grounding

        stats, _ = grounding(records, {"model": [r.get("prediction") or "" for r in run.predictions]})
        g = stats["model"]
        return {"flagged_share": g["flagged_share"], "claims_per_summary": g["claims_per_summary"],
                "unsupported_per_summary": g["unsupported_per_summary_total"], "source": "checked now", "reason": None}
    if all("unsupported_claims" in r for r in run.predictions):
        flagged = sum(bool(r["unsupported_claims"]) for r in run.predictions) / len(run.predictions)
        per = sum(len(r["unsupported_claims"]) for r in run.predictions) / len(run.predictions)
        return {"flagged_share": flagged, "claims_per_summary": None, "unsupported_per_summary": per,
                "source": PREDICTIONS_FILE,
                "reason": "claims per summary: not in metrics.json and the prepared threads are not available"}
    return {"flagged_share": None, "claims_per_summary": None, "unsupported_per_summary": None, "source": None,
            "reason": "the evaluation stored no grounding check and the prepared threads are not available"}


def per_thread_rouge(run: EvaluatedRun, ids: Sequence[str]) -> dict[str, Any]:
    """Per-thread ROUGE F1 of ``run`` in the order of ``ids``: {'rouge1': array(n), ...} (0..1).

    Recomputed from the stored prediction and reference (predictions.jsonl keeps only ROUGE-L).
    """
    by_id = {str(r["thread_id"]): r for r in run.predictions}
    rows = [by_id[t] for t in ids]
    return M.rouge_scores([r.get("prediction") or "" for r in rows], [r.get("reference") or "" for r in rows])


def planner_cost(config: dict[str, Any], instance: str) -> dict[str, Any]:
    """The planner's time and money per epoch of this run's config on one SageMaker instance type.

    Uses :func:`threadsum.train.cost.cost_table` (its throughput model and list prices, not the
    run's measured speed; epoch tokens counted in the run's prepared data when it is on this machine).

    Returns:
        ``{"instance", "usd_per_epoch", "usd_per_epoch_spot" (USD), "epoch_hours", "tokens_per_s",
        "basis", "levers", "planned_as" (the planner's name of the architecture), "reason"}``; the
        numbers are None and ``reason`` says why when the config cannot be planned or does not fit
        the instance.
    """
    from threadsum.config import config_from_dict
    from threadsum.train.cost import cost_table

    out: dict[str, Any] = {"instance": instance, "usd_per_epoch": None, "usd_per_epoch_spot": None, "epoch_hours": None,
                           "tokens_per_s": None, "basis": None, "levers": None, "planned_as": None, "reason": None}
    if not config:
        out["reason"] = "the run has no config.yaml"
        return out
    try:
        rows, meta = cost_table(config_from_dict(config, origin="the run's config.yaml"))
    except ThreadsumError as exc:
        out["reason"] = f"the planner cannot plan this model: {str(exc).splitlines()[0]}"
        return out
    out["planned_as"] = meta.get("model")  # the architecture the planner read from the config
    row = next((r for r in rows if r.instance == instance), None)
    if row is None:
        out["reason"] = f"{instance} is not in the planner's catalogue"
    elif not row.fits:
        out["reason"] = f"{row.levers} on {instance}"
    else:
        out.update(usd_per_epoch=row.epoch_cost, usd_per_epoch_spot=row.epoch_cost_spot, epoch_hours=row.epoch_hours,
                   tokens_per_s=row.tokens_per_s, basis=row.basis, levers=row.levers)
    return out


def check_instance(instance: str) -> str:
    """``instance`` when the planner's catalogue prices it.

    Raises:
        CompareError: an unknown instance type (the message lists the known ones).
    """
    from threadsum.train.cost import instance_catalog

    known = list(instance_catalog()["instances"])
    if instance not in known:
        raise CompareError(f"--instance {instance} is not in the planner's catalogue; pass one of: {', '.join(known)}")
    return instance


# ------------------------------------------------------------------------------- measurement
def measure_speed(model_dir: str | Path, texts: Sequence[str], batch_size: Optional[int] = None,
                  device: str = "auto") -> dict[str, Any]:
    """Batch-1 latency and batched throughput of a model folder on this machine.

    Loads ``model_dir`` with :meth:`threadsum.inference.Summarizer.from_pretrained` (its saved
    config's decoding settings), warms it up once, summarizes each text alone, then all texts in
    batches of ``batch_size`` (default: the saved ``eval.generation.batch_size``).

    Args:
        texts: rendered thread texts (the prepared ``source``, what the model reads).

    Returns:
        ``{"latency_median_s", "latency_max_s" (seconds per thread at batch 1), "threads_per_s"
        (batched), "batch_size", "threads", "device", "engine", "num_beams", "max_new_tokens",
        "torch_threads"}``.

    Raises:
        MissingExtraError: torch or transformers is not installed.
    """
    from threadsum.inference.summarizer import Summarizer

    summarizer = Summarizer.from_pretrained(str(model_dir), device=device)
    summarizer.warmup()
    latencies = []
    for text in texts:
        t0 = time.perf_counter()
        summarizer.generate([text], batch_size=1)
        latencies.append(time.perf_counter() - t0)
    gen = summarizer.cfg.eval.generation
    bs = int(batch_size or gen.batch_size)
    t0 = time.perf_counter()
    summarizer.generate(list(texts), batch_size=bs)
    seconds = time.perf_counter() - t0
    try:
        import torch

        torch_threads: Optional[int] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - from_pretrained needs torch
        torch_threads = None
    info = summarizer.info()
    return {"latency_median_s": statistics.median(latencies), "latency_max_s": max(latencies),
            "threads_per_s": len(texts) / seconds if seconds > 0 else float("inf"), "batch_size": bs,
            "threads": len(texts), "device": str(info.get("device", summarizer.device)), "engine": info.get("engine"),
            "num_beams": gen.num_beams, "max_new_tokens": gen.max_new_tokens, "torch_threads": torch_threads}


# ------------------------------------------------------------------------------------- table
def build_table(runs: Sequence[EvaluatedRun], ids: Sequence[str], *, instance: str = DEFAULT_INSTANCE,
                costs: Optional[Sequence[dict]] = None, speeds: Optional[Sequence[Optional[dict]]] = None,
                speed_reasons: Optional[Sequence[Optional[str]]] = None,
                grounding: Optional[Sequence[dict]] = None, samples: Optional[int] = None,
                seed: int = 0) -> dict[str, Any]:
    """The comparison as data (what compare.json holds): one entry per run plus the lead baseline.

    Args:
        runs: the loaded runs; the first is the reference of the paired differences.
        ids: the shared thread ids (:func:`check_same_threads`).
        costs: :func:`planner_cost` per run (None: not computed).
        speeds: :func:`measure_speed` per run, None where not measured; ``speed_reasons`` says why.
        grounding: :func:`grounding_figures` per run (None: from each run's stored files).
        samples: bootstrap resamples of the paired test (None: the first run's ``bootstrap_samples``,
            else 1,000); ``seed`` seeds them (the same resamples for every metric and run).

    Returns:
        ``{"split", "n_threads", "bootstrap_samples", "reference_run", "instance", "runs": [{label,
        run_dir, eval_dir, model, family, rouge: {key: {mean, ci95}}, vs_reference: {key: paired
        bootstrap} or None, grounding, training, cost, speed, notes: {field: why n/a}}], "baselines":
        [{label, rouge, grounding}]}``. ROUGE values are F1 in 0..1.
    """
    B = samples if samples is not None else int(runs[0].metrics.get("bootstrap_samples") or 1000)
    scores = [per_thread_rouge(r, ids) for r in runs]
    entries = []
    for i, run in enumerate(runs):
        notes: dict[str, str] = {}
        rouge = {}
        for k in M.ROUGE_KEYS:
            stored = (run.metrics.get("model") or {}).get(k)
            if not (isinstance(stored, dict) and "ci95" in stored):  # an evaluation without intervals
                stored = M.summarize_scores({k: scores[i][k]}, B, seed)[k]
            rouge[k] = stored
        vs = None if i == 0 else {k: M.paired_bootstrap(scores[0][k], scores[i][k], B, seed) for k in M.ROUGE_KEYS}
        ground = grounding[i] if grounding is not None else grounding_figures(run)
        if ground.get("reason"):
            notes["grounding"] = ground["reason"]
        training = training_figures(run)
        for key, label in (("trainable_params", "parameters"), ("train_seconds", "training time"),
                           ("tokens_per_s", "training tokens/s"), ("peak_memory_gb", "peak memory")):
            if training[key] is None:
                notes[key] = f"{label}: not recorded in run.json or metrics.jsonl"
        cost = costs[i] if costs is not None else {"instance": instance, "usd_per_epoch": None,
                                                   "reason": "not computed"}
        if cost.get("reason"):
            notes["cost"] = cost["reason"]
        speed = speeds[i] if speeds is not None else None
        if speed is None:
            notes["speed"] = (speed_reasons[i] if speed_reasons is not None and speed_reasons[i] else
                              "not measured (--latency-threads 0)")
        entries.append({
            "label": run.label, "run_dir": str(run.run_dir), "eval_dir": str(run.eval_dir),
            "model": model_label(run.config) if run.config else str(run.metrics.get("model_dir") or "?"),
            "family": model_family(run.config, run.model_dir), "rouge": rouge, "vs_reference": vs,
            "grounding": ground, "training": training, "cost": cost, "speed": speed, "notes": notes,
        })
    baselines = []
    first = runs[0].metrics
    lead = f"lead{first.get('lead_k', 3)}"
    if lead in (first.get("baselines") or {}):
        g = (first.get("grounding") or {}).get(lead) or {}
        baselines.append({"label": f"lead-{first.get('lead_k', 3)}", "rouge": first["baselines"][lead],
                          "grounding": {"flagged_share": _num(g.get("flagged_share")),
                                        "claims_per_summary": _num(g.get("claims_per_summary"))}})
    return {"split": runs[0].split, "n_threads": len(ids), "bootstrap_samples": B, "seed": seed,
            "reference_run": runs[0].label, "instance": instance, "runs": entries, "baselines": baselines}


# --------------------------------------------------------------------------------- rendering
def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _score(s: Optional[dict]) -> str:
    if not s or _num(s.get("mean")) is None:
        return "-"
    lo, hi = s["ci95"]
    return f"{100 * s['mean']:.2f} ({100 * lo:.1f}-{100 * hi:.1f})"


def _diff(d: Optional[dict]) -> str:
    if not d or _num(d.get("diff")) is None:
        return "-"
    lo, hi = d["ci95"]
    if _num(d.get("p")) is None:
        p = ""
    elif d["p"] == 0 and d.get("samples"):  # no resample crossed 0: the share is below 1 in `samples`
        p = f", p<{1 / d['samples']:.2g}"
    else:
        p = f", p={d['p']:.3f}"
    return f"{100 * d['diff']:+.2f} ({100 * lo:+.1f} to {100 * hi:+.1f}{p})"


def _count(n: Optional[float]) -> str:
    if n is None:
        return "?"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _usd(v: float) -> str:
    return f"${v:.2f}" if v >= 0.01 else f"${v:.2g}"


def render_markdown(table: dict[str, Any]) -> str:
    """compare.md: one table with a column per run (and the lead baseline) and a row per figure;
    figures that are not available read 'n/a (i)' with the reason listed under the table."""
    runs, bases = table["runs"], table["baselines"]
    ref = table["reference_run"]
    footnotes: list[str] = []

    def na(entry: dict, key: str) -> str:
        footnotes.append(f"{entry['label']}: {entry['notes'].get(key, 'not available')}")
        return f"n/a ({len(footnotes)})"

    cols = [e["label"] for e in runs] + [b["label"] for b in bases]
    rows: list[tuple[str, list[str]]] = []
    rows.append(("model", [e["model"] for e in runs]
                 + [f"first {b['label'].split('-')[-1]} sentences of the thread" for b in bases]))
    rows.append(("family", [e["family"] or "?" for e in runs] + ["baseline" for _ in bases]))
    for k in M.ROUGE_KEYS:
        rows.append((f"{ROUGE_LABELS[k]} F1 x100 (95% CI)", [_score(e["rouge"].get(k)) for e in runs]
                     + [_score(b["rouge"].get(k)) for b in bases]))
    for k in M.ROUGE_KEYS:
        rows.append((f"{ROUGE_LABELS[k]} minus {ref} (95% CI, p)",
                     ["reference" if e["vs_reference"] is None else _diff(e["vs_reference"][k]) for e in runs]
                     + ["" for _ in bases]))

    def share(e: dict) -> str:
        v = e["grounding"].get("flagged_share")
        return f"{100 * v:.0f}%" if v is not None else na(e, "grounding")

    def claims(e: dict) -> str:
        v = e["grounding"].get("claims_per_summary")
        return f"{v:.2f}" if v is not None else na(e, "grounding")

    def base_g(b: dict, key: str, fmt: str, scale: float = 1.0) -> str:
        v = b["grounding"].get(key)
        return "-" if v is None else format(v * scale, fmt)

    rows.append(("summaries with an unsupported claim", [share(e) for e in runs]
                 + [base_g(b, "flagged_share", ".0f", 100) + "%" if b["grounding"].get("flagged_share") is not None
                    else "-" for b in bases]))
    rows.append(("claims per summary", [claims(e) for e in runs] + [base_g(b, "claims_per_summary", ".2f") for b in bases]))

    def params(e: dict) -> str:
        t = e["training"]
        if t["trainable_params"] is None and t["total_params"] is None:
            return na(e, "trainable_params")
        return f"{_count(t['trainable_params'])} / {_count(t['total_params'])}"

    def train_time(e: dict) -> str:
        t = e["training"]
        if t["train_seconds"] is None:
            return na(e, "train_seconds")
        return format_duration(t["train_seconds"], "?") + (f" ({t['steps']} steps)" if t["steps"] is not None else "")

    def tps(e: dict) -> str:
        v = e["training"]["tokens_per_s"]
        return f"{v:,.0f}" if v is not None else na(e, "tokens_per_s")

    def peak(e: dict) -> str:
        t = e["training"]
        if t["peak_memory_gb"] is None:
            return na(e, "peak_memory_gb")
        return f"{t['peak_memory_gb']:.2f} GiB ({t['memory_kind']})"

    def cost(e: dict) -> str:
        c = e["cost"]
        if c.get("usd_per_epoch") is None:
            return na(e, "cost")
        return f"{_usd(c['usd_per_epoch'])} ({_usd(c['usd_per_epoch_spot'])} spot)"

    def latency(e: dict) -> str:
        s = e["speed"]
        return f"{s['latency_median_s']:.3f}" if s else na(e, "speed")

    def throughput(e: dict) -> str:
        s = e["speed"]
        return f"{s['threads_per_s']:.2f} (batch {s['batch_size']})" if s else na(e, "speed")

    blank = ["" for _ in bases]
    rows += [
        ("trained / total parameters", [params(e) for e in runs] + blank),
        ("training time", [train_time(e) for e in runs] + blank),
        ("training tokens/s (real tokens)", [tps(e) for e in runs] + blank),
        ("peak training memory", [peak(e) for e in runs] + blank),
        (f"planner $ per epoch on {table['instance']}", [cost(e) for e in runs] + blank),
        ("latency, batch 1 (median s/thread)", [latency(e) for e in runs] + blank),
        ("throughput (threads/s)", [throughput(e) for e in runs] + blank),
    ]
    speeds = [e["speed"] for e in runs if e["speed"]]
    lines = [
        f"# Runs compared on `{table['split']}` ({table['n_threads']} threads)",
        "",
        f"- every run was scored on the same {table['n_threads']} thread ids; ROUGE: F1 x100 with 95% bootstrap "
        f"intervals as `threadsum evaluate` reported them",
        f"- 'minus {ref}': paired bootstrap over the same threads ({table['bootstrap_samples']} resamples of the "
        f"threads, mean difference; positive = better than {ref}); p: twice the share of resampled differences "
        f"on the other side of 0",
        "- grounding (threadsum.verify): summaries with at least one claim the thread does not support",
        f"- $ per epoch: the planner's estimate (`threadsum plan --cost`) for each run's config on "
        f"{table['instance']}, on-demand list price; not the run's billed cost",
    ]
    if speeds:
        s = speeds[0]
        lines.append(f"- latency and throughput measured now on this machine ({s['device']}, {s['engine']} engine, "
                     f"torch threads: {s['torch_threads']}) over {s['threads']} {table['split']} threads, each run "
                     f"with its saved decoding settings")
    lines += ["", "| | " + " | ".join(_md(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, cells in rows:
        lines.append(f"| {_md(name)} | " + " | ".join(_md(c) for c in cells) + " |")
    if footnotes:
        lines += [""] + [f"({i}) {_md(n)}" for i, n in enumerate(footnotes, 1)]
    lines += ["", f"![ROUGE-L and latency]({OUTPUT_FILES['plot']})", ""]
    return "\n".join(lines) + "\n"


def plot_comparison(table: dict[str, Any], path: str | Path) -> Path:
    """compare.png: ROUGE-L F1 x100 with its 95% CI per run and baseline, the paired ROUGE-L
    difference against the first run with its CI, and median batch-1 latency (s) where measured.

    Raises:
        MissingExtraError: matplotlib (the ``train`` extra) is not installed.
    """
    from threadsum.evaluate.report import _plt

    plt = _plt()
    runs, bases = table["runs"], table["baselines"]
    with_speed = any(e["speed"] for e in runs)
    fig, axes = plt.subplots(1, 3 if with_speed else 2, figsize=(12 if with_speed else 9, 3.8))
    labels = [e["label"] for e in runs] + [b["label"] for b in bases]
    rl = [e["rouge"]["rougeL"] for e in runs] + [b["rouge"]["rougeL"] for b in bases]
    means = [100 * s["mean"] for s in rl]
    err = [[100 * (s["mean"] - s["ci95"][0]) for s in rl], [100 * (s["ci95"][1] - s["mean"]) for s in rl]]
    colors = ["tab:blue"] * len(runs) + ["tab:gray"] * len(bases)
    ax = axes[0]
    ax.bar(labels, means, yerr=err, capsize=4, color=colors)
    ax.set_title("ROUGE-L F1 x100 (95% CI)")
    ax = axes[1]
    others = runs[1:]
    if others:
        d = [e["vs_reference"]["rougeL"] for e in others]
        ax.bar([e["label"] for e in others], [100 * x["diff"] for x in d], color="tab:orange",
               yerr=[[100 * (x["diff"] - x["ci95"][0]) for x in d], [100 * (x["ci95"][1] - x["diff"]) for x in d]],
               capsize=4)
        ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(f"ROUGE-L minus {table['reference_run']} (paired, 95% CI)")
    if with_speed:
        ax = axes[2]
        measured = [e for e in runs if e["speed"]]
        ax.bar([e["label"] for e in measured], [e["speed"]["latency_median_s"] for e in measured], color="tab:green")
        ax.set_title("latency, batch 1 (median s/thread)")
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- command
def default_output_dir(run_dirs: Sequence[str | Path], split: str) -> Path:
    """``compare-<split>`` beside the first run folder (e.g. outputs/compare-test for outputs/bart)."""
    return Path(run_dirs[0]).resolve().parent / f"compare-{split}"


def compare_runs(run_dirs: Sequence[str | Path], out_dir: Optional[str | Path] = None, *, split: str = "test",
                 instance: str = DEFAULT_INSTANCE, latency_threads: int = DEFAULT_LATENCY_THREADS,
                 device: str = "auto") -> dict[str, Any]:
    """Compare evaluated runs and write compare.md, compare.json and compare.png into ``out_dir``.

    Args:
        run_dirs: training output folders (or their eval folders); the first is the reference.
        out_dir: output folder (default :func:`default_output_dir`).
        instance: SageMaker instance type of the planner's $ per epoch.
        latency_threads: shared threads whose batch-1 latency and batched throughput are measured per
            run (0: not measured; the model folders are then not loaded).
        device: where the speed is measured ('auto': a GPU when there is one).

    Returns:
        The table (:func:`build_table`) with ``files``: {markdown, json, plot} paths.

    Raises:
        CompareError: no run given, a run without an evaluation, runs scored on different threads,
            or an unknown ``instance``.
    """
    if not run_dirs:
        raise CompareError("pass at least one run folder (train.output_dir) to compare")
    if latency_threads < 0:
        raise CompareError(f"--latency-threads must be 0 (no measurement) or more, got {latency_threads}")
    check_instance(instance)
    # an eval folder given directly is named after its run folder
    labels = unique_labels([find_eval_dir(d, split)[0] for d in run_dirs])
    runs = [load_run(d, split, label) for d, label in zip(run_dirs, labels)]
    ids = check_same_threads(runs)

    costs, speeds, reasons, ground = [], [], [], []
    for run in runs:
        records, why = prepared_threads(run, ids)
        by_pred = None
        if records is not None:
            order = {t: r for t, r in zip(ids, records)}
            by_pred = [order[str(p["thread_id"])] for p in run.predictions]
        ground.append(grounding_figures(run, by_pred))
        costs.append(planner_cost(run.config, instance))
        if latency_threads == 0:
            speeds.append(None)
            reasons.append("not measured (--latency-threads 0)")
        elif not run.model_dir.is_dir():
            speeds.append(None)
            reasons.append(f"no model folder at {run.model_dir}")
        elif records is None:
            speeds.append(None)
            reasons.append(f"not measured: {why}")
        else:
            log.info("measuring %s on %d threads", run.label, min(latency_threads, len(ids)))
            speeds.append(measure_speed(run.model_dir, [r.get("source") or "" for r in records[:latency_threads]],
                                        device=device))
            reasons.append(None)
    table = build_table(runs, ids, instance=instance, costs=costs, speeds=speeds, speed_reasons=reasons,
                        grounding=ground)
    out = Path(out_dir) if out_dir else default_output_dir(run_dirs, runs[0].split)
    out.mkdir(parents=True, exist_ok=True)
    files = {k: out / name for k, name in OUTPUT_FILES.items()}
    files["markdown"].write_text(render_markdown(table), encoding="utf-8")
    plot_comparison(table, files["plot"])
    table["files"] = {k: str(v) for k, v in files.items()}
    files["json"].write_text(json.dumps(table, indent=2, default=str), encoding="utf-8")
    return table


def compare_command(run_dirs: Sequence[str | Path], out_dir: Optional[str | Path] = None, *, split: str = "test",
                    instance: str = DEFAULT_INSTANCE, latency_threads: int = DEFAULT_LATENCY_THREADS) -> dict[str, Any]:
    """`threadsum runs compare`: :func:`compare_runs`, then print the markdown table and where the files are."""
    table = compare_runs(run_dirs, out_dir, split=split, instance=instance, latency_threads=latency_threads)
    md = Path(table["files"]["markdown"]).read_text(encoding="utf-8")
    print(md.rstrip())
    print(f"\nwrote {table['files']['markdown']}, {table['files']['json']}, {table['files']['plot']}")
    return table
