"""Experiment tracking: a plain JSON run record always, MLflow when enabled.

API used by train / evaluate (keep it stable):

    tracker = RunTracker(cfg, output_dir, kind="train")
    tracker.start()                                  # continues the run of output_dir/run.json if any
    tracker.log_params(dict); tracker.set_tags(dict)
    tracker.log_metrics({"loss": 1.2}, step=10)
    tracker.log_artifact(path)
    tracker.log_model(model_dir)                     # path + sha256 of the weights; copied with track.log_model
    tracker.finish("FINISHED" | "FAILED" | "KILLED", cause=None, last_step=None, summary=None)

Also: ``with RunTracker(...) as t:`` (starts; an exception finishes the run FAILED/KILLED with the
cause from ``classify_failure`` and the last logged step), ``attach()`` + ``update_summary()`` +
``close()`` to add evaluation results to a finished run without changing its status.

Where MLflow writes (``resolve_tracking_uri``): ``track.tracking_uri`` when set ('none' turns
MLflow off; a plain path means a sqlite file there), else ``$MLFLOW_TRACKING_URI``, else a sqlite
file ``<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlartifacts`` (view it with
``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``). The MLflow run id is kept in
``run.json`` so a resumed run continues the same MLflow run. MLflow errors never stop training:
they are reported once and tracking goes on in the JSON record only.

Weights are not copied by default: the model folder stays in the output dir, and the run records
its absolute path and a sha256 of its weight files (``WEIGHT_SUFFIXES``) as ``run.json``'s
``model`` and the MLflow tags ``model.path`` / ``model.sha256``. ``track.log_model=true`` copies
them into the artifact store too (BART-large: 1.6 GB more per run).
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from threadsum import __version__
from threadsum.config import Config, flatten
from threadsum.deps import MissingExtraError, require
from threadsum.errors import UserError
from threadsum.hashing import folder_files, folder_sha256

log = logging.getLogger(__name__)

STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
RECORD_FILE = "run.json"
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
_MLFLOW_STATUS = {"FINISHED": "FINISHED", "FAILED": "FAILED", "KILLED": "KILLED", "RUNNING": "RUNNING"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
"""Files of a logged folder that are weights: copied to MLflow only with ``track.log_model``."""
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")


# ----------------------------------------------------------------------------------- helpers
def resolve_tracking_uri(cfg: Config, output_dir: str | Path) -> Optional[str]:
    """The MLflow URI a run in ``output_dir`` uses, or None when tracking is off.

    Order: ``track.tracking_uri``, then ``$MLFLOW_TRACKING_URI``, then
    ``sqlite:///<output_dir>/mlflow.db``; 'none' (any case) turns tracking off, and a bare path
    becomes ``sqlite:///<absolute path>``.
    """
    configured = (cfg.track.tracking_uri or "").strip()
    if not configured:
        configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured.lower() == "none":
        return None
    if not configured:
        return f"sqlite:///{(Path(output_dir) / DEFAULT_DB).resolve()}"
    if "://" not in configured and not configured.startswith(("databricks", "sqlite:")):
        # a bare path: an sqlite file there, so `track.tracking_uri=outputs/mlflow.db` shares one db
        return f"sqlite:///{Path(configured).expanduser().resolve()}"
    return configured


def _uses_default_backend(cfg: Config) -> bool:
    return not (cfg.track.tracking_uri or "").strip() and not os.environ.get("MLFLOW_TRACKING_URI", "").strip()


def _param_value(v: Any, limit: int = 6000) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def git_commit() -> Optional[str]:
    """HEAD of the checkout the code runs from ($THREADSUM_GIT_COMMIT wins: containers ship no .git)."""
    env = os.environ.get("THREADSUM_GIT_COMMIT")
    if env:
        return env
    for where in (Path.cwd(), Path(__file__).resolve().parent):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def device_name() -> str:
    """'cpu' or the accelerator's name, e.g. 'cuda:NVIDIA H100 80GB HBM3 x1'."""
    torch = sys.modules.get("torch")
    if torch is None:
        try:
            import torch  # noqa: F811  (only when training/eval already needs it)
        except ImportError:
            return "cpu"
    try:
        if torch.cuda.is_available():
            return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
    except Exception:  # a broken driver must not stop a run from being recorded
        pass
    return "cpu"


def instance_type() -> str:
    """The SageMaker instance type when running inside a job, else 'local'."""
    if os.environ.get("SM_CURRENT_INSTANCE_TYPE"):
        return os.environ["SM_CURRENT_INSTANCE_TYPE"]
    for raw in (os.environ.get("SM_RESOURCE_CONFIG"), _read("/opt/ml/input/config/resourceconfig.json")):
        if raw:
            try:
                value = json.loads(raw).get("current_instance_type")
            except (ValueError, AttributeError):
                value = None
            if value:
                return value
    return "local"


def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def run_tags(kind: str) -> dict[str, str]:
    """Tags that say where a run ran: ``threadsum.kind``, ``threadsum.version``, ``host``, ``device``
    (:func:`device_name`), ``instance_type`` (:func:`instance_type`) and ``git_commit`` when known."""
    tags = {
        "threadsum.kind": kind,
        "threadsum.version": __version__,
        "host": socket.gethostname(),
        "device": device_name(),
        "instance_type": instance_type(),
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def classify_failure(exc: BaseException) -> tuple[str, str]:
    """(status, cause) for an exception that ended a run; cause is '<category>: <detail>'.

    Categories: OOM, preempted, killed, crashed. Training raises its own exception types; they are
    recognised by name so this module does not import the training code.
    """
    name = type(exc).__name__
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    detail = f"{name}: {msg}" if msg else name
    low = f"{name} {msg}".lower()
    if isinstance(exc, MemoryError) or "outofmemory" in low or "out of memory" in low:
        return "FAILED", f"OOM: {detail}"
    if "preempt" in low or "spot interruption" in low:
        return "KILLED", f"preempted: {detail}"
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED", "killed: interrupted (SIGINT / Ctrl-C)"
    if isinstance(exc, SystemExit) or "sigterm" in low or "signal" in low:
        return "KILLED", f"killed: {detail}"
    return "FAILED", f"crashed: {detail}"


def _quiet_mlflow() -> None:
    # mlflow logs database migrations at INFO and may send usage telemetry: neither belongs in a
    # training log (set MLFLOW_DISABLE_TELEMETRY=false to allow telemetry)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("mlflow.store.db.utils", "mlflow.store.db_migrations", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ------------------------------------------------------------------------------------ tracker
class RunTracker:
    """The run record of one output folder, mirrored to MLflow when tracking is on."""

    def __init__(self, cfg: Config, output_dir: str | Path, kind: str = "train", enabled: bool = True):
        self.cfg = cfg
        self.output_dir = Path(output_dir)
        self.kind = kind
        # only one process of a distributed job should write the record (enabled=False elsewhere)
        self.enabled = enabled
        self.record_path = self.output_dir / RECORD_FILE
        self.record: dict[str, Any] = {}
        self._client = None
        self._run_id: Optional[str] = None
        self._finished = False

    # ---- lifecycle
    def start(self) -> None:
        """Create the run, or continue the one recorded in run.json (same MLflow run id).

        A continued run gets ``resumed`` + 1 and a ``history`` entry with the previous status and
        cause. MLflow failures after this point only warn (tracking goes on in run.json).

        Raises:
            UserError: ``run.json`` exists but is not valid JSON.
            MissingExtraError: MLflow is not installed and a tracking URI was set explicitly
                (with the default backend it only warns).
        """
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        if self.record_path.exists():
            self.record = self._load_record()
            self.record["resumed"] = self.record.get("resumed", 0) + 1
            # the previous attempt's outcome stays in the history: a run that was preempted twice
            # and then finished says so
            self.record.setdefault("history", []).append({
                "resumed_at": now, "from_step": self.record.get("last_step"),
                "previous_status": self.record.get("status"), "previous_cause": self.record.get("cause"),
            })
            for k in ("cause", "ended"):
                self.record.pop(k, None)
        else:
            self.record = {"kind": self.kind, "name": self.cfg.name, "started": now, "metrics": {}}
        self.record.update(status="RUNNING", updated=now, pid=os.getpid(), output_dir=str(self.output_dir.resolve()))
        self.record["config"] = self.cfg.to_dict()
        tags = run_tags(self.kind)
        self.record.setdefault("tags", {}).update(tags)
        self._finished = False
        self._write()
        self._open_mlflow(resume_status=True)
        if self._client is not None:
            self._mlflow_params(flatten(self.cfg.to_dict()))
            self._mlflow(lambda c: c.log_batch(self._run_id, tags=self._tag_entities({**tags, "mlflow.source.git.commit": tags.get("git_commit", "")})))
        self._write()

    def attach(self) -> bool:
        """Open an existing run record (e.g. to add evaluation results) without changing its status.

        Returns False (and does nothing) when the folder has no run.json.
        """
        if not self.enabled or not self.record_path.exists():
            return False
        self.record = self._load_record()
        self._finished = True  # closing an attached run must not mark it finished again
        self._open_mlflow(resume_status=False)
        return True

    def close(self) -> None:
        """Write the record of an attached run (status unchanged)."""
        if self.enabled and self.record:
            self._write()

    def finish(self, status: str, cause: Optional[str] = None, last_step: Optional[int] = None,
               summary: Optional[dict[str, Any]] = None) -> None:
        """End the run: write status, cause and end time to run.json and terminate the MLflow run.

        Args:
            status: 'FINISHED', 'FAILED', 'KILLED' or 'RUNNING' (any case).
            cause: '<category>: <detail>' as :func:`classify_failure` gives it (None on success).
            last_step: last optimizer step reached; None keeps the one logged by :meth:`log_metrics`.
            summary: results merged into the record's ``summary``; numeric leaves also go to MLflow
                as ``summary.<dotted key>`` metrics.

        Raises:
            ValueError: ``status`` is not one of ``STATUSES``.
        """
        if not self.enabled:
            return
        status = status.upper()
        if status not in STATUSES:
            raise ValueError(f"run status '{status}' is not one of {', '.join(STATUSES)}")
        self.record.update(status=status, cause=cause, ended=time.time())
        if last_step is not None:
            self.record["last_step"] = last_step
        if summary:
            _deep_update(self.record.setdefault("summary", {}), summary)
        self._finished = True
        self._write()
        if self._client is not None:
            tags = {"threadsum.status": status}
            if cause:
                tags["threadsum.cause"] = cause
            if self.record.get("last_step") is not None:
                tags["threadsum.last_step"] = str(self.record["last_step"])
            metrics = {f"summary.{k}": v for k, v in flatten(summary or {}).items() if _is_number(v)}
            self._mlflow(lambda c: c.log_batch(self._run_id, metrics=self._metric_entities(metrics, self.record.get("last_step") or 0),
                                               tags=self._tag_entities(tags)))
            self._mlflow(lambda c: c.set_terminated(self._run_id, _MLFLOW_STATUS[status]))

    def __enter__(self) -> "RunTracker":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._finished:
            return False
        if exc is None:
            self.finish("FINISHED")
        else:
            status, cause = classify_failure(exc)
            self.finish(status, cause=cause, last_step=self.record.get("last_step"))
        return False

    # ---- logging
    def log_params(self, params: dict[str, Any]) -> None:
        """Merge ``params`` into run.json's ``params`` and log them flattened (``a.b``) as MLflow params.

        MLflow params cannot change: on a resumed run a changed value is logged as a
        ``resumed.<key>`` tag instead; values longer than 6,000 characters are cut.
        """
        if not self.enabled:
            return
        self.record.setdefault("params", {}).update(params)
        self._write()
        if self._client is not None:
            self._mlflow_params(flatten(params))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Merge ``tags`` into run.json's ``tags`` and set them on the MLflow run (values as text)."""
        if not self.enabled:
            return
        self.record.setdefault("tags", {}).update(tags)
        self._write()
        if self._client is not None:
            self._mlflow(lambda c: c.log_batch(self._run_id, tags=self._tag_entities(tags)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Latest values (and the best loss / ROUGE) go to run.json; the full history to MLflow."""
        if not self.enabled:
            return
        numeric = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        self.record.setdefault("metrics", {}).update(numeric)
        best = self.record.setdefault("best", {})
        for k, v in numeric.items():
            if math.isnan(v):
                continue
            if "loss" in k:
                best[k] = min(best.get(k, v), v)
            elif "rouge" in k or "accuracy" in k:
                best[k] = max(best.get(k, v), v)
        self.record["last_step"] = step
        self.record["updated"] = time.time()
        self._write()
        if self._client is not None:
            self._mlflow(lambda c: c.log_batch(self._run_id, metrics=self._metric_entities(numeric, step)))

    def log_model(self, model_dir: str | Path) -> None:
        """Record the exported model folder by path and content hash, and log it as an artifact.

        run.json's ``model`` gets ``path`` (absolute), ``sha256`` (``hashing.folder_sha256`` over
        the files ending in ``WEIGHT_SUFFIXES``), ``weights`` (their names relative to the folder),
        ``bytes`` (their total size) and ``copied`` (whether MLflow holds a copy); MLflow gets the
        tags ``model.path`` and ``model.sha256``. The folder is copied as :meth:`log_artifact` says:
        the weights only with ``track.log_model``. Hashing reads every weight byte once (about 2 s per GB
        on one core).

        Raises:
            OSError: a weight file cannot be read.
        """
        if not self.enabled:
            return
        p = Path(model_dir).resolve()
        weights = folder_files(p, WEIGHT_SUFFIXES) if p.is_dir() else []
        digest = folder_sha256(p, WEIGHT_SUFFIXES) if weights else None
        self.log_artifact(model_dir)
        self.record["model"] = {
            "path": str(p), "sha256": digest, "weights": [w.relative_to(p).as_posix() for w in weights],
            "bytes": sum(w.stat().st_size for w in weights),
            "copied": bool(self.cfg.track.log_model and self._client is not None and weights),
        }
        self.set_tags({"model.path": str(p), "model.sha256": digest or ""})

    def log_artifact(self, path: str | Path) -> None:
        """List ``path`` in run.json's ``artifacts`` and copy it to the MLflow artifact store.

        A folder is copied file by file. Weight files (``WEIGHT_SUFFIXES``) are copied only with
        ``track.log_model`` (then whatever their size); other files above ``track.artifact_max_mb``
        (MiB; 0: no limit) are not. What is not copied stays in the output dir only and is named in
        an ``artifacts.not_copied.<folder>`` tag. A path that does not exist is listed but not copied.
        """
        if not self.enabled:
            return
        p = Path(path)
        arts = self.record.setdefault("artifacts", [])
        if str(p) not in arts:
            arts.append(str(p))
        self._write()
        if self._client is None or not p.exists():
            return
        if p.is_file():
            self._mlflow(lambda c: c.log_artifact(self._run_id, str(p)))
            return
        # a model folder: config, tokenizer and card go to MLflow; the weights stay in the output dir
        # unless asked for (a bart-large copy would be 1.6 GB per run in the artifact store)
        limit = self.cfg.track.artifact_max_mb * 2**20
        skipped = []
        for f in folder_files(p):
            if f.name.endswith(WEIGHT_SUFFIXES):
                copy = self.cfg.track.log_model
            else:
                copy = not limit or f.stat().st_size <= limit
            if not copy:
                skipped.append(f.relative_to(p).as_posix())
                continue
            dest = (Path(p.name) / f.relative_to(p).parent).as_posix()
            self._mlflow(lambda c, f=f, dest=dest: c.log_artifact(self._run_id, str(f), artifact_path=dest))
        if skipped:
            self.set_tags({f"artifacts.not_copied.{p.name}": ", ".join(skipped)[:7000]})

    def update_summary(self, summary: dict[str, Any]) -> None:
        """Merge results (e.g. {'eval': {'test': {...}}}) into the record's summary."""
        if not self.enabled:
            return
        _deep_update(self.record.setdefault("summary", {}), summary)
        self._write()

    @property
    def run_id(self) -> Optional[str]:
        """The MLflow run id (None when MLflow is off)."""
        return self._run_id

    @property
    def tracking_uri(self) -> Optional[str]:
        """The MLflow URI this run logs to (None when MLflow is off or was disabled by an error)."""
        return (self.record.get("mlflow") or {}).get("tracking_uri") if self._client is not None else None

    # ---- MLflow plumbing
    def _open_mlflow(self, resume_status: bool) -> None:
        stored = self.record.get("mlflow") or {}
        uri = resolve_tracking_uri(self.cfg, self.output_dir)
        if uri is None:
            return
        try:
            require("mlflow", "track")
        except MissingExtraError:
            if _uses_default_backend(self.cfg):
                warnings.warn("MLflow is not installed: this run is recorded in run.json only "
                              "(pip install 'threadsum[track]' to track it in MLflow)", stacklevel=3)
                return
            raise
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=uri)
            run_id = stored.get("run_id") if stored.get("tracking_uri") == uri or _uses_default_backend(self.cfg) else None
            if run_id:
                try:
                    run = client.get_run(run_id)
                except Exception:
                    log.warning("MLflow run %s of %s is not in %s; starting a new MLflow run", run_id, self.record_path, uri)
                    run_id = None
                else:
                    if resume_status and run.info.status != "RUNNING":
                        client.update_run(run_id, status="RUNNING")
                        cause = run.data.tags.get("threadsum.cause")
                        if cause:
                            client.set_tag(run_id, "threadsum.previous_cause", cause)
                            client.delete_tag(run_id, "threadsum.cause")
            if not run_id:
                exp_id = self._experiment(client, uri)
                run = client.create_run(exp_id, run_name=self._run_name(), tags={"threadsum.kind": self.kind})
                run_id = run.info.run_id
                stored = {"tracking_uri": uri, "experiment_id": exp_id, "run_id": run_id}
        except Exception as exc:  # a tracking server that is down must not stop training
            self._disable(exc)
            return
        self._client, self._run_id = client, run_id
        self.record["mlflow"] = {**stored, "tracking_uri": uri, "run_id": run_id}

    def _experiment(self, client, uri: str) -> str:
        name = self.cfg.track.experiment
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            # next to the database, not in ./mlruns of whatever the working directory is
            location = (Path(uri[len("sqlite:///"):]).parent / DEFAULT_ARTIFACTS).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)

    def _run_name(self) -> str:
        if self.cfg.track.run_name:
            return self.cfg.track.run_name
        base = self.output_dir.resolve().name
        return f"{self.cfg.name}-{base}" if self.kind == "train" else f"{self.cfg.name}-{self.kind}-{base}"

    def _mlflow_params(self, params: dict[str, Any]) -> None:
        """Log params; values that changed on resume become 'resumed.<key>' tags (MLflow params are immutable)."""
        def do(c):
            from mlflow.entities import Param

            existing = c.get_run(self._run_id).data.params
            new, changed = [], {}
            for k, v in params.items():
                key = _KEY_BAD.sub("_", k)[:250]
                val = _param_value(v)
                if key not in existing:
                    new.append(Param(key, val))
                elif existing[key] != val:
                    changed[f"resumed.{key}"] = val
            c.log_batch(self._run_id, params=new, tags=self._tag_entities(changed))
        self._mlflow(do)

    @staticmethod
    def _tag_entities(tags: dict[str, Any]):
        from mlflow.entities import RunTag

        return [RunTag(_KEY_BAD.sub("_", str(k))[:250], _param_value(v if v is not None else "", 8000)) for k, v in tags.items()]

    @staticmethod
    def _metric_entities(metrics: dict[str, float], step: int):
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        return [Metric(_KEY_BAD.sub("_", k)[:250], float(v), ts, int(step)) for k, v in metrics.items()]

    def _mlflow(self, fn) -> None:
        if self._client is None:
            return
        try:
            fn(self._client)
        except Exception as exc:
            self._disable(exc)

    def _disable(self, exc: Exception) -> None:
        warnings.warn(f"MLflow tracking stopped ({type(exc).__name__}: {exc}); the run goes on, recorded in "
                      f"{self.record_path} only", stacklevel=3)
        self.record.setdefault("mlflow", {})["error"] = f"{type(exc).__name__}: {exc}"[:500]
        self._client = None

    # ---- JSON record
    def _load_record(self) -> dict[str, Any]:
        try:
            return json.loads(self.record_path.read_text())
        except ValueError as exc:
            raise UserError(f"{self.record_path} is not valid JSON ({exc}); move it away to start a new run record") from exc

    def _write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=2, default=str))
        os.replace(tmp, self.record_path)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _deep_update(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v
    return dst
