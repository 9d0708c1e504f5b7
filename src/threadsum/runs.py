"""`threadsum runs` (a table of every run under a folder) and `threadsum runs report` (EXPERIMENTS.md).

Both read the JSON run records (``run.json``) that every train/evaluate run writes, tracked in
MLflow or not, so they work on a laptop, on a copied-back SageMaker output and in CI alike.

Fields read from a record (written by ``threadsum.track.RunTracker``): status, cause, last_step,
started/ended/updated, tags (device, instance_type, host, git_commit), config, history (resumes),
best (lowest loss / highest ROUGE logged), metrics (latest values) and summary. Summary keys the
table understands: steps, epochs, time_per_epoch_s, train_seconds, peak_memory_gb (or
peak_memory_mb), tokens_per_s, cost_usd (or estimated_cost_usd), eval.<split>.rougeL.

`threadsum runs compare` (runs evaluated on the same test threads, side by side) reads evaluation
outputs rather than run records and lives in :mod:`threadsum.evaluate.compare`.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

from threadsum.config import BOOKKEEPING_KEYS, differing_settings
from threadsum.errors import UserError
from threadsum.track import RECORD_FILE

# config keys that differ between any two runs without changing the experiment


# ---------------------------------------------------------------------------------- reading
def find_runs(root: str | Path = "outputs") -> list[dict[str, Any]]:
    """Every run record under ``root`` (oldest first); each gets '_dir' and '_id' (its folder relative to root).

    ``run.json`` files inside ``checkpoints`` folders are skipped, as are records that are not valid
    JSON (a file cut mid-write by a crash) or not a JSON object.

    Raises:
        UserError: ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"no folder '{root}': pass the folder that holds your run outputs (e.g. --root outputs)")
    records = []
    paths = [root / RECORD_FILE] if (root / RECORD_FILE).exists() else []
    paths += sorted(p for p in root.rglob(RECORD_FILE) if p.parent != root and "checkpoints" not in p.parts)
    for path in paths:
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a record cut mid-write by a crash is skipped, not fatal to the listing
        if not isinstance(rec, dict):
            continue
        rel = path.parent.relative_to(root).as_posix() if path.parent != root else root.name
        rec["_dir"], rec["_id"] = str(path.parent), rel or "."
        records.append(rec)
    records.sort(key=lambda r: r.get("started") or 0)
    return records


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return out


def _param(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def mlflow_records(tracking_uri: str) -> list[dict[str, Any]]:
    """Runs of an MLflow backend as run records (e.g. SageMaker jobs whose output folders are in S3).

    Reads at most 5,000 runs over all experiments. ``summary.*`` metrics and ``<split>/<metric>``
    metrics become the record's ``summary``; params become ``config``; times are in seconds since
    the epoch (MLflow stores milliseconds).

    Raises:
        MissingExtraError: MLflow is not installed (``pip install 'threadsum[track]'``).
    """
    from threadsum.deps import require

    require("mlflow", "track")
    from threadsum.track import _quiet_mlflow

    _quiet_mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_ids = [e.experiment_id for e in client.search_experiments()]
    records = []
    for run in client.search_runs(exp_ids, max_results=5000) if exp_ids else []:
        tags, metrics = run.data.tags, run.data.metrics
        summary = _unflatten({k[len("summary."):]: v for k, v in metrics.items() if k.startswith("summary.")})
        for k, v in metrics.items():
            split, sep, name = k.partition("/")
            if sep and split in ("train", "validation", "test"):
                summary.setdefault("eval", {}).setdefault(split, {})[name] = v
        last = tags.get("threadsum.last_step")
        rec = {
            "_id": run.info.run_name or run.info.run_id[:12], "_dir": run.info.artifact_uri,
            "kind": tags.get("threadsum.kind", "?"), "name": _param(run.data.params.get("name", '"?"')),
            "status": run.info.status, "cause": tags.get("threadsum.cause"),
            "last_step": int(last) if last and last.isdigit() else None,
            "started": run.info.start_time / 1000 if run.info.start_time else None,
            "ended": run.info.end_time / 1000 if run.info.end_time else None,
            "tags": dict(tags), "metrics": dict(metrics), "summary": summary,
            "config": _unflatten({k: _param(v) for k, v in run.data.params.items()}),
            "mlflow": {"tracking_uri": tracking_uri, "run_id": run.info.run_id},
        }
        if tags.get("threadsum.previous_cause"):
            rec["history"] = [{"previous_cause": tags["threadsum.previous_cause"]}]
        records.append(rec)
    return records


def effective_status(rec: dict) -> str:
    """The recorded status, except a RUNNING run whose process is gone on this host reads 'DIED'."""
    status = rec.get("status") or "UNKNOWN"
    if status == "RUNNING" and rec.get("pid") and (rec.get("tags") or {}).get("host") == socket.gethostname():
        try:
            os.kill(int(rec["pid"]), 0)
        except ProcessLookupError:
            return "DIED"
        except (PermissionError, OSError, ValueError):
            pass
    return status


def failure_cause(rec: dict) -> Optional[str]:
    """Why a run did not finish ('<category>: <detail>' from the record, or a text for a DIED run),
    or None for a run that finished or is still running."""
    status = effective_status(rec)
    if status == "DIED":
        return "crashed: the process ended without writing a final status (killed -9, OOM killer or power loss?)"
    if status in ("FAILED", "KILLED"):
        return rec.get("cause") or "unknown (no cause recorded)"
    return None


def _num(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _first(*values: Any) -> Optional[float]:
    for v in values:
        if _num(v) is not None:
            return float(v)
    return None


def estimate_cost(rec: dict, seconds: Optional[float]) -> Optional[float]:
    """List price of a SageMaker run: instance price x instances x hours (x spot discount); None when local.

    Args:
        rec: a run record; ``tags.instance_type`` and ``config.sagemaker`` (``instance_count``,
            ``spot``) are read.
        seconds: wall time of the run in seconds.

    Returns:
        USD at the on-demand list prices of :func:`threadsum.train.cost.instance_catalog` (USD per
        instance-hour); spot runs at on-demand x (1 - ``spot_discount``), an assumption, not the
        billed price. None when local, when ``seconds`` is None, or when the type has no price.
    """
    itype = (rec.get("tags") or {}).get("instance_type")
    if not itype or itype == "local" or seconds is None:
        return None
    try:
        from threadsum.train.cost import instance_catalog

        catalog = instance_catalog()
        price = catalog["instances"][itype]["price"]
    except Exception:  # no price table for this type: show '-' rather than a wrong number
        return None
    sm = (rec.get("config") or {}).get("sagemaker") or {}
    factor = (1 - float(catalog.get("spot_discount", 0))) if sm.get("spot") else 1.0
    return float(price) * int(sm.get("instance_count") or 1) * seconds / 3600 * factor


def model_label(cfg: dict) -> str:
    """A short name of a run's model from its config dict: the hub id or folder, or 'random d<d_model>
    L<encoder>/<decoder>' for a random-init BART ('random <architecture> d<d_model> L<layers>' for a
    decoder-only one); ' +LoRA r<r>' when adapters are trained."""
    m = cfg.get("model") or {}
    if m.get("init") == "random":
        t = m.get("tiny") or {}
        arch = t.get("architecture") or "bart"
        if arch == "bart":
            name = f"random d{t.get('d_model', '?')} L{t.get('encoder_layers', '?')}/{t.get('decoder_layers', '?')}"
        else:  # a decoder-only stack has no encoder layers to show
            name = f"random {arch} d{t.get('d_model', '?')} L{t.get('decoder_layers', '?')}"
    else:
        name = str(m.get("name_or_path") or "?")
    if (m.get("lora") or {}).get("enabled"):
        name += f" +LoRA r{m['lora'].get('r')}"
    return name


def best_rouge_l(rec: dict) -> Optional[float]:
    """Highest ROUGE-L F1 (0..1) of a run: evaluated splits in ``summary.eval`` and the best values
    logged during training (keys ending in 'rougeL', baselines excluded); None when there is none."""
    values = []
    for split, res in ((rec.get("summary") or {}).get("eval") or {}).items():
        if isinstance(res, dict) and _num(res.get("rougeL")) is not None:
            values.append(res["rougeL"])
    for k, v in (rec.get("best") or {}).items():
        if k.lower().endswith("rougel") and "baseline" not in k and _num(v) is not None:
            values.append(v)
    return max(values) if values else None


def run_row(rec: dict) -> dict[str, Any]:
    """The display fields of one run (numbers stay numbers; None = unknown).

    Units: ``seconds`` and ``time_per_epoch_s`` in seconds, ``peak_memory_gb`` in GB as recorded
    (``peak_memory_mb`` is divided by 1,024), ``best_rougeL`` 0..1, ``cost_usd`` in USD (recorded, or
    :func:`estimate_cost`).
    """
    s = rec.get("summary") or {}
    tags = rec.get("tags") or {}
    cfg = rec.get("config") or {}
    metrics = rec.get("metrics") or {}
    epochs = _first(s.get("epochs"), s.get("epoch"), metrics.get("epoch"))
    seconds = _num(s.get("train_seconds"))
    if seconds is None and _num(rec.get("started")) and _num(rec.get("ended")):
        seconds = rec["ended"] - rec["started"]
    per_epoch = _num(s.get("time_per_epoch_s"))
    if per_epoch is None and seconds is not None and epochs:
        per_epoch = seconds / epochs
    peak = _first(s.get("peak_memory_gb"), s.get("peak_mem_gb"),
                  s["peak_memory_mb"] / 1024 if _num(s.get("peak_memory_mb")) is not None else None,
                  (rec.get("best") or {}).get("peak_mem_gb"), metrics.get("peak_memory_gb"), metrics.get("peak_mem_gb"))
    device = tags.get("device", "?")
    if tags.get("instance_type") and tags.get("instance_type") != "local":
        device = f"{tags['instance_type']} ({device})"
    return {
        "id": rec["_id"],
        "kind": rec.get("kind", "?"),
        "name": rec.get("name", "?"),
        "model": model_label(cfg),
        "device": device,
        "status": effective_status(rec),
        "cause": failure_cause(rec),
        "steps": rec.get("last_step") if rec.get("last_step") is not None else s.get("steps"),
        "epochs": epochs,
        "time_per_epoch_s": per_epoch,
        "seconds": seconds,
        "peak_memory_gb": peak,
        "best_rougeL": best_rouge_l(rec),
        "cost_usd": _first(s.get("cost_usd"), s.get("estimated_cost_usd"), estimate_cost(rec, seconds)),
        "resumed": rec.get("resumed", 0),
        "mlflow_run_id": (rec.get("mlflow") or {}).get("run_id"),
    }


# --------------------------------------------------------------------------------- formatting
def format_duration(seconds: Optional[float], missing: str = "-") -> str:
    """A duration for tables: seconds under 90 s, minutes under 90 min, else hours ('41 s', '12.5 min',
    '3.2 h'); ``missing`` for None."""
    if seconds is None:
        return missing
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _f(v: Optional[float], fmt: str, scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, fmt)


def _steps(row: dict) -> str:
    steps = "-" if row["steps"] is None else str(row["steps"])
    return steps if row["epochs"] is None else f"{steps} / {row['epochs']:.2g}"


def _table_cells(row: dict) -> list[str]:
    return [row["id"], row["model"], row["device"], row["status"], _steps(row), format_duration(row["time_per_epoch_s"]),
            _f(row["peak_memory_gb"], ".1f"), _f(row["best_rougeL"], ".2f", 100), _f(row["cost_usd"], ".2f")]


HEADERS = ["run", "model", "device", "status", "steps / epochs", "time/epoch", "peak GB", "best ROUGE-L", "cost $"]


def collect_runs(root: str | Path = "outputs", tracking_uri: Optional[str] = None) -> list[dict[str, Any]]:
    """Run records under ``root`` plus, with ``tracking_uri``, the MLflow runs that have no record there."""
    records = find_runs(root) if tracking_uri is None or Path(root).exists() else []
    if tracking_uri:
        known = {(r.get("mlflow") or {}).get("run_id") for r in records}
        records += [r for r in mlflow_records(tracking_uri) if (r.get("mlflow") or {}).get("run_id") not in known]
        records.sort(key=lambda r: r.get("started") or 0)
    return records


def runs_command(root: str = "outputs", tracking_uri: Optional[str] = None, as_json: bool = False) -> list[dict[str, Any]]:
    """Print the runs under ``root`` (and in MLflow at ``tracking_uri``) as a table or JSON lines; returns the rows."""
    from rich.console import Console
    from rich.table import Table

    rows = [run_row(r) for r in collect_runs(root, tracking_uri)]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return rows
    # piped output (grep, CI logs) gets a wide table instead of rich's 80-column default
    console = Console() if sys.stdout.isatty() else Console(width=200)
    if not rows:
        console.print(f"no runs under {root} (each run writes a run.json into its output folder)")
        return rows
    table = Table(title=f"runs under {root}")
    for h in HEADERS:
        table.add_column(h, justify="right" if h in ("steps / epochs", "time/epoch", "peak GB", "best ROUGE-L", "cost $") else "left",
                         no_wrap=h == "run")
    colors = {"FINISHED": "green", "FAILED": "red", "KILLED": "yellow", "DIED": "red", "RUNNING": "cyan"}
    for row in rows:
        table.add_row(*_table_cells(row), style=None if row["status"] == "FINISHED" else colors.get(row["status"]))
    console.print(table)
    failed = [r for r in rows if r["cause"]]
    for r in failed:
        console.print(f"[red]{r['id']}[/red]: {r['cause']} (last step {r['steps'] if r['steps'] is not None else '?'})")
    return rows


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _config_changes(prev: dict, cur: dict, limit: int = 10) -> list[str]:
    changes = [f"`{k}`: {json.dumps(old)} -> {json.dumps(new)}"
               for k, old, new in differing_settings(prev, cur, BOOKKEEPING_KEYS)]
    if len(changes) > limit:
        changes = changes[:limit] + [f"... and {len(changes) - limit} more"]
    return changes


def _setup_line(cfg: dict) -> str:
    t = cfg.get("train") or {}
    m = cfg.get("model") or {}
    bits = [f"model {model_label(cfg)}"]
    if t:
        length = f"{t.get('max_steps')} steps" if t.get("max_steps") else f"{t.get('epochs')} epochs"
        bits += [length, f"lr {t.get('lr')}", f"{t.get('batch_tokens')} tokens/step",
                 f"micro-batch {t.get('max_tokens')} tokens", f"precision {t.get('precision')}",
                 f"optimizer {t.get('optimizer')}"]
    if m.get("gradient_checkpointing"):
        bits.append("gradient checkpointing")
    d = cfg.get("data") or {}
    if d.get("source"):
        bits.append(f"data {d['source']}")
    return ", ".join(str(b) for b in bits)


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if _num(ts) else "?"


def render_report(records: list[dict[str, Any]], root: str | Path) -> str:
    """The markdown experiment log of ``records`` (as returned by ``find_runs``)."""
    rows = [run_row(r) for r in records]
    lines = [
        "# Experiment log",
        "",
        f"Generated by `threadsum runs report` on {time.strftime('%Y-%m-%d %H:%M')} from {len(records)} run records "
        f"under `{root}`. Regenerate it rather than editing it.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in _table_cells(row)) + " |")

    lines += ["", "## Experiments", ""]
    prev_cfg: dict[str, dict] = {}
    for rec, row in zip(records, rows):
        cfg = rec.get("config") or {}
        tags = rec.get("tags") or {}
        lines += [f"### {row['id']} ({row['kind']}, {row['status']})", ""]
        lines.append(f"- when: {_when(rec.get('started'))} to {_when(rec.get('ended') or rec.get('updated'))}"
                     f" ({format_duration(row['seconds'])}); host {tags.get('host', '?')}, device {row['device']}"
                     + (f", commit {tags['git_commit'][:10]}" if tags.get("git_commit") else ""))
        if cfg:
            lines.append(f"- setup: {_setup_line(cfg)}")
            before = prev_cfg.get(row["kind"])
            if before is not None:
                changes = _config_changes(before, cfg)
                lines.append("- changed from the previous run: " + ("; ".join(changes) if changes else "nothing in the config"))
            prev_cfg[row["kind"]] = cfg
        outcome = [f"status {row['status']}", f"steps {row['steps'] if row['steps'] is not None else '-'}"]
        if row["epochs"] is not None:
            outcome.append(f"epochs {row['epochs']:.3g}")
        best = rec.get("best") or {}
        for k in ("loss", "val_loss"):
            if _num(best.get(k)) is not None:
                outcome.append(f"best {k} {best[k]:.4f}")
        s = rec.get("summary") or {}
        tps = _first(s.get("tokens_per_s"), s.get("real_tokens_per_s"))
        if tps is not None:
            outcome.append(f"{tps:.0f} tokens/s")
        if row["time_per_epoch_s"] is not None:
            outcome.append(f"{format_duration(row['time_per_epoch_s'])} per epoch")
        if row["peak_memory_gb"] is not None:
            outcome.append(f"peak memory {row['peak_memory_gb']:.1f} GB")
        if row["cost_usd"] is not None:
            outcome.append(f"estimated cost ${row['cost_usd']:.2f}")
        lines.append("- outcome: " + ", ".join(outcome))
        for split, res in ((s.get("eval") or {}) if isinstance(s.get("eval"), dict) else {}).items():
            if not isinstance(res, dict) or _num(res.get("rougeL")) is None:
                continue
            lead = next((k for k in res if k.startswith("baseline.lead") and k.endswith(".rougeL")), None)
            parts = [f"{label} {100 * res[k]:.2f}" for k, label in (("rouge1", "R1"), ("rouge2", "R2"), ("rougeL", "RL"))
                     if _num(res.get(k)) is not None]
            text = f"- ROUGE on {split} ({res.get('n_threads', '?')} threads): " + ", ".join(parts)
            if lead:
                text += f" (lead baseline RL {100 * res[lead]:.2f})"
            lines.append(text)
        if row["cause"]:
            lines.append(f"- failure: {row['cause']} (last step {row['steps'] if row['steps'] is not None else '?'})")
        for h in rec.get("history") or []:
            if h.get("previous_cause"):
                lines.append(f"- resumed at step {h.get('from_step')} on {_when(h.get('resumed_at'))} after: {h['previous_cause']}")
        if row["mlflow_run_id"]:
            lines.append(f"- MLflow run: `{row['mlflow_run_id']}`")
        lines.append("")

    lines += ["## Failed approaches", "",
              "Runs that failed or were stopped, with their causes, so nobody repeats them.", ""]
    failures = []
    for rec, row in zip(records, rows):
        if row["cause"]:
            failures.append((rec, row, row["cause"], row["steps"], "final"))
        for h in rec.get("history") or []:
            if h.get("previous_cause"):
                failures.append((rec, row, h["previous_cause"], h.get("from_step"), "resumed later"))
    if not failures:
        lines.append("None recorded.")
    else:
        lines += ["| run | setup | cause | last step | outcome |", "|---|---|---|---:|---|"]
        for rec, row, cause, step, what in failures:
            lines.append(f"| {_md_escape(row['id'])} | {_md_escape(_setup_line(rec.get('config') or {}))} | "
                         f"{_md_escape(cause)} | {step if step is not None else '?'} | {what} |")
    return "\n".join(lines) + "\n"


def runs_report_command(root: str = "outputs", output: Optional[str] = None, tracking_uri: Optional[str] = None) -> Path:
    """Write the experiment log (default ``<root>/EXPERIMENTS.md``); returns its path."""
    records = collect_runs(root, tracking_uri)
    path = Path(output) if output else Path(root) / "EXPERIMENTS.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(records, root), encoding="utf-8")
    print(f"wrote {path} ({len(records)} runs, {sum(1 for r in records if failure_cause(r))} failed)")
    return path
